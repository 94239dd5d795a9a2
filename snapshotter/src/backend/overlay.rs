//! The overlay backend: every snapshot is an overlayfs upper directory; its
//! mounts stack the parents' upper directories as lower layers.
//!
//! Kernel: overlayfs (Linux 4.0+; multiple lower layers). Layout:
//! `ROOT/snapshots/ID/fs` (the upper, the snapshot's own changes) and
//! `ROOT/snapshots/ID/work`. A snapshot without parents is a bind of its
//! `fs`; a view of one parent is a read-only bind of the parent's `fs`;
//! otherwise an overlay mount. Commit is a metadata change only. Without
//! the module's `redirect_dir` feature, renaming a directory that comes
//! from a lower layer fails with EXDEV (tools then copy), which
//! [`Capabilities::rename_lower_dirs`] reports.
//!
//! Size bounds: when the root is on xfs mounted with project quotas
//! (`-o prjquota`), [`crate::types::MAX_SIZE_LABEL`] on `prepare` puts the
//! snapshot's directory (upper and work, so copy-ups stay in it) in xfs
//! project ID (the snapshot id) with a hard block limit (`xfs_quota -x -c
//! 'project -s'` and `'limit -p bhard='`, as Docker's overlay2 does for
//! `--storage-opt size`): what the container writes is bounded, and xfs
//! reports the limit through statfs. Elsewhere the label is refused.

use std::fs;
use std::path::{Path, PathBuf};

use crate::core::{Backend, Object, Snapshots};
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::disk_usage;
use crate::mount::MountSpec;
use crate::store::SnapshotId;
use crate::types::{size_bound, Capabilities, Kind, Labels, Usage};

use super::naive::{ids_in, mkdir_0755, remove_tree};

/// The overlay backend.
#[derive(Debug)]
pub struct Overlay {
    dir: PathBuf,
    redirect_dir: bool,
    index_option: bool,
    /// The mount point of the xfs with project quotas the root is on.
    project_quota: Option<PathBuf>,
}

/// The xfs mount holding `dir` if it enforces project quotas.
fn xfs_project_quota_mount(dir: &Path) -> Option<PathBuf> {
    let dir = fs::canonicalize(dir).ok()?;
    let mounts = kernfmt::MountInfo::read_self().ok()?;
    let m = mounts
        .iter()
        .filter(|m| dir.starts_with(m.mount_point_path()))
        .max_by_key(|m| m.mount_point_path().as_os_str().len())?;
    let enforced = m
        .super_options
        .split(',')
        .any(|o| o == "prjquota" || o == "pquota");
    (m.fstype == "xfs" && enforced).then(|| m.mount_point_path())
}

/// Runs `xfs_quota -x -c COMMAND MNT`.
fn xfs_quota(mnt: &Path, command: &str) -> Result<()> {
    let out = std::process::Command::new("xfs_quota")
        .args(["-x", "-c", command])
        .arg(mnt)
        .output()
        .map_err(|e| {
            Error::new(ErrorKind::BackendUnavailable, "project quota")
                .path(mnt)
                .detail("cannot run xfs_quota; install xfsprogs")
                .source(e)
        })?;
    // xfs_quota exits 0 on many failures; what it says on stderr tells.
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !err.trim().is_empty() {
        return Err(Error::new(ErrorKind::Io, "project quota")
            .path(mnt)
            .detail(format!(
                "xfs_quota -x -c {command:?} failed: {}",
                err.trim()
            )));
    }
    Ok(())
}

fn module_param(name: &str) -> Option<String> {
    fs::read_to_string(format!("/sys/module/overlay/parameters/{name}"))
        .ok()
        .map(|s| s.trim().to_owned())
}

impl Overlay {
    /// A backend under `ROOT/snapshots`; fails with
    /// [`ErrorKind::BackendUnavailable`] when the kernel has no overlayfs.
    pub fn new(root: &Path) -> Result<Overlay> {
        let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
        {
            return Err(Error::new(ErrorKind::BackendUnavailable, "open")
                .path(root)
                .detail("overlay: overlayfs is not in the kernel; load the overlay module"));
        }
        let dir = root.join("snapshots");
        fs::create_dir_all(&dir).map_err(|e| Error::io("open", &dir, e))?;
        Ok(Overlay {
            project_quota: xfs_project_quota_mount(&dir),
            dir,
            redirect_dir: module_param("redirect_dir").is_some_and(|v| v == "Y"),
            index_option: module_param("index").is_some(),
        })
    }

    /// Opens an overlay snapshotter at `root`.
    pub fn open(root: &Path) -> Result<Snapshots<Overlay>> {
        Snapshots::open(root, Overlay::new(root)?)
    }

    fn path(&self, id: SnapshotId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn upper(&self, id: SnapshotId) -> PathBuf {
        self.path(id).join("fs")
    }
}

/// The xfs project of snapshot `id` (project ids are 32 bits; 0 is the
/// default project).
fn project_id(id: SnapshotId) -> Result<u32> {
    u32::try_from(id.0).ok().filter(|p| *p != 0).ok_or_else(|| {
        Error::new(ErrorKind::InvalidArgument, "project quota")
            .detail(format!("snapshot id {id} is not an xfs project id"))
    })
}

impl Backend for Overlay {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_level: false,
            exact_usage: true,
            max_size_label: false,
            rename_lower_dirs: self.redirect_dir,
            cheap_commit: true,
            bounds_size: self.project_quota.is_some(),
            counts_inodes: true,
            lists_changes: false,
        }
    }

    fn why_unbounded(&self) -> String {
        format!(
            "overlay bounds a snapshot only on xfs mounted with -o prjquota, and {} is not",
            self.dir.display()
        )
    }

    fn create(&self, obj: &Object<'_>, labels: &Labels) -> Result<()> {
        let bound = size_bound(&obj.id.to_string(), obj.kind, labels)?;
        let path = self.path(obj.id);
        fs::create_dir(&path).map_err(|e| Error::io("mkdir", &path, e))?;
        mkdir_0755(&path.join("fs"))?;
        let work = path.join("work");
        fs::create_dir(&work).map_err(|e| Error::io("mkdir", &work, e))?;
        if let (Some(bytes), Some(mnt)) = (bound, &self.project_quota) {
            let project = project_id(obj.id)?;
            xfs_quota(mnt, &format!("project -s -p {} {project}", path.display()))?;
            xfs_quota(mnt, &format!("limit -p bhard={} {project}", bytes.0))?;
        }
        Ok(())
    }

    fn commit(&self, _obj: &Object<'_>) -> Result<()> {
        Ok(())
    }

    fn uncommit(&self, _obj: &Object<'_>) -> Result<()> {
        Ok(())
    }

    fn remove(&self, id: SnapshotId) -> Result<()> {
        remove_tree(&self.path(id))?;
        if let (Some(mnt), Ok(project)) = (&self.project_quota, project_id(id)) {
            // Its files are gone; drop the limit too (it would stay listed).
            if let Err(e) = xfs_quota(mnt, &format!("limit -p bhard=0 {project}")) {
                tracing::debug!("cannot clear the project quota of {id}: {e}");
            }
        }
        Ok(())
    }

    fn mounts(&self, obj: &Object<'_>) -> Result<Vec<MountSpec>> {
        let view = obj.kind == Kind::View;
        match obj.parents {
            [] => Ok(vec![MountSpec::bind(&self.upper(obj.id), view)]),
            [only] if view => Ok(vec![MountSpec::bind(&self.upper(*only), true)]),
            parents => {
                let lower: Vec<String> = parents
                    .iter()
                    .map(|p| self.upper(*p).display().to_string())
                    .collect();
                let mut options = Vec::new();
                if self.index_option {
                    options.push("index=off".to_owned());
                }
                if view {
                    options.push("ro".to_owned());
                } else {
                    options.push(format!("upperdir={}", self.upper(obj.id).display()));
                    options.push(format!(
                        "workdir={}",
                        self.path(obj.id).join("work").display()
                    ));
                }
                options.push(format!("lowerdir={}", lower.join(":")));
                Ok(vec![MountSpec {
                    fstype: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }])
            }
        }
    }

    fn usage(&self, obj: &Object<'_>) -> Result<Usage> {
        disk_usage(&self.upper(obj.id))
    }

    fn list(&self) -> Result<Vec<SnapshotId>> {
        ids_in(&self.dir)
    }

    fn upper_dir(&self, obj: &Object<'_>) -> Option<PathBuf> {
        Some(self.upper(obj.id))
    }
}
