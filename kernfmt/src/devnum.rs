//! `MAJOR:MINOR`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// A device number, `MAJOR:MINOR` as the kernel prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DevNum {
    /// Major number (driver).
    pub major: u32,
    /// Minor number (instance).
    pub minor: u32,
}

impl DevNum {
    /// A device number from its parts.
    pub const fn new(major: u32, minor: u32) -> DevNum {
        DevNum { major, minor }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DevNum {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<DevNum, ParseError> {
        let bad = || ParseError::new("a device number MAJOR:MINOR", s);
        let (major, minor) = s.split_once(':').ok_or_else(bad)?;
        let num = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        Ok(DevNum {
            major: num(major)?,
            minor: num(minor)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        let d: DevNum = "253:4".parse().unwrap();
        assert_eq!(d, DevNum::new(253, 4));
        assert_eq!(d.to_string(), "253:4");
        for bad in [
            "", "253", "253:", ":4", "a:b", "253:4:1", "-1:2", "+1:2", "1: 2",
        ] {
            assert!(bad.parse::<DevNum>().is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn round_trips(major: u32, minor: u32) {
            let d = DevNum::new(major, minor);
            prop_assert_eq!(d.to_string().parse::<DevNum>().unwrap(), d);
        }
    }
}
