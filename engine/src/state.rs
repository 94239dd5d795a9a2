//! The state files under a root: records written atomically as TOML,
//! advisory locks, and the crash hook tests use to kill a run at a step.
//!
//! Shared by [`crate::engine`] and [`crate::pools`] so neither imports the
//! other for them.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::observer::{Event, Observer};

/// Writes `text` to `path` atomically (temp file, fsync, rename, fsync of
/// the directory).
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let f = File::create(&tmp).map_err(|e| Error::io("cannot write", &tmp, e))?;
    use std::io::Write;
    (&f).write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot write", path, e))?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes `value` as TOML to `path` atomically (temp file, fsync, rename).
pub fn write_toml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = toml::to_string(value).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot encode {}: {e}", path.display()),
        )
    })?;
    write_atomic(path, &text)
}

/// Reads a TOML record.
pub fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
    toml::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "record {} is damaged ({}): restore it or remove the state it describes",
                path.display(),
                e.message()
            ),
        )
    })
}

/// Takes an exclusive lock on `path` if nobody holds it; None if someone
/// does.
pub fn try_lock_file(path: &Path) -> Result<Option<Flock<File>>> {
    match Flock::lock(open_lock(path)?, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(held(l))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(lock_error(path, e)),
    }
}

/// Takes a shared lock on `path` if no exclusive holder has it; None if
/// one does.
pub fn try_lock_file_shared(path: &Path) -> Result<Option<Flock<File>>> {
    match Flock::lock(open_lock(path)?, FlockArg::LockSharedNonblock) {
        Ok(l) => Ok(Some(held(l))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(lock_error(path, e)),
    }
}

/// Takes an exclusive lock on `path`, waiting for other holders (and
/// telling `observer` that it waits, and for whom: the holder writes its
/// pid and command line into the file).
pub fn lock_file(path: &Path, observer: &dyn Observer) -> Result<Flock<File>> {
    lock_waiting(path, observer, false)
}

/// [`lock_file`], shared: waits only for an exclusive holder.
pub fn lock_file_shared(path: &Path, observer: &dyn Observer) -> Result<Flock<File>> {
    lock_waiting(path, observer, true)
}

fn lock_waiting(path: &Path, observer: &dyn Observer, shared: bool) -> Result<Flock<File>> {
    let (now, wait) = if shared {
        (FlockArg::LockSharedNonblock, FlockArg::LockShared)
    } else {
        (FlockArg::LockExclusiveNonblock, FlockArg::LockExclusive)
    };
    let f = match Flock::lock(open_lock(path)?, now) {
        Ok(l) => return Ok(held(l)),
        Err((f, nix::errno::Errno::EWOULDBLOCK)) => f,
        Err((_, e)) => return Err(lock_error(path, e)),
    };
    let holder = holder_of(path);
    observer.event(&Event::WaitingForLock {
        path: path.to_owned(),
        holder,
    });
    Flock::lock(f, wait)
        .map(held)
        .map_err(|(_, e)| lock_error(path, e))
}

/// Who holds lock file `path`, as it names its last holder (trusted only
/// while that pid lives).
pub fn holder_of(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.lines().next().unwrap_or_default().trim().to_owned())
        .filter(|s| {
            s.strip_prefix("pid ")
                .and_then(|r| r.split(' ').next())
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
        })
}

fn open_lock(path: &Path) -> Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("cannot open lock", path, e))
}

fn lock_error(path: &Path, e: nix::errno::Errno) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("cannot lock {}: {e}", path.display()),
    )
}

/// The size of the holder record in a lock file.
const HOLDER_BYTES: usize = 512;

/// Writes who holds the lock into its file (best effort: it only names
/// the holder to whoever waits), over the last holder's record in place:
/// one fixed-size record, padded, so the file never shrinks or grows (an
/// ftruncate of it cost about 8 ms on ext4, once per lock).
fn held(lock: Flock<File>) -> Flock<File> {
    use std::os::unix::fs::FileExt;
    let cmdline = std::fs::read("/proc/self/cmdline")
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let _ = lock.write_at(&holder_record(std::process::id(), &cmdline), 0);
    lock
}

fn holder_record(pid: u32, cmdline: &str) -> Vec<u8> {
    let mut text = format!("pid {pid} ({cmdline})");
    let mut end = text.len().min(HOLDER_BYTES - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    let mut record = text.into_bytes();
    record.resize(HOLDER_BYTES - 1, b' ');
    record.push(b'\n');
    record
}

/// Test hook: when the environment variable `THINBOX_PAUSE_AT` names
/// `step`, the process creates `$THINBOX_PAUSE_DIR/paused` there and waits
/// (up to two minutes) for `$THINBOX_PAUSE_DIR/go`, so tests can hold a
/// long command (an import) in the middle and see what others do
/// meanwhile. Steps: `import-layer` (after an import's first layer).
pub fn pause_point(step: &str) {
    if std::env::var_os("THINBOX_PAUSE_AT").is_none_or(|v| v != step) {
        return;
    }
    let Some(dir) = std::env::var_os("THINBOX_PAUSE_DIR").map(PathBuf::from) else {
        return;
    };
    let _ = std::fs::write(dir.join("paused"), std::process::id().to_string());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !dir.join("go").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Test hook: when the environment variable `THINBOX_CRASH_AT` names
/// `step`, the process kills itself there with SIGKILL, so
/// tests can prove that every step of making a backend or a pool is
/// recovered by the next run. Steps: `btrfs-image`, `btrfs-mkfs`,
/// `btrfs-mount`, `backend-opened`, `pool-created` (and the snapshotter's,
/// [`snapshotter::core::crash_point`]).
pub fn crash_point(step: &str) {
    snapshotter::core::crash_point(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_record_overwrites_in_place() {
        let r = holder_record(7, "thinbox run x");
        assert_eq!(r.len(), HOLDER_BYTES);
        assert!(r.starts_with(b"pid 7 (thinbox run x)   "));
        let long = holder_record(7, &"é".repeat(400));
        assert_eq!(long.len(), HOLDER_BYTES);
        assert!(String::from_utf8(long).is_ok(), "cut on a char boundary");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        std::fs::write(&path, "x".repeat(2000)).unwrap();
        let lock = try_lock_file(&path).unwrap().unwrap();
        let me = holder_of(&path).expect("names this process");
        assert!(
            me.starts_with(&format!("pid {} (", std::process::id())),
            "{me}"
        );
        assert!(me.ends_with(')'), "only the record's line: {me}");
        drop(lock);
    }
}
