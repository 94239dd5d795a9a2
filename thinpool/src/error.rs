//! The crate's one error type: a matchable [`ErrorKind`], the [`Context`]
//! (pool, device, path, operation) it happened in, and the underlying source.

use std::fmt;
use std::path::PathBuf;

use crate::units::{Bytes, DataBlocks, MetaBlocks, Sectors};

/// What went wrong. Each variant carries the offending value so the message
/// can name it and say what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A data block size outside 64 KiB..=1 GiB or not a multiple of 64 KiB.
    InvalidBlockSize {
        /// The rejected size.
        bytes: u64,
    },
    /// A size that must be a whole number of data blocks is not.
    NotBlockMultiple {
        /// What the size is for ("data device", "thin device").
        what: &'static str,
        /// The rejected size.
        size: Bytes,
        /// The pool's data block size.
        block_size: Bytes,
    },
    /// A size that must not be zero (or is otherwise too small) was given.
    SizeTooSmall {
        /// What the size is for.
        what: &'static str,
        /// The rejected size.
        size: Bytes,
        /// The smallest accepted size.
        min: Bytes,
    },
    /// A sparse file would be larger than the room the filesystem under it
    /// has ([`crate::backing`]).
    NoRoom {
        /// The file, its size and the figures ([`crate::backing::Backing::explain`]).
        explained: String,
        /// The most it may be sized.
        max: Bytes,
    },
    /// A thin device id does not fit the kernel's 24 bits.
    ThinIdOutOfRange {
        /// The rejected id.
        id: u64,
    },
    /// Every 24-bit thin id is taken.
    ThinIdsExhausted,
    /// A dm, thin or pool name that is empty, too long or has characters the
    /// kernel or thinbox does not accept.
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The metadata device is smaller than thin_metadata_size computes.
    MetadataTooSmall {
        /// Size of the metadata device.
        have: Sectors,
        /// Size thin_metadata_size asks for.
        need: Sectors,
    },
    /// Arithmetic on units would overflow `u64`.
    Overflow {
        /// What was being computed.
        what: &'static str,
    },
    /// A kernel string (table, status, sysfs file) did not parse.
    Parse {
        /// What was being parsed ("thin-pool table", "thin status").
        what: &'static str,
        /// The input text.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A dm device, thin device or pool of this name already exists.
    NameTaken {
        /// The name.
        name: String,
    },
    /// No dm device, thin device, pool or record of this name exists.
    NotFound {
        /// The name (or path) looked for.
        name: String,
    },
    /// A device is in use (open, mounted, or has active thin devices).
    Busy {
        /// The busy device.
        device: String,
    },
    /// The caller is not root (device-mapper and loop control need CAP_SYS_ADMIN).
    NotRoot,
    /// The running kernel has no dm-thin-pool target.
    DmThinUnsupported,
    /// The running kernel has no device-mapper (`/dev/mapper/control` is missing).
    DmUnavailable,
    /// The pool has no free data blocks left.
    OutOfDataSpace {
        /// Used data blocks.
        used: DataBlocks,
        /// Total data blocks.
        total: DataBlocks,
    },
    /// Creating a thin device would take the pool below the free-space floor.
    BelowFreeSpaceFloor {
        /// Used data blocks.
        used: DataBlocks,
        /// Total data blocks.
        total: DataBlocks,
        /// The floor, as a percentage of the pool that must stay free.
        floor_percent: u8,
    },
    /// The pool's metadata has no free blocks left.
    OutOfMetadataSpace {
        /// Used metadata blocks.
        used: MetaBlocks,
        /// Total metadata blocks.
        total: MetaBlocks,
    },
    /// The pool is in read-only or failed mode.
    PoolNotWritable {
        /// The mode the kernel reports ("ro", "Fail").
        mode: String,
    },
    /// The pool's transaction id is not one thinbox's records explain: some
    /// other tool changed the pool.
    TransactionMismatch {
        /// Transaction id the kernel reports.
        kernel: u64,
        /// Transaction id the records expect.
        recorded: u64,
    },
    /// An existing dm device does not have the table thinbox would load.
    TableMismatch {
        /// The dm device.
        device: String,
        /// The table found.
        found: String,
        /// The table expected.
        expected: String,
    },
    /// A device-mapper ioctl failed for a reason not covered above.
    Kernel {
        /// The errno the kernel returned, if known.
        errno: Option<i32>,
    },
    /// A loop-device operation failed for a reason not covered above.
    Loop,
    /// A file-system operation failed.
    Io,
    /// The record store failed.
    Store,
    /// An external tool thinbox runs is not installed.
    ToolMissing {
        /// The tool.
        tool: String,
    },
    /// An external tool exited with failure.
    ToolFailed {
        /// The tool.
        tool: String,
        /// Its exit code (`None` when killed by a signal).
        status: Option<i32>,
    },
    /// `thin_check` found the pool's metadata damaged.
    MetadataCheckFailed {
        /// The metadata device.
        device: String,
    },
    /// A device holds a partition table, filesystem or PV signature.
    DeviceHasSignature {
        /// The device.
        device: String,
        /// The signatures found (`dos`, `ext4`, `LVM2_member`).
        found: Vec<String>,
    },
    /// A dm device is not a thin-pool.
    NotAThinPool {
        /// The device.
        device: String,
        /// Its target type.
        target: String,
    },
    /// A pool to adopt seems to be in use by someone else.
    OwnedElsewhere {
        /// Its transaction id.
        transaction_id: u64,
        /// Its used data blocks.
        used: DataBlocks,
    },
    /// The operation does not apply to this kind of pool.
    Unsupported {
        /// What was asked.
        what: &'static str,
    },
    /// A pool creation was interrupted (a crash) and has been rolled back:
    /// nothing it made is left.
    CreationRolledBack {
        /// The pool (`VG/LV`).
        pool: String,
    },
    /// Something thinbox would remove is not something it made.
    NotOurs {
        /// What it is (`volume group tb`, `physical volume /dev/vdb`).
        what: String,
    },
    /// A device cannot become a PV of a new pool: missing, not a block
    /// device, mounted, a PV of a VG, or held by dm ([`crate::lvm::DeviceUse`]).
    DeviceUnusable {
        /// The device as given.
        device: String,
        /// What it is used for.
        found: crate::lvm::DeviceUse,
    },
    /// The pool is lent to another engine, which owns its thin devices:
    /// thinbox makes, removes and reconciles none.
    Lent {
        /// The engine (`containerd`, `docker`).
        to: String,
    },
    /// The pool still holds thin devices, so it cannot be lent (thinbox's)
    /// or taken back (the other engine's).
    HasThins {
        /// How many.
        count: usize,
        /// Whose (`thinbox's`, `the engine's`).
        whose: &'static str,
    },
    /// A volume group lacks the free space a growth needs.
    VgTooSmall {
        /// The VG.
        vg: String,
        /// Bytes the growth needs.
        need: Bytes,
        /// Bytes free in the VG.
        free: Bytes,
    },
    /// A size smaller than the current one was asked for: pools only grow.
    CannotShrink {
        /// What (`data`, `metadata`).
        what: &'static str,
        /// The size asked for.
        asked: Bytes,
        /// The current size.
        current: Bytes,
    },
    /// A fault injected by a test double (never produced by real implementations).
    Injected,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ErrorKind::*;
        match self {
            InvalidBlockSize { bytes } => write!(
                f,
                "block size {bytes} bytes is invalid: use a multiple of 64 KiB from 64 KiB to 1 GiB"
            ),
            NotBlockMultiple { what, size, block_size } => write!(
                f,
                "{what} size {size} is not a multiple of the block size {block_size}: round it to a multiple of {block_size}"
            ),
            SizeTooSmall { what, size, min } => {
                write!(f, "{what} size {size} is too small: use at least {min}")
            }
            NoRoom { explained, max } => write!(
                f,
                "{explained}: give at most {max}, or free space there"
            ),
            ThinIdOutOfRange { id } => write!(
                f,
                "thin id {id} does not fit in 24 bits: use an id below {}",
                crate::units::ThinId::LIMIT
            ),
            ThinIdsExhausted => write!(
                f,
                "all 2^24 thin ids are in use: delete unused thin devices"
            ),
            InvalidName { name } => write!(
                f,
                "name {name:?} is invalid: use 1 to 64 characters from A-Z a-z 0-9 _ . + -"
            ),
            MetadataTooSmall { have, need } => write!(
                f,
                "metadata device of {} is too small for this data device: make it at least {} (as thin_metadata_size computes)",
                have.bytes(),
                need.bytes()
            ),
            Overflow { what } => write!(f, "{what} overflows 64 bits: use a smaller size"),
            Parse { what, input, reason } => {
                write!(f, "cannot parse {what} {input:?}: {reason}")
            }
            NameTaken { name } => write!(
                f,
                "{name:?} already exists: choose another name or remove the existing one"
            ),
            NotFound { name } => write!(f, "{name:?} does not exist"),
            Busy { device } => write!(
                f,
                "{device} is busy: unmount it and close whatever holds it open, then retry"
            ),
            NotRoot => write!(
                f,
                "device-mapper and loop control need root: run as root (CAP_SYS_ADMIN)"
            ),
            DmThinUnsupported => write!(
                f,
                "the kernel has no dm-thin-pool target: load it with `modprobe dm-thin-pool` or use a kernel built with CONFIG_DM_THIN_PROVISIONING"
            ),
            DmUnavailable => write!(
                f,
                "device-mapper is not available (no /dev/mapper/control): load it with `modprobe dm-mod` or use a kernel with CONFIG_BLK_DEV_DM"
            ),
            OutOfDataSpace { used, total } => write!(
                f,
                "pool is out of data space ({used}/{total} data blocks used): extend the pool's data device"
            ),
            BelowFreeSpaceFloor { used, total, floor_percent } => write!(
                f,
                "pool is {}% full ({used}/{total} data blocks used) and keeps {floor_percent}% free: extend the pool or delete thin devices",
                percent(used.get(), total.get())
            ),
            OutOfMetadataSpace { used, total } => write!(
                f,
                "pool metadata is full ({used}/{total} metadata blocks used): extend the metadata device"
            ),
            PoolNotWritable { mode } => write!(
                f,
                "pool is in {mode} mode: run thin_check/thin_repair on its metadata and reactivate it"
            ),
            TransactionMismatch { kernel, recorded } => write!(
                f,
                "pool transaction id is {kernel} but the records expect {recorded}: another tool changed the pool; adopt it explicitly"
            ),
            TableMismatch { device, found, expected } => write!(
                f,
                "dm device {device} has table {found:?}, expected {expected:?}: remove the stale device or use another name"
            ),
            Kernel { errno: Some(e) } => write!(
                f,
                "device-mapper call failed: {}",
                std::io::Error::from_raw_os_error(*e)
            ),
            Kernel { errno: None } => write!(f, "device-mapper call failed"),
            Loop => write!(f, "loop device operation failed"),
            Io => write!(f, "i/o failed"),
            Store => write!(f, "record store failed"),
            ToolMissing { tool } => write!(
                f,
                "{tool} is not installed: install thin-provisioning-tools"
            ),
            ToolFailed { tool, status: Some(c) } => write!(f, "{tool} failed with exit code {c}"),
            ToolFailed { tool, status: None } => write!(f, "{tool} was killed by a signal"),
            MetadataCheckFailed { device } => write!(
                f,
                "thin_check found damaged pool metadata on {device}: repair it with thin_repair before activating the pool"
            ),
            DeviceHasSignature { device, found } => write!(
                f,
                "{device} holds {}: pick an empty device, or force it to wipe them",
                found.join(", ")
            ),
            NotAThinPool { device, target } => write!(
                f,
                "{device} is a {target:?} device, not a thin-pool: name a thin-pool dm device"
            ),
            OwnedElsewhere { transaction_id, used } => write!(
                f,
                "the pool has transaction id {transaction_id} and {used} used data blocks, so another tool may own it: adopt it with foreign ownership allowed if it is yours"
            ),
            Unsupported { what } => write!(f, "{what} is not supported for this pool"),
            CreationRolledBack { pool } => write!(
                f,
                "the creation of pool {pool} was interrupted and has been rolled back: create the pool again"
            ),
            NotOurs { what } => write!(
                f,
                "{what} was not made by thinbox, so it is left alone: remove it by hand or choose another name or device"
            ),
            DeviceUnusable { device, found } => {
                write!(f, "{device} {}", found.refusal().unwrap_or_default())
            }
            Lent { to } => write!(
                f,
                "the pool is lent to {to}, which owns its thin devices: thinbox makes none in it (take it back with `thinbox pool hand-over NAME --to thinbox` once {to} no longer uses it)"
            ),
            HasThins { count, whose } => write!(
                f,
                "the pool holds {count} of {whose} thin devices: remove them first"
            ),
            VgTooSmall { vg, need, free } => write!(
                f,
                "volume group {vg} has {free} free but the growth needs {need}: add a disk with `vgextend {vg} DEVICE`, or ask for less"
            ),
            CannotShrink {
                what,
                asked,
                current,
            } => write!(
                f,
                "{what} size {asked} is below the current {current}: pools only grow; give a size above {current} or +SIZE"
            ),
            Injected => write!(f, "injected fault"),
        }
    }
}

fn percent(used: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        ((u128::from(used) * 100) / u128::from(total)) as u64
    }
}

/// Where an error happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The operation ("create thin", "activate pool").
    pub op: Option<&'static str>,
    /// The pool's name.
    pub pool: Option<String>,
    /// The dm or loop device.
    pub device: Option<String>,
    /// A file involved.
    pub path: Option<PathBuf>,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(op) = self.op {
            parts.push(op.to_owned());
        }
        if let Some(p) = &self.pool {
            parts.push(format!("pool {p}"));
        }
        if let Some(d) = &self.device {
            parts.push(format!("device {d}"));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path {}", p.display()));
        }
        f.write_str(&parts.join(", "))
    }
}

/// The crate's error: kind, context and source (kind and context boxed, so
/// results stay small).
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: Box<ErrorKind>,
    context: Box<Context>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ctx = self.context.to_string();
        if ctx.is_empty() {
            write!(f, "{}", self.kind)?;
        } else {
            write!(f, "{ctx}: {}", self.kind)?;
        }
        // A tool's own last word on why (mkfs.xfs: "Filesystem must be
        // larger than 300MB"), kept with its exit code.
        if let (ErrorKind::ToolFailed { .. }, Some(said)) = (&*self.kind, &self.source) {
            let said = said.to_string();
            if let Some(line) = said.lines().rev().find(|l| !l.trim().is_empty()) {
                write!(f, " ({})", line.trim())?;
            }
        }
        Ok(())
    }
}

impl From<kernfmt::ParseError> for Error {
    fn from(e: kernfmt::ParseError) -> Error {
        Error::parse(e.what, &e.input, "not in the kernel's form")
    }
}

impl Error {
    /// An error of this kind with empty context.
    pub fn new(kind: ErrorKind) -> Error {
        Error {
            kind: Box::new(kind),
            context: Box::default(),
            source: None,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Where it went wrong.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }

    /// Sets the operation unless one is set already (innermost wins).
    pub fn op(mut self, op: &'static str) -> Error {
        self.context.op.get_or_insert(op);
        self
    }

    /// Sets the pool name unless one is set already.
    pub fn pool(mut self, pool: impl Into<String>) -> Error {
        if self.context.pool.is_none() {
            self.context.pool = Some(pool.into());
        }
        self
    }

    /// Sets the device unless one is set already.
    pub fn device(mut self, device: impl Into<String>) -> Error {
        if self.context.device.is_none() {
            self.context.device = Some(device.into());
        }
        self
    }

    /// Sets the path unless one is set already.
    pub fn path(mut self, path: impl Into<PathBuf>) -> Error {
        if self.context.path.is_none() {
            self.context.path = Some(path.into());
        }
        self
    }

    /// An i/o error on `path`, classified by errno where a kind fits.
    pub fn io(source: std::io::Error, path: impl Into<PathBuf>) -> Error {
        let kind = match source.raw_os_error() {
            Some(libc::EBUSY) => ErrorKind::Busy {
                device: String::new(),
            },
            Some(libc::EPERM) | Some(libc::EACCES) => ErrorKind::NotRoot,
            _ => ErrorKind::Io,
        };
        let path = path.into();
        let kind = match kind {
            ErrorKind::Busy { .. } => ErrorKind::Busy {
                device: path.display().to_string(),
            },
            k => k,
        };
        Error::new(kind).path(path).with_source(source)
    }

    /// A parse error.
    pub fn parse(what: &'static str, input: &str, reason: impl Into<String>) -> Error {
        Error::new(ErrorKind::Parse {
            what,
            input: input.to_owned(),
            reason: reason.into(),
        })
    }

    /// True when the kernel said the device or thin id is busy.
    pub fn is_busy(&self) -> bool {
        matches!(*self.kind, ErrorKind::Busy { .. })
    }

    /// True when the thing looked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(*self.kind, ErrorKind::NotFound { .. })
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_value_and_fix() {
        let e = Error::new(ErrorKind::InvalidBlockSize { bytes: 4096 })
            .op("create pool")
            .pool("p");
        let s = e.to_string();
        assert!(s.contains("4096"), "{s}");
        assert!(s.contains("multiple of 64 KiB"), "{s}");
        assert!(s.starts_with("create pool, pool p: "), "{s}");
        assert!(!s.ends_with('.'));
    }

    #[test]
    fn floor_message_says_how_full() {
        let e = Error::new(ErrorKind::BelowFreeSpaceFloor {
            used: DataBlocks::new(90),
            total: DataBlocks::new(100),
            floor_percent: 20,
        });
        let s = e.to_string();
        assert!(s.contains("90% full") && s.contains("extend"), "{s}");
    }

    #[test]
    fn innermost_context_wins() {
        let e = Error::new(ErrorKind::Io).op("inner").op("outer");
        assert_eq!(e.context().op, Some("inner"));
    }
}
