//! dm status for the `thin-pool` and `thin` targets: the parameters after
//! the target type in `dmsetup status` (the kernel's `pool_status` and
//! `thin_status` in drivers/md/dm-thin.c):
//!
//! ```text
//! thin-pool: <transaction id> <used meta>/<total meta> <used data>/<total data> <held root>|-
//!            rw|ro|out_of_data_space ignore_discard|discard_passdown|no_discard_passdown
//!            error_if_no_space|queue_if_no_space needs_check|- [<metadata low watermark>]
//!            | Fail | Error
//! thin:      <mapped sectors> <highest mapped sector>|- | Fail | Error | -
//! ```
//!
//! The metadata low watermark appeared in kernel 4.19; older kernels omit it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::units::{DataBlocks, MetaBlocks, Sectors, TransactionId};

/// The pool's operating mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolMode {
    /// `rw`: normal.
    ReadWrite,
    /// `ro`: metadata read-only (after a metadata error or on request).
    ReadOnly,
    /// `out_of_data_space`: the data device is full.
    OutOfDataSpace,
    /// `Fail`: the pool has failed; all I/O errors.
    Fail,
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolMode::ReadWrite => "rw",
            PoolMode::ReadOnly => "ro",
            PoolMode::OutOfDataSpace => "out_of_data_space",
            PoolMode::Fail => "Fail",
        })
    }
}

/// How the pool handles discards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiscardMode {
    /// `discard_passdown`: discards free blocks and pass to the data device.
    Passdown,
    /// `no_discard_passdown`: discards free blocks only.
    NoPassdown,
    /// `ignore_discard`: discards are ignored.
    Ignore,
}

impl fmt::Display for DiscardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiscardMode::Passdown => "discard_passdown",
            DiscardMode::NoPassdown => "no_discard_passdown",
            DiscardMode::Ignore => "ignore_discard",
        })
    }
}

/// What a write does when the data device is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoSpacePolicy {
    /// `error_if_no_space`: fail at once.
    Error,
    /// `queue_if_no_space`: queue (for up to `no_space_timeout`).
    Queue,
}

impl fmt::Display for NoSpacePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoSpacePolicy::Error => "error_if_no_space",
            NoSpacePolicy::Queue => "queue_if_no_space",
        })
    }
}

/// Usage and state of a working pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolUsage {
    /// Transaction id.
    pub transaction_id: TransactionId,
    /// Used metadata blocks.
    pub used_meta: MetaBlocks,
    /// Total metadata blocks.
    pub total_meta: MetaBlocks,
    /// Used data blocks.
    pub used_data: DataBlocks,
    /// Total data blocks.
    pub total_data: DataBlocks,
    /// The held metadata root (a reserved metadata snapshot), if any.
    pub held_root: Option<MetaBlocks>,
    /// Mode.
    pub mode: PoolMode,
    /// Discard handling.
    pub discard: DiscardMode,
    /// Behaviour when out of data space.
    pub no_space: NoSpacePolicy,
    /// The metadata needs `thin_check` before the pool can be written.
    pub needs_check: bool,
    /// Free metadata blocks below which the kernel raises an event (4.19+).
    pub metadata_low_watermark: Option<MetaBlocks>,
}

impl PoolUsage {
    /// Free data blocks.
    pub fn free_data(&self) -> DataBlocks {
        self.total_data
            .checked_sub(self.used_data)
            .unwrap_or_default()
    }

    /// Free metadata blocks.
    pub fn free_meta(&self) -> MetaBlocks {
        self.total_meta
            .checked_sub(self.used_meta)
            .unwrap_or_default()
    }
}

/// A thin-pool status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PoolStatus {
    /// The pool works (in the mode given).
    Working(Box<PoolUsage>),
    /// `Fail`: the pool has failed.
    Fail,
    /// `Error`: the kernel could not read the pool's metadata for status.
    Error,
}

impl PoolStatus {
    /// The mode; `Fail` for both failed states.
    pub fn mode(&self) -> PoolMode {
        match self {
            PoolStatus::Working(u) => u.mode,
            PoolStatus::Fail | PoolStatus::Error => PoolMode::Fail,
        }
    }

    /// The usage, when the pool works.
    pub fn usage(&self) -> Option<&PoolUsage> {
        match self {
            PoolStatus::Working(u) => Some(u),
            _ => None,
        }
    }

    /// The usage, or a `PoolNotWritable` error naming the state when the
    /// pool has failed (what every mutation checks first).
    pub fn into_usage(self) -> Result<PoolUsage> {
        match self {
            PoolStatus::Working(u) => Ok(*u),
            s => Err(Error::new(crate::error::ErrorKind::PoolNotWritable {
                mode: s.to_string(),
            })),
        }
    }
}

impl fmt::Display for PoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = match self {
            PoolStatus::Fail => return f.write_str("Fail"),
            PoolStatus::Error => return f.write_str("Error"),
            PoolStatus::Working(u) => u,
        };
        write!(
            f,
            "{} {}/{} {}/{} ",
            u.transaction_id, u.used_meta, u.total_meta, u.used_data, u.total_data
        )?;
        match u.held_root {
            Some(r) => write!(f, "{r} ")?,
            None => f.write_str("- ")?,
        }
        write!(
            f,
            "{} {} {} {}",
            u.mode,
            u.discard,
            u.no_space,
            if u.needs_check { "needs_check" } else { "-" }
        )?;
        if let Some(w) = u.metadata_low_watermark {
            write!(f, " {w}")?;
        }
        Ok(())
    }
}

fn pair<T: FromStr<Err = Error>>(s: &str, line: &str) -> Result<(T, T)> {
    let (a, b) = s.split_once('/').ok_or_else(|| {
        Error::parse(
            "thin-pool status",
            line,
            format!("expected USED/TOTAL, got {s:?}"),
        )
    })?;
    Ok((a.parse()?, b.parse()?))
}

impl FromStr for PoolStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<PoolStatus> {
        let f: Vec<&str> = s.split_whitespace().collect();
        match f.as_slice() {
            ["Fail"] => return Ok(PoolStatus::Fail),
            ["Error"] => return Ok(PoolStatus::Error),
            _ => {}
        }
        let bad = |reason: String| Error::parse("thin-pool status", s, reason);
        if !(8..=9).contains(&f.len()) {
            return Err(bad(format!("expected 8 or 9 fields, got {}", f.len())));
        }
        let (used_meta, total_meta) = pair(f[1], s)?;
        let (used_data, total_data) = pair(f[2], s)?;
        let held_root = match f[3] {
            "-" => None,
            r => Some(r.parse()?),
        };
        let mode = match f[4] {
            "rw" => PoolMode::ReadWrite,
            "ro" => PoolMode::ReadOnly,
            "out_of_data_space" => PoolMode::OutOfDataSpace,
            m => return Err(bad(format!("unknown mode {m:?}"))),
        };
        let discard = match f[5] {
            "discard_passdown" => DiscardMode::Passdown,
            "no_discard_passdown" => DiscardMode::NoPassdown,
            "ignore_discard" => DiscardMode::Ignore,
            d => return Err(bad(format!("unknown discard mode {d:?}"))),
        };
        let no_space = match f[6] {
            "error_if_no_space" => NoSpacePolicy::Error,
            "queue_if_no_space" => NoSpacePolicy::Queue,
            p => return Err(bad(format!("unknown no-space policy {p:?}"))),
        };
        let needs_check = match f[7] {
            "needs_check" => true,
            "-" => false,
            c => return Err(bad(format!("unknown needs_check field {c:?}"))),
        };
        Ok(PoolStatus::Working(Box::new(PoolUsage {
            transaction_id: f[0].parse()?,
            used_meta,
            total_meta,
            used_data,
            total_data,
            held_root,
            mode,
            discard,
            no_space,
            needs_check,
            metadata_low_watermark: f.get(8).map(|w| w.parse()).transpose()?,
        })))
    }
}

/// A thin device's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThinStatus {
    /// Working: mapped sectors and the highest mapped sector (`None` when
    /// nothing is mapped).
    Working {
        /// Sectors mapped (a multiple of the block size).
        mapped: Sectors,
        /// Last sector of the highest mapped block.
        highest_mapped: Option<Sectors>,
    },
    /// `-`: the thin device is not open yet.
    NotOpen,
    /// `Fail`: the pool has failed.
    Fail,
    /// `Error`: the kernel could not read the device's metadata.
    Error,
}

impl fmt::Display for ThinStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThinStatus::Working {
                mapped,
                highest_mapped: Some(h),
            } => write!(f, "{mapped} {h}"),
            ThinStatus::Working {
                mapped,
                highest_mapped: None,
            } => write!(f, "{mapped} -"),
            ThinStatus::NotOpen => f.write_str("-"),
            ThinStatus::Fail => f.write_str("Fail"),
            ThinStatus::Error => f.write_str("Error"),
        }
    }
}

impl FromStr for ThinStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<ThinStatus> {
        let f: Vec<&str> = s.split_whitespace().collect();
        match f.as_slice() {
            ["-"] => Ok(ThinStatus::NotOpen),
            ["Fail"] => Ok(ThinStatus::Fail),
            ["Error"] => Ok(ThinStatus::Error),
            [m, h] => Ok(ThinStatus::Working {
                mapped: m.parse()?,
                highest_mapped: match *h {
                    "-" => None,
                    h => Some(h.parse()?),
                },
            }),
            _ => Err(Error::parse(
                "thin status",
                s,
                "expected MAPPED HIGHEST, -, Fail or Error",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kernel_61_pool_status() {
        // As Debian's 6.1 kernel prints it, trailing space included.
        let s = "3 12/524288 40/8192 - rw discard_passdown queue_if_no_space - 1024 ";
        let st: PoolStatus = s.parse().unwrap();
        let u = st.usage().unwrap();
        assert_eq!(u.transaction_id, TransactionId(3));
        assert_eq!(u.used_meta, MetaBlocks::new(12));
        assert_eq!(u.total_data, DataBlocks::new(8192));
        assert_eq!(u.free_data(), DataBlocks::new(8152));
        assert_eq!(u.mode, PoolMode::ReadWrite);
        assert_eq!(u.metadata_low_watermark, Some(MetaBlocks::new(1024)));
        assert_eq!(st.to_string(), s.trim_end());
    }

    #[test]
    fn parses_other_pool_states() {
        let st: PoolStatus =
            "0 9/256 8192/8192 17 out_of_data_space ignore_discard error_if_no_space needs_check"
                .parse()
                .unwrap();
        let u = st.usage().unwrap();
        assert_eq!(u.mode, PoolMode::OutOfDataSpace);
        assert_eq!(u.held_root, Some(MetaBlocks::new(17)));
        assert!(u.needs_check);
        assert_eq!(u.no_space, NoSpacePolicy::Error);
        assert_eq!("Fail".parse::<PoolStatus>().unwrap().mode(), PoolMode::Fail);
        assert!("0 9/256 1/2 - rx discard_passdown queue_if_no_space -"
            .parse::<PoolStatus>()
            .is_err());
        assert!("0 9 1/2 - rw discard_passdown queue_if_no_space -"
            .parse::<PoolStatus>()
            .is_err());
    }

    #[test]
    fn parses_thin_status() {
        assert_eq!(
            "256 255".parse::<ThinStatus>().unwrap(),
            ThinStatus::Working {
                mapped: Sectors::new(256),
                highest_mapped: Some(Sectors::new(255))
            }
        );
        assert_eq!(
            "0 -".parse::<ThinStatus>().unwrap(),
            ThinStatus::Working {
                mapped: Sectors::ZERO,
                highest_mapped: None
            }
        );
        assert_eq!("-".parse::<ThinStatus>().unwrap(), ThinStatus::NotOpen);
        assert!("1 2 3".parse::<ThinStatus>().is_err());
    }

    fn arb_usage() -> impl Strategy<Value = PoolUsage> {
        (
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
            ),
            proptest::option::of(any::<u64>()),
            prop_oneof![
                Just(PoolMode::ReadWrite),
                Just(PoolMode::ReadOnly),
                Just(PoolMode::OutOfDataSpace)
            ],
            prop_oneof![
                Just(DiscardMode::Passdown),
                Just(DiscardMode::NoPassdown),
                Just(DiscardMode::Ignore)
            ],
            prop_oneof![Just(NoSpacePolicy::Error), Just(NoSpacePolicy::Queue)],
            any::<bool>(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |((t, um, tm, ud, td), held, mode, discard, no_space, needs_check, w)| PoolUsage {
                    transaction_id: TransactionId(t),
                    used_meta: MetaBlocks::new(um),
                    total_meta: MetaBlocks::new(tm),
                    used_data: DataBlocks::new(ud),
                    total_data: DataBlocks::new(td),
                    held_root: held.map(MetaBlocks::new),
                    mode,
                    discard,
                    no_space,
                    needs_check,
                    metadata_low_watermark: w.map(MetaBlocks::new),
                },
            )
    }

    proptest! {
        #[test]
        fn pool_status_roundtrip(u in arb_usage()) {
            let st = PoolStatus::Working(Box::new(u));
            prop_assert_eq!(st.to_string().parse::<PoolStatus>().unwrap(), st);
        }

        #[test]
        fn thin_status_roundtrip(m: u64, h in proptest::option::of(any::<u64>())) {
            let st = ThinStatus::Working { mapped: Sectors::new(m), highest_mapped: h.map(Sectors::new) };
            prop_assert_eq!(st.to_string().parse::<ThinStatus>().unwrap(), st);
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<PoolStatus>();
            let _ = s.parse::<ThinStatus>();
        }
    }
}
