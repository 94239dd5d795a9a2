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
//! with `btrfs --format json qgroup show --raw`, btrfs-progs 6.1+, after a
//! sync), which excludes what is shared with the parent; otherwise it is
//! estimated by comparing the tree with the parent's. Inodes are always
//! counted by that comparison.

use std::fs;
use std::path::{Path, PathBuf};

use crate::core::{Backend, Object, Snapshots};
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::usage_against;
use crate::mount::MountSpec;
use crate::store::SnapshotId;
use crate::types::{Bytes, Capabilities, Kind, Labels, Usage};

use super::naive::ids_in;

/// `BTRFS_SUPER_MAGIC` from linux/magic.h.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

/// The btrfs backend.
#[derive(Debug)]
pub struct Btrfs {
    root: PathBuf,
    qgroups: bool,
}

/// `btrfs --format json qgroup show --raw PATH`, parsed; None when quotas
/// are off (the command fails).
fn qgroup_show(path: &Path) -> Result<Option<serde_json::Value>> {
    let out = std::process::Command::new("btrfs")
        .args(["--format", "json", "qgroup", "show", "--raw"])
        .arg(path)
        .output()
        .map_err(|e| {
            Error::new(ErrorKind::BackendUnavailable, "usage")
                .path(path)
                .detail("btrfs: cannot run the btrfs tool; install btrfs-progs")
                .source(e)
        })?;
    if !out.status.success() {
        return Ok(None);
    }
    serde_json::from_slice(&out.stdout).map(Some).map_err(|e| {
        Error::new(ErrorKind::Io, "usage")
            .path(path)
            .detail("unexpected output from btrfs qgroup show")
            .source(e)
    })
}

/// The exclusive bytes of qgroup `0/ID` in `btrfs qgroup show` JSON.
fn exclusive_of(show: &serde_json::Value, subvol_id: u64) -> Option<u64> {
    let want = format!("0/{subvol_id}");
    show.get("qgroup-show")?
        .as_array()?
        .iter()
        .find(|q| q.get("qgroupid").and_then(|v| v.as_str()) == Some(want.as_str()))?
        .get("exclusive")?
        .as_str()?
        .parse()
        .ok()
}

fn btrfs_err(op: &'static str, path: &Path, e: libbtrfsutil::Error) -> Error {
    Error::new(ErrorKind::Io, op).path(path).source(e)
}

impl Btrfs {
    /// A backend at `root`, which must be on btrfs
    /// ([`ErrorKind::BackendUnavailable`] otherwise).
    pub fn new(root: &Path) -> Result<Btrfs> {
        fs::create_dir_all(root).map_err(|e| Error::io("open", root, e))?;
        let st = nix::sys::statfs::statfs(root).map_err(|e| Error::sys("statfs", root, e))?;
        #[allow(clippy::unnecessary_cast)]
        if st.filesystem_type().0 as i64 != BTRFS_SUPER_MAGIC {
            return Err(Error::new(ErrorKind::BackendUnavailable, "open")
                .path(root)
                .detail("btrfs: root is not on btrfs; mount a btrfs filesystem there"));
        }
        for sub in ["active", "view", "snapshots"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| Error::io("open", &d, e))?;
        }
        let qgroups = qgroup_show(root)?.is_some();
        Ok(Btrfs {
            root: root.to_owned(),
            qgroups,
        })
    }

    /// Opens a btrfs snapshotter at `root`.
    pub fn open(root: &Path) -> Result<Snapshots<Btrfs>> {
        Snapshots::open(root, Btrfs::new(root)?)
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

impl Backend for Btrfs {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_level: false,
            exact_usage: self.qgroups,
            max_size_label: false,
            rename_lower_dirs: true,
            cheap_commit: false,
            counts_inodes: true,
        }
    }

    fn create(&mut self, obj: &Object<'_>, _labels: &Labels) -> Result<()> {
        let path = self.path(obj.kind, obj.id);
        match obj.parents.first() {
            None => {
                libbtrfsutil::create_subvolume(&path)
                    .map_err(|e| btrfs_err("create subvolume", &path, e))?;
                if obj.kind == Kind::View {
                    libbtrfsutil::set_subvolume_read_only(&path, true)
                        .map_err(|e| btrfs_err("set read-only", &path, e))?;
                }
                Ok(())
            }
            Some(p) => {
                let src = self.path(Kind::Committed, *p);
                libbtrfsutil::CreateSnapshotOptions::new()
                    .readonly(obj.kind == Kind::View)
                    .create(&src, &path)
                    .map_err(|e| btrfs_err("snapshot", &path, e))
            }
        }
    }

    fn commit(&mut self, obj: &Object<'_>) -> Result<()> {
        let src = self.path(Kind::Active, obj.id);
        let dst = self.path(Kind::Committed, obj.id);
        if !exists(&dst) {
            libbtrfsutil::CreateSnapshotOptions::new()
                .readonly(true)
                .create(&src, &dst)
                .map_err(|e| btrfs_err("snapshot", &dst, e))?;
        }
        if exists(&src) {
            libbtrfsutil::delete_subvolume(&src)
                .map_err(|e| btrfs_err("delete subvolume", &src, e))?;
        }
        Ok(())
    }

    fn remove(&mut self, id: SnapshotId) -> Result<()> {
        for kind in [Kind::Active, Kind::View, Kind::Committed] {
            let p = self.path(kind, id);
            if exists(&p) {
                libbtrfsutil::delete_subvolume(&p)
                    .map_err(|e| btrfs_err("delete subvolume", &p, e))?;
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
            let id = libbtrfsutil::subvolume_id(&path).map_err(|e| btrfs_err("usage", &path, e))?;
            // Qgroup counters are updated when a transaction commits.
            libbtrfsutil::sync(&path).map_err(|e| btrfs_err("sync", &path, e))?;
            let show = qgroup_show(&path)?.ok_or_else(|| {
                Error::new(ErrorKind::Io, "usage")
                    .path(&path)
                    .detail("btrfs quotas were disabled while the snapshotter was open")
            })?;
            let exclusive = exclusive_of(&show, id).ok_or_else(|| {
                Error::new(ErrorKind::Io, "usage")
                    .path(&path)
                    .detail(format!("no qgroup 0/{id}; run btrfs quota rescan"))
            })?;
            usage.size = Bytes(exclusive);
        }
        Ok(usage)
    }

    fn list(&self) -> Result<Vec<SnapshotId>> {
        let mut out = Vec::new();
        for sub in ["active", "view", "snapshots"] {
            out.extend(ids_in(&self.root.join(sub))?);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_from_qgroup_json() {
        let show: serde_json::Value = serde_json::from_str(
            r#"{"__header":{"version":"1"},"qgroup-show":[
                {"qgroupid":"0/5","referenced":"16384","exclusive":"16384","path":""},
                {"qgroupid":"0/256","referenced":"1019904","exclusive":"65536","path":"a"}]}"#,
        )
        .unwrap();
        assert_eq!(exclusive_of(&show, 256), Some(65536));
        assert_eq!(exclusive_of(&show, 257), None);
    }
}
