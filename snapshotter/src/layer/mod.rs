//! OCI / Docker image layers: [`apply`] one onto a mounted snapshot, and
//! [`diff`] a snapshot against its parent into a layer.
//!
//! Layers are tar archives, plain, gzip or zstd (detected from the magic
//! bytes). Deletions are OCI whiteouts: `.wh.NAME` removes NAME from the
//! lower layers, `.wh..wh..opq` in a directory hides everything the lower
//! layers had in it.
//!
//! Kernel: openat2(2) with `RESOLVE_BENEATH` (Linux 5.6+) confines every
//! path resolution of [`apply`] to the snapshot root.

mod apply;
mod diff;

pub use apply::{apply, apply_to_snapshot, decompress, ApplyStats};
pub use diff::{
    diff, diff_snapshot, diff_snapshot_by_tree_compare, remove_stale_diff_views, DiffStats,
    DIFF_VIEW_PREFIX,
};

/// The prefix of a whiteout entry's base name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The base name of an opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
