//! Snapshot work beyond the snapshotter API that `thinbox snapshot` needs:
//! mounting a snapshot's mounts on a directory, and writing a snapshot's
//! changes as a layer tar without leaving a half-written file.

use std::io::Write;
use std::path::Path;

use snapshotter::layer::DiffStats;
use snapshotter::{Key, MountSpec};

use crate::engine::Engine;
use crate::error::{Error, Result};

/// Where a diff goes.
pub enum DiffTarget<'a> {
    /// A stream (stdout, say), flushed at the end.
    Stream(&'a mut dyn Write),
    /// A file, written beside it and renamed into place.
    File(&'a Path),
}

impl std::fmt::Debug for DiffTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiffTarget::Stream(_) => f.write_str("Stream"),
            DiffTarget::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// Mounts `mounts` on `dir`, making `dir` first.
pub fn mount_on(mounts: &[MountSpec], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create mount point", dir, e))?;
    Ok(snapshotter::mount_all(mounts, dir)?)
}

impl Engine {
    /// Writes the changes of snapshot `key` against its parent as a layer
    /// tar to `target`.
    pub fn diff_snapshot(&self, key: &Key, target: DiffTarget<'_>) -> Result<DiffStats> {
        let scratch = tempfile::Builder::new()
            .prefix("diff-")
            .tempdir_in(self.scratch_dir()?)
            .map_err(|e| Error::io("cannot create scratch directory in", self.root(), e))?;
        let sn = self.snapshotter();
        match target {
            DiffTarget::Stream(w) => {
                let s = snapshotter::layer::diff_snapshot(sn, key, scratch.path(), &mut *w)?;
                w.flush()
                    .map_err(|e| Error::io("cannot write", Path::new("-"), e))?;
                Ok(s)
            }
            DiffTarget::File(out) => {
                // Written beside OUT and renamed into place: no half-written layer.
                let dir = out
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let mut tmp = tempfile::Builder::new()
                    .prefix(".thinbox-diff-")
                    .tempfile_in(dir)
                    .map_err(|e| Error::io("cannot create a file in", dir, e))?;
                let s =
                    snapshotter::layer::diff_snapshot(sn, key, scratch.path(), tmp.as_file_mut())?;
                tmp.as_file()
                    .sync_all()
                    .map_err(|e| Error::io("cannot write", out, e))?;
                tmp.persist(out)
                    .map_err(|e| Error::io("cannot write", out, e.error))?;
                Ok(s)
            }
        }
    }
}
