//! Namespaced, cgroup-limited containers whose root is a thinbox snapshot.
//!
//! Work in progress: see [`cgroup`].

pub mod cgroup;
pub mod config;
pub mod error;

pub use error::{Error, ErrorKind, Result};
