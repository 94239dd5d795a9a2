//! The mount table, read through the workspace's one mountinfo parser
//! ([`kernfmt::MountInfo`]).

use std::path::Path;

use kernfmt::MountInfo;

use crate::error::{Error, ErrorKind, Result};

fn table() -> Result<Vec<MountInfo>> {
    MountInfo::read_self().map_err(|e| Error::new(ErrorKind::Io, e.to_string()).with_source(e))
}

/// The mount at `dir` (the last one stacked there), if any.
pub fn mount_at(dir: &Path) -> Result<Option<MountInfo>> {
    Ok(table()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point_path() == dir))
}

/// Whether `dir` (canonicalised when it exists) is a mount point.
pub fn is_mount_point(dir: &Path) -> Result<bool> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    Ok(mount_at(&dir)?.is_some())
}
