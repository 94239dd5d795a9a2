//! thinbox's snapshotter: containerd's snapshot model over several kinds of
//! copy-on-write storage, with OCI layer apply and diff.
//!
//! # Vocabulary and life cycle
//!
//! An image is a stack of **committed** snapshots, each the result of
//! applying one layer on top of its parent. To add a layer, `prepare(key,
//! parent)` makes an **active** (writable) snapshot and returns
//! [`MountSpec`]s; the caller mounts them ([`mount::mount_all`]), applies
//! the layer ([`layer::apply`]), unmounts and `commit(name, key)`s it. A
//! container gets its root from `prepare` on the image's top layer; a
//! read-only look at a snapshot is a **view**. Keys ([`Key`]) address
//! active snapshots and views, names ([`Name`]) committed ones; both live in
//! one namespace. A snapshot with children cannot be removed.
//!
//! # Pieces
//!
//! - [`Snapshotter`]: the trait, implemented once by [`core::Snapshots`]
//!   over any [`core::Backend`];
//! - [`store`]: metadata in SQLite, with intent/done records so that a crash
//!   leaves no record without its backend object and no object without its
//!   record ([`core::Snapshots::open`] reconciles);
//! - [`backend`]: naive (full copies), overlay (overlayfs), btrfs
//!   (subvolumes), zfs (datasets, snapshots, clones), devmapper (dm-thin
//!   snapshots over the `thinpool` crate) and an in-memory fake;
//! - [`mount`]: mount specs and a helper to mount them;
//! - [`filter`]: containerd's walk filter syntax;
//! - [`layer`]: OCI layer apply (confined to the snapshot root) and diff;
//! - [`image`]: OCI / docker-save image import into committed snapshots
//!   keyed by chain id, image records, container commit, and an image
//!   writer for tests and tools;
//! - `testsuite` (feature `testsuite`, for tests and benches only): the
//!   conformance suite every backend must pass.
//!
//! Backends differ only in [`Capabilities`]; nothing branches on a
//! backend's name.
#![deny(unsafe_code)]

pub mod backend;
pub mod core;
pub mod error;
pub mod filter;
pub mod fsutil;
pub mod image;
pub mod layer;
pub mod mount;
pub mod store;
#[allow(unsafe_code)]
mod sys;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod types;

pub use crate::core::{Backend, Reader, Snapshots, Snapshotter};
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::filter::Filter;
pub use crate::mount::{mount_all, unmount, MountGuard, MountSpec};
pub use crate::types::{
    Bytes, Capabilities, Info, Key, Kind, Labels, Name, Usage, CONTAINERD_MAX_SIZE_LABEL,
    MAX_SIZE_LABEL,
};
