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

use std::fs;
use std::path::{Path, PathBuf};

use crate::core::{Backend, Object, Snapshots};
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::disk_usage;
use crate::mount::MountSpec;
use crate::store::SnapshotId;
use crate::types::{Capabilities, Kind, Labels, Usage};

use super::naive::{ids_in, mkdir_0755, remove_tree};

/// The overlay backend.
#[derive(Debug)]
pub struct Overlay {
    dir: PathBuf,
    redirect_dir: bool,
    index_option: bool,
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

impl Backend for Overlay {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_level: false,
            exact_usage: true,
            max_size_label: false,
            rename_lower_dirs: self.redirect_dir,
            cheap_commit: true,
            bounds_size: false,
            counts_inodes: true,
            lists_changes: false,
        }
    }

    fn create(&mut self, obj: &Object<'_>, _labels: &Labels) -> Result<()> {
        let path = self.path(obj.id);
        fs::create_dir(&path).map_err(|e| Error::io("mkdir", &path, e))?;
        mkdir_0755(&path.join("fs"))?;
        let work = path.join("work");
        fs::create_dir(&work).map_err(|e| Error::io("mkdir", &work, e))
    }

    fn commit(&mut self, _obj: &Object<'_>) -> Result<()> {
        Ok(())
    }

    fn remove(&mut self, id: SnapshotId) -> Result<()> {
        remove_tree(&self.path(id))
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
