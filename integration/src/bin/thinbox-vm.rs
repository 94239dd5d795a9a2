//! Runs a command inside the Debian-kernel test VM.
//!
//! ```text
//! thinbox-vm run [--kernel K] [--cgroup v1|v2|hybrid] [--disk SIZE]... [--memory SIZE]
//!                [--cpus N] [--timeout SECS] [--accel auto|kvm|tcg] -- CMD [ARGS...]
//! thinbox-vm info
//! ```
//! The guest sees the host's root read-only, a tmpfs /tmp, spare disks as
//! /dev/vda, /dev/vdb, ...; the exit status is the command's.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use integration::vm::{self, DiskSize, GuestImage, VmConfig};

const USAGE: &str = "usage: thinbox-vm run [--kernel K] [--cgroup v1|v2|hybrid] [--disk SIZE]... [--memory SIZE] [--cpus N] [--timeout SECS] [--accel auto|kvm|tcg] -- CMD [ARGS...]
       thinbox-vm info";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("info") => info(),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => fail(&format!("expected a subcommand\n{USAGE}")),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("thinbox-vm: {message}");
    ExitCode::from(2)
}

fn info() -> ExitCode {
    let image = match GuestImage::locate() {
        Ok(image) => image,
        Err(e) => return fail(&e.to_string()),
    };
    println!("guest kernel: {}", image.kernel_version);
    println!("cache: {}", image.dir.display());
    println!(
        "zfs modules: {}",
        if image.has_zfs() { "yes" } else { "no" }
    );
    for kernel in GuestImage::matrix_kernels() {
        match GuestImage::locate_kernel(&kernel) {
            Ok(m) => println!(
                "matrix kernel: {kernel} (zfs modules: {})",
                if m.has_zfs() { "yes" } else { "no" }
            ),
            Err(e) => println!("matrix kernel: {kernel}: {e}"),
        }
    }
    ExitCode::SUCCESS
}

fn run(args: &[String]) -> ExitCode {
    let mut config = VmConfig {
        echo_stdout: true,
        ..VmConfig::default()
    };
    let mut it = args.iter();
    let mut command = Vec::new();
    let mut kernel: Option<String> = None;
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let parsed: Result<(), String> = match arg.as_str() {
            "--" => {
                command = it.by_ref().cloned().collect();
                break;
            }
            "--kernel" => value("--kernel").map(|k| kernel = Some(k)),
            "--cgroup" => value("--cgroup").and_then(|v| {
                v.parse()
                    .map(|l| config.cgroup = l)
                    .map_err(|e: kernfmt::ParseError| e.to_string())
            }),
            "--disk" => value("--disk").and_then(|v| {
                v.parse::<DiskSize>()
                    .map(|d| config.disks.push(d))
                    .map_err(|e| e.to_string())
            }),
            "--memory" => value("--memory").and_then(|v| {
                v.parse::<DiskSize>()
                    .map_err(|e| e.to_string())
                    .and_then(|d| {
                        u32::try_from(d.0 >> 20).map_err(|_| format!("memory {v} is too large"))
                    })
                    .map(|mib| config.memory_mib = mib)
            }),
            "--cpus" => value("--cpus").and_then(|v| {
                v.parse()
                    .map(|n| config.cpus = n)
                    .map_err(|_| format!("bad CPU count {v:?}"))
            }),
            "--timeout" => value("--timeout").and_then(|v| {
                v.parse()
                    .map(|s| config.timeout = Duration::from_secs(s))
                    .map_err(|_| format!("bad timeout {v:?}: give seconds"))
            }),
            "--accel" => value("--accel").and_then(|v| {
                v.parse()
                    .map(|a| config.accel = a)
                    .map_err(|e: vm::VmError| e.to_string())
            }),
            other => Err(format!("unknown option {other}\n{USAGE}")),
        };
        if let Err(message) = parsed {
            return fail(&message);
        }
    }
    if command.is_empty() {
        return fail(&format!("no command given after --\n{USAGE}"));
    }
    let image = match kernel {
        Some(k) => GuestImage::locate_kernel(&k),
        None => GuestImage::locate(),
    };
    let image = match image {
        Ok(image) => image,
        Err(e) => return fail(&e.to_string()),
    };
    match vm::run(&image, &config, &command) {
        Ok(out) => {
            eprint!("{}", out.stderr);
            if !out.success() {
                eprintln!(
                    "thinbox-vm: the command exited with status {}; guest dmesg tail:",
                    out.status
                );
                for line in out
                    .dmesg
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    eprintln!("    {line}");
                }
            }
            ExitCode::from(u8::try_from(out.status).unwrap_or(1))
        }
        Err(e) => fail(&e.to_string()),
    }
}
