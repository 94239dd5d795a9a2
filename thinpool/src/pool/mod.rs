//! Loopback pools ("loop-lvm" done right) and their thin devices.
//!
//! A loopback pool lives in one directory: sparse `data` and `metadata` files
//! attached to loop devices (direct I/O where the filesystem allows it), a
//! `thin-pool` dm device over them, and the record store `thinbox.db`.
//!
//! Lifecycle: [`Pool::create_loopback`] makes the files, loop devices and
//! pool; [`Pool::open_loopback`] re-activates it from the same files (after a
//! reboot, or when it is already active: idempotent) and reconciles the
//! records with the kernel; [`Pool::destroy`] removes everything;
//! [`Pool::repair_loopback`] rewrites damaged metadata with `thin_repair`
//! and swaps it in, keeping the damaged file (`repair.rs`).
//!
//! Every thin mutation (create, snapshot, delete) is: intent record →
//! pool message → `set_transaction_id from to` → done record. Reconciliation
//! reads the pool's transaction id: equal to `to` means the kernel finished
//! (the record is completed); equal to `from` means the message may or may
//! not have landed (the thin id is deleted if present: a half-made device is
//! rolled back, a half-done delete is finished). Devices left suspended by a
//! crash mid-snapshot are resumed, and dm devices with no table (a crash
//! mid-activation) are removed.
//!
//! Kernel: dm-thin-pool (any 3.x+ kernel; `error_if_no_space` needs 3.16),
//! loop devices.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dm::{check_dm_name, DmControl, DmInfo};
use crate::error::{Error, ErrorKind, Result};
use crate::fs::Filesystem;
use crate::loopdev::{LoopControl, LoopInfo};
use crate::lvm::LvmControl;
use crate::metadata::{MetaDev, MetadataTools, ThinUsage};
use crate::metadata_size::check_metadata_size;
use crate::status::{PoolMode, PoolStatus, PoolUsage, ThinStatus};
use crate::store::{Intent, OpKind, OpRecord, Store, ThinRecord, ThinState};
use crate::table::{DevRef, PoolFeatures, PoolTable, TargetLine, ThinTable};
use crate::units::{BlockSize, Bytes, DataBlocks, Sectors, ThinId, TransactionId};

mod adopt;
mod config;
mod inspect;
mod lend;
mod loopback;
mod lvm;
mod reconcile;
mod repair;
mod space;
mod teardown;
mod thin;

pub use config::{
    AutoextendPolicy, Extended, LoopbackConfig, LvmConfig, Monitor, Reconciliation, WatchOptions,
};
pub use inspect::live_thin_usage;
pub use lend::PoolSizes;
pub use repair::Repaired;

/// The kernel interfaces a pool drives, passed in by the caller.
#[derive(Debug, Clone)]
pub struct Deps {
    /// Device-mapper control.
    pub dm: Arc<dyn DmControl>,
    /// Loop-device control.
    pub loops: Arc<dyn LoopControl>,
    /// Offline metadata tools (thin_ls, thin_check).
    pub tools: Arc<dyn MetadataTools>,
    /// lvm2 (and wipefs), for direct-lvm pools.
    pub lvm: Arc<dyn LvmControl>,
}

impl Deps {
    /// The real kernel interfaces.
    pub fn real() -> Result<Deps> {
        Ok(Deps {
            dm: Arc::new(crate::dm::RealDm::new()?),
            loops: Arc::new(crate::loopdev::RealLoop),
            tools: Arc::new(crate::metadata::ThinTools),
            lvm: Arc::new(crate::lvm::RealLvm),
        })
    }
}

pub(super) const DATA_FILE: &str = "data";

pub(super) const META_FILE: &str = "metadata";

pub(super) const STORE_FILE: &str = "thinbox.db";

/// An active pool.
#[derive(Debug)]
pub struct Pool {
    name: String,
    deps: Deps,
    store: Store,
    table: PoolTable,
    backing: Backing,
    floor_percent: u8,
    reconciliation: Reconciliation,
    lent_to: Option<String>,
}

/// What a pool's data and metadata devices are.
#[derive(Debug, Clone)]
pub(super) enum Backing {
    /// Sparse files on loop devices, in `dir`.
    Loopback {
        dir: PathBuf,
        data_loop: LoopInfo,
        meta_loop: LoopInfo,
    },
    /// An LVM thin-pool LV that thinbox made on `devices`.
    Lvm {
        vg: String,
        lv: String,
        devices: Vec<PathBuf>,
        profile: PathBuf,
        meta: PathBuf,
        meta_devnum: crate::table::DevNum,
    },
    /// A thin-pool someone else made.
    Adopted {
        meta: PathBuf,
        meta_devnum: crate::table::DevNum,
    },
}

/// Checks a pool or thin name: 1..=64 of `A-Z a-z 0-9 _ . + -`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::InvalidName {
            name: name.to_owned(),
        }))
    }
}

pub(super) fn sectors_of(what: &'static str, b: Bytes) -> Result<Sectors> {
    Sectors::from_bytes(b).ok_or_else(|| {
        Error::new(ErrorKind::NotBlockMultiple {
            what,
            size: b,
            block_size: Bytes(512),
        })
    })
}

pub(super) fn percent_of(n: u64, pct: u8) -> u64 {
    (u128::from(n) * u128::from(pct) / 100).min(u128::from(u64::MAX)) as u64
}

pub(super) fn is_errno(e: &Error, errno: i32) -> bool {
    matches!(e.kind(), ErrorKind::Kernel { errno: Some(n) } if *n == errno)
}

/// Undo list for a half-made pool.
#[derive(Default)]
pub(super) struct Undo {
    files: Vec<PathBuf>,
    loops: Vec<PathBuf>,
    dm: Option<String>,
    dir: Option<PathBuf>,
}

impl Undo {
    fn run(self, deps: &Deps) {
        if let Some(name) = &self.dm {
            let _ = deps.dm.remove(name, false);
        }
        for l in self.loops.iter().rev() {
            let _ = deps.loops.detach(l);
        }
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        if let Some(d) = &self.dir {
            let _ = fs::remove_dir(d);
        }
    }
}

pub(super) fn store_files(dir: &Path) -> Vec<PathBuf> {
    store_files_of(&dir.join(STORE_FILE))
}

pub(super) fn store_files_of(db: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .collect()
}

/// The device node of a block device number, from sysfs (no udev needed).
/// The dm devices of pool `name`'s thin devices (named `NAME-THIN`).
pub(super) fn thin_devices_of(deps: &Deps, name: &str) -> Result<Vec<String>> {
    let prefix = format!("{name}-");
    Ok(deps
        .dm
        .list()?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with(&prefix))
        .collect())
}

/// Busy if any of `devices` is open (mounted, or held by a process).
pub(super) fn refuse_open(deps: &Deps, devices: &[String]) -> Result<()> {
    for t in devices {
        if deps.dm.info(t)?.is_some_and(|i| i.open_count > 0) {
            return Err(Error::new(ErrorKind::Busy { device: t.clone() }).device(t.clone()));
        }
    }
    Ok(())
}

pub(super) fn devnode_of(n: crate::table::DevNum) -> Result<PathBuf> {
    let p = PathBuf::from(format!("/sys/dev/block/{n}/uevent"));
    let text = fs::read_to_string(&p).map_err(|e| Error::io(e, &p))?;
    text.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|d| PathBuf::from(format!("/dev/{d}")))
        .ok_or_else(|| Error::parse("uevent", &text, "no DEVNAME").path(p))
}

pub(super) fn remove_files(files: &[PathBuf]) -> Result<()> {
    for f in files {
        match fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(e, f)),
            _ => {}
        }
    }
    Ok(())
}

impl Pool {
    /// The pool's dm name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool's table.
    pub fn table(&self) -> &PoolTable {
        &self.table
    }

    /// The data and metadata loop devices of a loopback pool.
    pub fn loops(&self) -> Option<(&LoopInfo, &LoopInfo)> {
        match &self.backing {
            Backing::Loopback {
                data_loop,
                meta_loop,
                ..
            } => Some((data_loop, meta_loop)),
            _ => None,
        }
    }

    /// The metadata device.
    pub fn metadata_device(&self) -> MetaDev<'_> {
        match &self.backing {
            Backing::Loopback { meta_loop, .. } => MetaDev {
                path: &meta_loop.path,
                devnum: meta_loop.devnum,
            },
            Backing::Lvm {
                meta, meta_devnum, ..
            }
            | Backing::Adopted { meta, meta_devnum } => MetaDev {
                path: meta,
                devnum: *meta_devnum,
            },
        }
    }

    /// What reconciliation did when this pool was opened.
    pub fn reconciliation(&self) -> &Reconciliation {
        &self.reconciliation
    }

    /// The record store (shared with the snapshotter).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The error `e` of operation `op` on this pool, with that context.
    pub(super) fn err(&self, e: Error, op: &'static str) -> Error {
        e.op(op).pool(&self.name)
    }

    /// `r` with the operation, the pool and thin device `thin`'s dm name
    /// on its error: the one context helper of the thin-device operations.
    pub(super) fn thin_context<T>(&self, r: Result<T>, op: &'static str, thin: &str) -> Result<T> {
        r.map_err(|e| self.err(e, op).device(self.thin_dm_name(thin)))
    }

    /// Who monitors the pool: dmeventd when lvm2 reports the pool LV as
    /// monitored, otherwise thinbox's own [`Pool::watch`] (always so for
    /// loopback and adopted pools).
    pub fn monitor(&self) -> Result<Monitor> {
        match &self.backing {
            Backing::Lvm { vg, lv, .. } => {
                let row = crate::lvm::lv(&*self.deps.lvm, vg, lv)
                    .map_err(|e| self.err(e, "read pool monitoring"))?;
                Ok(if row.is_monitored() {
                    Monitor::Dmeventd
                } else {
                    Monitor::Watch
                })
            }
            _ => Ok(Monitor::Watch),
        }
    }

    /// The pool's status.
    pub fn status(&self) -> Result<PoolStatus> {
        self.status_inner()
            .map_err(|e| self.err(e, "read pool status"))
    }

    pub(super) fn status_inner(&self) -> Result<PoolStatus> {
        let lines = self.deps.dm.status(&self.name)?;
        let line = lines.first().ok_or_else(|| {
            Error::new(ErrorKind::NotFound {
                name: self.name.clone(),
            })
        })?;
        line.params.parse()
    }
}

#[cfg(test)]
mod tests;
