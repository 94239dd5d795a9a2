//! A size in bytes: the one byte-size type of the workspace (thinpool's
//! devices, the snapshotter's usage and max-size label, runner's memory
//! limits, the engine's configured sizes).
//!
//! It prints in the largest exact binary unit (`64 KiB`, `20 GiB`, else
//! `1000 bytes`) and parses what people write: a number with an optional
//! binary suffix `K`, `M`, `G`, `T` (any case, with or without `iB`/`B`,
//! with or without a space), or `bytes`/`b`, so what it prints parses back.
//! Serialized as a number; deserialized from a number or such a string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl Bytes {
    /// `n` KiB.
    pub const fn kib(n: u64) -> Bytes {
        Bytes(n << 10)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> Bytes {
        Bytes(n << 20)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> Bytes {
        Bytes(n << 30)
    }
    /// `n` TiB.
    pub const fn tib(n: u64) -> Bytes {
        Bytes(n << 40)
    }
    /// `self + other`, saturating at `u64::MAX`.
    pub const fn saturating_add(self, other: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(other.0))
    }
    /// Rounded down to a whole number of the largest binary unit of which
    /// it holds at least ten (`187654144` bytes is `178 MiB`), so it prints
    /// short and never promises more than there is.
    pub const fn round_down(self) -> Bytes {
        let mut i = 0;
        while i < UNITS.len() {
            let unit = 1u64 << UNITS[i].1;
            if self.0 >= 10 * unit {
                return Bytes(self.0 / unit * unit);
            }
            i += 1;
        }
        self
    }
    /// `self + other`, or `None` on overflow.
    pub const fn checked_add(self, other: Bytes) -> Option<Bytes> {
        match self.0.checked_add(other.0) {
            Some(n) => Some(Bytes(n)),
            None => None,
        }
    }
}

const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, shift) in UNITS {
            if self.0 >= 1 << shift && self.0 % (1 << shift) == 0 {
                return write!(f, "{} {name}", self.0 >> shift);
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

impl FromStr for Bytes {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Bytes, ParseError> {
        let bad = || {
            ParseError::new(
                "a size: a number with an optional K, M, G or T suffix (binary units), like 20G",
                s,
            )
        };
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = t[..digits].parse().map_err(|_| bad())?;
        let unit = t[digits..].trim().to_ascii_lowercase();
        let shift = match unit.as_str() {
            "" | "b" | "bytes" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift).map(Bytes).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_down_prints_short_and_never_more() {
        assert_eq!(Bytes(187_654_144).round_down().to_string(), "178 MiB");
        assert_eq!(Bytes((25 << 30) + 12345).round_down(), Bytes::gib(25));
        assert_eq!(Bytes(9 << 20).round_down(), Bytes(9 << 20));
        assert_eq!(Bytes(999).round_down(), Bytes(999));
    }
    use proptest::prelude::*;

    #[test]
    fn sizes_parse_as_people_write_them() {
        for (text, bytes) in [
            ("20G", 20 << 30),
            ("20GiB", 20 << 30),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("512MiB", 512 << 20),
            ("64K", 64 << 10),
            ("64 KiB", 64 << 10),
            ("1T", 1 << 40),
            ("4096", 4096),
            ("1 GiB", 1 << 30),
            ("100b", 100),
            ("1000 bytes", 1000),
        ] {
            let b: Bytes = text.parse().unwrap();
            assert_eq!(b.0, bytes, "{text}");
        }
        for bad in ["", "G", "12X", "-1G", "1.5G", "99999999999T", "5iB", "1 2"] {
            assert!(bad.parse::<Bytes>().is_err(), "{bad:?}");
        }
        let e = "12X".parse::<Bytes>().unwrap_err();
        assert!(e.to_string().contains("like 20G"), "{e}");
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(Bytes::kib(64).to_string(), "64 KiB");
        assert_eq!(Bytes::mib(3).to_string(), "3 MiB");
        assert_eq!(Bytes::gib(2).to_string(), "2 GiB");
        assert_eq!(Bytes::tib(1).to_string(), "1 TiB");
        assert_eq!(Bytes(1536 << 10).to_string(), "1536 KiB");
        assert_eq!(Bytes(1000).to_string(), "1000 bytes");
        assert_eq!(Bytes(0).to_string(), "0 bytes");
    }

    #[test]
    fn serde_is_a_number_and_reads_strings_too() {
        assert_eq!(serde_json::to_string(&Bytes::mib(1)).unwrap(), "1048576");
        let b: Bytes = serde_json::from_str("\"2G\"").unwrap();
        assert_eq!(b, Bytes::gib(2));
        let b: Bytes = serde_json::from_str("4096").unwrap();
        assert_eq!(b, Bytes(4096));
        assert!(serde_json::from_str::<Bytes>("\"two\"").is_err());
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Bytes(u64::MAX).saturating_add(Bytes(1)), Bytes(u64::MAX));
        assert_eq!(Bytes(u64::MAX).checked_add(Bytes(1)), None);
        assert_eq!(Bytes(1).checked_add(Bytes(2)), Some(Bytes(3)));
    }

    proptest! {
        #[test]
        fn what_prints_parses_back(n: u64) {
            let b = Bytes(n);
            prop_assert_eq!(b.to_string().parse::<Bytes>().unwrap(), b);
        }
    }
}
