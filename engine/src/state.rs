//! The state files under a root: records written atomically as TOML,
//! advisory locks, and the crash hook tests use to kill a run at a step.
//!
//! Shared by [`crate::engine`] and [`crate::pools`] so neither imports the
//! other for them.

use std::fs::File;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::observer::{Event, Observer};

fn write_atomic(path: &Path, text: &str) -> Result<()> {
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

/// Takes an exclusive lock on `path`, waiting for other holders (and
/// telling `observer` that it waits).
pub fn lock_file(path: &Path, observer: &dyn Observer) -> Result<Flock<File>> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("cannot open lock", path, e))?;
    let f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => return Ok(l),
        Err((f, nix::errno::Errno::EWOULDBLOCK)) => f,
        Err((_, e)) => {
            return Err(Error::new(
                ErrorKind::Io,
                format!("cannot lock {}: {e}", path.display()),
            ))
        }
    };
    observer.event(&Event::WaitingForLock {
        path: path.to_owned(),
    });
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| {
        Error::new(
            ErrorKind::Io,
            format!("cannot lock {}: {e}", path.display()),
        )
    })
}

/// Test hook: when the environment variable `THINBOX_CRASH_AT` names
/// `step`, the process kills itself there with SIGKILL, so
/// tests can prove that every step of making a backend or a pool is
/// recovered by the next run. Steps: `btrfs-image`, `btrfs-mkfs`,
/// `btrfs-mount`, `backend-opened`, `pool-created`.
pub fn crash_point(step: &str) {
    if std::env::var_os("THINBOX_CRASH_AT").is_some_and(|v| v == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
