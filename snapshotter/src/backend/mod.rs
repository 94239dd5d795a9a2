//! Backends: where snapshot objects live.
//!
//! - [`naive`]: a full copy of the parent per snapshot (any filesystem);
//! - [`overlay`]: overlayfs upper/work directories over the parents' trees;
//! - [`btrfs`]: subvolumes and read-only snapshots on a btrfs root;
//! - [`zfs`]: datasets, `@committed` snapshots and clones, via `zfs -H -p`;
//! - [`memory`]: an in-memory fake for tests of the rules and crash recovery.
//!
//! devmapper (over the `thinpool` crate) is not written yet; it fits the
//! same [`crate::core::Backend`] trait (a thin device per
//! [`crate::store::SnapshotId`], `commit` = mark read-only, children = thin
//! snapshots, mounts with a block-device source and
//! `Capabilities::block_level`).

pub mod btrfs;
pub mod memory;
pub mod naive;
pub mod overlay;
pub mod zfs;
