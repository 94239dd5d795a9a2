//! The btrfs backend: every active snapshot and view is a btrfs subvolume,
//! every committed snapshot a read-only subvolume snapshot.
//!
//! Kernel: btrfs (subvolume create/snapshot/destroy ioctls, via Debian's
//! libbtrfsutil through the `libbtrfsutil` crate). The root must be a
//! directory on btrfs. Layout: `ROOT/active/ID`, `ROOT/view/ID` (read-only
//! snapshots), `ROOT/snapshots/ID` (committed, read-only). Commit snapshots
//! `active/ID` read-only to `snapshots/ID` and deletes the active subvolume,
//! which is idempotent after a crash. Usage: when quotas are enabled on the
//! filesystem, the size is the subvolume qgroup's *exclusive* bytes (read
//! from `/sys/fs/btrfs/FSID/qgroups/0_ID` after a sync), which excludes what
//! is shared with the parent; otherwise it is estimated by comparing the
//! tree with the parent's. Inodes are always counted by that comparison.
//! Size bounds: with quotas on, [`crate::types::MAX_SIZE_LABEL`] on
//! `prepare` sets a qgroup limit on what the new subvolume references
//! (`btrfs qgroup limit`, as Docker's btrfs driver does for `--storage-opt
//! size`), so its writes fail with EDQUOT past it; with quotas off the
//! label is refused, saying how to turn them on.
//!
//! Changed paths (for a diff against the parent): `btrfs send --no-data -p
//! PARENT SNAPSHOT | btrfs receive --dump` (btrfs-progs 4.x+, tested with
//! 6.2; root), parsed by [`dump`]; send needs both subvolumes read-only,
//! so an active snapshot is first snapshotted read-only to `ROOT/diff/ID`
//! (removed afterwards; a crash leaves it where [`Backend::remove`] and the
//! next diff of that snapshot delete it, and [`Backend::list`] reports it,
//! so cleanup reclaims it once the snapshot is gone). Send names one path
//! per changed inode, so the other names of a changed hard-linked file are
//! looked up with `btrfs inspect-internal inode-resolve`. Whatever fails or
//! looks unexpected there makes the diff compare the trees instead.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub mod dump;
pub mod ops;

pub use ops::{BtrfsOps, Qgroup, SystemBtrfs};

use crate::core::{Backend, Object, Snapshots};
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::usage_against;
use crate::mount::MountSpec;
use crate::store::SnapshotId;
use crate::types::{size_bound, Bytes, Capabilities, Kind, Labels, Usage};

use super::naive::ids_in;

/// The btrfs backend, over btrfs as [`BtrfsOps`] reaches it.
#[derive(Debug)]
pub struct Btrfs<B: BtrfsOps = SystemBtrfs> {
    root: PathBuf,
    qgroups: bool,
    ops: B,
}

impl Btrfs {
    /// A backend at `root`, which must be on btrfs
    /// ([`ErrorKind::BackendUnavailable`] otherwise).
    pub fn new(root: &Path) -> Result<Btrfs> {
        Btrfs::with_ops(root, SystemBtrfs)
    }

    /// Opens a btrfs snapshotter at `root`.
    pub fn open(root: &Path) -> Result<Snapshots<Btrfs>> {
        Snapshots::open(root, Btrfs::new(root)?)
    }
}

impl<B: BtrfsOps> Btrfs<B> {
    /// A backend at `root` over `ops`.
    pub fn with_ops(root: &Path, ops: B) -> Result<Btrfs<B>> {
        fs::create_dir_all(root).map_err(|e| Error::io("open", root, e))?;
        if !ops.on_btrfs(root)? {
            return Err(Error::new(ErrorKind::BackendUnavailable, "open")
                .path(root)
                .detail("btrfs: root is not on btrfs; mount a btrfs filesystem there"));
        }
        for sub in ["active", "view", "snapshots", "diff"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| Error::io("open", &d, e))?;
        }
        let qgroups = ops.quotas_enabled(root)?;
        Ok(Btrfs {
            root: root.to_owned(),
            qgroups,
            ops,
        })
    }

    /// Makes the subvolume of a new snapshot at `path`: empty, or a
    /// snapshot of its parent (read-only for views).
    fn make(&self, obj: &Object<'_>, path: &Path) -> Result<()> {
        match obj.parents.first() {
            None => {
                self.ops.create_subvolume(path)?;
                if obj.kind == Kind::View {
                    self.ops.set_read_only(path)?;
                }
                Ok(())
            }
            Some(p) => {
                let src = self.path(Kind::Committed, *p);
                self.ops.snapshot(&src, path, obj.kind == Kind::View)
            }
        }
    }

    /// Where the read-only snapshot of an active snapshot lives while it is
    /// being sent.
    fn diff_path(&self, id: SnapshotId) -> PathBuf {
        self.root.join("diff").join(id.to_string())
    }

    /// [`Backend::changed_paths`], failing on errors.
    fn list_changes(&self, obj: &Object<'_>) -> Result<Option<Vec<PathBuf>>> {
        let Some(parent) = obj.parents.first() else {
            return Ok(None);
        };
        let parent = self.path(Kind::Committed, *parent);
        if !self.ops.is_subvolume(&parent) {
            tracing::debug!(
                "btrfs: parent {} is not a subvolume; comparing trees",
                parent.display()
            );
            return Ok(None);
        }
        let _temp;
        let source = match obj.kind {
            Kind::Active => {
                let t = TempSnapshot::take(
                    &self.ops,
                    &self.path(Kind::Active, obj.id),
                    self.diff_path(obj.id),
                )?;
                let p = t.path.clone();
                _temp = t;
                p
            }
            kind => self.path(kind, obj.id),
        };
        let paths = match self.ops.send_dump(&parent, &source)? {
            Some(p) => p,
            None => return Ok(None),
        };
        Ok(with_hard_links(&self.ops, &source, paths)?.map(|p| p.into_iter().collect()))
    }

    fn path(&self, kind: Kind, id: SnapshotId) -> PathBuf {
        let dir = match kind {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "snapshots",
        };
        self.root.join(dir).join(id.to_string())
    }
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

impl<B: BtrfsOps> Backend for Btrfs<B> {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_level: false,
            exact_usage: self.qgroups,
            max_size_label: false,
            rename_lower_dirs: true,
            cheap_commit: false,
            bounds_size: self.qgroups,
            counts_inodes: true,
            lists_changes: true,
        }
    }

    fn why_unbounded(&self) -> String {
        format!(
            "btrfs quotas are off on {0}: run `btrfs quota enable {0}` to bound snapshot sizes",
            self.root.display()
        )
    }

    fn create(&self, obj: &Object<'_>, labels: &Labels) -> Result<()> {
        let path = self.path(obj.kind, obj.id);
        let bound = size_bound(&obj.id.to_string(), obj.kind, labels)?;
        self.make(obj, &path)?;
        if let Some(bytes) = bound {
            self.ops.qgroup_limit(&path, bytes.0)?;
        }
        Ok(())
    }
    fn commit(&self, obj: &Object<'_>) -> Result<()> {
        let src = self.path(Kind::Active, obj.id);
        let dst = self.path(Kind::Committed, obj.id);
        if !exists(&dst) {
            self.ops.snapshot(&src, &dst, true)?;
        }
        if exists(&src) {
            self.ops.delete_subvolume(&src)?;
        }
        Ok(())
    }

    fn uncommit(&self, obj: &Object<'_>) -> Result<()> {
        let src = self.path(Kind::Active, obj.id);
        let dst = self.path(Kind::Committed, obj.id);
        // The commit may have deleted the active subvolume already: a
        // writable snapshot of the committed one brings it back.
        if !exists(&src) && exists(&dst) {
            self.ops.snapshot(&dst, &src, false)?;
        }
        if exists(&dst) {
            self.ops.delete_subvolume(&dst)?;
        }
        Ok(())
    }

    fn remove(&self, id: SnapshotId) -> Result<()> {
        let paths = [Kind::Active, Kind::View, Kind::Committed].map(|k| self.path(k, id));
        for p in std::iter::once(self.diff_path(id)).chain(paths) {
            if exists(&p) {
                self.ops.delete_subvolume(&p)?;
            }
        }
        Ok(())
    }

    fn mounts(&self, obj: &Object<'_>) -> Result<Vec<MountSpec>> {
        Ok(vec![MountSpec::bind(
            &self.path(obj.kind, obj.id),
            obj.kind == Kind::View,
        )])
    }

    fn usage(&self, obj: &Object<'_>) -> Result<Usage> {
        let path = self.path(obj.kind, obj.id);
        let parent = obj.parents.first().map(|p| self.path(Kind::Committed, *p));
        let mut usage = usage_against(&path, parent.as_deref())?;
        if self.qgroups {
            let id = self.ops.subvolume_id(&path)?;
            // Qgroup counters are updated when a transaction commits.
            self.ops.sync(&path)?;
            let qgroup = self.ops.qgroup(&path, id)?.ok_or_else(|| {
                Error::new(ErrorKind::Io, "usage")
                    .path(&path)
                    .detail(format!(
                        "no qgroup 0/{id} (quotas disabled while open?); run btrfs quota rescan"
                    ))
            })?;
            let exclusive = qgroup.exclusive;
            usage.size = Bytes(exclusive);
        }
        Ok(usage)
    }

    fn list(&self) -> Result<Vec<SnapshotId>> {
        let mut out = Vec::new();
        for sub in ["active", "view", "snapshots", "diff"] {
            out.extend(ids_in(&self.root.join(sub))?);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn changed_paths(&self, obj: &Object<'_>) -> Result<Option<Vec<PathBuf>>> {
        // Only an optimisation: whatever goes wrong, the diff compares trees.
        Ok(self.list_changes(obj).unwrap_or_else(|e| {
            tracing::debug!(
                "btrfs: cannot list changes of {}: {e}; comparing trees",
                obj.id
            );
            None
        }))
    }
}

/// A read-only snapshot for `btrfs send`, deleted on drop.
struct TempSnapshot<'a, B: BtrfsOps> {
    ops: &'a B,
    path: PathBuf,
}

impl<'a, B: BtrfsOps> TempSnapshot<'a, B> {
    fn take(ops: &'a B, src: &Path, path: PathBuf) -> Result<TempSnapshot<'a, B>> {
        if exists(&path) {
            // Left by a crash during an earlier diff.
            ops.delete_subvolume(&path)?;
        }
        ops.snapshot(src, &path, true)?;
        Ok(TempSnapshot { ops, path })
    }
}

impl<B: BtrfsOps> Drop for TempSnapshot<'_, B> {
    fn drop(&mut self) {
        if let Err(e) = self.ops.delete_subvolume(&self.path) {
            tracing::warn!(
                "cannot delete temporary snapshot {} (removing the snapshot or cleanup retries): {e}",
                self.path.display()
            );
        }
    }
}

/// Adds the other names of every changed non-directory with several
/// links (send names only one of them) via `btrfs inspect-internal
/// inode-resolve`; None (logged) when a name cannot be confirmed.
fn with_hard_links(
    ops: &impl BtrfsOps,
    source: &Path,
    mut paths: BTreeSet<PathBuf>,
) -> Result<Option<BTreeSet<PathBuf>>> {
    let mut inodes = BTreeSet::new();
    for p in &paths {
        if let Ok(md) = fs::symlink_metadata(source.join(p)) {
            if !md.is_dir() && md.nlink() > 1 {
                inodes.insert((md.ino(), md.nlink()));
            }
        }
    }
    for (ino, nlink) in inodes {
        let Some(lines) = ops.inode_paths(source, ino)? else {
            return Ok(None);
        };
        let mut prefix = source.as_os_str().as_bytes().to_vec();
        prefix.push(b'/');
        let mut found = 0;
        for line in &lines {
            // Names with a newline break the output: unconfirmed.
            let rel = line
                .strip_prefix(prefix.as_slice())
                .map(|r| PathBuf::from(std::ffi::OsStr::from_bytes(r)));
            match rel.filter(|r| fs::symlink_metadata(source.join(r)).is_ok_and(|m| m.ino() == ino))
            {
                Some(r) => {
                    paths.insert(r);
                    found += 1;
                }
                None => {
                    tracing::debug!(
                        "btrfs inode-resolve {ino}: unconfirmed name {:?}; comparing trees",
                        String::from_utf8_lossy(line)
                    );
                    return Ok(None);
                }
            }
        }
        if found != nlink {
            tracing::debug!(
                "btrfs inode-resolve {ino}: {found} names for {nlink} links; comparing trees"
            );
            return Ok(None);
        }
    }
    Ok(Some(paths))
}

#[cfg(test)]
mod tests;
