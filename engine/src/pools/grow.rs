//! `thinbox pool extend`: a pool's data and metadata grown to a size or by
//! one (`SIZE` or `+SIZE`), for loopback and direct-lvm pools alike.

use serde::Serialize;

use super::Pools;
use crate::error::{Error, ErrorKind, Result};

/// A new size, or growth by a size (`+SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeChange {
    /// Grow to this size.
    To(kernfmt::Bytes),
    /// Grow by this much.
    By(kernfmt::Bytes),
}

impl SizeChange {
    /// The size this asks for, given the current one.
    pub fn target(self, current: kernfmt::Bytes) -> Result<kernfmt::Bytes> {
        match self {
            SizeChange::To(b) => Ok(b),
            SizeChange::By(b) => current.checked_add(b).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("{current} + {b} overflows: ask for less"),
                )
            }),
        }
    }
}

impl std::str::FromStr for SizeChange {
    type Err = kernfmt::ParseError;
    fn from_str(s: &str) -> std::result::Result<SizeChange, Self::Err> {
        match s.trim().strip_prefix('+') {
            Some(rest) => rest.parse().map(SizeChange::By),
            None => s.parse().map(SizeChange::To),
        }
    }
}

impl std::fmt::Display for SizeChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SizeChange::To(b) => write!(f, "{b}"),
            SizeChange::By(b) => write!(f, "+{b}"),
        }
    }
}

/// What `extend` did: the sizes before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Extension {
    /// The pool.
    pub pool: String,
    /// Data bytes before.
    pub data_before: u64,
    /// Data bytes after.
    pub data_after: u64,
    /// Metadata bytes before.
    pub metadata_before: u64,
    /// Metadata bytes after.
    pub metadata_after: u64,
}

impl Pools {
    /// Grows pool `name`'s data and/or metadata (see
    /// [`thinpool::pool::Pool::grow_to`]): loopback files or lvextend.
    pub fn extend(
        &self,
        name: &str,
        data: Option<SizeChange>,
        metadata: Option<SizeChange>,
    ) -> Result<Extension> {
        let mut p = self.open_pool(name)?;
        let before = p.pool.sizes()?;
        let data_to = data.map(|c| c.target(before.data)).transpose()?;
        let meta_to = metadata.map(|c| c.target(before.metadata)).transpose()?;
        p.pool.grow_to(data_to, meta_to)?;
        let after = p.pool.sizes()?;
        Ok(Extension {
            pool: name.to_owned(),
            data_before: before.data.0,
            data_after: after.data.0,
            metadata_before: before.metadata.0,
            metadata_after: after.metadata.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernfmt::Bytes;

    #[test]
    fn sizes_and_growth_parse_and_print() {
        assert_eq!(
            "1G".parse::<SizeChange>().unwrap(),
            SizeChange::To(Bytes::gib(1))
        );
        assert_eq!(
            "+512M".parse::<SizeChange>().unwrap(),
            SizeChange::By(Bytes::mib(512))
        );
        assert!("+".parse::<SizeChange>().is_err());
        assert!("-1G".parse::<SizeChange>().is_err());
        assert_eq!(SizeChange::By(Bytes::gib(2)).to_string(), "+2 GiB");
        let cur = Bytes::gib(1);
        assert_eq!(
            SizeChange::By(Bytes::gib(1)).target(cur).unwrap(),
            Bytes::gib(2)
        );
        assert_eq!(
            SizeChange::To(Bytes::gib(3)).target(cur).unwrap(),
            Bytes::gib(3)
        );
        assert!(SizeChange::By(Bytes(u64::MAX)).target(cur).is_err());
    }
}
