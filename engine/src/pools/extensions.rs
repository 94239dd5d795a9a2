//! How often thinbox grew each pool (`monitor`, and autoextend when the
//! engine opens its pool), kept in `ROOT/pools/NAME/extensions.toml` for
//! the metrics: the kernel keeps no such count, and a pool outlives the
//! processes that grow it. Read-modify-write under the file's own lock, so
//! a monitor and an engine counting at once lose nothing.

use serde::{Deserialize, Serialize};
use thinpool::pool::Extended;

use super::Pools;
use crate::error::Result;
use crate::state::{lock_file, read_toml, write_toml};

/// Extensions thinbox made of one pool since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extensions {
    /// Times its data device grew.
    pub data: u64,
    /// Times its metadata device grew.
    pub metadata: u64,
}

const FILE: &str = "extensions.toml";

impl Pools {
    /// The extensions thinbox made of pool `name` (none recorded: zero).
    pub fn extensions(&self, name: &str) -> Result<Extensions> {
        let path = self.dir_of(name).join(FILE);
        if !path.exists() {
            return Ok(Extensions::default());
        }
        read_toml(&path)
    }

    /// Counts what `grew` says grew of pool `name`.
    pub fn count_extension(&self, name: &str, grew: &Extended) -> Result<()> {
        if grew.data.is_none() && grew.metadata.is_none() {
            return Ok(());
        }
        for (device, to) in [("data", grew.data), ("metadata", grew.metadata)] {
            if let Some(to) = to {
                tracing::info!(
                    pool = name,
                    device,
                    bytes = to.0,
                    "pool {name}: grew its {device} device to {to}"
                );
            }
        }
        let dir = self.dir_of(name);
        let _lock = lock_file(&dir.join("extensions.lock"), self.observer.as_ref())?;
        let mut n = self.extensions(name)?;
        n.data += u64::from(grew.data.is_some());
        n.metadata += u64::from(grew.metadata.is_some());
        write_toml(&dir.join(FILE), &n)
    }
}
