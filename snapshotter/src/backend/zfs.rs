//! The zfs backend: a dataset per active snapshot or view, a ZFS snapshot
//! (`@committed`) per commit, a clone per child; legacy mountpoints, so the
//! caller mounts (`-t zfs DATASET`). Usage is the dataset's `used`
//! property, which for a clone excludes what it shares with its origin.
//! [`crate::types::MAX_SIZE_LABEL`] on `prepare` sets the clone's
//! `refquota` (what it may reference, shared data included, as a device
//! size would), so writes past it fail with EDQUOT and `df` inside shows it.
//!
//! Needs the ZFS module (`/dev/zfs`) and the `zfs` tool, driven through its
//! parsable output (`-H -p`) and exit status, as containerd does; the
//! [`ZfsCli`] trait is the seam (a recording fake tests the command
//! sequences without ZFS). Layout: `DATASET/ID` and `DATASET/ID@committed`,
//! under a parent dataset the caller creates.
//!
//! Changed paths (for a diff against the parent): `zfs diff -H -F
//! PARENT@committed TO`, parsed by [`diff`]. TO is `ID@committed` for a
//! committed snapshot and a temporary `ID@thinbox-diff` otherwise (a
//! diff against the live dataset missed added files with OpenZFS 2.1 on
//! Linux 6.1; the snapshot is destroyed afterwards, by the next diff or
//! with the dataset after a crash). `zfs diff` reads both through the
//! `.zfs` directories of mounted datasets, so the parent's dataset and, if
//! nobody has it mounted, the snapshot's own are mounted under
//! `$TMPDIR/thinbox-zfs-diff-PID-ID` for the duration (mounts a process
//! that died there left are unmounted when the backend is next opened).
//! It names one path
//! per changed file, so when a changed file has several links, its other
//! names are found by a walk of the mounted snapshot that only stats.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mount::MountGuard;

pub mod diff;

use crate::core::{Backend, Object, Snapshots};
use crate::error::{Error, ErrorKind, Result};
use crate::mount::MountSpec;
use crate::store::SnapshotId;
use crate::types::{size_bound, Bytes, Capabilities, Kind, Labels, Usage};

/// Runs `zfs` subcommands.
pub trait ZfsCli: Send + Sync + std::fmt::Debug {
    /// Whether the module and the tool are there.
    fn available(&self) -> bool;
    /// Runs `zfs ARGS`: `Ok(Some(stdout))` on success, `Ok(None)` when zfs
    /// exits non-zero (for example because a dataset does not exist), Err
    /// when it cannot run.
    fn run(&self, args: &[&str]) -> Result<Option<String>>;
}

/// The real `zfs` command.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemZfs;

impl ZfsCli for SystemZfs {
    fn available(&self) -> bool {
        Path::new("/dev/zfs").exists()
    }

    fn run(&self, args: &[&str]) -> Result<Option<String>> {
        let out = Command::new("zfs").args(args).output().map_err(|e| {
            Error::new(ErrorKind::BackendUnavailable, "zfs")
                .detail("zfs: cannot run the zfs tool; install zfsutils-linux")
                .source(e)
        })?;
        if out.status.success() {
            Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
        } else {
            tracing::debug!(
                "zfs {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(None)
        }
    }
}

/// The zfs backend.
#[derive(Debug)]
pub struct Zfs<C: ZfsCli = SystemZfs> {
    dataset: String,
    cli: C,
}

const SNAP: &str = "committed";
/// The temporary snapshot an active snapshot or view is diffed from.
const DIFF_SNAP: &str = "thinbox-diff";

impl Zfs<SystemZfs> {
    /// Opens a zfs snapshotter with metadata at `root` and datasets under
    /// `dataset`.
    pub fn open(root: &Path, dataset: &str) -> Result<Snapshots<Zfs<SystemZfs>>> {
        Snapshots::open(root, Zfs::new(dataset, SystemZfs)?)
    }
}

impl<C: ZfsCli> Zfs<C> {
    /// A backend keeping its datasets under `dataset` (which must exist).
    pub fn new(dataset: &str, cli: C) -> Result<Zfs<C>> {
        if !cli.available() {
            return Err(Error::new(ErrorKind::BackendUnavailable, "open")
                .key(dataset)
                .detail("zfs: module not loaded; modprobe zfs"));
        }
        if dataset.is_empty() || dataset.contains('@') || dataset.starts_with('-') {
            return Err(Error::new(ErrorKind::InvalidArgument, "open")
                .key(dataset)
                .detail("not a dataset name"));
        }
        if cli
            .run(&["list", "-H", "-p", "-o", "name", dataset])?
            .is_none()
        {
            return Err(Error::new(ErrorKind::BackendUnavailable, "open")
                .key(dataset)
                .detail("zfs: dataset does not exist; create it first"));
        }
        unmount_stale_diff_mounts(dataset);
        Ok(Zfs {
            dataset: dataset.to_owned(),
            cli,
        })
    }

    fn name(&self, id: SnapshotId) -> String {
        format!("{}/{id}", self.dataset)
    }

    fn snap(&self, id: SnapshotId) -> String {
        format!("{}/{id}@{SNAP}", self.dataset)
    }

    fn exists(&self, name: &str, kind: &str) -> Result<bool> {
        Ok(self
            .cli
            .run(&["list", "-H", "-p", "-o", "name", "-t", kind, name])?
            .is_some())
    }

    fn must(&self, op: &'static str, args: &[&str]) -> Result<String> {
        self.cli.run(args)?.ok_or_else(|| {
            Error::new(ErrorKind::Io, op).detail(format!("zfs {} failed", args.join(" ")))
        })
    }
}

impl<C: ZfsCli> Backend for Zfs<C> {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_level: false,
            exact_usage: true,
            max_size_label: false,
            rename_lower_dirs: true,
            cheap_commit: false,
            bounds_size: true,
            counts_inodes: false,
            lists_changes: true,
        }
    }

    fn create(&self, obj: &Object<'_>, labels: &Labels) -> Result<()> {
        let name = self.name(obj.id);
        let quota = size_bound(&name, obj.kind, labels)?.map(|b| format!("refquota={}", b.0));
        let mut args = vec!["-o", "mountpoint=legacy"];
        if obj.kind == Kind::View {
            args.extend(["-o", "readonly=on"]);
        }
        if let Some(q) = &quota {
            args.extend(["-o", q.as_str()]);
        }
        match obj.parents.first() {
            None => {
                let mut a = vec!["create"];
                a.extend(&args);
                a.push(&name);
                self.must("create", &a)?;
            }
            Some(p) => {
                let origin = self.snap(*p);
                let mut a = vec!["clone"];
                a.extend(&args);
                a.push(&origin);
                a.push(&name);
                self.must("clone", &a)?;
            }
        }
        Ok(())
    }

    fn commit(&self, obj: &Object<'_>) -> Result<()> {
        let snap = self.snap(obj.id);
        if !self.exists(&snap, "snapshot")? {
            self.must("commit", &["snapshot", &snap])?;
        }
        self.must("commit", &["set", "readonly=on", &self.name(obj.id)])?;
        Ok(())
    }

    fn uncommit(&self, obj: &Object<'_>) -> Result<()> {
        // No clone of it exists yet: the commit never finished.
        self.must("uncommit", &["set", "readonly=off", &self.name(obj.id)])?;
        let snap = self.snap(obj.id);
        if self.exists(&snap, "snapshot")? {
            self.must("uncommit", &["destroy", &snap])?;
        }
        Ok(())
    }

    fn remove(&self, id: SnapshotId) -> Result<()> {
        let name = self.name(id);
        if self.exists(&name, "filesystem")? {
            // -r: the dataset and its own @committed snapshot; never -R,
            // which would take clones (children) with it.
            self.must("remove", &["destroy", "-r", &name])?;
        }
        Ok(())
    }

    fn mounts(&self, obj: &Object<'_>) -> Result<Vec<MountSpec>> {
        Ok(vec![MountSpec {
            fstype: "zfs".into(),
            source: self.name(obj.id),
            options: vec![if obj.kind == Kind::View { "ro" } else { "rw" }.into()],
        }])
    }

    fn usage(&self, obj: &Object<'_>) -> Result<Usage> {
        let name = self.name(obj.id);
        let out = self.must("usage", &["get", "-H", "-p", "-o", "value", "used", &name])?;
        let used: u64 = out.trim().parse().map_err(|_| {
            Error::new(ErrorKind::Io, "usage")
                .key(&name)
                .detail(format!("unexpected zfs output {:?}", out.trim()))
        })?;
        Ok(Usage {
            size: Bytes(used),
            inodes: 0,
        })
    }

    fn list(&self) -> Result<Vec<SnapshotId>> {
        let out = self.must(
            "list",
            &[
                "list",
                "-H",
                "-p",
                "-o",
                "name",
                "-t",
                "filesystem",
                "-r",
                "-d",
                "1",
                &self.dataset,
            ],
        )?;
        let prefix = format!("{}/", self.dataset);
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|id| id.parse().ok().map(SnapshotId))
            .collect())
    }

    fn changed_paths(&self, obj: &Object<'_>) -> Result<Option<Vec<PathBuf>>> {
        // Only an optimisation: whatever goes wrong, the diff compares trees.
        Ok(self.list_changes(obj).unwrap_or_else(|e| {
            tracing::debug!(
                "zfs: cannot list changes of {}: {e}; comparing trees",
                obj.id
            );
            None
        }))
    }
}

impl<C: ZfsCli> Zfs<C> {
    /// [`Backend::changed_paths`], failing on errors.
    fn list_changes(&self, obj: &Object<'_>) -> Result<Option<Vec<PathBuf>>> {
        let Some(parent) = obj.parents.first() else {
            return Ok(None);
        };
        let origin = self.snap(*parent);
        if !self.exists(&origin, "snapshot")? {
            tracing::debug!("zfs: parent snapshot {origin} missing; comparing trees");
            return Ok(None);
        }
        let name = self.name(obj.id);
        let temp = format!("{name}@{DIFF_SNAP}");
        let to = if obj.kind == Kind::Committed {
            self.snap(obj.id)
        } else {
            if self.exists(&temp, "snapshot")? {
                // Left by a crash during an earlier diff.
                self.must("diff", &["destroy", &temp])?;
            }
            self.must("diff", &["snapshot", &temp])?;
            temp.clone()
        };
        let result = self.diff_mounted(obj, *parent, &origin, &to);
        if obj.kind != Kind::Committed {
            if let Err(e) = self.must("diff", &["destroy", &temp]) {
                tracing::warn!("cannot destroy {temp} (the next diff or removal retries): {e}");
            }
        }
        result
    }

    /// Runs `zfs diff ORIGIN TO` with both datasets mounted (mounting
    /// what nobody has mounted) and reads it.
    fn diff_mounted(
        &self,
        obj: &Object<'_>,
        parent: SnapshotId,
        origin: &str,
        to: &str,
    ) -> Result<Option<Vec<PathBuf>>> {
        let name = self.name(obj.id);
        let from_ds = self.name(parent);
        let scratch = std::env::temp_dir().join(format!(
            "{}{}-{}",
            diff::DIFF_MOUNT_PREFIX,
            std::process::id(),
            obj.id
        ));
        let mut guards = Vec::new();
        let mounted = |ds: &str| -> Result<Vec<PathBuf>> {
            let m = kernfmt::MountInfo::read_self().map_err(|e| {
                Error::new(ErrorKind::Io, "diff")
                    .detail("cannot read the mount table")
                    .source(e)
            })?;
            Ok(diff::mount_targets(&m, ds))
        };
        let result = (|| {
            for (ds, sub, rw) in [
                (&from_ds, "from", false),
                (&name, "to", obj.kind == Kind::Active),
            ] {
                if !mounted(ds)?.is_empty() {
                    continue;
                }
                let target = scratch.join(sub);
                std::fs::create_dir_all(&target).map_err(|e| Error::io("diff", &target, e))?;
                let spec = MountSpec {
                    fstype: "zfs".into(),
                    source: ds.clone(),
                    options: vec![if rw { "rw" } else { "ro" }.into()],
                };
                guards.push(MountGuard::new(&[spec], &target)?);
            }
            let Some(out) = self.cli.run(&["diff", "-H", "-F", origin, to])? else {
                tracing::debug!("zfs diff {origin} {to} failed; comparing trees");
                return Ok(None);
            };
            let mountpoints = mounted(&name)?;
            let paths = match diff::parse(out.as_bytes(), &mountpoints) {
                Ok(p) => p,
                Err(s) => {
                    tracing::debug!("{s}; comparing trees");
                    return Ok(None);
                }
            };
            let Some(root) = mountpoints.first() else {
                return Ok(None);
            };
            with_hard_links(root, paths).map(|p| Some(p.into_iter().collect()))
        })();
        for g in guards.into_iter().rev() {
            if let Err(e) = g.unmount() {
                tracing::warn!(
                    "cannot unmount a diff mount under {}: {e}",
                    scratch.display()
                );
            }
        }
        let _ = std::fs::remove_dir(scratch.join("from"));
        let _ = std::fs::remove_dir(scratch.join("to"));
        let _ = std::fs::remove_dir(&scratch);
        result
    }
}

/// Unmounts (and removes the directories of) the temporary diff mounts a
/// process that died during a diff left of `dataset`'s datasets: they
/// would keep the datasets busy, so their removal would fail. Best effort:
/// what cannot be undone is logged and left for the next open.
fn unmount_stale_diff_mounts(dataset: &str) {
    let Ok(mounts) = kernfmt::MountInfo::read_self() else {
        return;
    };
    let tmp = std::env::temp_dir();
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    for target in diff::stale_diff_mounts(&mounts, dataset, &tmp, alive) {
        match crate::mount::unmount(&target) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&target);
                if let Some(scratch) = target.parent() {
                    let _ = std::fs::remove_dir(scratch);
                }
            }
            Err(e) => tracing::warn!(
                "cannot unmount {} (left by a diff that did not finish): {e}",
                target.display()
            ),
        }
    }
}

/// Adds every name of each changed non-directory with several links
/// (zfs diff names one), found by a walk of `root` that only stats.
fn with_hard_links(root: &Path, mut paths: BTreeSet<PathBuf>) -> Result<BTreeSet<PathBuf>> {
    let mut inodes = BTreeSet::new();
    for p in &paths {
        if let Ok(md) = std::fs::symlink_metadata(root.join(p)) {
            if !md.is_dir() && md.nlink() > 1 {
                inodes.insert(md.ino());
            }
        }
    }
    if inodes.is_empty() {
        return Ok(paths);
    }
    for entry in walkdir::WalkDir::new(root)
        .min_depth(1)
        .same_file_system(true)
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_owned();
            match e.into_io_error() {
                Some(io) => Error::io("diff", path, io),
                None => Error::new(ErrorKind::Io, "diff")
                    .path(path)
                    .detail("walk failed"),
            }
        })?;
        if entry.file_type().is_dir() {
            continue;
        }
        let md = entry.metadata().map_err(|e| {
            Error::new(ErrorKind::Io, "diff")
                .path(entry.path())
                .detail(e.to_string())
        })?;
        if inodes.contains(&md.ino()) {
            if let Ok(rel) = entry.path().strip_prefix(root) {
                paths.insert(rel.to_owned());
            }
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    /// A fake zfs: a set of existing names, and a log of commands.
    #[derive(Debug, Default, Clone)]
    struct Fake {
        names: Arc<Mutex<BTreeSet<String>>>,
        log: Arc<Mutex<Vec<String>>>,
        absent: bool,
    }

    impl ZfsCli for Fake {
        fn available(&self) -> bool {
            !self.absent
        }
        fn run(&self, args: &[&str]) -> Result<Option<String>> {
            self.log.lock().unwrap().push(args.join(" "));
            let mut names = self.names.lock().unwrap();
            let last = args.last().copied().unwrap_or_default().to_owned();
            Ok(match args[0] {
                "list" if args.contains(&"-r") => Some(
                    names
                        .iter()
                        .filter(|n| !n.contains('@'))
                        .map(|n| format!("{n}\n"))
                        .collect(),
                ),
                "list" => names.contains(&last).then(String::new),
                "create" | "clone" | "snapshot" => names.insert(last).then(String::new),
                "destroy" => {
                    names.retain(|n| n != &last && !n.starts_with(&format!("{last}@")));
                    Some(String::new())
                }
                "get" => Some("12345\n".into()),
                _ => Some(String::new()),
            })
        }
    }

    #[test]
    fn refuses_missing_module_and_dataset() {
        let fake = Fake {
            absent: true,
            ..Fake::default()
        };
        let e = Zfs::new("tank/sn", fake).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BackendUnavailable);
        assert!(e.to_string().contains("zfs: module not loaded"), "{e}");
        let e = Zfs::new("tank/sn", Fake::default()).unwrap_err();
        assert!(e.to_string().contains("dataset does not exist"), "{e}");
    }

    #[test]
    fn command_sequences() {
        let fake = Fake::default();
        fake.names.lock().unwrap().insert("tank/sn".into());
        let z = Zfs::new("tank/sn", fake.clone()).unwrap();
        let (a, b) = (SnapshotId(1), SnapshotId(2));
        z.create(
            &Object {
                id: a,
                kind: Kind::Active,
                parents: &[],
            },
            &Labels::new(),
        )
        .unwrap();
        z.commit(&Object {
            id: a,
            kind: Kind::Active,
            parents: &[],
        })
        .unwrap();
        // Commit again (recovery) does not snapshot twice.
        z.commit(&Object {
            id: a,
            kind: Kind::Active,
            parents: &[],
        })
        .unwrap();
        z.create(
            &Object {
                id: b,
                kind: Kind::View,
                parents: &[a],
            },
            &Labels::new(),
        )
        .unwrap();
        let m = z
            .mounts(&Object {
                id: b,
                kind: Kind::View,
                parents: &[a],
            })
            .unwrap();
        assert_eq!(m[0].fstype, "zfs");
        assert_eq!(m[0].source, "tank/sn/2");
        assert!(m[0].is_read_only());
        assert_eq!(z.list().unwrap(), vec![a, b]);
        let u = z
            .usage(&Object {
                id: b,
                kind: Kind::View,
                parents: &[a],
            })
            .unwrap();
        assert_eq!(u.size, Bytes(12345));
        z.remove(b).unwrap();
        z.remove(a).unwrap();
        z.remove(a).unwrap();
        let log = fake.log.lock().unwrap().clone();
        let muts: Vec<&str> = log
            .iter()
            .map(String::as_str)
            .filter(|l| !l.starts_with("list") && !l.starts_with("get"))
            .collect();
        assert_eq!(
            muts,
            vec![
                "create -o mountpoint=legacy tank/sn/1",
                "snapshot tank/sn/1@committed",
                "set readonly=on tank/sn/1",
                "set readonly=on tank/sn/1",
                "clone -o mountpoint=legacy -o readonly=on tank/sn/1@committed tank/sn/2",
                "destroy -r tank/sn/2",
                "destroy -r tank/sn/1",
            ]
        );
        assert!(fake.names.lock().unwrap().iter().all(|n| n == "tank/sn"));
    }

    #[test]
    fn the_size_label_is_the_clones_refquota() {
        let fake = Fake::default();
        fake.names.lock().unwrap().insert("tank/sn".into());
        let z = Zfs::new("tank/sn", fake.clone()).unwrap();
        let mut sized = Labels::new();
        sized.insert(crate::types::MAX_SIZE_LABEL.into(), "64M".into());
        let obj = |id, kind, parents| Object { id, kind, parents };
        z.create(&obj(SnapshotId(3), Kind::Active, &[SnapshotId(1)]), &sized)
            .unwrap();
        let e = z
            .create(&obj(SnapshotId(4), Kind::View, &[SnapshotId(1)]), &sized)
            .unwrap_err();
        assert!(e.to_string().contains("views are read-only"), "{e}");
        assert_eq!(
            fake.log.lock().unwrap().last().unwrap(),
            "clone -o mountpoint=legacy -o refquota=67108864 tank/sn/1@committed tank/sn/3"
        );
    }
}
