//! Disposable kernel fixtures for tests: every name carries the
//! `thinbox-test-{pid}-` prefix of the process that made it, every guard
//! undoes itself on drop, and [`sweep`] removes whatever a killed test left
//! behind — only things whose owner process is gone, so concurrent test runs
//! on one machine never tear down each other's fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix of every device, mount, pool and file a test makes; the
/// owner's pid follows it: `thinbox-test-{pid}-...`.
pub const PREFIX: &str = "thinbox-test-";

/// A name unique to this process and call: `thinbox-test-{pid}-{what}-{n}`.
pub fn unique_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}{}-{what}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temporary directory named `thinbox-test-{pid}-*` (so sweeps find mounts
/// below it once this process is gone), on the default temp filesystem.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir()
        .expect("create a temporary directory")
}

/// [`temp_dir`] inside `parent` (another filesystem, say).
pub fn temp_dir_in(parent: &Path) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in(parent)
        .expect("create a temporary directory")
}

/// The pid of the process that made `text` (a name or path holding
/// `thinbox-test-{pid}-`, or its underscore form for LVM names).
pub fn owner_pid(text: &str) -> Option<u32> {
    let text = text.replace("thinbox_test_", PREFIX);
    let (_, rest) = text.split_once(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with(['-', '_']) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `text` names a fixture whose owner process has exited.
pub fn is_leftover(text: &str) -> bool {
    owner_pid(text).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Runs a program and returns its stdout, panicking with its stderr when it
/// fails: for tests that drive system tools.
#[track_caller]
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed with {}:\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a program and reports whether it succeeded, ignoring its output.
pub fn try_run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let file = std::fs::File::create(path).expect("create sparse file");
    file.set_len(size).expect("size sparse file");
}

/// A loop device over a file, detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    /// The device node (`/dev/loopN`).
    pub path: PathBuf,
}

impl LoopDevice {
    /// Attaches `file` to a free loop device; panics (failing the test) if it cannot.
    pub fn attach(file: &Path) -> LoopDevice {
        let file = file.to_str().expect("utf-8 path");
        // losetup retries internally when another attach races for the same free device.
        let out = run("losetup", &["--find", "--show", file]);
        LoopDevice {
            path: PathBuf::from(out.trim()),
        }
    }

    /// The device node as a string.
    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        try_run("losetup", &["-d", self.as_str()]);
    }
}

/// A mount, unmounted on drop (lazily if still busy).
#[derive(Debug)]
pub struct Mount {
    /// Where it is mounted.
    pub target: PathBuf,
}

impl Mount {
    /// Mounts `source` on `target` (made if missing); panics if it cannot.
    pub fn new(source: &str, target: &Path, fstype: Option<&str>, options: &str) -> Mount {
        std::fs::create_dir_all(target).expect("create mount point");
        let target_str = target.to_str().expect("utf-8 path");
        let mut args = vec![];
        if let Some(t) = fstype {
            args.extend(["-t", t]);
        }
        if !options.is_empty() {
            args.extend(["-o", options]);
        }
        args.extend([source, target_str]);
        run("mount", &args);
        Mount {
            target: target.to_owned(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = self.target.to_str().unwrap_or_default();
        if !try_run("umount", &[target]) {
            try_run("umount", &["-l", target]);
        }
    }
}

/// A ZFS pool on a sparse file vdev in its own temporary directory, with
/// `cachefile=none` (nothing written to /etc/zfs) and no root mountpoint;
/// destroyed on drop, before its directory goes.
#[derive(Debug)]
pub struct ZfsPool {
    /// The pool's name (unique per test run).
    pub name: String,
    /// Holds the vdev; free for the test's mount points too.
    pub dir: tempfile::TempDir,
}

impl ZfsPool {
    /// Makes a pool on a sparse file vdev of `vdev_size` bytes; panics if it cannot.
    pub fn create(vdev_size: u64) -> ZfsPool {
        let dir = temp_dir();
        let vdev = dir.path().join("vdev");
        sparse_file(&vdev, vdev_size);
        let name = unique_name("zpool");
        let vdev = vdev.to_str().expect("utf-8 path");
        run(
            "zpool",
            &[
                "create",
                "-o",
                "cachefile=none",
                "-O",
                "mountpoint=none",
                &name,
                vdev,
            ],
        );
        ZfsPool { name, dir }
    }
}

impl Drop for ZfsPool {
    fn drop(&mut self) {
        try_run("zpool", &["destroy", "-f", &self.name]);
    }
}

/// dm devices whose name starts with `prefix` (`dmsetup ls`; none where
/// dmsetup is missing).
pub fn dm_names(prefix: &str) -> Vec<String> {
    let Ok(out) = Command::new("dmsetup").arg("ls").output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Every mount point of this process (`/proc/self/mountinfo`, escapes
/// undone), in the table's order.
pub fn mount_points() -> Vec<PathBuf> {
    kernfmt::MountInfo::read_self()
        .unwrap_or_default()
        .iter()
        .map(kernfmt::MountInfo::mount_point_path)
        .collect()
}

/// Whether `path` (canonicalised when it exists) is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    mount_points().contains(&want)
}

/// Removes leftovers of killed tests: mounts below `thinbox-test-{pid}-*`
/// paths, dm devices, ZFS pools, LVM volume groups and loop devices of such
/// names, whose owner process `pid` no longer exists. Fixtures of running
/// processes (another test run on the same machine) are left alone.
pub fn sweep() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let mut mounts: Vec<String> = mount_points()
        .iter()
        .map(|m| m.to_string_lossy().into_owned())
        .filter(|m| is_leftover(m))
        .collect();
    // Deepest first.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &mounts {
        try_run("umount", &["-l", m]);
    }
    if crate::need::which("zpool") && Path::new("/dev/zfs").exists() {
        let pools = Command::new("zpool")
            .args(["list", "-H", "-o", "name"])
            .output();
        for pool in pools.iter().flat_map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .into_owned()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        }) {
            if is_leftover(&pool) {
                try_run("zpool", &["destroy", "-f", &pool]);
            }
        }
    }
    if Path::new("/dev/mapper/control").exists() {
        if crate::need::which("vgs") {
            let vgs = Command::new("vgs")
                .args(["--noheadings", "-o", "vg_name"])
                .output();
            for vg in vgs.iter().flat_map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            }) {
                if is_leftover(&vg) {
                    try_run("vgremove", &["-f", &vg]);
                }
            }
        }
        let devices = Command::new("dmsetup").args(["ls"]).output();
        let names: Vec<String> = devices
            .iter()
            .flat_map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .filter(|n| is_leftover(n))
            .collect();
        // Thin devices before their pools: removing in reverse name order is
        // not enough, so retry until nothing more goes away.
        let mut remaining = names;
        for _ in 0..3 {
            remaining.retain(|n| !try_run("dmsetup", &["remove", "--force", n]));
        }
    }
    let Ok(blocks) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for entry in blocks.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let backing =
            std::fs::read_to_string(entry.path().join("loop/backing_file")).unwrap_or_default();
        if name.starts_with("loop") && is_leftover(&backing) {
            try_run("losetup", &["-d", &format!("/dev/{name}")]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_names_and_paths() {
        let me = std::process::id();
        assert_eq!(owner_pid(&unique_name("pool")), Some(me));
        assert_eq!(owner_pid(&unique_name("vg").replace('-', "_")), Some(me));
        let dir = temp_dir();
        assert_eq!(
            owner_pid(&dir.path().join("mnt").to_string_lossy()),
            Some(me)
        );
        assert_eq!(owner_pid("/tmp/thinbox-test-abc/mnt"), None);
        assert_eq!(owner_pid("thinbox-test-12x-pool"), None);
        assert_eq!(owner_pid("unrelated-42-"), None);
    }

    #[test]
    fn only_fixtures_of_exited_processes_are_leftovers() {
        assert!(!is_leftover(&unique_name("pool")), "this process is alive");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(is_leftover(&format!("{PREFIX}{dead}-pool-0")));
        assert!(
            !is_leftover("/tmp/thinbox-test-abc/mnt"),
            "no owner, not ours to remove"
        );
    }
}

/// Kills a child (containerd, a daemon, a registry) a test left running,
/// and reaps it, when dropped.
#[derive(Debug)]
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM to `c`.
pub fn sigterm(c: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}
