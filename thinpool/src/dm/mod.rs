//! The device-mapper seam: the handful of dm ioctls thinbox uses, as a trait
//! the caller passes in. [`RealDm`] drives the kernel through the
//! `devicemapper` crate (ioctls on `/dev/mapper/control`, no `dmsetup`, no udev
//! wait; device nodes are `/dev/dm-N`); [`FakeDm`] simulates dm and the
//! thin-pool target's metadata in memory for unit tests, with fault and crash
//! injection.
//!
//! Kernel: device-mapper ioctl interface 4.x; `DM_DEV_ARM_POLL` 4.37 (kernel
//! 4.13) for event polling; `thin-pool` target for pool messages.

mod fake;
mod real;

use std::fmt;
use std::path::PathBuf;

pub use fake::{CrashWhen, FakeDm};
pub use real::RealDm;

use crate::error::Result;
use crate::table::{DevNum, TargetLine};

/// What the kernel says about one dm device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmInfo {
    /// The device's name.
    pub name: String,
    /// Its device number.
    pub devnum: DevNum,
    /// How many openers it has (thin devices hold their pool open).
    pub open_count: u32,
    /// Suspended.
    pub suspended: bool,
    /// A live table is loaded.
    pub live_table: bool,
    /// An inactive table is waiting for resume.
    pub inactive_table: bool,
    /// The device's event counter (for event waits).
    pub event_nr: u32,
}

impl DmInfo {
    /// The device node, `/dev/dm-N` (the kernel creates it without udev).
    pub fn devnode(&self) -> PathBuf {
        PathBuf::from(format!("/dev/dm-{}", self.devnum.minor))
    }
}

/// Device-mapper control. Names are dm device names (at most 127 bytes).
pub trait DmControl: Send + Sync + fmt::Debug {
    /// Creates a device with no table (suspended until a table is loaded and resumed).
    fn create(&self, name: &str) -> Result<DmInfo>;
    /// Loads a table into the inactive slot.
    fn load(&self, name: &str, table: &[TargetLine]) -> Result<()>;
    /// Suspends, flushing outstanding I/O first.
    fn suspend(&self, name: &str) -> Result<()>;
    /// Resumes, making an inactive table live.
    fn resume(&self, name: &str) -> Result<()>;
    /// Removes the device; with `deferred`, a busy device is removed on last close.
    fn remove(&self, name: &str, deferred: bool) -> Result<()>;
    /// Sends a target message to sector 0; returns the target's reply, if any.
    fn message(&self, name: &str, msg: &str) -> Result<Option<String>>;
    /// Status lines of the live table.
    fn status(&self, name: &str) -> Result<Vec<TargetLine>>;
    /// The live table.
    fn table(&self, name: &str) -> Result<Vec<TargetLine>>;
    /// Info, or `None` when no such device exists.
    fn info(&self, name: &str) -> Result<Option<DmInfo>>;
    /// All dm devices: name and number.
    fn list(&self) -> Result<Vec<(String, DevNum)>>;
    /// Target types the kernel has loaded (`thin-pool`, `thin`, `linear`, ...).
    fn target_types(&self) -> Result<Vec<String>>;
    /// Arms event notification (`DM_DEV_ARM_POLL`): after this,
    /// [`DmControl::wait_events`] returns as soon as any dm device raises an
    /// event (a pool crossing its low-water mark, a mode change, a resize).
    fn arm_events(&self) -> Result<()>;
    /// Waits up to `timeout` for a dm event since the last arm (poll on the
    /// control device); true when one came.
    fn wait_events(&self, timeout: std::time::Duration) -> Result<bool>;
}

impl<T: DmControl + ?Sized> DmControl for std::sync::Arc<T> {
    fn create(&self, name: &str) -> Result<DmInfo> {
        (**self).create(name)
    }
    fn load(&self, name: &str, table: &[TargetLine]) -> Result<()> {
        (**self).load(name, table)
    }
    fn suspend(&self, name: &str) -> Result<()> {
        (**self).suspend(name)
    }
    fn resume(&self, name: &str) -> Result<()> {
        (**self).resume(name)
    }
    fn remove(&self, name: &str, deferred: bool) -> Result<()> {
        (**self).remove(name, deferred)
    }
    fn message(&self, name: &str, msg: &str) -> Result<Option<String>> {
        (**self).message(name, msg)
    }
    fn status(&self, name: &str) -> Result<Vec<TargetLine>> {
        (**self).status(name)
    }
    fn table(&self, name: &str) -> Result<Vec<TargetLine>> {
        (**self).table(name)
    }
    fn info(&self, name: &str) -> Result<Option<DmInfo>> {
        (**self).info(name)
    }
    fn list(&self) -> Result<Vec<(String, DevNum)>> {
        (**self).list()
    }
    fn target_types(&self) -> Result<Vec<String>> {
        (**self).target_types()
    }
    fn arm_events(&self) -> Result<()> {
        (**self).arm_events()
    }
    fn wait_events(&self, timeout: std::time::Duration) -> Result<bool> {
        (**self).wait_events(timeout)
    }
}

/// Checks a dm device name: 1..=127 bytes, no `/`, printable ASCII without spaces.
pub fn check_dm_name(name: &str) -> Result<()> {
    use crate::error::{Error, ErrorKind};
    let ok = !name.is_empty()
        && name.len() < 128
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::InvalidName {
            name: name.to_owned(),
        }))
    }
}
