//! Backends: where snapshot objects live.
//!
//! - [`naive`]: a full copy of the parent per snapshot (any filesystem);
//! - [`overlay`]: overlayfs upper/work directories over the parents' trees;
//! - [`btrfs`]: subvolumes and read-only snapshots on a btrfs root;
//! - [`memory`]: an in-memory fake for tests of the rules and crash recovery.
//!
//! devmapper (over the `thinpool` crate) and zfs are not written yet; they
//! fit the same [`crate::core::Backend`] trait (a thin device / a dataset per
//! [`crate::store::SnapshotId`], `commit` = snapshot + read-only, mounts with
//! a block-device source and `Capabilities::block_level`).

pub mod btrfs;
pub mod memory;
pub mod naive;
pub mod overlay;
