//! `thinbox pool repair NAME`: damaged metadata rewritten by `thin_repair`
//! into fresh space and swapped in with the pool offline, the damaged copy
//! kept (thinpool's `Pool::repair_loopback`). Loopback pools only: lvm2
//! repairs its own pools (`lvconvert --repair` keeps the old metadata as
//! an LV of its own), and an adopted pool's metadata is its owner's.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{PoolKind, PoolReport, Pools, RecordState};
use crate::error::{Error, ErrorKind, Result};

/// What a repair did.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// The pool.
    pub pool: String,
    /// Where the damaged metadata was kept.
    pub damaged_metadata: PathBuf,
    /// Thin devices the repaired metadata holds.
    pub thin_devices: usize,
    /// Recorded thin devices the repaired metadata lost (now marked missing).
    pub missing: Vec<String>,
    /// The pool afterwards.
    pub status: PoolReport,
}

impl Pools {
    /// Repairs the metadata of pool `name` (see the module's overview).
    /// Its thin devices must be closed: unmounted, their containers
    /// stopped, `thinbox serve` stopped if it uses the pool.
    pub fn repair(&self, name: &str) -> Result<RepairReport> {
        let rec = self.record(name)?;
        let dir = match (rec.kind, rec.state, rec.dir.as_deref()) {
            (_, RecordState::Creating, _) => {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "pool {name:?} was left half-made by an interrupted create: run `thinbox pool destroy {name}` and create it again"
                    ),
                ))
            }
            (PoolKind::Loopback, _, Some(dir)) => dir.to_owned(),
            (PoolKind::Lvm, ..) => {
                let lv = format!(
                    "{}/{}",
                    rec.vg.as_deref().unwrap_or("VG"),
                    rec.lv.as_deref().unwrap_or("POOL")
                );
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "pool {name:?} is lvm2's: deactivate it (`lvchange -an {lv}`) and run `lvconvert --repair {lv}`, which keeps the damaged metadata as an LV of its own"
                    ),
                ));
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "pool {name:?} is adopted: its metadata device is its owner's; repair it with thin_repair as its owner does"
                    ),
                ))
            }
        };
        let _lock = self.lock(name)?;
        let (pool, repaired) =
            thinpool::pool::Pool::repair_loopback(&self.deps, &dir).map_err(|e| {
                let busy = e.is_busy();
                let err = Error::from(e);
                if busy {
                    Error::new(
                        ErrorKind::InUse,
                        format!(
                            "{err}: repair needs the pool offline: unmount its snapshots, stop its containers and `thinbox serve`, then run `thinbox pool repair {name}` again"
                        ),
                    )
                } else {
                    err
                }
            })?;
        let missing = pool.reconciliation().missing.clone();
        drop(pool);
        self.clear_damaged(name)?;
        Ok(RepairReport {
            pool: name.to_owned(),
            damaged_metadata: repaired.damaged,
            thin_devices: repaired.thin_ids.len(),
            missing,
            status: self.status(name)?,
        })
    }
}

/// `ROOT/pools/NAME/damaged`: why the pool's last open found its metadata
/// damaged, until a repair.
const DAMAGED: &str = "damaged";

impl Pools {
    pub(super) fn mark_damaged(&self, name: &str, why: &str) -> Result<()> {
        let p = self.dir_of(name).join(DAMAGED);
        std::fs::write(&p, format!("{why}\n")).map_err(|e| Error::io("cannot write", &p, e))
    }

    /// Why pool `name`'s metadata was last found damaged, if it was.
    pub fn damaged(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir_of(name).join(DAMAGED)).ok()
    }

    pub(super) fn clear_damaged(&self, name: &str) -> Result<()> {
        let p: &Path = &self.dir_of(name).join(DAMAGED);
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove", p, e))
            }
            _ => Ok(()),
        }
    }
}
