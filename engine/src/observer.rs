//! How long work reports progress without printing: the engine calls an
//! [`Observer`] the front end passes in. The CLI turns events into spinners
//! and bars on a terminal (and ignores them under `--json`); the daemon
//! will log them; tests record them.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::Bytes;

/// Something the engine is doing that can take a while, or is waiting on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Another process holds the lock at `path`; this one waits for it.
    WaitingForLock {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as the holder wrote (`pid N (COMMAND LINE)`).
        holder: Option<String>,
    },
    /// This open chose the root's backend (once per root, on first use).
    BackendChosen {
        /// The backend, as `thinbox` names it (`dm-thin`, `btrfs`, …).
        backend: String,
        /// The state root.
        root: PathBuf,
        /// Why it was chosen.
        reason: String,
        /// Where the choice is recorded (`ROOT/backend.toml`).
        record: PathBuf,
        /// The configuration file that can choose another for a new root.
        config: PathBuf,
    },
    /// Making the loopback thin-pool `pool` in sparse files under `dir`.
    MakingPool {
        /// The pool's name.
        pool: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// Making a `fs` filesystem for the backend (the devmapper base
    /// device, or the btrfs image).
    Mkfs {
        /// `ext4`, `xfs` or `btrfs`.
        fs: String,
        /// The file or device it goes on.
        on: PathBuf,
        /// Its size, where the engine chose it.
        size: Option<Bytes>,
    },
    /// Mounting the backend's filesystem at `path`.
    Mounting {
        /// The mount point.
        path: PathBuf,
    },
    /// The long step reported last is over.
    StepDone,
    /// Layer `index` (0-based) of `count` of an image import is being applied.
    Layer {
        /// Its position.
        index: usize,
        /// How many layers the image has.
        count: usize,
        /// The layer's digest (`sha256:…`).
        digest: String,
        /// Its compressed size in bytes.
        size: u64,
    },
    /// The layer reported last is applied (or was already present).
    LayerDone {
        /// Whether it was already present.
        reused: bool,
    },
    /// A layer blob starts downloading.
    Download {
        /// Its digest.
        digest: String,
        /// Its size in bytes.
        size: u64,
    },
    /// Bytes of a download so far.
    Downloading {
        /// Its digest.
        digest: String,
        /// Bytes received in this pull.
        bytes: u64,
    },
    /// A download ended.
    DownloadDone {
        /// Its digest.
        digest: String,
        /// Whether the blob is whole and verified.
        ok: bool,
    },
    /// Something the user should know and may want to change.
    Warning {
        /// What, with the figures and the key or command that changes it.
        message: String,
    },
    /// A new container's root has no size bound: it can fill the
    /// filesystem it shares with the state root.
    RootUnbounded {
        /// Why, and what would bound it.
        why: String,
    },
}

/// Receives [`Event`]s. Called on the thread doing the work; keep it quick.
pub trait Observer: Send + Sync {
    /// One event.
    fn event(&self, event: &Event);
}

impl std::fmt::Debug for dyn Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {
    fn event(&self, _: &Event) {}
}

/// Keeps every event, for tests.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    /// The events so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Observer for Recorder {
    fn event(&self, event: &Event) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event.clone());
        }
    }
}
