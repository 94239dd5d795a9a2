//! Real-kernel tests of the runner: containers on a busybox rootfs, on the
//! host (hybrid cgroups) and in the VM booted with pure cgroup v2 and v1.
//!
//! The rootfs is the host's static busybox copied into a temporary
//! directory with a symlink per applet (`busybox --list`), which is what
//! `busybox --install -s` makes. Each container writes what it observed to
//! a file in its root; the test reads it from the host side afterwards.
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::process::ExitCode;
use std::time::Duration;

use integration::fixtures::{temp_dir, unique_name};
use integration::harness::{self, KernelTest};
use integration::need::{CgroupLayout, Need};
use nix::sys::signal::Signal;
use oci_spec::runtime::Capability;
use runner::cgroup::{Bytes, CpuList, DevNum, Max, ThrottleKind};
use runner::{
    Container, ContainerBuilder, ContainerConfig, ErrorKind, ExitReason, ExitReport, Runtime,
    SeccompMode, Termination,
};

/// The tests, each registered once per cgroup layout.
const TESTS: &[(&str, fn())] = &[
    (
        "pid_1_and_host_processes_invisible",
        pid_1_and_host_processes_invisible,
    ),
    (
        "hostname_and_network_isolated",
        hostname_and_network_isolated,
    ),
    ("root_cannot_be_escaped", root_cannot_be_escaped),
    (
        "memory_hog_is_oom_killed_and_reported",
        memory_hog_is_oom_killed_and_reported,
    ),
    (
        "fork_bomb_is_stopped_by_pids_limit",
        fork_bomb_is_stopped_by_pids_limit,
    ),
    ("exit_codes_and_signals", exit_codes_and_signals),
    (
        "init_reaps_zombies_and_forwards_signals",
        init_reaps_zombies_and_forwards_signals,
    ),
    (
        "timeout_kills_the_whole_cgroup",
        timeout_kills_the_whole_cgroup,
    ),
    ("limits_land_in_the_cgroup", limits_land_in_the_cgroup),
    (
        "bad_input_fails_before_or_tears_down",
        bad_input_fails_before_or_tears_down,
    ),
    ("security_defaults_apply", security_defaults_apply),
    (
        "cpu_quota_throttles_a_busy_loop",
        cpu_quota_throttles_a_busy_loop,
    ),
    ("runc_spec_bundle_runs", runc_spec_bundle_runs),
    (
        "cgroup_mount_shows_only_the_own_cgroup",
        cgroup_mount_shows_only_the_own_cgroup,
    ),
    (
        "stale_cgroups_are_swept_and_live_ones_kept",
        stale_cgroups_are_swept_and_live_ones_kept,
    ),
    (
        "terminal_gives_the_process_a_pty",
        terminal_gives_the_process_a_pty,
    ),
    (
        "signals_are_forwarded_while_waiting",
        signals_are_forwarded_while_waiting,
    ),
];

/// Every cgroup layout a test can be registered for, with its name suffix.
const LAYOUTS: [(&str, CgroupLayout); 3] = [
    ("hybrid", CgroupLayout::Hybrid),
    ("v2", CgroupLayout::V2),
    ("v1", CgroupLayout::V1),
];

/// Registers `body` once per layout as `<name>_<suffix>`, needing `needs`
/// and that layout.
fn per_layout(
    tests: &mut Vec<KernelTest>,
    name: &str,
    body: fn(),
    needs: &[Need],
    layouts: &[(&str, CgroupLayout)],
) {
    for &(suffix, layout) in layouts {
        let name: &'static str = Box::leak(format!("{name}_{suffix}").into_boxed_str());
        let needs: &'static [Need] = Box::leak(
            needs
                .iter()
                .copied()
                .chain([Need::CgroupLayout(layout)])
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        tests.push(KernelTest::new(name, body).needs(needs));
    }
}

fn main() -> ExitCode {
    let (all, hybrid, v2, vm) = (&LAYOUTS[..], &LAYOUTS[..1], &LAYOUTS[1..2], &LAYOUTS[1..]);
    let mut tests = vec![];
    for layout in all {
        for (name, body) in TESTS {
            per_layout(&mut tests, name, *body, &[Need::Root], &[*layout]);
        }
    }
    // The VM's root is entered with switch_root (a chroot over the
    // initramfs), where the kernel refuses new user namespaces even to root
    // (`unshare -U` fails there too): user-namespace tests run on the host.
    per_layout(
        &mut tests,
        "user_namespace_maps_root",
        user_namespace_maps_root,
        &[Need::Root],
        hybrid,
    );
    let root_loop = &[Need::Root, Need::Loop];
    per_layout(
        &mut tests,
        "full_root_device_is_the_exit_reason",
        full_root_device_is_the_exit_reason,
        root_loop,
        all,
    );
    // Device filtering: the v1 devices controller, or on v2 an eBPF program.
    per_layout(
        &mut tests,
        "host_devices_are_denied_by_the_devices_cgroup",
        host_devices_are_denied_by_the_devices_cgroup,
        root_loop,
        all,
    );
    // Containers on the snapshot kinds thinbox manages, made here with the
    // system tools: runner does not depend on thinpool or snapshotter.
    tests.push(
        KernelTest::new(
            "container_on_a_btrfs_snapshot",
            container_on_a_btrfs_snapshot,
        )
        .needs(&[
            Need::Root,
            Need::Loop,
            Need::Btrfs,
            Need::CgroupLayout(CgroupLayout::Hybrid),
        ]),
    );
    per_layout(
        &mut tests,
        "container_on_a_dm_thin_snapshot",
        container_on_a_dm_thin_snapshot,
        &[Need::Root, Need::Loop, Need::DmThin],
        vm,
    );
    per_layout(
        &mut tests,
        "container_on_a_zfs_clone",
        container_on_a_zfs_clone,
        &[Need::Root, Need::Zfs],
        v2,
    );
    per_layout(
        &mut tests,
        "direct_io_is_throttled_on_the_root_device",
        direct_io_is_throttled_on_the_root_device,
        root_loop,
        all,
    );
    harness::main(&tests)
}

/// A busybox root filesystem in a temporary directory.
struct Rootfs {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Rootfs {
    fn new() -> Rootfs {
        let dir = temp_dir();
        let path = dir.path().join("rootfs");
        for d in [
            "bin", "proc", "sys", "dev", "tmp", "etc", "root", "mnt", "out",
        ] {
            fs::create_dir_all(path.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", path.join("bin/busybox"))
            .expect("copy /bin/busybox (busybox-static)");
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                symlink("busybox", path.join("bin").join(applet)).unwrap();
            }
        }
        fs::write(
            path.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        fs::write(
            path.join("etc/group"),
            "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
        )
        .unwrap();
        fs::write(path.join("I_AM_THE_CONTAINER_ROOT"), "").unwrap();
        Rootfs { _dir: dir, path }
    }

    fn builder(&self) -> ContainerBuilder {
        builder_on(&self.path, "ctr")
    }

    /// Runs `script` under `sh -c`, its stdout and stderr into /out/log.
    fn sh(&self, builder: ContainerBuilder, script: &str) -> (ExitReport, String) {
        let _ = fs::remove_file(self.path.join("out/log"));
        let config = builder
            .args(["/bin/sh", "-c", &format!("exec >/out/log 2>&1; {script}")])
            .build()
            .unwrap();
        let report = Runtime::detect().unwrap().run(&config).unwrap();
        let log = fs::read_to_string(self.path.join("out/log")).unwrap_or_default();
        (report, log)
    }
}

/// A container on `root` with PATH=/bin, a 60 s timeout and a unique id
/// made from `name`.
fn builder_on(root: &std::path::Path, name: &str) -> ContainerBuilder {
    ContainerConfig::builder(root)
        .id(unique_name(name))
        .env("PATH", "/bin")
        .timeout(Duration::from_secs(60))
}

/// Starts `args` with `builder`'s settings.
fn start(builder: ContainerBuilder, args: &[&str]) -> Container {
    let config = builder
        .args(args.iter().copied())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    Runtime::detect().unwrap().start(&config).unwrap()
}

fn assert_clean(report: &ExitReport) {
    assert!(report.cgroup_removed, "cgroup left behind: {report:?}");
}

fn pid_1_and_host_processes_invisible() {
    let root = Rootfs::new();
    let (report, log) = root.sh(
        root.builder(),
        "echo pid=$$; ls /proc | grep -cE '^[0-9]+$'",
    );
    assert_eq!(report.reason, ExitReason::Exited, "{report:?} {log}");
    assert_eq!(report.exit_code, 0, "{log}");
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("pid=1"), "{log}");
    // Only sh, ls and grep (and the pipeline's subshell) exist in the namespace.
    let count: u32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(count <= 4, "{count} processes visible: {log}");
    let host_count = fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .parse::<u32>()
                .is_ok()
        })
        .count();
    assert!(
        host_count > 4,
        "the host itself shows {host_count} processes"
    );
    assert_clean(&report);
}

fn hostname_and_network_isolated() {
    let root = Rootfs::new();
    let host_before = nix::unistd::gethostname().unwrap();
    let (report, log) = root.sh(
        root.builder().hostname("thinbox-test-box"),
        "hostname; hostname changed-inside && hostname; ip -o link show | cut -d: -f2",
    );
    assert_eq!(report.exit_code, 0, "{log}");
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    assert_eq!(lines[0], "thinbox-test-box", "{log}");
    // Without CAP_SYS_ADMIN sethostname fails: the name stays.
    assert_ne!(lines.get(1), Some(&"changed-inside"), "{log}");
    assert_eq!(nix::unistd::gethostname().unwrap(), host_before);
    // Only the loopback exists in the new network namespace, and it is up.
    let links: Vec<&str> = lines
        .iter()
        .filter(|l| !l.contains("hostname"))
        .skip(1)
        .copied()
        .collect();
    assert_eq!(links, ["lo"], "{log}");
    let (_, log) = root.sh(root.builder(), "ip link show lo");
    assert!(log.contains("UP"), "lo is not up: {log}");
    assert_clean(&report);
}

fn root_cannot_be_escaped() {
    let root = Rootfs::new();
    let (report, log) = root.sh(
        root.builder(),
        "cd /../../../..; ls /; echo ---; ls /proc/1/root/; echo ---; \
         mount -t tmpfs none /mnt && echo MOUNTED; mkdir -p /tmp/x && mount --bind / /tmp/x && echo BOUND; \
         chroot /proc/1/root /bin/ls / ; echo ---; cat /proc/1/mountinfo",
    );
    assert_eq!(report.reason, ExitReason::Exited, "{log}");
    let parts: Vec<&str> = log.split("---\n").collect();
    assert!(parts[0].contains("I_AM_THE_CONTAINER_ROOT"), "{log}");
    assert!(
        !parts[0].contains("home") && !parts[0].contains("usr"),
        "host root visible: {log}"
    );
    assert!(
        parts[1].contains("I_AM_THE_CONTAINER_ROOT"),
        "/proc/1/root is not the container root: {log}"
    );
    assert!(
        !log.contains("MOUNTED") && !log.contains("BOUND"),
        "a mount succeeded: {log}"
    );
    // The container sees only its own mounts, never the host's.
    let mountinfo = parts.last().unwrap();
    for line in mountinfo.lines() {
        let mount_point = line.split(' ').nth(4).unwrap();
        assert!(
            mount_point == "/"
                || ["/proc", "/dev", "/sys"]
                    .iter()
                    .any(|p| mount_point.starts_with(p)),
            "a mount the container did not make: {line}"
        );
    }
    let host_root = root.path.to_str().unwrap();
    // Nothing leaked to the host's mount table.
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(host_root),
        "container mounts leaked to the host:\n{host_mounts}"
    );
    assert_clean(&report);
}

fn memory_hog_is_oom_killed_and_reported() {
    let root = Rootfs::new();
    let report = start(
        root.builder()
            .memory_limit(Bytes::mib(32))
            .memory_swap(Max::Limit(Bytes::mib(32))),
        // `tail` keeps the "last line" of an endless stream without newlines.
        &["/bin/tail", "/dev/zero"],
    )
    .wait()
    .unwrap();
    assert_eq!(report.reason, ExitReason::OomKilled, "{report:?}");
    assert_eq!(report.termination, Termination::Signaled { signal: 9 });
    assert_eq!(report.exit_code, 137);
    assert!(report.events.oom_kills >= 1, "{report:?}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["reason"], "oom_killed", "{json}");
    assert_clean(&report);
}

fn fork_bomb_is_stopped_by_pids_limit() {
    let root = Rootfs::new();
    let (report, log) = root.sh(
        root.builder()
            .pids_limit(16)
            .timeout(Duration::from_secs(30)),
        "while true; do sleep 1000 & done",
    );
    assert_eq!(report.reason, ExitReason::PidsLimitHit, "{report:?} {log}");
    assert!(report.events.pids_limit_hits > 0, "{report:?}");
    assert!(log.contains("fork") || log.contains("Resource"), "{log}");
    // The host still forks.
    assert!(std::process::Command::new("/bin/true")
        .status()
        .unwrap()
        .success());
    assert_clean(&report);
}

fn exit_codes_and_signals() {
    let root = Rootfs::new();
    let (report, _) = root.sh(root.builder(), "exit 7");
    assert_eq!(report.reason, ExitReason::Exited);
    assert_eq!(report.termination, Termination::Exited { code: 7 });
    assert_eq!(report.exit_code, 7);
    // A signal from inside the namespace to a child: its shell reports 128+15.
    let (report, _) = root.sh(root.builder(), "sh -c 'kill -TERM $$'; exit $?");
    assert_eq!(report.exit_code, 143, "{report:?}");
    // SIGKILL from outside kills pid 1: the report says signalled, 137.
    let container = start(root.builder(), &["/bin/sleep", "1000"]);
    container.signal(Signal::SIGKILL).unwrap();
    let report = container.wait().unwrap();
    assert_eq!(report.reason, ExitReason::Signaled, "{report:?}");
    assert_eq!(report.termination, Termination::Signaled { signal: 9 });
    assert_eq!(report.exit_code, 137);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["termination"]["signal"], 9);
    assert_clean(&report);
}

fn init_reaps_zombies_and_forwards_signals() {
    let root = Rootfs::new();
    // An orphan exits while its parent is gone: init (pid 1) must reap it.
    let (report, log) = root.sh(
        root.builder().init(true),
        "(sleep 0.2 &) ; sleep 1; echo self=$$; for s in /proc/[0-9]*/stat; do cut -d' ' -f1-3 $s; done",
    );
    assert_eq!(report.exit_code, 0, "{log}");
    assert!(
        log.contains("self=2"),
        "the process is not pid 2 under init: {log}"
    );
    let zombies: Vec<&str> = log.lines().filter(|l| l.ends_with(" Z")).collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}\n{log}");
    // The process under init dies of its own signal and the report says so.
    let (report, _) = root.sh(root.builder().init(true), "kill -TERM $$");
    assert_eq!(
        report.termination,
        Termination::Signaled { signal: 15 },
        "{report:?}"
    );
    assert_eq!(report.exit_code, 143);
    // A signal sent to the container reaches the process through init.
    let container = start(root.builder().init(true), &["/bin/sleep", "1000"]);
    std::thread::sleep(Duration::from_millis(300));
    container.signal(Signal::SIGTERM).unwrap();
    let report = container.wait().unwrap();
    assert_eq!(
        report.termination,
        Termination::Signaled { signal: 15 },
        "{report:?}"
    );
    assert_eq!(report.reason, ExitReason::Signaled);
    assert_clean(&report);
}

fn timeout_kills_the_whole_cgroup() {
    let root = Rootfs::new();
    let container = start(
        root.builder().timeout(Duration::from_secs(2)),
        &[
            "/bin/sh",
            "-c",
            "sleep 1000 & sleep 1000 & while true; do :; done",
        ],
    );
    let dirs = container.cgroup_dirs();
    assert!(dirs.iter().all(|d| d.exists()));
    let report = container.wait().unwrap();
    assert_eq!(report.reason, ExitReason::TimedOut, "{report:?}");
    assert!(report.timed_out);
    assert_eq!(report.exit_code, 137);
    for d in dirs {
        assert!(!d.exists(), "{} still exists", d.display());
    }
}

fn limits_land_in_the_cgroup() {
    let root = Rootfs::new();
    let layout = Runtime::detect().unwrap().hierarchies().layout();
    let container = start(
        root.builder()
            .memory_limit(Bytes::mib(48))
            .pids_limit(50)
            .cpu_quota(50_000, 100_000)
            .cpu_shares(512)
            .cpuset_cpus("0".parse().unwrap()),
        &["/bin/sleep", "1000"],
    );
    let dirs = container.cgroup_dirs();
    let find = |file: &str| -> String {
        let d = dirs
            .iter()
            .find(|d| d.join(file).exists())
            .unwrap_or_else(|| panic!("no {file} in {dirs:?}"));
        fs::read_to_string(d.join(file)).unwrap().trim().to_owned()
    };
    match layout {
        runner::cgroup::CgroupLayout::V2 => {
            assert_eq!(find("memory.max"), "50331648");
            assert_eq!(find("pids.max"), "50");
            assert_eq!(find("cpu.max"), "50000 100000");
            assert_eq!(find("cpuset.cpus"), "0");
            let procs = find("cgroup.procs");
            assert_eq!(procs, container.pid().to_string());
        }
        _ => {
            assert_eq!(find("memory.limit_in_bytes"), "50331648");
            assert_eq!(find("pids.max"), "50");
            assert_eq!(find("cpu.cfs_quota_us"), "50000");
            assert_eq!(find("cpu.shares"), "512");
            assert_eq!(find("cpuset.cpus"), "0");
        }
    }
    container.signal(Signal::SIGKILL).unwrap();
    let report = container.wait().unwrap();
    assert_clean(&report);
    for d in dirs {
        assert!(!d.exists(), "{} still exists", d.display());
    }
}

fn bad_input_fails_before_or_tears_down() {
    let root = Rootfs::new();
    let rt = Runtime::detect().unwrap();
    let name = unique_name("bad");
    let cgroup_exists = |name: &str| {
        let h = rt.hierarchies();
        h.v1.values()
            .chain(h.v2.iter())
            .any(|m| m.join("thinbox").join(name).exists())
    };
    // A program that is not in the container: reported, nothing left.
    let config = root
        .builder()
        .id(&name)
        .args(["no-such-program"])
        .build()
        .unwrap();
    let e = rt.start(&config).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ExecutableNotFound, "{e}");
    assert!(e.to_string().contains("no-such-program"), "{e}");
    assert!(!cgroup_exists(&name), "cgroup left after a failed start");
    // CPUs that do not exist: refused before anything starts.
    let config = root
        .builder()
        .id(&name)
        .cpuset_cpus(CpuList([4000].into()))
        .args(["/bin/true"])
        .build()
        .unwrap();
    let e = rt.start(&config).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("4000"), "{e}");
    assert!(!cgroup_exists(&name));
    // An io throttle on a device that does not exist.
    let config = root
        .builder()
        .id(&name)
        .io_throttle(DevNum::new(4000, 4000), ThrottleKind::WriteBps, 1 << 20)
        .args(["/bin/true"])
        .build()
        .unwrap();
    let e = rt.start(&config).unwrap_err();
    assert!(e.to_string().contains("4000:4000"), "{e}");
    // A cwd that does not exist: the step is named and the container torn down.
    let config = root
        .builder()
        .id(&name)
        .cwd("/nowhere")
        .args(["/bin/true"])
        .build()
        .unwrap();
    let e = rt.start(&config).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Start);
    assert!(e.to_string().contains("working directory"), "{e}");
    assert!(!cgroup_exists(&name));
}

fn security_defaults_apply() {
    let root = Rootfs::new();
    let script = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
                  mount -t tmpfs none /mnt && echo MOUNTED; \
                  head -c1 /proc/kcore | wc -c; \
                  echo 1 > /proc/sys/kernel/domainname && echo WROTE_PROC_SYS; \
                  touch /sys/x && echo WROTE_SYS; ls /dev | tr '\\n' ' '";
    let (report, log) = root.sh(root.builder(), script);
    assert_eq!(report.reason, ExitReason::Exited, "{log}");
    // KILL (5), NET_BIND_SERVICE (10), AUDIT_WRITE (29): 0x20000420.
    assert!(log.contains("CapEff:\t0000000020000420"), "{log}");
    assert!(log.contains("CapBnd:\t0000000020000420"), "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(!log.contains("MOUNTED"), "{log}");
    // /proc/kcore is masked by /dev/null: it reads as empty.
    assert!(
        log.lines().any(|l| l.trim() == "0"),
        "/proc/kcore readable: {log}"
    );
    assert!(
        !log.contains("WROTE_PROC_SYS") && !log.contains("WROTE_SYS"),
        "{log}"
    );
    let dev_line = log.lines().last().unwrap();
    for node in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
    ] {
        assert!(
            dev_line.split_whitespace().any(|n| n == node),
            "/dev lacks {node}: {dev_line}"
        );
    }
    assert!(
        !dev_line.contains("sda") && !dev_line.contains("loop") && !dev_line.contains("vda"),
        "host devices in /dev: {dev_line}"
    );
    // A descriptor the caller leaked (no O_CLOEXEC) does not reach the container.
    let file = fs::File::open("/proc/self/status").unwrap();
    let leaked = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_DUPFD(57)).unwrap();
    let script = format!("test -e /proc/$$/fd/{leaked} && echo LEAKED; echo checked");
    let (_, log) = root.sh(root.builder(), &script);
    assert_eq!(
        log.trim(),
        "checked",
        "descriptor {leaked} reached the container: {log}"
    );
    let _ = nix::unistd::close(leaked);
    // With CAP_SYS_ADMIN granted, the seccomp filter alone still refuses
    // mount(2); without the filter the same mount succeeds.
    let admin: std::collections::HashSet<Capability> = [
        Capability::SysAdmin,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into();
    let script = "mount -t tmpfs none /mnt && echo MOUNTED; grep CapEff /proc/self/status";
    let (_, log) = root.sh(root.builder().capabilities(admin.clone()), script);
    assert!(
        !log.contains("MOUNTED"),
        "mount passed the seccomp filter: {log}"
    );
    assert!(log.contains("CapEff:\t0000000020200020"), "{log}");
    let (_, log) = root.sh(
        root.builder()
            .capabilities(admin)
            .seccomp(SeccompMode::Unconfined),
        script,
    );
    assert!(log.contains("MOUNTED"), "{log}");
    // A read-only root refuses writes.
    let (_, log) = root.sh(
        root.builder().readonly_root(true),
        "touch /newfile && echo WROTE; echo done",
    );
    assert!(!log.contains("WROTE"), "{log}");
    assert!(!root.path.join("newfile").exists());
}

fn user_namespace_maps_root() {
    let root = Rootfs::new();
    // The mapped root (host uid 100000) may write only where the host lets it.
    nix::unistd::chown(
        &root.path.join("out"),
        Some(nix::unistd::Uid::from_raw(100_000)),
        Some(nix::unistd::Gid::from_raw(100_000)),
    )
    .unwrap();
    let (report, log) = root.sh(
        root.builder().user_namespace(100_000, 100_000, 65536),
        "id -u; cat /proc/self/uid_map; touch /out/made",
    );
    assert_eq!(report.exit_code, 0, "{report:?} {log}");
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("0"), "{log}");
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"], "{log}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(root.path.join("out/made")).unwrap().uid(),
        100_000
    );
    assert_clean(&report);
}

/// Reads `key` from the `cpu.stat` of whichever cgroup dir has one.
fn cpu_stat(dirs: &[std::path::PathBuf], key: &str) -> u64 {
    let d = dirs
        .iter()
        .find(|d| d.join("cpu.stat").exists())
        .unwrap_or_else(|| panic!("no cpu.stat in {dirs:?}"));
    let stat: runner::cgroup::FlatKeyed = fs::read_to_string(d.join("cpu.stat"))
        .unwrap()
        .parse()
        .unwrap();
    stat.get(key)
}

fn cpu_quota_throttles_a_busy_loop() {
    let root = Rootfs::new();
    // 10 ms of CPU per 100 ms period: a busy loop is throttled every period.
    let container = start(
        root.builder().cpu_quota(10_000, 100_000),
        &["/bin/sh", "-c", "while true; do :; done"],
    );
    let dirs = container.cgroup_dirs();
    // Wait (without asserting on time) until several periods have passed.
    let mut throttled = 0;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        throttled = cpu_stat(&dirs, "nr_throttled");
        if throttled >= 3 {
            break;
        }
    }
    assert!(
        throttled >= 3,
        "the busy loop was throttled {throttled} times"
    );
    assert!(cpu_stat(&dirs, "nr_periods") >= throttled);
    container.kill_all().unwrap();
    let report = container.wait().unwrap();
    assert_eq!(report.exit_code, 137, "{report:?}");
    assert_clean(&report);
}

/// The root on its own block device (ext4 on a loop device), with a write
/// throttle on that device: direct writes are held to the limit (see
/// [`container_on`]), and all 3 MiB land on the device.
fn direct_io_is_throttled_on_the_root_device() {
    let (_dir, _dev, mnt, device) = loop_rootfs(64 << 20);
    container_on(&mnt.target, Some(device));
    assert_eq!(
        fs::metadata(mnt.target.join("data")).unwrap().len(),
        3 << 20
    );
}

/// A bundle made by `runc spec` (read-only root, runc's mounts, masked
/// paths and resources) runs unchanged but for the process, plus a sysctl
/// and a bind mount whose source is relative to the bundle.
fn runc_spec_bundle_runs() {
    use integration::fixtures::run;
    let tree = Rootfs::new();
    let bundle = tree.path.parent().unwrap().to_owned();
    run("runc", &["spec", "--bundle", bundle.to_str().unwrap()]);
    let path = bundle.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["root"]["path"], "rootfs");
    assert_eq!(v["root"]["readonly"], true);
    v["process"]["terminal"] = false.into();
    v["process"]["args"] = serde_json::json!([
        "/bin/sh", "-c",
        "exec >/result/log 2>&1; hostname; cat /proc/sys/net/ipv4/ip_forward; cat /proc/self/oom_score_adj; touch /x && echo WROTE_ROOT; echo ok"
    ]);
    v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
    v["process"]["oomScoreAdj"] = 500.into();
    v["linux"]["cgroupsPath"] = format!("/thinbox/{}", unique_name("runc-spec")).into();
    v["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/result", "type": "bind", "source": "result", "options": ["rbind", "rw"]
    }));
    fs::create_dir_all(bundle.join("result")).unwrap();
    fs::write(&path, v.to_string()).unwrap();
    let config = ContainerConfig::from_bundle(&bundle).unwrap();
    let report = Runtime::detect().unwrap().run(&config).unwrap();
    let log = fs::read_to_string(bundle.join("result/log")).unwrap_or_default();
    assert_eq!(report.exit_code, 0, "{report:?} {log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "runc", "{log}");
    assert_eq!(lines[1], "1", "the sysctl was not set: {log}");
    assert_eq!(lines[2], "500", "oom_score_adj was not set: {log}");
    assert!(
        !log.contains("WROTE_ROOT"),
        "the read-only root took a write: {log}"
    );
    assert_eq!(lines.last(), Some(&"ok"), "{log}");
    assert_clean(&report);
}

/// SIGTERM delivered to the waiting thread reaches the container's process.
fn signals_are_forwarded_while_waiting() {
    let root = Rootfs::new();
    // Blocked from the start, so an early signal waits for the signalfd
    // instead of killing the test process.
    let mut usr1 = nix::sys::signal::SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    usr1.thread_block().unwrap();
    let container = start(root.builder().init(true), &["/bin/sleep", "1000"]).forward_signals(true);
    let waiter = nix::sys::pthread::pthread_self();
    let sender = std::thread::spawn(move || {
        // Thread-directed, so it lands on the waiting thread, which reads it
        // from its signalfd.
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(200));
            if nix::sys::pthread::pthread_kill(waiter, Signal::SIGUSR1).is_err() {
                break;
            }
        }
    });
    let report = container.wait().unwrap();
    drop(sender);
    assert_eq!(
        report.termination,
        Termination::Signaled {
            signal: Signal::SIGUSR1 as i32
        },
        "{report:?}"
    );
    assert!(!report.timed_out);
    assert_clean(&report);
}

fn terminal_gives_the_process_a_pty() {
    let root = Rootfs::new();
    let mut container = start(
        root.builder().terminal(true),
        &[
            "/bin/sh",
            "-c",
            "test -t 0 && test -t 1 && echo STDIO_IS_A_TTY; read line; echo got:$line",
        ],
    );
    let master = std::fs::File::from(container.take_terminal().expect("a pty master"));
    let mut writer = master.try_clone().unwrap();
    use std::io::{Read, Write};
    writer.write_all(b"hello\n").unwrap();
    let mut out = Vec::new();
    let mut reader = master;
    let mut buf = [0u8; 256];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // EIO: every holder of the slave end has exited.
            Err(_) => break,
        }
    }
    let report = container.wait().unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(report.exit_code, 0, "{report:?} {out}");
    assert!(out.contains("STDIO_IS_A_TTY"), "{out}");
    assert!(out.contains("got:hello"), "{out}");
    assert_clean(&report);
}

/// A busybox root on its own ext4 loop device of `size` bytes:
/// (temp dir, device, mount, device number), dropped in reverse order.
fn loop_rootfs(
    size: u64,
) -> (
    tempfile::TempDir,
    integration::fixtures::LoopDevice,
    integration::fixtures::Mount,
    DevNum,
) {
    use integration::fixtures::{run, sparse_file, LoopDevice, Mount};
    let dir = temp_dir();
    let image = dir.path().join("root.img");
    sparse_file(&image, size);
    let dev = LoopDevice::attach(&image);
    run("mkfs.ext4", &["-q", dev.as_str()]);
    let mnt = Mount::new(dev.as_str(), &dir.path().join("root"), Some("ext4"), "");
    fill_with_busybox(&mnt.target);
    let device = device_number(&dev.path);
    (dir, dev, mnt, device)
}

/// A container that writes until its root device is full is reported as
/// `RootDeviceFull`, and the host's filesystems are untouched.
fn full_root_device_is_the_exit_reason() {
    let (_dir, _dev, mnt, _) = loop_rootfs(32 << 20);
    let probe = runner::FilesystemFull::new(&mnt.target);
    let container = start(
        builder_on(&mnt.target, "full"),
        &[
            "/bin/sh",
            "-c",
            // The log gets its block before the disk fills: dd's error
            // message is appended into it and needs no new block.
            "echo start >/out/log; dd if=/dev/zero of=/fill bs=1M 2>>/out/log; exit $?",
        ],
    );
    let report = container.wait_with_probe(Some(&probe)).unwrap();
    let log = fs::read_to_string(mnt.target.join("out/log")).unwrap_or_default();
    assert_eq!(
        report.reason,
        ExitReason::RootDeviceFull,
        "{report:?} {log}"
    );
    assert!(report.root_full && report.exit_code != 0, "{report:?}");
    assert!(log.contains("No space left"), "{log}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["reason"], "root_device_full");
    assert_clean(&report);
}

/// What a dead runner leaves (an empty cgroup) is swept; a running
/// container's cgroup is not.
fn stale_cgroups_are_swept_and_live_ones_kept() {
    use runner::cgroup::{CgroupPath, Hierarchies};
    let h = Hierarchies::detect().unwrap();
    let parent = CgroupPath::new(unique_name("sweep")).unwrap();
    let stale = CgroupPath::new(parent.as_path().join("dead")).unwrap();
    let cg = h.open(&stale);
    cg.create().unwrap();
    let root = Rootfs::new();
    let container = start(
        root.builder()
            .cgroup_path(CgroupPath::new(parent.as_path().join("alive")).unwrap()),
        &["/bin/sleep", "1000"],
    );
    // Young cgroups are left alone (one may be starting right now).
    assert!(h
        .remove_stale(&parent, Duration::from_secs(3600))
        .unwrap()
        .is_empty());
    let removed = h.remove_stale(&parent, Duration::ZERO).unwrap();
    assert_eq!(removed, vec![stale.clone()]);
    assert!(cg.dirs().iter().all(|d| !d.exists()));
    assert!(container.cgroup_dirs().iter().all(|d| d.exists()));
    container.signal(Signal::SIGKILL).unwrap();
    let report = container.wait().unwrap();
    assert_clean(&report);
    // The per-test parent itself.
    for m in h.v1.values().chain(h.v2.iter()) {
        let _ = fs::remove_dir(m.join(parent.as_path()));
    }
}

/// Even with CAP_MKNOD, a node made for a host block device cannot be opened.
fn host_devices_are_denied_by_the_devices_cgroup() {
    use integration::fixtures::{sparse_file, LoopDevice};
    let dir = temp_dir();
    let image = dir.path().join("disk.img");
    sparse_file(&image, 1 << 20);
    let dev = LoopDevice::attach(&image);
    let DevNum { major, minor } = device_number(&dev.path);
    let root = Rootfs::new();
    let caps: std::collections::HashSet<Capability> =
        [Capability::Mknod, Capability::Kill, Capability::AuditWrite].into();
    let script = format!(
        "mknod /tmp/disk b {major} {minor} && echo MADE; head -c 512 /tmp/disk >/dev/null && echo READ; \
         head -c 4 /dev/zero | wc -c"
    );
    let (report, log) = root.sh(root.builder().capabilities(caps), &script);
    assert_eq!(report.exit_code, 0, "{log}");
    assert!(log.contains("MADE"), "mknod itself is allowed: {log}");
    assert!(
        !log.contains("READ"),
        "a host block device was readable: {log}"
    );
    assert!(log.contains("Operation not permitted"), "{log}");
    // The allowed nodes still work.
    assert!(log.lines().any(|l| l.trim() == "4"), "{log}");
    assert_clean(&report);
}

/// Copies the busybox tree into `dir`.
fn fill_with_busybox(dir: &std::path::Path) {
    let tree = Rootfs::new();
    integration::fixtures::run(
        "cp",
        &[
            "-a",
            &format!("{}/.", tree.path.display()),
            dir.to_str().unwrap(),
        ],
    );
}

/// Runs a container on `root` (optionally throttled on `device`): it sees
/// itself as pid 1 and its writes land in `root` only. With a device, 3 MiB
/// of direct writes under a 1 MiB/s throttle take at least 1.5 s (a lower
/// bound the kernel enforces) and the throttle is in the cgroup.
fn container_on(root: &std::path::Path, device: Option<DevNum>) -> String {
    let mut b = builder_on(root, "snap").timeout(Duration::from_secs(120));
    if let Some(d) = device {
        b = b
            .root_device(d)
            .root_throttle(ThrottleKind::WriteBps, 1 << 20);
    }
    let script = match device {
        Some(_) => "echo pid=$$ >/out/log; echo in-container > /written; \
                    dd if=/dev/zero of=/data bs=64k count=48 oflag=direct 2>>/out/log; echo dd=$? >>/out/log",
        None => "echo pid=$$ >/out/log; echo in-container > /written",
    };
    let container = start(b, &["/bin/sh", "-c", script]);
    if let Some(d) = device {
        let dirs = container.cgroup_dirs();
        let throttle = dirs
            .iter()
            .flat_map(|dir| ["io.max", "blkio.throttle.write_bps_device"].map(|f| dir.join(f)))
            .find(|f| f.exists())
            .expect("a throttle file");
        let text = fs::read_to_string(&throttle).unwrap();
        assert!(text.contains(&format!("{d} ")), "{d} not throttled: {text}");
    }
    let start = std::time::Instant::now();
    let report = container.wait().unwrap();
    let took = start.elapsed();
    let log = fs::read_to_string(root.join("out/log")).unwrap_or_default();
    assert_eq!(report.exit_code, 0, "{report:?} {log}");
    assert!(log.starts_with("pid=1"), "{log}");
    assert_eq!(
        fs::read_to_string(root.join("written")).unwrap(),
        "in-container\n"
    );
    if device.is_some() {
        assert!(log.contains("dd=0"), "{log}");
        assert!(
            took >= Duration::from_millis(1500),
            "3 MiB under 1 MiB/s took {took:?}"
        );
    }
    assert_clean(&report);
    log
}

fn device_number(path: &std::path::Path) -> DevNum {
    use std::os::unix::fs::MetadataExt;
    let rdev = fs::metadata(path).unwrap().rdev();
    DevNum::new(
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    )
}

fn container_on_a_btrfs_snapshot() {
    use integration::fixtures::{run, sparse_file, LoopDevice, Mount};
    let dir = temp_dir();
    let image = dir.path().join("btrfs.img");
    sparse_file(&image, 256 << 20);
    let dev = LoopDevice::attach(&image);
    run("mkfs.btrfs", &["-q", "-f", dev.as_str()]);
    let mnt = Mount::new(dev.as_str(), &dir.path().join("mnt"), Some("btrfs"), "");
    let base = mnt.target.join("base");
    let snap = mnt.target.join("snap");
    run("btrfs", &["subvolume", "create", base.to_str().unwrap()]);
    fill_with_busybox(&base);
    run(
        "btrfs",
        &[
            "subvolume",
            "snapshot",
            base.to_str().unwrap(),
            snap.to_str().unwrap(),
        ],
    );
    container_on(&snap, Some(device_number(&dev.path)));
    assert!(
        !base.join("written").exists(),
        "the write reached the origin subvolume"
    );
}

fn container_on_a_dm_thin_snapshot() {
    use integration::fixtures::{run, sparse_file, try_run, LoopDevice, Mount};
    struct Dm(Vec<String>);
    impl Drop for Dm {
        fn drop(&mut self) {
            for n in self.0.iter().rev() {
                try_run("dmsetup", &["remove", "--force", n]);
            }
        }
    }
    let dir = temp_dir();
    let (meta_f, data_f) = (dir.path().join("meta"), dir.path().join("data"));
    sparse_file(&meta_f, 16 << 20);
    sparse_file(&data_f, 256 << 20);
    let meta = LoopDevice::attach(&meta_f);
    let data = LoopDevice::attach(&data_f);
    let (pool, origin, snap) = (
        unique_name("pool"),
        unique_name("origin"),
        unique_name("snap"),
    );
    let mut dm = Dm(vec![]);
    let table = format!(
        "0 {} thin-pool {} {} 128 1024 1 skip_block_zeroing",
        (256u64 << 20) / 512,
        meta.as_str(),
        data.as_str()
    );
    run("dmsetup", &["create", &pool, "--table", &table]);
    dm.0.push(pool.clone());
    run("dmsetup", &["mknodes"]);
    run("dmsetup", &["message", &pool, "0", "create_thin 0"]);
    let thin = |id: u32| format!("0 {} thin /dev/mapper/{pool} {id}", (128u64 << 20) / 512);
    run("dmsetup", &["create", &origin, "--table", &thin(0)]);
    dm.0.push(origin.clone());
    run("dmsetup", &["mknodes"]);
    let origin_dev = format!("/dev/mapper/{origin}");
    run("mkfs.ext4", &["-q", "-E", "nodiscard", &origin_dev]);
    {
        let m = Mount::new(&origin_dev, &dir.path().join("origin"), Some("ext4"), "");
        fill_with_busybox(&m.target);
        run("sync", &[]);
    }
    // Snapshot an active origin: suspend it so its pending writes are flushed first.
    run("dmsetup", &["suspend", &origin]);
    let made = try_run("dmsetup", &["message", &pool, "0", "create_snap 1 0"]);
    run("dmsetup", &["resume", &origin]);
    assert!(made, "create_snap failed");
    run("dmsetup", &["create", &snap, "--table", &thin(1)]);
    dm.0.push(snap.clone());
    run("dmsetup", &["mknodes"]);
    let snap_dev = std::path::PathBuf::from(format!("/dev/mapper/{snap}"));
    let device = device_number(&snap_dev);
    assert_eq!(
        device.major,
        device_number(std::path::Path::new(&origin_dev)).major,
        "both are dm devices"
    );
    {
        let m = Mount::new(
            snap_dev.to_str().unwrap(),
            &dir.path().join("snap"),
            Some("ext4"),
            "",
        );
        // The throttle goes on the thin snapshot device itself, not the pool's disks.
        container_on(&m.target, Some(device));
    }
    let m = Mount::new(&origin_dev, &dir.path().join("origin"), Some("ext4"), "ro");
    assert!(
        !m.target.join("written").exists(),
        "the write reached the origin"
    );
}

fn container_on_a_zfs_clone() {
    use integration::fixtures::{run, ZfsPool};
    let zpool = ZfsPool::create(256 << 20);
    let (pool, dir) = (zpool.name.clone(), &zpool.dir);
    let base_mnt = dir.path().join("base");
    run(
        "zfs",
        &[
            "create",
            "-o",
            &format!("mountpoint={}", base_mnt.display()),
            &format!("{pool}/base"),
        ],
    );
    fill_with_busybox(&base_mnt);
    run("zfs", &["snapshot", &format!("{pool}/base@one")]);
    let clone_mnt = dir.path().join("clone");
    run(
        "zfs",
        &[
            "clone",
            "-o",
            &format!("mountpoint={}", clone_mnt.display()),
            &format!("{pool}/base@one"),
            &format!("{pool}/clone"),
        ],
    );
    container_on(&clone_mnt, None);
    assert!(
        !base_mnt.join("written").exists(),
        "the write reached the origin dataset"
    );
}

/// With or without a cgroup namespace, /sys/fs/cgroup inside shows the
/// container's own cgroup (its pids.max) and not the host's tree.
fn cgroup_mount_shows_only_the_own_cgroup() {
    let root = Rootfs::new();
    let script = "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null; \
                  ls /sys/fs/cgroup /sys/fs/cgroup/pids 2>/dev/null | grep -c thinbox";
    for cgroupns in [true, false] {
        let mut b = root.builder().pids_limit(23);
        if !cgroupns {
            let linux = b.spec_mut().linux_mut().as_mut().unwrap();
            let ns = linux.namespaces_mut().as_mut().unwrap();
            ns.retain(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Cgroup);
        }
        let (report, log) = root.sh(b, script);
        assert_eq!(
            report.reason,
            ExitReason::Exited,
            "cgroupns={cgroupns}: {log}"
        );
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.first(), Some(&"23"), "cgroupns={cgroupns}: {log}");
        // The host's thinbox/ parent is not visible inside.
        assert_eq!(lines.last(), Some(&"0"), "cgroupns={cgroupns}: {log}");
        assert_clean(&report);
    }
}
