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
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub mod dump;

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
        for sub in ["active", "view", "snapshots", "diff"] {
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
        if !libbtrfsutil::is_subvolume(&parent).unwrap_or(false) {
            tracing::debug!(
                "btrfs: parent {} is not a subvolume; comparing trees",
                parent.display()
            );
            return Ok(None);
        }
        let _temp;
        let source = match obj.kind {
            Kind::Active => {
                let t =
                    TempSnapshot::take(&self.path(Kind::Active, obj.id), self.diff_path(obj.id))?;
                let p = t.path.clone();
                _temp = t;
                p
            }
            kind => self.path(kind, obj.id),
        };
        let paths = match send_dump(&parent, &source)? {
            Some(p) => p,
            None => return Ok(None),
        };
        Ok(with_hard_links(&source, paths)?.map(|p| p.into_iter().collect()))
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
            lists_changes: true,
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
        let paths = [Kind::Active, Kind::View, Kind::Committed].map(|k| self.path(k, id));
        for p in std::iter::once(self.diff_path(id)).chain(paths) {
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
struct TempSnapshot {
    path: PathBuf,
}

impl TempSnapshot {
    fn take(src: &Path, path: PathBuf) -> Result<TempSnapshot> {
        if exists(&path) {
            // Left by a crash during an earlier diff.
            libbtrfsutil::delete_subvolume(&path)
                .map_err(|e| btrfs_err("delete subvolume", &path, e))?;
        }
        libbtrfsutil::CreateSnapshotOptions::new()
            .readonly(true)
            .create(src, &path)
            .map_err(|e| btrfs_err("snapshot", &path, e))?;
        Ok(TempSnapshot { path })
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if let Err(e) = libbtrfsutil::delete_subvolume(&self.path) {
            tracing::warn!(
                "cannot delete temporary snapshot {} (removing the snapshot or cleanup retries): {e}",
                self.path.display()
            );
        }
    }
}

fn tool_missing(op: &'static str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::BackendUnavailable, op)
        .detail("btrfs: cannot run the btrfs tool; install btrfs-progs")
        .source(e)
}

/// `btrfs send --no-data -p PARENT SOURCE | btrfs receive --dump`, parsed;
/// None (logged) when either fails or the dump surprises the parser.
fn send_dump(parent: &Path, source: &Path) -> Result<Option<BTreeSet<PathBuf>>> {
    let mut send = Command::new("btrfs")
        .args(["send", "-q", "--no-data", "-p"])
        .arg(parent)
        .arg(source)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_missing("diff", e))?;
    let stream = send
        .stdout
        .take()
        .ok_or_else(|| Error::new(ErrorKind::Io, "diff").detail("btrfs send: no stdout pipe"))?;
    let receive = Command::new("btrfs")
        .args(["receive", "--dump"])
        .env("LC_ALL", "C")
        .stdin(stream)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut receive = match receive {
        Ok(r) => r,
        Err(e) => {
            let _ = send.kill();
            let _ = send.wait();
            return Err(tool_missing("diff", e));
        }
    };
    let mut parsed = dump::DumpPaths::new();
    let mut surprise = None;
    if let Some(out) = receive.stdout.take() {
        let mut out = BufReader::new(out);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = out
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io("diff", source, e))?;
            if n == 0 {
                break;
            }
            let l = line.strip_suffix(b"\n").unwrap_or(&line);
            if surprise.is_none() {
                if let Err(e) = parsed.line(l) {
                    surprise = Some(e);
                }
            }
        }
    }
    let mut errs = Vec::new();
    let mut received = false;
    for (name, child) in [("receive", &mut receive), ("send", &mut send)] {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = child.wait().map_err(|e| Error::io("diff", source, e))?;
        // `receive --dump` exits at the stream's end command, which send
        // may outlive by a write: SIGPIPE. While send still had the pipe
        // open, receive cannot have stopped at end of file, so it saw the
        // end command and the dump is whole.
        let pipe = name == "send"
            && received
            && std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGPIPE);
        if status.success() {
            received = name == "receive";
        } else if !pipe {
            errs.push(format!("btrfs {name}: {status}: {}", err.trim()));
        }
    }
    if !errs.is_empty() {
        tracing::debug!(
            "btrfs send -p {} {} failed, comparing trees: {}",
            parent.display(),
            source.display(),
            errs.join("; ")
        );
        return Ok(None);
    }
    if let Some(s) = surprise {
        tracing::debug!("{s}; comparing trees");
        return Ok(None);
    }
    match parsed.finish() {
        Ok(p) => Ok(Some(p)),
        Err(s) => {
            tracing::debug!("{s}; comparing trees");
            Ok(None)
        }
    }
}

/// Adds the other names of every changed non-directory with several
/// links (send names only one of them) via `btrfs inspect-internal
/// inode-resolve`; None (logged) when a name cannot be confirmed.
fn with_hard_links(
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
        let out = Command::new("btrfs")
            .args(["inspect-internal", "inode-resolve", &ino.to_string()])
            .arg(source)
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| tool_missing("diff", e))?;
        if !out.status.success() {
            tracing::debug!(
                "btrfs inode-resolve {ino} failed, comparing trees: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(None);
        }
        let mut prefix = source.as_os_str().as_bytes().to_vec();
        prefix.push(b'/');
        let mut found = 0;
        for line in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
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
