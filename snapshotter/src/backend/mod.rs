//! Backends: where snapshot objects live.
//!
//! - [`naive`]: a full copy of the parent per snapshot (any filesystem);
//! - [`overlay`]: overlayfs upper/work directories over the parents' trees;
//! - [`btrfs`]: subvolumes and read-only snapshots on a btrfs root;
//! - [`zfs`]: datasets, `@committed` snapshots and clones, via `zfs -H -p`;
//! - [`devmapper`]: a dm-thin snapshot per snapshot over a `thinpool` pool;
//! - [`memory`]: an in-memory fake for tests of the rules and crash recovery.

pub mod btrfs;
pub mod devmapper;
pub mod memory;
pub mod naive;
pub mod overlay;
pub mod zfs;
