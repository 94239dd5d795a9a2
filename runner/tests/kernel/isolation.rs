//! Isolation: pid, uts and net namespaces, the root that cannot be
//! escaped, security defaults, user namespaces, the cgroup mount, devices.

use super::*;

pub(super) fn pid_1_and_host_processes_invisible() {
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

pub(super) fn hostname_and_network_isolated() {
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

pub(super) fn root_cannot_be_escaped() {
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

pub(super) fn security_defaults_apply() {
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

pub(super) fn user_namespace_maps_root() {
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

/// Even with CAP_MKNOD, a node made for a host block device cannot be opened.
pub(super) fn host_devices_are_denied_by_the_devices_cgroup() {
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

/// With or without a cgroup namespace, /sys/fs/cgroup inside shows the
/// container's own cgroup (its pids.max) and not the host's tree.
pub(super) fn cgroup_mount_shows_only_the_own_cgroup() {
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

/// The capability lines of /proc/self/status (CapInh, CapPrm, CapEff,
/// CapAmb; not CapBnd, whose default lists differ by runtime version).
fn cap_lines(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| {
            ["CapInh", "CapPrm", "CapEff", "CapAmb"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_owned)
        .collect()
}

/// uid 65534 in thinbox's default container and in runc's default bundle
/// (`runc spec`) has the same capabilities: none (CVE-2022-24769 left the
/// inheritable set empty in runc and moby; thinbox had KILL,
/// NET_BIND_SERVICE and AUDIT_WRITE inheritable and ambient).
pub(super) fn non_root_capabilities_match_runc() {
    use integration::fixtures::run;
    let script = "grep ^Cap /proc/self/status > /out/caps";
    let ours = Rootfs::new();
    fs::set_permissions(
        ours.path.join("out"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let config = ours
        .builder()
        .user(65534, 65534)
        .args(["/bin/sh", "-c", script])
        .build()
        .unwrap();
    let report = Runtime::detect().unwrap().run(&config).unwrap();
    assert_clean(&report);
    let thinbox = cap_lines(&fs::read_to_string(ours.path.join("out/caps")).unwrap());

    let theirs = Rootfs::new();
    fs::set_permissions(
        theirs.path.join("out"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let bundle = theirs.path.parent().unwrap().to_owned();
    run("runc", &["spec", "--bundle", bundle.to_str().unwrap()]);
    let path = bundle.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    v["process"]["terminal"] = false.into();
    v["process"]["user"] = serde_json::json!({"uid": 65534, "gid": 65534});
    v["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
    v["root"]["readonly"] = false.into();
    let id = unique_name("runc-caps");
    v["linux"]["cgroupsPath"] = format!("/thinbox/{id}").into();
    fs::write(&path, v.to_string()).unwrap();
    let out = std::process::Command::new("runc")
        .args(["run", "--bundle", bundle.to_str().unwrap(), &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "runc: {out:?}");
    let runc = cap_lines(&fs::read_to_string(theirs.path.join("out/caps")).unwrap());
    assert_eq!(thinbox, runc, "thinbox and runc differ for uid 65534");
    assert_eq!(thinbox.len(), 4, "{thinbox:?}");
    for line in &thinbox {
        assert!(line.ends_with("0000000000000000"), "{thinbox:?}");
    }
}
