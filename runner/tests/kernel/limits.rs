//! Limits: memory (OOM kill reported), pids, timeouts, every limit landing
//! in the cgroup, CPU quota, I/O throttles, a full root device, stale
//! cgroups swept.

use super::*;

pub(super) fn memory_hog_is_oom_killed_and_reported() {
    let root = Rootfs::new();
    if v1_without_memory() {
        return assert_memory_limit_refused(root.builder().memory_limit(Bytes::mib(32)));
    }
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

pub(super) fn fork_bomb_is_stopped_by_pids_limit() {
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

pub(super) fn timeout_kills_the_whole_cgroup() {
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

pub(super) fn limits_land_in_the_cgroup() {
    let root = Rootfs::new();
    if v1_without_memory() {
        return assert_memory_limit_refused(root.builder().memory_limit(Bytes::mib(48)));
    }
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

pub(super) fn cpu_quota_throttles_a_busy_loop() {
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
pub(super) fn direct_io_is_throttled_on_the_root_device() {
    let (_dir, _dev, mnt, device) = loop_rootfs(64 << 20);
    container_on(&mnt.target, Some(device));
    assert_eq!(
        fs::metadata(mnt.target.join("data")).unwrap().len(),
        3 << 20
    );
}

/// A container that writes until its root device is full is reported as
/// `RootDeviceFull`, and the host's filesystems are untouched.
pub(super) fn full_root_device_is_the_exit_reason() {
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
pub(super) fn stale_cgroups_are_swept_and_live_ones_kept() {
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
