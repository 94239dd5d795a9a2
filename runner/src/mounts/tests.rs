//! Unit tests of [`super`] (mounts).

use super::*;
use std::cell::RefCell;

/// Records each call as a line; makes nothing but the files a real
/// mount would need to exist afterwards.
#[derive(Default)]
struct Recording {
    calls: RefCell<Vec<String>>,
    rootfs: PathBuf,
}

impl Recording {
    fn rel(&self, p: &Path) -> String {
        match p.strip_prefix(&self.rootfs) {
            Ok(r) if !self.rootfs.as_os_str().is_empty() => format!("<root>/{}", r.display()),
            _ => p.display().to_string(),
        }
    }
}

impl MountOps for Recording {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        self.calls.borrow_mut().push(format!(
            "mount {} {} {} {} {}",
            source.map(|s| self.rel(s)).unwrap_or("-".into()),
            self.rel(target),
            fstype.unwrap_or("-"),
            if flags.is_empty() {
                "-".to_owned()
            } else {
                flags
                    .iter_names()
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>()
                    .join(" | ")
            },
            data.unwrap_or("-")
        ));
        Ok(())
    }
    fn mknod_char(&self, path: &Path, major: u64, minor: u64) -> Result<()> {
        self.calls
            .borrow_mut()
            .push(format!("mknod {} {major}:{minor}", self.rel(path)));
        Ok(())
    }
    fn pivot_root(&self, rootfs: &Path) -> Result<()> {
        self.calls
            .borrow_mut()
            .push(format!("pivot_root {}", self.rel(rootfs)));
        Ok(())
    }
    fn mount_flags(&self, _: &Path) -> Result<nix::sys::statvfs::FsFlags> {
        Ok(nix::sys::statvfs::FsFlags::ST_NOSUID | nix::sys::statvfs::FsFlags::ST_NOEXEC)
    }
}

fn default_spec_calls(userns: bool, hierarchies: &str, cgroupns: bool) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    let spec = oci_spec::runtime::Spec::default();
    let h = Hierarchies::from_mountinfo(hierarchies).unwrap();
    let plan = RootfsPlan {
        rootfs: &rootfs,
        bundle: None,
        mounts: spec.mounts().as_deref().unwrap(),
        propagation: root_propagation(None).unwrap(),
        userns,
        hierarchies: &h,
        cgroupns,
        cgroup_path: Path::new("thinbox/c1"),
    };
    let ops = Recording {
        rootfs: rootfs.clone(),
        ..Default::default()
    };
    setup_rootfs(&plan, &ops).unwrap();
    // /dev got its symlinks in the rootfs itself.
    assert_eq!(
        fs::read_link(rootfs.join("dev/ptmx")).unwrap(),
        Path::new("pts/ptmx")
    );
    ops.calls.into_inner()
}

const V2: &str = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
const HYBRID: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";

#[test]
fn the_default_spec_makes_runcs_mounts_in_order() {
    let calls = default_spec_calls(false, V2, true);
    let expect_prefixes = [
        "mount - / - MS_REC | MS_PRIVATE",
        "mount <root>/ <root>/ - MS_BIND | MS_REC",
        "mount proc <root>/proc proc - -",
        "mount tmpfs <root>/dev tmpfs MS_NOSUID | MS_STRICTATIME mode=755,size=65536k",
        "mount devpts <root>/dev/pts devpts MS_NOSUID | MS_NOEXEC newinstance,ptmxmode=0666,mode=0620,gid=5",
        "mount shm <root>/dev/shm tmpfs",
        "mount mqueue <root>/dev/mqueue mqueue",
        "mount sysfs <root>/sys sysfs MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC",
        "mount cgroup2 <root>/sys/fs/cgroup cgroup2",
        "mknod <root>/dev/null 1:3",
        "mknod <root>/dev/zero 1:5",
        "mknod <root>/dev/full 1:7",
        "mknod <root>/dev/random 1:8",
        "mknod <root>/dev/urandom 1:9",
        "mknod <root>/dev/tty 5:0",
        "pivot_root <root>/",
    ];
    assert_eq!(calls.len(), expect_prefixes.len(), "{calls:#?}");
    for (call, want) in calls.iter().zip(expect_prefixes) {
        assert!(
            call.starts_with(want),
            "{call:?} does not start with {want:?}\n{calls:#?}"
        );
    }
}

#[test]
fn a_user_namespace_binds_device_nodes_and_v1_gets_its_hierarchies() {
    let calls = default_spec_calls(true, HYBRID, true);
    assert!(!calls.iter().any(|c| c.starts_with("mknod")), "{calls:#?}");
    assert!(calls
        .iter()
        .any(|c| c.starts_with("mount /dev/null <root>/dev/null - MS_BIND")));
    // v1: a tmpfs with one mount per hierarchy, co-mounted ones once.
    assert!(calls
        .iter()
        .any(|c| c.starts_with("mount tmpfs <root>/sys/fs/cgroup tmpfs")));
    let cgroup_mounts: Vec<&String> = calls
        .iter()
        .filter(|c| c.contains("/sys/fs/cgroup/"))
        .collect();
    assert_eq!(cgroup_mounts.len(), 2, "{cgroup_mounts:#?}");
}

#[test]
fn without_a_cgroup_namespace_only_the_own_cgroup_is_bound() {
    let calls = default_spec_calls(false, HYBRID, false);
    let binds: Vec<&String> = calls
        .iter()
        .filter(|c| {
            c.contains("/sys/fs/cgroup/") && c.contains("MS_BIND") && !c.contains("MS_REMOUNT")
        })
        .collect();
    assert_eq!(binds.len(), 2, "{calls:#?}");
    for b in binds {
        assert!(
            b.starts_with("mount /sys/fs/cgroup/") && b.contains("/thinbox/c1 "),
            "{b}"
        );
    }
    let calls = default_spec_calls(false, V2, false);
    assert!(
        calls.iter().any(
            |c| c.starts_with("mount /sys/fs/cgroup/thinbox/c1 <root>/sys/fs/cgroup - MS_BIND")
        ),
        "{calls:#?}"
    );
    assert!(!calls.iter().any(|c| c.contains(" cgroup2 ")), "{calls:#?}");
}

#[test]
fn masked_files_get_dev_null_and_dirs_a_readonly_tmpfs() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("kcore");
    let dir = tmp.path().join("firmware");
    fs::write(&file, "").unwrap();
    fs::create_dir(&dir).unwrap();
    let ops = Recording::default();
    let paths =
        [file.clone(), dir.clone(), tmp.path().join("absent")].map(|p| p.display().to_string());
    mask_paths(&paths, &ops).unwrap();
    let calls = ops.calls.into_inner();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(calls[0].starts_with(&format!("mount /dev/null {} - MS_BIND", file.display())));
    assert!(calls[1].starts_with(&format!("mount tmpfs {} tmpfs MS_RDONLY", dir.display())));
    // Read-only paths keep the mount's nosuid/noexec on the remount.
    let ops = Recording::default();
    readonly_paths(&[dir.display().to_string()], &ops).unwrap();
    let calls = ops.calls.into_inner();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(
        calls[1].contains("MS_RDONLY")
            && calls[1].contains("MS_NOSUID")
            && calls[1].contains("MS_NOEXEC")
            && calls[1].contains("MS_REMOUNT"),
        "{calls:#?}"
    );
}

fn opts(list: &[&str]) -> MountOptions {
    MountOptions::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

#[test]
fn oci_options_become_flags_and_data() {
    let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
    assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
    assert_eq!(o.data, "mode=755,size=65536k");
    let o = opts(&["rbind", "ro", "rprivate"]);
    assert!(o.is_bind());
    assert!(o.flags.contains(MsFlags::MS_REC | MsFlags::MS_RDONLY));
    assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    // A later option undoes an earlier one.
    assert_eq!(opts(&["ro", "rw"]).flags, MsFlags::empty());
}

#[test]
fn shared_root_propagation_is_refused() {
    assert_eq!(
        root_propagation(None).unwrap(),
        MsFlags::MS_PRIVATE | MsFlags::MS_REC
    );
    let e = root_propagation(Some("rshared")).unwrap_err();
    assert!(e.to_string().contains("leak"), "{e}");
}

#[test]
fn paths_cannot_leave_the_root() {
    let root = Path::new("/r");
    assert_eq!(
        join_in_root(root, Path::new("/a/b")).unwrap(),
        Path::new("/r/a/b")
    );
    assert!(join_in_root(root, Path::new("/a/../../etc")).is_err());
}

#[test]
fn symlinks_resolve_inside_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("real")).unwrap();
    symlink("/real", root.join("abs")).unwrap();
    symlink("../../../../etc", root.join("up")).unwrap();
    assert_eq!(
        resolve_in_root(root, Path::new("/abs/x")).unwrap(),
        root.join("real/x")
    );
    // `..` stops at the root: the link cannot reach the host's /etc.
    assert_eq!(
        resolve_in_root(root, Path::new("/up")).unwrap(),
        root.join("etc")
    );
    assert_eq!(
        resolve_in_root(root, Path::new("/../../x")).unwrap(),
        root.join("x")
    );
}
