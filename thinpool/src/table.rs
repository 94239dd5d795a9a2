//! dm table lines for the `thin-pool` and `thin` targets, as `dmsetup table`
//! prints them and as the kernel documents them
//! (Documentation/admin-guide/device-mapper/thin-provisioning.rst):
//!
//! ```text
//! <start> <len> thin-pool <metadata dev> <data dev> <data block size> <low water mark> [<#features> <feature>*]
//! <start> <len> thin <pool dev> <dev id> [<external origin dev>]
//! ```
//!
//! Each type parses with `FromStr` and prints with `Display`, and the two
//! round-trip. Feature arguments print in the kernel's own order, so a table
//! read back from the kernel compares equal to the one loaded.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::units::{BlockSize, DataBlocks, Sectors, ThinId};

pub use kernfmt::DevNum;

/// A device named in a table: by number (as the kernel prints it) or by path
/// (as a caller may load it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DevRef {
    /// `MAJOR:MINOR`.
    Num(DevNum),
    /// `/dev/...`.
    Path(PathBuf),
}

impl fmt::Display for DevRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevRef::Num(n) => n.fmt(f),
            DevRef::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl FromStr for DevRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<DevRef> {
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            return Err(Error::parse("device", s, "expected MAJOR:MINOR or a path"));
        }
        if s.contains(':') && !s.starts_with('/') {
            return Ok(DevRef::Num(s.parse()?));
        }
        if !s.starts_with('/') {
            return Err(Error::parse(
                "device",
                s,
                "expected MAJOR:MINOR or an absolute path",
            ));
        }
        Ok(DevRef::Path(PathBuf::from(s)))
    }
}

impl From<DevNum> for DevRef {
    fn from(n: DevNum) -> DevRef {
        DevRef::Num(n)
    }
}

/// Optional feature arguments of the thin-pool target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PoolFeatures {
    /// `skip_block_zeroing`: do not zero newly provisioned blocks.
    pub skip_block_zeroing: bool,
    /// `ignore_discard`: disable discard support.
    pub ignore_discard: bool,
    /// `no_discard_passdown`: do not pass discards down to the data device.
    pub no_discard_passdown: bool,
    /// `read_only`: do not allow changes to the metadata.
    pub read_only: bool,
    /// `error_if_no_space`: fail writes instead of queueing them when the
    /// data device is full.
    pub error_if_no_space: bool,
}

impl PoolFeatures {
    fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        // The kernel's emit order (drivers/md/dm-thin.c, emit_flags).
        if self.skip_block_zeroing {
            v.push("skip_block_zeroing");
        }
        if self.ignore_discard {
            v.push("ignore_discard");
        }
        if self.no_discard_passdown {
            v.push("no_discard_passdown");
        }
        if self.read_only {
            v.push("read_only");
        }
        if self.error_if_no_space {
            v.push("error_if_no_space");
        }
        v
    }

    fn set(&mut self, name: &str) -> bool {
        let flag = match name {
            "skip_block_zeroing" => &mut self.skip_block_zeroing,
            "ignore_discard" => &mut self.ignore_discard,
            "no_discard_passdown" => &mut self.no_discard_passdown,
            "read_only" => &mut self.read_only,
            "error_if_no_space" => &mut self.error_if_no_space,
            _ => return false,
        };
        *flag = true;
        true
    }
}

impl fmt::Display for PoolFeatures {
    /// `<#features> <feature>*`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        write!(f, "{}", names.len())?;
        for n in names {
            write!(f, " {n}")?;
        }
        Ok(())
    }
}

impl FromStr for PoolFeatures {
    type Err = Error;
    /// Parses `<#features> <feature>*`.
    fn from_str(s: &str) -> Result<PoolFeatures> {
        let f: Vec<&str> = s.split_whitespace().collect();
        let bad = |reason: &str| Error::parse("thin-pool features", s, reason);
        let n: usize = f
            .first()
            .ok_or_else(|| bad("missing feature count"))?
            .parse()
            .map_err(|_| bad("bad feature count"))?;
        if f.len() != n + 1 {
            return Err(bad("feature count does not match the features given"));
        }
        let mut features = PoolFeatures::default();
        for name in &f[1..] {
            if !features.set(name) {
                return Err(bad(&format!("unknown feature {name}")));
            }
        }
        Ok(features)
    }
}

/// A target line split into its four fields, as the dm ioctls carry it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetLine {
    /// First sector.
    pub start: Sectors,
    /// Length.
    pub length: Sectors,
    /// Target type (`thin-pool`, `thin`, `linear`, ...).
    pub target_type: String,
    /// The target's parameters.
    pub params: String,
}

impl fmt::Display for TargetLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.start, self.length, self.target_type)?;
        if !self.params.is_empty() {
            write!(f, " {}", self.params)?;
        }
        Ok(())
    }
}

impl FromStr for TargetLine {
    type Err = Error;
    fn from_str(s: &str) -> Result<TargetLine> {
        let mut it = s.trim().splitn(4, ' ');
        let mut field = |name: &str| {
            it.next()
                .filter(|f| !f.is_empty())
                .ok_or_else(|| Error::parse("table line", s, format!("missing {name}")))
        };
        let start = field("start")?.parse()?;
        let length = field("length")?.parse()?;
        let target_type = field("target type")?.to_owned();
        let params = it.next().unwrap_or("").trim().to_owned();
        Ok(TargetLine {
            start,
            length,
            target_type,
            params,
        })
    }
}

/// A thin-pool table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolTable {
    /// Length of the pool device (the data device's size).
    pub length: Sectors,
    /// The metadata device.
    pub metadata: DevRef,
    /// The data device.
    pub data: DevRef,
    /// Data block size.
    pub block_size: BlockSize,
    /// Free data blocks below which the kernel raises a dm event.
    pub low_water_mark: DataBlocks,
    /// Feature arguments.
    pub features: PoolFeatures,
}

impl PoolTable {
    /// The target type name.
    pub const TARGET: &'static str = "thin-pool";

    /// As a target line for the dm seam.
    pub fn to_target(&self) -> TargetLine {
        TargetLine {
            start: Sectors::ZERO,
            length: self.length,
            target_type: Self::TARGET.to_owned(),
            params: format!(
                "{} {} {} {} {}",
                self.metadata, self.data, self.block_size, self.low_water_mark, self.features
            ),
        }
    }

    /// From a target line the dm seam returned.
    pub fn from_target(t: &TargetLine) -> Result<PoolTable> {
        let line = t.to_string();
        let bad = |reason: &str| Error::parse("thin-pool table", &line, reason);
        if t.target_type != Self::TARGET {
            return Err(bad("target type is not thin-pool"));
        }
        if t.start != Sectors::ZERO {
            return Err(bad("a thin-pool target must start at sector 0"));
        }
        let f: Vec<&str> = t.params.split_whitespace().collect();
        if f.len() < 4 {
            return Err(bad(
                "expected metadata dev, data dev, block size, low water mark",
            ));
        }
        let features = if f.len() > 4 {
            f[4..].join(" ").parse()?
        } else {
            PoolFeatures::default()
        };
        Ok(PoolTable {
            length: t.length,
            metadata: f[0].parse()?,
            data: f[1].parse()?,
            block_size: f[2].parse()?,
            low_water_mark: f[3].parse()?,
            features,
        })
    }
}

impl fmt::Display for PoolTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_target().fmt(f)
    }
}

impl FromStr for PoolTable {
    type Err = Error;
    fn from_str(s: &str) -> Result<PoolTable> {
        PoolTable::from_target(&s.parse()?)
    }
}

/// A thin table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThinTable {
    /// Virtual size of the thin device.
    pub length: Sectors,
    /// The pool device.
    pub pool: DevRef,
    /// The thin id inside the pool.
    pub id: ThinId,
    /// A read-only external origin, if any.
    pub external_origin: Option<DevRef>,
}

impl ThinTable {
    /// The target type name.
    pub const TARGET: &'static str = "thin";

    /// As a target line for the dm seam.
    pub fn to_target(&self) -> TargetLine {
        let mut params = format!("{} {}", self.pool, self.id);
        if let Some(o) = &self.external_origin {
            params.push(' ');
            params.push_str(&o.to_string());
        }
        TargetLine {
            start: Sectors::ZERO,
            length: self.length,
            target_type: Self::TARGET.to_owned(),
            params,
        }
    }

    /// From a target line the dm seam returned.
    pub fn from_target(t: &TargetLine) -> Result<ThinTable> {
        let line = t.to_string();
        let bad = |reason: &str| Error::parse("thin table", &line, reason);
        if t.target_type != Self::TARGET {
            return Err(bad("target type is not thin"));
        }
        if t.start != Sectors::ZERO {
            return Err(bad("a thin target must start at sector 0"));
        }
        let f: Vec<&str> = t.params.split_whitespace().collect();
        if !(2..=3).contains(&f.len()) {
            return Err(bad(
                "expected pool dev, dev id and an optional external origin",
            ));
        }
        Ok(ThinTable {
            length: t.length,
            pool: f[0].parse()?,
            id: f[1].parse()?,
            external_origin: f.get(2).map(|o| o.parse()).transpose()?,
        })
    }
}

impl fmt::Display for ThinTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_target().fmt(f)
    }
}

impl FromStr for ThinTable {
    type Err = Error;
    fn from_str(s: &str) -> Result<ThinTable> {
        ThinTable::from_target(&s.parse()?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kernel_pool_table() {
        let s = "0 1048576 thin-pool 7:1 7:0 128 32768 2 skip_block_zeroing error_if_no_space";
        let t: PoolTable = s.parse().unwrap();
        assert_eq!(t.metadata, DevRef::Num(DevNum { major: 7, minor: 1 }));
        assert_eq!(t.block_size.sectors(), Sectors::new(128));
        assert_eq!(t.low_water_mark, DataBlocks::new(32768));
        assert!(t.features.skip_block_zeroing && t.features.error_if_no_space);
        assert!(!t.features.ignore_discard);
        assert_eq!(t.to_string(), s);
        // The kernel prints a trailing space; a table without features has 0.
        let t: PoolTable = "0 2048 thin-pool 7:1 7:0 128 0 0 ".parse().unwrap();
        assert_eq!(t.to_string(), "0 2048 thin-pool 7:1 7:0 128 0 0");
        // Features may be absent altogether.
        let t2: PoolTable = "0 2048 thin-pool /dev/loop1 /dev/loop0 128 0"
            .parse()
            .unwrap();
        assert_eq!(t2.features, PoolFeatures::default());
    }

    #[test]
    fn rejects_bad_pool_tables() {
        for bad in [
            "0 2048 thin 7:1 7:0 128 0 0",
            "0 2048 thin-pool 7:1 7:0 64 0 0",
            "0 2048 thin-pool 7:1 7:0 128 0 1",
            "0 2048 thin-pool 7:1 7:0 128 0 1 fast",
            "0 2048 thin-pool 7:1",
            "1 2048 thin-pool 7:1 7:0 128 0 0",
            "0 2048 thin-pool loop1 7:0 128 0 0",
        ] {
            assert!(bad.parse::<PoolTable>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_thin_table() {
        let t: ThinTable = "0 2097152 thin 253:0 7".parse().unwrap();
        assert_eq!(t.id, ThinId::new(7).unwrap());
        assert_eq!(t.external_origin, None);
        let t: ThinTable = "0 2097152 thin 253:0 16777215 8:16".parse().unwrap();
        assert_eq!(
            t.external_origin,
            Some(DevRef::Num(DevNum {
                major: 8,
                minor: 16
            }))
        );
        assert!("0 2097152 thin 253:0 16777216"
            .parse::<ThinTable>()
            .is_err());
    }

    pub(crate) fn arb_devref() -> impl Strategy<Value = DevRef> {
        prop_oneof![
            (0u32..4096, 0u32..1 << 20)
                .prop_map(|(major, minor)| DevRef::Num(DevNum { major, minor })),
            "/dev/[a-z0-9/_-]{1,20}".prop_map(|p| DevRef::Path(PathBuf::from(p))),
        ]
    }

    fn arb_features() -> impl Strategy<Value = PoolFeatures> {
        any::<[bool; 5]>().prop_map(|b| PoolFeatures {
            skip_block_zeroing: b[0],
            ignore_discard: b[1],
            no_discard_passdown: b[2],
            read_only: b[3],
            error_if_no_space: b[4],
        })
    }

    proptest! {
        #[test]
        fn pool_table_roundtrip(
            length: u64, metadata in arb_devref(), data in arb_devref(),
            k in 1u64..=16384, lwm: u64, features in arb_features(),
        ) {
            let t = PoolTable {
                length: Sectors::new(length), metadata, data,
                block_size: BlockSize::from_sectors(Sectors::new(128 * k)).unwrap(),
                low_water_mark: DataBlocks::new(lwm), features,
            };
            prop_assert_eq!(t.to_string().parse::<PoolTable>().unwrap(), t);
        }

        #[test]
        fn thin_table_roundtrip(
            length: u64, pool in arb_devref(), id in 0u64..1 << 24,
            origin in proptest::option::of(arb_devref()),
        ) {
            let t = ThinTable {
                length: Sectors::new(length), pool, id: ThinId::new(id).unwrap(),
                external_origin: origin,
            };
            prop_assert_eq!(t.to_string().parse::<ThinTable>().unwrap(), t);
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<PoolTable>();
            let _ = s.parse::<ThinTable>();
        }
    }
}
