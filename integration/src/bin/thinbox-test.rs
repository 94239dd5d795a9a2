//! Runs every thinbox test where it can run: plain tests on the host,
//! real-kernel tests on the host or in the Debian-kernel VM by their needs.
//!
//! `thinbox-test [-p PACKAGE]... [--host-only | --vm-only] [--smoke] [--kernel K | --matrix-only] [--disk-size SIZE] [FILTER]`
//!
//! `--smoke` is CI's run: it leaves out the slow duplicates marked
//! `not_in_smoke` and runs the long matrices' subsets. The VM tests boot the
//! default guest kernel, then the tests marked `in_kernel_matrix` boot each
//! extra kernel of the matrix; `--kernel K` (`5.10`, `6.12`, an ABI) runs
//! every VM test on that kernel instead, and `--matrix-only` only the
//! matrix's lanes.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use integration::orchestrate::{self, Options};

fn main() -> ExitCode {
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host-only" => options.host_only = true,
            "-p" | "--package" => match args.next() {
                Some(p) => options.packages.push(p),
                None => return usage("--package needs a package name"),
            },
            "--vm-only" => options.vm_only = true,
            "--smoke" => options.smoke = true,
            "--matrix-only" => options.matrix_only = true,
            "--kernel" => match args.next() {
                Some(k) => options.kernel = Some(k),
                None => return usage("--kernel needs a kernel, e.g. 5.10 or 6.12.95+deb12-amd64"),
            },
            "--disk-size" => match args.next().map(|s| s.parse()) {
                Some(Ok(size)) => options.disk_size = Some(size),
                Some(Err(e)) => return usage(&e.to_string()),
                None => return usage("--disk-size needs a size, e.g. 8G"),
            },
            "-h" | "--help" => {
                println!(
                    "usage: thinbox-test [-p PACKAGE]... [--host-only | --vm-only] [--smoke] [--kernel K | --matrix-only] [--disk-size SIZE] [FILTER]"
                );
                return ExitCode::SUCCESS;
            }
            flag if flag.starts_with('-') => return usage(&format!("unknown option {flag}")),
            _ if options.filter.is_some() => return usage("give at most one FILTER"),
            _ => options.filter = Some(arg),
        }
    }
    if options.matrix_only && (options.kernel.is_some() || options.host_only) {
        return usage(
            "--matrix-only runs the extra kernels' lanes: not with --kernel or --host-only",
        );
    }
    if options.host_only && options.vm_only {
        return usage("--host-only and --vm-only exclude each other");
    }
    orchestrate::main(&options)
}

fn usage(message: &str) -> ExitCode {
    eprintln!("thinbox-test: {message}\nusage: thinbox-test [-p PACKAGE]... [--host-only | --vm-only] [--smoke] [--kernel K | --matrix-only] [--disk-size SIZE] [FILTER]");
    ExitCode::from(2)
}
