//! thinbox's engine: what every front end (the `thinbox` CLI, the coming
//! `thinbox serve` daemon, tests) shares. State under one root directory,
//! the embedded default backend, named pools, images and containers; each
//! operation one library call. It prints nothing: long work reports
//! through an [`Observer`] the caller passes in, and the kernel is reached
//! through [`Deps`] the caller passes in too.
//!
//! - [`config`]: `/etc/thinbox/config.toml` and flags, merged;
//! - [`engine`]: opens the state root (its lock, the backend record
//!   `ROOT/backend.toml`) and the snapshotter on the backend (a loopback
//!   dm-thin pool when the kernel has dm-thin, else a loopback btrfs
//!   filesystem, or a configured btrfs/ZFS root), and the image store on it;
//! - [`containers`]: `thinbox run`, `ps`, `rm`: container records, their
//!   snapshots and mounts, runs through the `runner` crate, `--commit`;
//! - [`pools`]: named thin-pools under `ROOT/pools` (loopback, direct-lvm,
//!   adopted) for `thinbox pool ...`;
//! - [`clients`]: keys of snapshots made for containerd (`thinbox serve`),
//!   kept apart from the CLI's;
//! - [`options`]: [`EngineOptions`], how a front end opens the engine;
//! - [`deps`]: the kernel seams (probes, thin-pool seams, loop devices,
//!   mkfs and mount), real or fake;
//! - [`observer`]: progress events;
//! - [`state`]: atomic TOML records, locks, the test crash hook;
//! - [`snapshots`]: mounting a snapshot, writing its diff as a layer tar;
//! - [`doctor`]: drift between the records and the kernel (pools, dm and
//!   loop devices, mounts, cgroups), reported with its fix, fixed when
//!   provably thinbox's;
//! - [`metrics`]: Prometheus metrics of a root (pools, snapshots,
//!   containers), for `thinbox serve` and `thinbox metrics`;
//! - [`mounts`]: the mount table, through `kernfmt`'s mountinfo parser;
//! - [`error`]: the crate's error with a kind a front end maps to an exit code.
//!
//! Life cycle: `Engine::open` (choosing and making the backend on first
//! use; `Engine::chose_backend` says so) → `engine.snapshotter()` and
//! `engine.images()` calls → `engine.close()`, which releases the root for
//! the next thinbox process.
//!
//! Kernel: whatever the chosen backend needs (see [`engine`]); root.
#![forbid(unsafe_code)]

pub mod backend;
pub mod clients;
pub mod config;
pub mod containers;
pub mod content;
pub mod deps;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod mounts;
pub mod observer;
pub mod options;
pub mod pools;
pub mod pull;
pub mod push;
pub mod snapshots;
mod sparse;
pub mod state;

pub use deps::Deps;
pub use engine::{BackendKind, Engine, EngineOptions};
pub use error::{Error, ErrorKind, Result};
pub use observer::{Event, Observer};
