//! The naive backend: every snapshot is a directory holding a full copy of
//! its parent's tree. Works on any filesystem with no kernel feature beyond
//! bind mounts; the file-level baseline for benchmarks.
//!
//! Layout: `ROOT/snapshots/ID/`. Mounts are binds (read-only for views).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::core::{Backend, Object, Snapshots};
use crate::error::{Error, Result};
use crate::fsutil::{copy_tree, usage_against};
use crate::mount::MountSpec;
use crate::store::SnapshotId;
use crate::types::{Capabilities, Kind, Labels, Usage};

/// The naive backend.
#[derive(Debug)]
pub struct Naive {
    dir: PathBuf,
}

impl Naive {
    /// A backend keeping its copies under `ROOT/snapshots`.
    pub fn new(root: &Path) -> Result<Naive> {
        let dir = root.join("snapshots");
        fs::create_dir_all(&dir).map_err(|e| Error::io("open", &dir, e))?;
        Ok(Naive { dir })
    }

    /// Opens a naive snapshotter at `root`.
    pub fn open(root: &Path) -> Result<Snapshots<Naive>> {
        Snapshots::open(root, Naive::new(root)?)
    }

    fn path(&self, id: SnapshotId) -> PathBuf {
        self.dir.join(id.to_string())
    }
}

/// Ids of the entries of `dir` whose name is a number.
pub(crate) fn ids_in(dir: &Path) -> Result<Vec<SnapshotId>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
        let e = e.map_err(|e| Error::io("list", dir, e))?;
        if let Some(id) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(SnapshotId(id));
        }
    }
    Ok(out)
}

/// Removes `path` and everything below it; absent is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Creates directory `path` with mode 0755 whatever the umask.
pub(crate) fn mkdir_0755(path: &Path) -> Result<()> {
    fs::create_dir(path).map_err(|e| Error::io("mkdir", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io("chmod", path, e))
}

impl Backend for Naive {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_level: false,
            exact_usage: false,
            max_size_label: false,
            rename_lower_dirs: true,
            cheap_commit: true,
            bounds_size: false,
            counts_inodes: true,
            lists_changes: false,
        }
    }

    fn create(&self, obj: &Object<'_>, _labels: &Labels) -> Result<()> {
        let path = self.path(obj.id);
        mkdir_0755(&path)?;
        if let Some(parent) = obj.parents.first() {
            copy_tree(&self.path(*parent), &path)?;
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
        remove_tree(&self.path(id))
    }

    fn mounts(&self, obj: &Object<'_>) -> Result<Vec<MountSpec>> {
        Ok(vec![MountSpec::bind(
            &self.path(obj.id),
            obj.kind == Kind::View,
        )])
    }

    fn usage(&self, obj: &Object<'_>) -> Result<Usage> {
        let parent = obj.parents.first().map(|p| self.path(*p));
        usage_against(&self.path(obj.id), parent.as_deref())
    }

    fn list(&self) -> Result<Vec<SnapshotId>> {
        ids_in(&self.dir)
    }
}
