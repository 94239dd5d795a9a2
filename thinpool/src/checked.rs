//! The checked half of [`crate::units`]: constructors that validate,
//! arithmetic that can overflow, and parsing, each returning [`Error`].
//! Kept beside the units rather than in them because [`crate::error`]
//! names the units in its payloads.

use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};
use crate::units::{
    BlockSize, Bytes, DataBlocks, MetaBlocks, Sectors, ThinId, TransactionId, SECTOR_SIZE,
};

macro_rules! checked_unit {
    ($name:ident) => {
        impl $name {
            /// Sum, or an overflow error.
            pub fn checked_add(self, other: $name) -> Result<$name> {
                self.get()
                    .checked_add(other.get())
                    .map($name::new)
                    .ok_or_else(|| {
                        Error::new(ErrorKind::Overflow {
                            what: stringify!($name),
                        })
                    })
            }

            /// Product with a scalar, or an overflow error.
            pub fn checked_mul(self, k: u64) -> Result<$name> {
                self.get().checked_mul(k).map($name::new).ok_or_else(|| {
                    Error::new(ErrorKind::Overflow {
                        what: stringify!($name),
                    })
                })
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<$name> {
                s.parse::<u64>()
                    .map($name::new)
                    .map_err(|e| Error::parse(stringify!($name), s, e.to_string()))
            }
        }
    };
}

checked_unit!(Sectors);
checked_unit!(DataBlocks);
checked_unit!(MetaBlocks);

impl BlockSize {
    /// Validates a size in sectors.
    pub fn from_sectors(s: Sectors) -> Result<BlockSize> {
        let (min, max) = (BlockSize::MIN.sectors(), BlockSize::MAX.sectors());
        if s < min || s > max || s.get() % min.get() != 0 {
            return Err(Error::new(ErrorKind::InvalidBlockSize {
                bytes: s.get().saturating_mul(SECTOR_SIZE),
            }));
        }
        Ok(BlockSize::new_unchecked(s))
    }

    /// Validates a size in bytes.
    pub fn from_bytes(b: Bytes) -> Result<BlockSize> {
        match Sectors::from_bytes(b) {
            Some(s) => Self::from_sectors(s),
            None => Err(Error::new(ErrorKind::InvalidBlockSize { bytes: b.0 })),
        }
    }

    /// Exact number of blocks in `s`, or a [`ErrorKind::NotBlockMultiple`] error.
    pub fn blocks_exact(self, what: &'static str, s: Sectors) -> Result<DataBlocks> {
        if s.get() % self.sectors().get() != 0 {
            return Err(Error::new(ErrorKind::NotBlockMultiple {
                what,
                size: s.bytes(),
                block_size: self.bytes(),
            }));
        }
        Ok(DataBlocks::new(s.get() / self.sectors().get()))
    }

    /// Sectors covered by `n` blocks.
    pub fn sectors_of(self, n: DataBlocks) -> Result<Sectors> {
        self.sectors().checked_mul(n.get())
    }
}

impl FromStr for BlockSize {
    type Err = Error;
    /// Parses the sector count the thin-pool table uses.
    fn from_str(s: &str) -> Result<BlockSize> {
        BlockSize::from_sectors(s.parse()?)
    }
}

impl ThinId {
    /// Validates an id.
    pub fn new(id: u64) -> Result<ThinId> {
        if id >= Self::LIMIT {
            return Err(Error::new(ErrorKind::ThinIdOutOfRange { id }));
        }
        Ok(ThinId::new_unchecked(id as u32))
    }

    /// The next id, or `None` past 2^24 - 1.
    pub fn next(self) -> Option<ThinId> {
        ThinId::new(u64::from(self.get()) + 1).ok()
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
