//! The container's filesystem: OCI mount options, the mounts of the spec,
//! a minimal `/dev`, `pivot_root`, masked and read-only paths.
//!
//! Runs inside the new mount namespace, before the process execs. Needs
//! Linux 3.8 for `pivot_root` in a mount namespace created with `clone`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::cgroup::Hierarchies;
use crate::error::{Error, ErrorKind, Result};

/// Mount flags and filesystem data parsed from OCI mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for `mount(2)`.
    pub flags: MsFlags,
    /// Propagation to set after mounting (`MS_PRIVATE`, `MS_SLAVE`, ...).
    pub propagation: MsFlags,
    /// Options passed to the filesystem (`mode=755,size=65536k`).
    pub data: String,
}

impl MountOptions {
    /// Whether this is a bind mount.
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// Parses the OCI option list, as runc does.
    pub fn parse(options: &[String]) -> MountOptions {
        let mut out = MountOptions {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: String::new(),
        };
        let mut data = vec![];
        for o in options {
            match OptionEffect::of(o) {
                Some(OptionEffect::Set(f)) => out.flags.insert(f),
                Some(OptionEffect::Clear(f)) => out.flags.remove(f),
                Some(OptionEffect::Propagate(f)) => out.propagation.insert(f),
                None => data.push(o.as_str()),
            }
        }
        out.data = data.join(",");
        out
    }
}

/// What one OCI mount option does; anything else is filesystem data.
enum OptionEffect {
    Set(MsFlags),
    Clear(MsFlags),
    Propagate(MsFlags),
}

/// Options that set a flag, and the option that clears it again.
const FLAG_OPTIONS: [(&str, Option<&str>, MsFlags); 14] = [
    ("ro", Some("rw"), MsFlags::MS_RDONLY),
    ("nosuid", Some("suid"), MsFlags::MS_NOSUID),
    ("nodev", Some("dev"), MsFlags::MS_NODEV),
    ("noexec", Some("exec"), MsFlags::MS_NOEXEC),
    ("sync", Some("async"), MsFlags::MS_SYNCHRONOUS),
    ("dirsync", None, MsFlags::MS_DIRSYNC),
    ("remount", None, MsFlags::MS_REMOUNT),
    ("mand", Some("nomand"), MsFlags::MS_MANDLOCK),
    ("noatime", Some("atime"), MsFlags::MS_NOATIME),
    ("nodiratime", Some("diratime"), MsFlags::MS_NODIRATIME),
    ("relatime", Some("norelatime"), MsFlags::MS_RELATIME),
    (
        "strictatime",
        Some("nostrictatime"),
        MsFlags::MS_STRICTATIME,
    ),
    ("bind", None, MsFlags::MS_BIND),
    ("rbind", None, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
];

impl OptionEffect {
    fn of(option: &str) -> Option<OptionEffect> {
        if let Some(p) = propagation(option) {
            return Some(OptionEffect::Propagate(p));
        }
        FLAG_OPTIONS.iter().find_map(|&(set, clear, flag)| {
            if option == set {
                Some(OptionEffect::Set(flag))
            } else if Some(option) == clear {
                Some(OptionEffect::Clear(flag))
            } else {
                None
            }
        })
    }
}

/// The propagation an OCI name stands for: `private`, `shared`, `slave`,
/// `unbindable`, each recursive with an `r` in front.
fn propagation(name: &str) -> Option<MsFlags> {
    let (rec, base) = match name.strip_prefix('r') {
        Some(base) => (MsFlags::MS_REC, base),
        None => (MsFlags::empty(), name),
    };
    let flag = match base {
        "private" => MsFlags::MS_PRIVATE,
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => return None,
    };
    Some(flag | rec)
}

/// The propagation named by OCI `rootfsPropagation` (default `rprivate`).
pub fn root_propagation(name: Option<&str>) -> Result<MsFlags> {
    match name.unwrap_or("") {
        "" => Ok(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
        other => propagation(other)
            .filter(|p| !p.contains(MsFlags::MS_SHARED))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "rootfsPropagation {other:?} is not supported: use rprivate, rslave or runbindable \
                         (shared propagation would leak mounts to the host)"
                    ),
                )
            }),
    }
}

/// `dest` inside `root`, refusing `..` and absolute components after the
/// first, so a spec cannot name a path outside the root. Symlinks in the
/// rootfs are resolved by [`resolve_in_root`].
pub fn join_in_root(root: &Path, dest: &Path) -> Result<PathBuf> {
    let mut out = root.to_owned();
    for c in dest.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("path {} leaves the container root", dest.display()),
                ))
            }
        }
    }
    Ok(out)
}

/// Resolves `dest` below `root`, following symlinks as if `root` were `/`
/// (an absolute link target restarts at `root`, `..` stops at `root`).
pub fn resolve_in_root(root: &Path, dest: &Path) -> Result<PathBuf> {
    let mut parts: Vec<std::ffi::OsString> = vec![];
    let mut pending: Vec<std::ffi::OsString> = dest
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(p) = pending.pop() {
        if p == ".." {
            parts.pop();
            continue;
        }
        let mut candidate = root.to_owned();
        candidate.extend(&parts);
        candidate.push(&p);
        match fs::read_link(&candidate) {
            Ok(target) => {
                links += 1;
                if links > 40 {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!("too many symlinks resolving {}", dest.display()),
                    ));
                }
                if target.is_absolute() {
                    parts.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(q) => pending.push(q.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Err(_) => parts.push(p),
        }
    }
    let mut out = root.to_owned();
    out.extend(parts);
    Ok(out)
}

fn step_err(step: &str, path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Start, step.to_owned())
        .with_path(path)
        .with_source(e)
}

/// The mount-namespace system calls the root setup makes: the kernel
/// ([`KernelMounts`]) or, in tests, a recording fake. Plain file operations
/// (mkdir, create, symlink) are made directly.
pub trait MountOps {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    /// `mknod(2)` of a character device, mode 0666.
    fn mknod_char(&self, path: &Path, major: u64, minor: u64) -> Result<()>;
    /// Switches the root to `rootfs` (`pivot_root`, detach the old root,
    /// chdir `/`).
    fn pivot_root(&self, rootfs: &Path) -> Result<()>;
    /// The flags of the mount at `path` (`statvfs`).
    fn mount_flags(&self, path: &Path) -> Result<nix::sys::statvfs::FsFlags>;
}

/// [`MountOps`] on the running kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelMounts;

impl MountOps for KernelMounts {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        mount(source, target, fstype, flags, data).map_err(|e| {
            step_err(
                &format!(
                    "mount {} ({})",
                    source.map(|s| s.display().to_string()).unwrap_or_default(),
                    fstype.unwrap_or("bind")
                ),
                target,
                e,
            )
        })
    }

    fn mknod_char(&self, path: &Path, major: u64, minor: u64) -> Result<()> {
        mknod(
            path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| step_err("create device node", path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o666))
            .map_err(|e| step_err("chmod device node", path, e))
    }

    fn pivot_root(&self, rootfs: &Path) -> Result<()> {
        nix::unistd::chdir(rootfs).map_err(|e| step_err("chdir to the rootfs", rootfs, e))?;
        // Stack the old root under the new one, then detach it: no directory
        // for the old root is needed in the rootfs (runc's technique).
        nix::unistd::pivot_root(".", ".").map_err(|e| step_err("pivot_root", rootfs, e))?;
        // Keep the old root's unmount from propagating anywhere.
        self.mount(
            None,
            Path::new("."),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        )?;
        umount2(".", MntFlags::MNT_DETACH)
            .map_err(|e| step_err("detach the old root", rootfs, e))?;
        nix::unistd::chdir("/").map_err(|e| step_err("chdir to /", Path::new("/"), e))
    }

    fn mount_flags(&self, path: &Path) -> Result<nix::sys::statvfs::FsFlags> {
        nix::sys::statvfs::statvfs(path)
            .map(|s| s.flags())
            .map_err(|e| step_err("statvfs", path, e))
    }
}

/// What the in-namespace setup needs besides the spec.
#[derive(Debug)]
pub struct RootfsPlan<'a> {
    /// The rootfs, absolute.
    pub rootfs: &'a Path,
    /// The bundle directory relative bind sources are resolved against.
    pub bundle: Option<&'a Path>,
    /// The spec's mounts.
    pub mounts: &'a [oci_spec::runtime::Mount],
    /// Root propagation.
    pub propagation: MsFlags,
    /// Inside a user namespace (device nodes are bind-mounted, not made).
    pub userns: bool,
    /// The host's cgroup hierarchies, for a `cgroup` mount.
    pub hierarchies: &'a Hierarchies,
    /// Whether the container has its own cgroup namespace.
    pub cgroupns: bool,
    /// The container's cgroup below each hierarchy's root: without a cgroup
    /// namespace only this directory is bound into the container.
    pub cgroup_path: &'a Path,
}

/// Makes the new mount namespace private, mounts the spec's mounts below
/// the rootfs, builds `/dev` and switches the root with `pivot_root`.
pub fn setup_rootfs(plan: &RootfsPlan<'_>, ops: &dyn MountOps) -> Result<()> {
    ops.mount(None, Path::new("/"), None, plan.propagation, None)?;
    // pivot_root needs the new root to be a mount point.
    ops.mount(
        Some(plan.rootfs),
        plan.rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let mut dev_is_tmpfs = false;
    for m in plan.mounts {
        let dest = resolve_in_root(plan.rootfs, m.destination())?;
        let typ = m.typ().as_deref().unwrap_or("");
        let opts = MountOptions::parse(m.options().as_deref().unwrap_or(&[]));
        if m.destination() == Path::new("/dev") && typ == "tmpfs" {
            dev_is_tmpfs = true;
        }
        if typ == "cgroup" || typ == "cgroup2" {
            mount_cgroups(plan, &dest, &opts, ops)?;
            continue;
        }
        if opts.is_bind() {
            let src = m.source().clone().unwrap_or_default();
            let src = match (src.is_absolute(), plan.bundle) {
                (false, Some(b)) => b.join(src),
                _ => src,
            };
            make_target(&dest, src.is_dir())?;
            ops.mount(
                Some(&src),
                &dest,
                None,
                opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
                None,
            )?;
            let rest = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
            if !rest.is_empty() {
                ops.mount(
                    None,
                    &dest,
                    None,
                    rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                    None,
                )?;
            }
        } else {
            make_target(&dest, true)?;
            let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
            let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
            let result = ops.mount(Some(&src), &dest, Some(typ), opts.flags, data);
            match result {
                Err(e) if typ == "sysfs" && e.errno() == Some(libc::EPERM) => {
                    // In a user namespace without its own network namespace
                    // sysfs cannot be mounted: bind the host's read-only.
                    ops.mount(
                        Some(Path::new("/sys")),
                        &dest,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                    )?;
                    ops.mount(
                        None,
                        &dest,
                        None,
                        MsFlags::MS_BIND
                            | MsFlags::MS_REMOUNT
                            | MsFlags::MS_RDONLY
                            | MsFlags::MS_NOSUID
                            | MsFlags::MS_NODEV
                            | MsFlags::MS_NOEXEC,
                        None,
                    )?;
                }
                other => other?,
            }
        }
        if !opts.propagation.is_empty() {
            ops.mount(None, &dest, None, opts.propagation, None)?;
        }
    }
    if dev_is_tmpfs {
        populate_dev(&plan.rootfs.join("dev"), plan.userns, ops)?;
    }
    ops.pivot_root(plan.rootfs)
}

fn make_target(dest: &Path, dir: bool) -> Result<()> {
    if dir {
        fs::create_dir_all(dest).map_err(|e| step_err("create mount point", dest, e))
    } else {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| step_err("create mount point", parent, e))?;
        }
        if !dest.exists() {
            fs::File::create(dest).map_err(|e| step_err("create mount point", dest, e))?;
        }
        Ok(())
    }
}

/// `/sys/fs/cgroup` inside: cgroup2 on a v2 host; on v1 and hybrid hosts a
/// tmpfs with each v1 hierarchy mounted below it (the container's own
/// cgroup as the root when it has a cgroup namespace).
fn mount_cgroups(
    plan: &RootfsPlan<'_>,
    dest: &Path,
    opts: &MountOptions,
    ops: &dyn MountOps,
) -> Result<()> {
    make_target(dest, true)?;
    let base = opts.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let ro = opts.flags & MsFlags::MS_RDONLY;
    let h = plan.hierarchies;
    if h.v2_has_controllers {
        if plan.cgroupns {
            return ops.mount(
                Some(Path::new("cgroup2")),
                dest,
                Some("cgroup2"),
                base | ro,
                None,
            );
        }
        // No cgroup namespace: show the container its own cgroup only.
        let own =
            h.v2.as_deref()
                .unwrap_or(Path::new("/sys/fs/cgroup"))
                .join(plan.cgroup_path);
        ops.mount(Some(&own), dest, None, MsFlags::MS_BIND, None)?;
        return ops.mount(
            None,
            dest,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | base | ro,
            None,
        );
    }
    ops.mount(
        Some(Path::new("tmpfs")),
        dest,
        Some("tmpfs"),
        base,
        Some("mode=755"),
    )?;
    let mut done: Vec<&Path> = vec![];
    for (c, mount_point) in &h.v1 {
        if done.contains(&mount_point.as_path()) {
            continue;
        }
        done.push(mount_point);
        let controllers: Vec<&str> =
            h.v1.iter()
                .filter(|(_, m)| *m == mount_point)
                .map(|(c, _)| c.name())
                .collect();
        let name = mount_point
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(c.name()));
        let target = dest.join(name);
        make_target(&target, true)?;
        if plan.cgroupns {
            ops.mount(
                Some(Path::new("cgroup")),
                &target,
                Some("cgroup"),
                base | ro,
                Some(&controllers.join(",")),
            )?;
        } else {
            // No cgroup namespace: bind the container's own cgroup only.
            ops.mount(
                Some(&mount_point.join(plan.cgroup_path)),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
            ops.mount(
                None,
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | base | ro,
                None,
            )?;
        }
    }
    if ro.contains(MsFlags::MS_RDONLY) {
        ops.mount(
            None,
            dest,
            None,
            MsFlags::MS_REMOUNT | base | ro,
            Some("mode=755"),
        )?;
    }
    Ok(())
}

/// The device nodes every container gets: (name, major, minor).
pub const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn populate_dev(dev: &Path, userns: bool, ops: &dyn MountOps) -> Result<()> {
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        if userns {
            // mknod is not allowed in a user namespace: bind the host's node.
            fs::File::create(&path).map_err(|e| step_err("create device", &path, e))?;
            ops.mount(
                Some(&Path::new("/dev").join(name)),
                &path,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        } else {
            ops.mknod_char(&path, major, minor)?;
        }
    }
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        let path = dev.join(name);
        if fs::symlink_metadata(&path).is_err() {
            symlink(target, &path).map_err(|e| step_err("create /dev symlink", &path, e))?;
        }
    }
    Ok(())
}

/// Hides each path: `/dev/null` over files, an empty read-only tmpfs over
/// directories; missing paths are skipped. Runs after `pivot_root`.
pub fn mask_paths(paths: &[String], ops: &dyn MountOps) -> Result<()> {
    for p in paths {
        let path = Path::new(p);
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => ops.mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?,
            Ok(_) => ops.mount(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )?,
            Err(_) => {}
        }
    }
    Ok(())
}

/// Makes each path read-only with a bind mount onto itself; missing paths
/// are skipped. Runs after `pivot_root`.
pub fn readonly_paths(paths: &[String], ops: &dyn MountOps) -> Result<()> {
    for p in paths {
        let path = Path::new(p);
        if fs::symlink_metadata(path).is_err() {
            continue;
        }
        remount_readonly(path, true, ops)?;
    }
    Ok(())
}

/// Bind-mounts `path` onto itself (if `bind`) and remounts it read-only,
/// keeping nosuid/nodev/noexec.
pub fn remount_readonly(path: &Path, bind: bool, ops: &dyn MountOps) -> Result<()> {
    if bind {
        ops.mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
    }
    let current = ops.mount_flags(path)?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    use nix::sys::statvfs::FsFlags;
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.contains(fs_flag) {
            flags |= ms_flag;
        }
    }
    ops.mount(None, path, None, flags, None)
}

#[cfg(test)]
mod tests;
