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

/// A line of a tool's change listing (`btrfs receive --dump`, `zfs diff`)
/// that its parser does not understand; the diff then compares trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Surprise {
    /// The listing: `"btrfs receive --dump"` or `"zfs diff"`.
    pub tool: &'static str,
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl std::fmt::Display for Surprise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}: {}", self.tool, self.line, self.what)
    }
}
