//! Mount specs returned by `prepare`, `view` and `mounts`, and a helper that
//! mounts them on a target directory.
//!
//! A [`MountSpec`] is what the kernel's mount(2) needs: a filesystem type, a
//! source and options in fstab syntax. [`MountSpec::plan`] turns the options
//! into mount flags and filesystem data without touching the kernel (tested
//! without root); [`mount_all`] and [`unmount`] perform them.
//!
//! Kernel features: bind mounts (with a read-only remount for `ro` binds),
//! overlayfs for overlay specs. Overlay option strings longer than a page
//! (deep layer stacks, e.g. 128 layers) are shortened by opening the common
//! parent directory of the lower directories and naming them through
//! `/proc/self/fd/N/...`, so the kernel's page-size limit on mount data is
//! not hit.

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, ErrorKind, Result};

/// One mount: `mount -t TYPE -o OPTIONS SOURCE TARGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Filesystem type ("overlay", "bind", "ext4", ...). "bind" and "none"
    /// with a `bind`/`rbind` option mean a bind mount.
    pub fstype: String,
    /// The device, directory or pseudo-source.
    pub source: String,
    /// Options, fstab style (`ro`, `bind`, `lowerdir=...`).
    pub options: Vec<String>,
}

impl fmt::Display for MountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-t {} ", self.fstype)?;
        if !self.options.is_empty() {
            write!(f, "-o {} ", self.options.join(","))?;
        }
        f.write_str(&self.source)
    }
}

/// The mount(2) calls a spec turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Filesystem type passed to mount(2) (None for binds).
    pub fstype: Option<String>,
    /// Flags for the first mount(2).
    pub flags: MsFlags,
    /// Filesystem-specific data (unknown options), comma-joined.
    pub data: String,
    /// Whether a second `MS_REMOUNT|MS_BIND|MS_RDONLY` call is needed (a
    /// read-only bind, which the kernel ignores `MS_RDONLY` for on the first
    /// call).
    pub remount_read_only: bool,
}

impl MountSpec {
    /// A bind mount of `source`, read-only if `read_only`.
    pub fn bind(source: &Path, read_only: bool) -> MountSpec {
        let mut options = vec!["rbind".to_owned()];
        options.push(if read_only { "ro" } else { "rw" }.to_owned());
        MountSpec {
            fstype: "bind".into(),
            source: source.display().to_string(),
            options,
        }
    }

    /// Whether the options ask for a read-only mount.
    pub fn is_read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// Translates the options into mount(2) flags and data.
    pub fn plan(&self) -> MountPlan {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for o in &self.options {
            match o.as_str() {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" => flags &= !MsFlags::MS_RDONLY,
                "bind" => flags |= MsFlags::MS_BIND,
                "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "suid" => flags &= !MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "dev" => flags &= !MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                "exec" => flags &= !MsFlags::MS_NOEXEC,
                "noatime" => flags |= MsFlags::MS_NOATIME,
                "relatime" => flags |= MsFlags::MS_RELATIME,
                "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
                "defaults" => {}
                other => data.push(other.to_owned()),
            }
        }
        let is_bind = flags.contains(MsFlags::MS_BIND) || self.fstype == "bind";
        if self.fstype == "bind" {
            flags |= MsFlags::MS_BIND;
        }
        MountPlan {
            fstype: if is_bind {
                None
            } else {
                Some(self.fstype.clone())
            },
            remount_read_only: is_bind && flags.contains(MsFlags::MS_RDONLY),
            flags,
            data: data.join(","),
        }
    }

    /// Mounts this spec on `target` (an existing directory).
    pub fn mount(&self, target: &Path) -> Result<()> {
        let plan = self.plan();
        let page = 4096;
        let mut _keep_open: Option<File> = None;
        let mut data = plan.data.clone();
        if data.len() >= page && plan.fstype.as_deref() == Some("overlay") {
            let (short, dir) = shorten_overlay_data(&data)?;
            data = short;
            _keep_open = Some(dir);
        }
        let fail = |op: &'static str, e: nix::errno::Errno| {
            Error::new(ErrorKind::Mount, op)
                .path(target)
                .detail(format!("{self}"))
                .source(e)
        };
        let first_flags = if plan.remount_read_only {
            plan.flags - MsFlags::MS_RDONLY
        } else {
            plan.flags
        };
        nix::mount::mount(
            Some(self.source.as_str()),
            target,
            plan.fstype.as_deref(),
            first_flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(|e| fail("mount", e))?;
        if plan.remount_read_only {
            let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
            if let Err(e) =
                nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
            {
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
                return Err(fail("remount read-only", e));
            }
        }
        Ok(())
    }
}

/// Rewrites `lowerdir=` so that every lower directory is named relative to
/// an open descriptor of their longest common parent directory.
fn shorten_overlay_data(data: &str) -> Result<(String, File)> {
    let opts: Vec<&str> = data.split(',').collect();
    let lower = opts
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .ok_or_else(|| {
            Error::new(ErrorKind::Mount, "mount")
                .detail("overlay options longer than a page without lowerdir")
        })?;
    let dirs: Vec<PathBuf> = lower.split(':').map(PathBuf::from).collect();
    let mut common: PathBuf = dirs[0].parent().map(Path::to_path_buf).unwrap_or_default();
    while !dirs.iter().all(|d| d.starts_with(&common)) {
        if !common.pop() {
            break;
        }
    }
    let dir = File::open(&common).map_err(|e| Error::io("mount", &common, e))?;
    let prefix = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let short: Vec<String> = dirs
        .iter()
        .map(|d| {
            let rel = d.strip_prefix(&common).unwrap_or(d);
            format!("{prefix}/{}", rel.display())
        })
        .collect();
    let out: Vec<String> = opts
        .iter()
        .map(|o| {
            if o.starts_with("lowerdir=") {
                format!("lowerdir={}", short.join(":"))
            } else {
                (*o).to_owned()
            }
        })
        .collect();
    Ok((out.join(","), dir))
}

/// Mounts `specs` on `target` in order (later ones on top). On failure the
/// ones already mounted are unmounted again.
pub fn mount_all(specs: &[MountSpec], target: &Path) -> Result<()> {
    for (i, spec) in specs.iter().enumerate() {
        if let Err(e) = spec.mount(target) {
            for _ in 0..i {
                let _ = unmount(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts the topmost mount on `target`.
pub fn unmount(target: &Path) -> Result<()> {
    nix::mount::umount2(target, MntFlags::empty()).map_err(|e| {
        Error::new(ErrorKind::Mount, "unmount")
            .path(target)
            .detail("close files and leave directories under it, then retry")
            .source(e)
    })
}

/// A mounted set of specs, unmounted on drop.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    count: usize,
}

impl MountGuard {
    /// Mounts `specs` on `target`.
    pub fn new(specs: &[MountSpec], target: &Path) -> Result<MountGuard> {
        mount_all(specs, target)?;
        Ok(MountGuard {
            target: target.to_owned(),
            count: specs.len(),
        })
    }

    /// Where the specs are mounted.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Unmounts now, reporting errors (drop only logs them).
    pub fn unmount(mut self) -> Result<()> {
        while self.count > 0 {
            unmount(&self.target)?;
            self.count -= 1;
        }
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        while self.count > 0 {
            if let Err(e) = unmount(&self.target) {
                tracing::warn!("{e}; detaching lazily");
                let _ = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH);
            }
            self.count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_bind_needs_a_remount() {
        let p = MountSpec::bind(Path::new("/a"), true).plan();
        assert_eq!(p.fstype, None);
        assert!(p.flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(p.remount_read_only);
        assert_eq!(p.data, "");
        let p = MountSpec::bind(Path::new("/a"), false).plan();
        assert!(!p.remount_read_only);
        assert!(!p.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn overlay_options_become_data() {
        let spec = MountSpec {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                "lowerdir=/l1:/l2".into(),
                "upperdir=/u".into(),
                "workdir=/w".into(),
                "ro".into(),
            ],
        };
        let p = spec.plan();
        assert_eq!(p.fstype.as_deref(), Some("overlay"));
        assert_eq!(p.data, "index=off,lowerdir=/l1:/l2,upperdir=/u,workdir=/w");
        assert!(p.flags.contains(MsFlags::MS_RDONLY));
        assert!(!p.remount_read_only);
        assert!(spec.is_read_only());
    }

    #[test]
    fn long_lowerdir_lists_are_shortened_below_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir
            .path()
            .join("a-rather-long-directory-name-for-snapshots/snapshots");
        let lowers: Vec<String> = (0..128)
            .map(|i| base.join(format!("{i}/fs")).display().to_string())
            .collect();
        std::fs::create_dir_all(&base).unwrap();
        let data = format!("lowerdir={},upperdir=/u,workdir=/w", lowers.join(":"));
        assert!(data.len() > 4096);
        let (short, _fd) = shorten_overlay_data(&data).unwrap();
        assert!(short.len() < 4096, "{}", short.len());
        assert!(short.contains("/proc/self/fd/"));
        assert!(short.ends_with(",upperdir=/u,workdir=/w"));
        assert!(short.contains("/127/fs"));
    }
}
