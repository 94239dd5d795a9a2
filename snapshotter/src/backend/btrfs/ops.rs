//! The seam between the btrfs backend and the kernel: [`BtrfsOps`], with
//! [`SystemBtrfs`] driving btrfs through libbtrfsutil (subvolume ioctls),
//! the qgroup-limit ioctl (`crate::sys`), btrfs-progs (`send | receive --dump`,
//! `inspect-internal inode-resolve`) and sysfs (qgroup counters), as [`super::super::zfs::ZfsCli`] does
//! for zfs. Tests pass a fake, so the backend's logic (layout, commit
//! idempotence, leftovers, fallbacks) is tested without btrfs.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::dump;
use crate::error::{Error, ErrorKind, Result};

/// `BTRFS_SUPER_MAGIC` from linux/magic.h.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

/// What the btrfs backend asks of btrfs.
pub trait BtrfsOps: Send + Sync + std::fmt::Debug {
    /// Whether `path` is on a btrfs filesystem.
    fn on_btrfs(&self, path: &Path) -> Result<bool>;
    /// Makes an empty subvolume at `path`.
    fn create_subvolume(&self, path: &Path) -> Result<()>;
    /// Snapshots subvolume `src` to `dst`, read-only when asked.
    fn snapshot(&self, src: &Path, dst: &Path, read_only: bool) -> Result<()>;
    /// Makes subvolume `path` read-only.
    fn set_read_only(&self, path: &Path) -> Result<()>;
    /// Deletes subvolume `path`.
    fn delete_subvolume(&self, path: &Path) -> Result<()>;
    /// Whether `path` is a subvolume.
    fn is_subvolume(&self, path: &Path) -> bool;
    /// The subvolume's id.
    fn subvolume_id(&self, path: &Path) -> Result<u64>;
    /// Commits the filesystem's transaction (qgroup counters follow it).
    fn sync(&self, path: &Path) -> Result<()>;
    /// Whether quotas are on for the filesystem holding `path`.
    fn quotas_enabled(&self, path: &Path) -> Result<bool>;
    /// The counters of qgroup `0/ID` of subvolume `id` on the filesystem
    /// holding `path`; None when quotas are off or it has none.
    fn qgroup(&self, path: &Path, id: u64) -> Result<Option<Qgroup>>;
    /// Limits what subvolume `path` references to `bytes` (as `btrfs qgroup
    /// limit` does); writes past it fail with EDQUOT.
    fn qgroup_limit(&self, path: &Path, bytes: u64) -> Result<()>;
    /// The paths that differ between read-only subvolumes `parent` and
    /// `source` (`send --no-data -p | receive --dump`); None when that
    /// cannot be told (the caller compares trees).
    fn send_dump(&self, parent: &Path, source: &Path) -> Result<Option<BTreeSet<PathBuf>>>;
    /// The raw `inode-resolve` output lines (absolute paths) for inode
    /// `ino` in subvolume `source`; None when the tool failed.
    fn inode_paths(&self, source: &Path, ino: u64) -> Result<Option<Vec<Vec<u8>>>>;
}

/// A subvolume's qgroup counters, as the kernel keeps them (in
/// `/sys/fs/btrfs/FSID/qgroups/0_ID`, Linux 5.9+).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Qgroup {
    /// Bytes the subvolume references (shared with its origin or not).
    pub referenced: u64,
    /// Bytes only it references.
    pub exclusive: u64,
    /// Its limit on `referenced`, if one is set.
    pub max_referenced: Option<u64>,
}

impl Qgroup {
    /// Whether `referenced` is within `slack` bytes of its limit: the
    /// subvolume is full for writers.
    pub fn at_limit(&self, slack: u64) -> bool {
        self.max_referenced
            .is_some_and(|max| self.referenced.saturating_add(slack) >= max)
    }
}

/// btrfs on the kernel: libbtrfsutil, btrfs-progs and sysfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemBtrfs;

fn btrfs_err(op: &'static str, path: &Path, e: libbtrfsutil::Error) -> Error {
    Error::new(ErrorKind::Io, op).path(path).source(e)
}

impl BtrfsOps for SystemBtrfs {
    fn on_btrfs(&self, path: &Path) -> Result<bool> {
        let st = nix::sys::statfs::statfs(path).map_err(|e| Error::sys("statfs", path, e))?;
        #[allow(clippy::unnecessary_cast)]
        Ok(st.filesystem_type().0 as i64 == BTRFS_SUPER_MAGIC)
    }

    fn create_subvolume(&self, path: &Path) -> Result<()> {
        libbtrfsutil::create_subvolume(path).map_err(|e| btrfs_err("create subvolume", path, e))
    }

    fn snapshot(&self, src: &Path, dst: &Path, read_only: bool) -> Result<()> {
        libbtrfsutil::CreateSnapshotOptions::new()
            .readonly(read_only)
            .create(src, dst)
            .map_err(|e| btrfs_err("snapshot", dst, e))
    }

    fn set_read_only(&self, path: &Path) -> Result<()> {
        libbtrfsutil::set_subvolume_read_only(path, true)
            .map_err(|e| btrfs_err("set read-only", path, e))
    }

    fn delete_subvolume(&self, path: &Path) -> Result<()> {
        libbtrfsutil::delete_subvolume(path).map_err(|e| btrfs_err("delete subvolume", path, e))
    }

    fn is_subvolume(&self, path: &Path) -> bool {
        libbtrfsutil::is_subvolume(path).unwrap_or(false)
    }

    fn subvolume_id(&self, path: &Path) -> Result<u64> {
        libbtrfsutil::subvolume_id(path).map_err(|e| btrfs_err("usage", path, e))
    }

    fn sync(&self, path: &Path) -> Result<()> {
        libbtrfsutil::sync(path).map_err(|e| btrfs_err("sync", path, e))
    }

    fn quotas_enabled(&self, path: &Path) -> Result<bool> {
        Ok(sysfs_dir(path)?.join("qgroups").is_dir())
    }

    fn qgroup(&self, path: &Path, id: u64) -> Result<Option<Qgroup>> {
        let dir = sysfs_dir(path)?.join("qgroups").join(format!("0_{id}"));
        if !dir.is_dir() {
            return Ok(None);
        }
        let read = |name: &str| -> Result<u64> {
            let p = dir.join(name);
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io("qgroup", &p, e))?;
            text.trim().parse().map_err(|_| {
                Error::new(ErrorKind::Io, "qgroup")
                    .path(&p)
                    .detail(format!("{:?} is not a number of bytes", text.trim()))
            })
        };
        let max = read("max_referenced")?;
        Ok(Some(Qgroup {
            referenced: read("referenced")?,
            exclusive: read("exclusive")?,
            // The kernel shows "no limit" as 0 (and some versions as u64::MAX).
            max_referenced: (max != 0 && max != u64::MAX).then_some(max),
        }))
    }

    fn qgroup_limit(&self, path: &Path, bytes: u64) -> Result<()> {
        let dir = std::fs::File::open(path).map_err(|e| Error::io("qgroup limit", path, e))?;
        crate::sys::set_qgroup_max_referenced(&dir, bytes).map_err(|e| {
            Error::new(ErrorKind::Io, "qgroup limit")
                .path(path)
                .detail(format!(
                    "setting the subvolume's limit to {bytes} bytes failed: {e}"
                ))
        })
    }

    fn send_dump(&self, parent: &Path, source: &Path) -> Result<Option<BTreeSet<PathBuf>>> {
        send_dump(parent, source)
    }

    fn inode_paths(&self, source: &Path, ino: u64) -> Result<Option<Vec<Vec<u8>>>> {
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
        Ok(Some(
            out.stdout
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
        ))
    }
}

/// `/sys/fs/btrfs/FSID` of the btrfs filesystem holding `path`: found
/// through the device its mount names (`/sys/fs/btrfs/FSID/devices/loop3`),
/// as the fsid is only reachable by ioctl otherwise.
fn sysfs_dir(path: &Path) -> Result<PathBuf> {
    let path = std::fs::canonicalize(path).map_err(|e| Error::io("qgroup", path, e))?;
    let mounts = kernfmt::MountInfo::read_self()
        .map_err(|e| Error::new(ErrorKind::Io, "qgroup").detail(e.to_string()))?;
    let mount = mounts
        .iter()
        .filter(|m| m.fstype == "btrfs" && path.starts_with(m.mount_point_path()))
        .max_by_key(|m| m.mount_point_path().as_os_str().len())
        .ok_or_else(|| {
            Error::new(ErrorKind::BackendUnavailable, "qgroup")
                .path(&path)
                .detail("no btrfs mount holds it")
        })?;
    let source = mount.source_path();
    let device = std::fs::canonicalize(&source).unwrap_or(source);
    let name = device.file_name().unwrap_or_default();
    let entries =
        std::fs::read_dir("/sys/fs/btrfs").map_err(|e| Error::io("qgroup", "/sys/fs/btrfs", e))?;
    for entry in entries.flatten() {
        if entry.path().join("devices").join(name).exists() {
            return Ok(entry.path());
        }
    }
    Err(Error::new(ErrorKind::BackendUnavailable, "qgroup")
        .path(&path)
        .detail(format!(
            "no /sys/fs/btrfs/*/devices/{} for its device {}",
            name.to_string_lossy(),
            device.display()
        )))
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
