//! The engine behind the `thinbox` binary: state under one root directory,
//! the embedded default backend, named pools, each command as one library
//! call that the binary parses for and prints.
//!
//! - [`config`]: `/etc/thinbox/config.toml` and flags, merged;
//! - [`containers`]: `thinbox run`, `ps`, `rm`: container records, their
//!   snapshots and mounts, runs through the `runner` crate, `--commit`;
//! - [`engine`]: opens the state root and the backend (a loopback dm-thin
//!   pool when the kernel has dm-thin, else a loopback btrfs filesystem, or
//!   a configured btrfs/ZFS root) and the snapshotter on it;
//! - [`pools`]: named thin-pools under `ROOT/pools` (loopback, direct-lvm,
//!   adopted) for `thinbox pool ...`;
//! - [`error`]: the crate's error with a kind that maps to an exit code;
//! - [`progress`]: spinners on a terminal.
//!
//! Life cycle: `Engine::open` (choosing and making the backend on first
//! use, printing the choice once) → `engine.snapshotter()` calls →
//! `engine.close()`, which releases the root for the next thinbox process.

pub mod config;
pub mod containers;
pub mod engine;
pub mod error;
pub mod pools;
pub mod progress;

pub use engine::{BackendKind, Engine, EngineOptions};
pub use error::{Error, ErrorKind, Result};
