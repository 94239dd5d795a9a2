//! Typed units and ids. Conversions cite the kernel constants they rest on:
//! a sector is 512 bytes (`SECTOR_SHIFT` = 9), a thin-pool metadata block is
//! 4096 bytes (`THIN_METADATA_BLOCK_SIZE`), a data block is the pool's block
//! size (`data_block_size` in the thin-pool table, 64 KiB..=1 GiB in steps of
//! 64 KiB: `DATA_DEV_BLOCK_SIZE_MIN_SECTORS` / `_MAX_SECTORS`), and a thin id
//! is 24 bits (`MAX_DEV_ID` = 2^24 - 1).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};

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

            /// Sum, or an overflow error.
            pub fn checked_add(self, other: $name) -> Result<$name> {
                self.0
                    .checked_add(other.0)
                    .map($name)
                    .ok_or_else(|| Error::new(ErrorKind::Overflow { what: stringify!($name) }))
            }

            /// Difference, or `None` when `other` is larger.
            pub fn checked_sub(self, other: $name) -> Option<$name> {
                self.0.checked_sub(other.0).map($name)
            }

            /// Product with a scalar, or an overflow error.
            pub fn checked_mul(self, k: u64) -> Result<$name> {
                self.0
                    .checked_mul(k)
                    .map($name)
                    .ok_or_else(|| Error::new(ErrorKind::Overflow { what: stringify!($name) }))
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

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<$name> {
                s.parse::<u64>()
                    .map($name)
                    .map_err(|e| Error::parse(stringify!($name), s, e.to_string()))
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

    /// Validates a size in sectors.
    pub fn from_sectors(s: Sectors) -> Result<BlockSize> {
        if s < Self::MIN.0 || s > Self::MAX.0 || s.0 % Self::MIN.0 .0 != 0 {
            return Err(Error::new(ErrorKind::InvalidBlockSize {
                bytes: s.0.saturating_mul(SECTOR_SIZE),
            }));
        }
        Ok(BlockSize(s))
    }

    /// Validates a size in bytes.
    pub fn from_bytes(b: Bytes) -> Result<BlockSize> {
        match Sectors::from_bytes(b) {
            Some(s) => Self::from_sectors(s),
            None => Err(Error::new(ErrorKind::InvalidBlockSize { bytes: b.0 })),
        }
    }

    /// The size in sectors, as the thin-pool table states it.
    pub fn sectors(self) -> Sectors {
        self.0
    }

    /// The size in bytes.
    pub fn bytes(self) -> Bytes {
        self.0.bytes()
    }

    /// Exact number of blocks in `s`, or a [`ErrorKind::NotBlockMultiple`] error.
    pub fn blocks_exact(self, what: &'static str, s: Sectors) -> Result<DataBlocks> {
        if s.0 % self.0 .0 != 0 {
            return Err(Error::new(ErrorKind::NotBlockMultiple {
                what,
                size: s.bytes(),
                block_size: self.bytes(),
            }));
        }
        Ok(DataBlocks(s.0 / self.0 .0))
    }

    /// Whole blocks in `s`, rounded down.
    pub fn blocks_floor(self, s: Sectors) -> DataBlocks {
        DataBlocks(s.0 / self.0 .0)
    }

    /// Sectors covered by `n` blocks.
    pub fn sectors_of(self, n: DataBlocks) -> Result<Sectors> {
        self.0.checked_mul(n.0)
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

impl FromStr for BlockSize {
    type Err = Error;
    /// Parses the sector count the thin-pool table uses.
    fn from_str(s: &str) -> Result<BlockSize> {
        BlockSize::from_sectors(s.parse()?)
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

    /// Validates an id.
    pub fn new(id: u64) -> Result<ThinId> {
        if id >= Self::LIMIT {
            return Err(Error::new(ErrorKind::ThinIdOutOfRange { id }));
        }
        Ok(ThinId(id as u32))
    }

    /// The raw id.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The next id, or `None` past 2^24 - 1.
    pub fn next(self) -> Option<ThinId> {
        ThinId::new(u64::from(self.0) + 1).ok()
    }
}

impl fmt::Display for ThinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ThinId {
    type Err = Error;
    fn from_str(s: &str) -> Result<ThinId> {
        let n: u64 = s
            .parse()
            .map_err(|e: std::num::ParseIntError| Error::parse("thin id", s, e.to_string()))?;
        ThinId::new(n)
    }
}

/// The pool's transaction id (set with the `set_transaction_id` message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TransactionId(pub u64);

impl TransactionId {
    /// The id after this one.
    pub fn next(self) -> Result<TransactionId> {
        self.0.checked_add(1).map(TransactionId).ok_or_else(|| {
            Error::new(ErrorKind::Overflow {
                what: "transaction id",
            })
        })
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TransactionId {
    type Err = Error;
    fn from_str(s: &str) -> Result<TransactionId> {
        s.parse()
            .map(TransactionId)
            .map_err(|e: std::num::ParseIntError| Error::parse("transaction id", s, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn block_size_bounds() {
        assert!(BlockSize::from_bytes(Bytes::kib(64)).is_ok());
        assert!(BlockSize::from_bytes(Bytes::gib(1)).is_ok());
        assert!(BlockSize::from_bytes(Bytes::kib(192)).is_ok());
        for bad in [0, 4096, 32 << 10, 96 << 10, (1 << 30) + (64 << 10), 1000] {
            let e = BlockSize::from_bytes(Bytes(bad)).unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::InvalidBlockSize { bytes: bad });
        }
    }

    #[test]
    fn thin_id_is_24_bits() {
        assert_eq!(ThinId::new(0).unwrap().get(), 0);
        assert_eq!(ThinId::new((1 << 24) - 1).unwrap(), ThinId::MAX);
        assert!(ThinId::new(1 << 24).is_err());
        assert!(ThinId::MAX.next().is_none());
        assert!("16777216".parse::<ThinId>().is_err());
    }

    #[test]
    fn checked_arithmetic() {
        assert!(Sectors::new(u64::MAX).checked_add(Sectors::new(1)).is_err());
        assert!(DataBlocks::new(u64::MAX / 2 + 1).checked_mul(2).is_err());
        assert_eq!(Sectors::new(1).checked_sub(Sectors::new(2)), None);
        assert!(BlockSize::MAX
            .sectors_of(DataBlocks::new(u64::MAX))
            .is_err());
    }

    #[test]
    fn conversions() {
        assert_eq!(MetaBlocks::new(3).sectors(), Sectors::new(24));
        assert_eq!(Bytes::gib(2).to_string(), "2 GiB");
        assert_eq!(Bytes(1000).to_string(), "1000 bytes");
        let bs = BlockSize::DEFAULT;
        assert_eq!(
            bs.blocks_exact("data", Sectors::new(1280)).unwrap(),
            DataBlocks::new(10)
        );
        assert!(matches!(
            bs.blocks_exact("data", Sectors::new(1281))
                .unwrap_err()
                .kind(),
            ErrorKind::NotBlockMultiple { .. }
        ));
    }

    proptest! {
        #[test]
        fn block_size_roundtrip(k in 1u64..=16384) {
            let bs = BlockSize::from_bytes(Bytes::kib(64 * k)).unwrap();
            prop_assert_eq!(bs.to_string().parse::<BlockSize>().unwrap(), bs);
        }

        #[test]
        fn thin_id_roundtrip(id in 0u64..(1 << 24)) {
            let t = ThinId::new(id).unwrap();
            prop_assert_eq!(t.to_string().parse::<ThinId>().unwrap(), t);
        }

        #[test]
        fn sectors_roundtrip(n: u64) {
            prop_assert_eq!(Sectors::new(n).to_string().parse::<Sectors>().unwrap(), Sectors::new(n));
        }
    }
}
