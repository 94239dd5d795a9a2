//! The engine behind the `thinbox` binary: state under one root directory,
//! the embedded default backend, images and containers, each command as
//! one library call that the binary parses for and prints.
//!
//! - [`config`]: `/etc/thinbox/config.toml` and flags, merged;
//! - [`engine`]: opens the state root and the backend (a loopback dm-thin
//!   pool when the kernel has dm-thin, else a loopback btrfs filesystem, or
//!   a configured btrfs/ZFS root), the snapshotter and the image store;
//! - [`error`]: the crate's error with a kind that maps to an exit code.

pub mod config;
pub mod engine;
pub mod error;

pub use error::{Error, ErrorKind, Result};
