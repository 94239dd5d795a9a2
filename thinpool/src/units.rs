//! Typed units and ids. Conversions cite the kernel constants they rest on:
//! a sector is 512 bytes (`SECTOR_SHIFT` = 9), a thin-pool metadata block is
//! 4096 bytes (`THIN_METADATA_BLOCK_SIZE`), a data block is the pool's block
//! size (`data_block_size` in the thin-pool table, 64 KiB..=1 GiB in steps of
//! 64 KiB: `DATA_DEV_BLOCK_SIZE_MIN_SECTORS` / `_MAX_SECTORS`), and a thin id
//! is 24 bits (`MAX_DEV_ID` = 2^24 - 1).
//!
//! What can fail (validated constructors, checked arithmetic, parsing)
//! lives in [`crate::checked`], because it returns [`crate::Error`] and
//! the error's payloads are these units.

use std::fmt;

/// Bytes in a sector (`1 << SECTOR_SHIFT`).
pub const SECTOR_SIZE: u64 = 512;
/// Bytes in a thin-pool metadata block (`THIN_METADATA_BLOCK_SIZE`).
pub const META_BLOCK_SIZE: u64 = 4096;

macro_rules! unit {
    ($(#[$m:meta])* $name:ident, $suffix:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            /// Zero of this unit.
            pub const ZERO: $name = $name(0);

            /// Wraps a raw count.
            pub const fn new(n: u64) -> $name {
                $name(n)
            }

            /// The raw count.
            pub const fn get(self) -> u64 {
                self.0
            }

            /// Difference, or `None` when `other` is larger.
            pub fn checked_sub(self, other: $name) -> Option<$name> {
                self.0.checked_sub(other.0).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)?;
                if f.alternate() {
                    f.write_str($suffix)?;
                }
                Ok(())
            }
        }
    };
}

unit!(
    /// A count of 512-byte sectors: the unit of dm tables and status.
    Sectors,
    " sectors"
);
unit!(
    /// A count of pool data blocks (each `BlockSize` long).
    DataBlocks,
    " data blocks"
);
unit!(
    /// A count of 4 KiB thin-pool metadata blocks.
    MetaBlocks,
    " metadata blocks"
);

pub use kernfmt::Bytes;

impl Sectors {
    /// Whole sectors in `b`, or `None` when it is not a multiple of 512.
    pub fn from_bytes(b: Bytes) -> Option<Sectors> {
        (b.0 % SECTOR_SIZE == 0).then_some(Sectors(b.0 / SECTOR_SIZE))
    }

    /// Size in bytes (saturating at `u64::MAX`, which no device reaches).
    pub fn bytes(self) -> Bytes {
        Bytes(self.0.saturating_mul(SECTOR_SIZE))
    }
}

impl MetaBlocks {
    /// Size in sectors: 8 sectors per 4 KiB metadata block.
    pub fn sectors(self) -> Sectors {
        Sectors(self.0.saturating_mul(META_BLOCK_SIZE / SECTOR_SIZE))
    }

    /// Whole metadata blocks in `s` (rounded down).
    pub fn from_sectors(s: Sectors) -> MetaBlocks {
        MetaBlocks(s.0 / (META_BLOCK_SIZE / SECTOR_SIZE))
    }
}

/// A pool's data block size: 64 KiB..=1 GiB, a multiple of 64 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockSize(Sectors);

impl BlockSize {
    /// 64 KiB, the kernel minimum and Docker's default.
    pub const MIN: BlockSize = BlockSize(Sectors(128));
    /// 1 GiB, the kernel maximum.
    pub const MAX: BlockSize = BlockSize(Sectors(2 * 1024 * 1024));
    /// The default: 64 KiB.
    pub const DEFAULT: BlockSize = BlockSize::MIN;

    /// A block size known to be valid (the checked constructors are
    /// [`BlockSize::from_sectors`] and [`BlockSize::from_bytes`]).
    pub(crate) const fn new_unchecked(s: Sectors) -> BlockSize {
        BlockSize(s)
    }

    /// The size in sectors, as the thin-pool table states it.
    pub fn sectors(self) -> Sectors {
        self.0
    }

    /// The size in bytes.
    pub fn bytes(self) -> Bytes {
        self.0.bytes()
    }

    /// Whole blocks in `s`, rounded down.
    pub fn blocks_floor(self, s: Sectors) -> DataBlocks {
        DataBlocks(s.0 / self.0 .0)
    }
}

impl Default for BlockSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A thin device id inside a pool: 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThinId(u32);

impl ThinId {
    /// One past the largest id (`MAX_DEV_ID` + 1 = 2^24).
    pub const LIMIT: u64 = 1 << 24;
    /// The largest id.
    pub const MAX: ThinId = ThinId((1 << 24) - 1);

    /// An id known to be below [`ThinId::LIMIT`] (the checked constructor
    /// is [`ThinId::new`]).
    pub(crate) const fn new_unchecked(id: u32) -> ThinId {
        ThinId(id)
    }

    /// The raw id.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ThinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The pool's transaction id (set with the `set_transaction_id` message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TransactionId(pub u64);

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
