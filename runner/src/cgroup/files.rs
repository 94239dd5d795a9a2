//! The formats of cgroupfs files as types, each `FromStr` + `Display` so that
//! what is parsed prints back to the same text the kernel takes.
//!
//! | type | files |
//! |---|---|
//! | [`DevNum`] (from `kernfmt`) | the `MAJ:MIN` in every per-device file |
//! | [`Max`] | `pids.max`, `memory.max`, `memory.swap.max`, `memory.low` |
//! | [`CpuList`] | `cpuset.cpus`, `cpuset.mems`, `/sys/devices/system/cpu/online` |
//! | [`CpuMax`] | `cpu.max` (v2) |
//! | [`DeviceRate`] | `blkio.throttle.*_device` (v1) |
//! | [`IoMax`] | `io.max` (v2) |
//! | [`FlatKeyed`] | `memory.events`, `pids.events`, `memory.oom_control`, `cgroup.events` |

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use kernfmt::{unescape_octal, Bytes, DevNum, MountInfo};

use crate::error::{parse_error, Error};

/// A limit that may be `max` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Max<T> {
    /// No limit: the file reads `max`.
    Unlimited,
    /// A limit.
    Limit(T),
}

impl<T: fmt::Display> fmt::Display for Max<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Max::Unlimited => f.write_str("max"),
            Max::Limit(v) => v.fmt(f),
        }
    }
}

impl<T: FromStr> FromStr for Max<T> {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "max" => Ok(Max::Unlimited),
            v => v
                .parse()
                .map(Max::Limit)
                .map_err(|_| parse_error("a limit or \"max\"", s)),
        }
    }
}

/// A set of CPU (or memory node) numbers, written as ranges: `0-3,6`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CpuList(pub std::collections::BTreeSet<u32>);

impl CpuList {
    /// Whether every member of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuList) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The members of `self` missing from `other`.
    pub fn missing_from(&self, other: &CpuList) -> CpuList {
        CpuList(self.0.difference(&other.0).copied().collect())
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for CpuList {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut set = std::collections::BTreeSet::new();
        let t = s.trim();
        if t.is_empty() {
            return Ok(CpuList(set));
        }
        for part in t.split(',') {
            let bad = || parse_error("a CPU list like 0-3,6", s);
            match part.split_once('-') {
                Some((a, b)) => {
                    let a: u32 = a.trim().parse().map_err(|_| bad())?;
                    let b: u32 = b.trim().parse().map_err(|_| bad())?;
                    if a > b || b - a > 65536 {
                        return Err(bad());
                    }
                    set.extend(a..=b);
                }
                None => {
                    set.insert(part.trim().parse().map_err(|_| bad())?);
                }
            }
        }
        Ok(CpuList(set))
    }
}

/// `cpu.max`: `QUOTA PERIOD` in microseconds, QUOTA may be `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuMax {
    /// Run time allowed per period, in microseconds.
    pub quota_us: Max<u64>,
    /// The period, in microseconds.
    pub period_us: u64,
}

impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.quota_us, self.period_us)
    }
}

impl FromStr for CpuMax {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut it = s.split_whitespace();
        let (Some(q), Some(p), None) = (it.next(), it.next(), it.next()) else {
            return Err(parse_error("cpu.max \"QUOTA PERIOD\"", s));
        };
        Ok(CpuMax {
            quota_us: q.parse()?,
            period_us: p.parse().map_err(|_| parse_error("a cpu period", s))?,
        })
    }
}

/// One line of a v1 per-device file: `MAJ:MIN VALUE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRate {
    /// The device.
    pub device: DevNum,
    /// Bytes or operations per second.
    pub rate: u64,
}

impl fmt::Display for DeviceRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.device, self.rate)
    }
}

impl FromStr for DeviceRate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut it = s.split_whitespace();
        let (Some(d), Some(r), None) = (it.next(), it.next(), it.next()) else {
            return Err(parse_error("\"MAJ:MIN RATE\"", s));
        };
        Ok(DeviceRate {
            device: d.parse()?,
            rate: r.parse().map_err(|_| parse_error("a rate", s))?,
        })
    }
}

/// One line of v2 `io.max`: `MAJ:MIN rbps=N wbps=N riops=N wiops=N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoMax {
    /// The device.
    pub device: DevNum,
    /// Read bytes per second.
    pub rbps: Max<u64>,
    /// Write bytes per second.
    pub wbps: Max<u64>,
    /// Read operations per second.
    pub riops: Max<u64>,
    /// Write operations per second.
    pub wiops: Max<u64>,
}

impl IoMax {
    /// No throttle on `device`.
    pub fn unlimited(device: DevNum) -> IoMax {
        IoMax {
            device,
            rbps: Max::Unlimited,
            wbps: Max::Unlimited,
            riops: Max::Unlimited,
            wiops: Max::Unlimited,
        }
    }
}

impl fmt::Display for IoMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rbps={} wbps={} riops={} wiops={}",
            self.device, self.rbps, self.wbps, self.riops, self.wiops
        )
    }
}

impl FromStr for IoMax {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut it = s.split_whitespace();
        let device = it
            .next()
            .ok_or_else(|| parse_error("an io.max line", s))?
            .parse()?;
        let mut io = IoMax::unlimited(device);
        for kv in it {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| parse_error("an io.max key=value", s))?;
            let v: Max<u64> = v.parse()?;
            match k {
                "rbps" => io.rbps = v,
                "wbps" => io.wbps = v,
                "riops" => io.riops = v,
                "wiops" => io.wiops = v,
                _ => return Err(parse_error("an io.max key (rbps wbps riops wiops)", s)),
            }
        }
        Ok(io)
    }
}

/// A flat-keyed file: one `KEY VALUE` per line (`memory.events`,
/// `pids.events`, `memory.oom_control`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FlatKeyed(pub BTreeMap<String, u64>);

impl FlatKeyed {
    /// The value of `key`, 0 when absent (the kernel omits nothing it counts,
    /// but older kernels lack newer keys such as `oom_kill`).
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }
}

impl fmt::Display for FlatKeyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.0 {
            writeln!(f, "{k} {v}")?;
        }
        Ok(())
    }
}

impl FromStr for FlatKeyed {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut map = BTreeMap::new();
        for line in s.lines().filter(|l| !l.trim().is_empty()) {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) else {
                return Err(parse_error("a \"KEY VALUE\" line", line));
            };
            let v = v
                .parse()
                .map_err(|_| parse_error("a counter value", line))?;
            map.insert(k.to_owned(), v);
        }
        Ok(FlatKeyed(map))
    }
}

/// One rule of the v1 devices controller (`devices.allow`, `devices.deny`,
/// `devices.list`): `TYPE MAJ:MIN ACCESS`, where TYPE is `a` (all), `c` or
/// `b`, MAJ and MIN a number or `*`, ACCESS some of `r`, `w`, `m`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// `a`, `c` or `b`.
    pub kind: char,
    /// Major number, `None` for `*`.
    pub major: Option<u32>,
    /// Minor number, `None` for `*`.
    pub minor: Option<u32>,
    /// Access: a subset of "rwm", in that order.
    pub access: String,
}

impl DeviceRule {
    /// A character device rule.
    pub fn char(major: Option<u32>, minor: Option<u32>, access: &str) -> DeviceRule {
        DeviceRule {
            kind: 'c',
            major,
            minor,
            access: access.to_owned(),
        }
    }
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |v: Option<u32>| v.map_or("*".to_owned(), |v| v.to_string());
        write!(
            f,
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

impl FromStr for DeviceRule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || parse_error("a device rule \"c 1:3 rwm\"", s);
        let mut it = s.split_whitespace();
        let (Some(kind), Some(nums), Some(access), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad());
        };
        let kind = match kind {
            "a" | "c" | "b" => kind.chars().next().ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        let (ma, mi) = nums.split_once(':').ok_or_else(bad)?;
        let num = |v: &str| -> Result<Option<u32>, Error> {
            if v == "*" {
                Ok(None)
            } else {
                v.parse().map(Some).map_err(|_| bad())
            }
        };
        if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
            return Err(bad());
        }
        Ok(DeviceRule {
            kind,
            major: num(ma)?,
            minor: num(mi)?,
            access: access.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip<T: FromStr<Err = Error> + fmt::Display + PartialEq + fmt::Debug>(s: &str) {
        let v: T = s.parse().unwrap();
        assert_eq!(v.to_string(), s);
        assert_eq!(v.to_string().parse::<T>().unwrap(), v);
    }

    #[test]
    fn kernel_strings_round_trip() {
        round_trip::<Max<u64>>("max");
        round_trip::<Max<u64>>("67108864");
        round_trip::<CpuList>("0-3,6,8-9");
        round_trip::<CpuMax>("max 100000");
        round_trip::<CpuMax>("50000 100000");
        round_trip::<DeviceRate>("7:0 1048576");
        round_trip::<IoMax>("253:4 rbps=1048576 wbps=max riops=max wiops=100");
        round_trip::<DeviceRule>("c 1:3 rwm");
        round_trip::<DeviceRule>("c 136:* rwm");
        round_trip::<DeviceRule>("b *:* m");
        round_trip::<FlatKeyed>("high 0\nlow 0\nmax 3\noom 1\noom_kill 1\n");
    }

    #[test]
    fn kernel_forms_parse() {
        assert_eq!("0-1\n".parse::<CpuList>().unwrap(), CpuList([0, 1].into()));
        assert!("".parse::<CpuList>().unwrap().is_empty());
        let oom: FlatKeyed = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
            .parse()
            .unwrap();
        assert_eq!(oom.get("oom_kill"), 2);
        assert_eq!(oom.get("absent"), 0);
        let io: IoMax = "8:0 wbps=1024".parse().unwrap();
        assert_eq!(io.wbps, Max::Limit(1024));
        assert_eq!(io.rbps, Max::Unlimited);
    }

    #[test]
    fn malformed_strings_are_errors() {
        for bad in ["8", "a:b", "8:"] {
            assert!(bad.parse::<DevNum>().is_err(), "{bad}");
        }
        for bad in ["3-1", "x", "1,,2", "0-"] {
            assert!(bad.parse::<CpuList>().is_err(), "{bad}");
        }
        assert!("max".parse::<CpuMax>().is_err());
        assert!("8:0 speed=3".parse::<IoMax>().is_err());
        assert!("key".parse::<FlatKeyed>().is_err());
        for bad in ["x 1:3 rwm", "c 1 rwm", "c 1:3 rwx", "c 1:3"] {
            assert!(bad.parse::<DeviceRule>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn cpu_lists_round_trip(cpus in proptest::collection::btree_set(0u32..256, 0..40)) {
            let list = CpuList(cpus);
            prop_assert_eq!(list.to_string().parse::<CpuList>().unwrap(), list);
        }

        #[test]
        fn io_max_round_trips(maj in 0u32..4096, min in 0u32..1 << 20,
                              r in proptest::option::of(0u64..u64::MAX), w in proptest::option::of(1u64..1 << 40)) {
            let m = |v: Option<u64>| v.map_or(Max::Unlimited, Max::Limit);
            let io = IoMax { device: DevNum::new(maj, min), rbps: m(r), wbps: m(w), riops: Max::Unlimited, wiops: m(w) };
            prop_assert_eq!(io.to_string().parse::<IoMax>().unwrap(), io);
        }

        #[test]
        fn flat_keyed_round_trips(map in proptest::collection::btree_map("[a-z_]{1,12}", any::<u64>(), 0..8)) {
            let f = FlatKeyed(map);
            prop_assert_eq!(f.to_string().parse::<FlatKeyed>().unwrap(), f);
        }
    }
}
