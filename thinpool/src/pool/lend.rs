//! Pools lent to another engine, and growth to a given size.
//!
//! A lent pool (`lent_to` in the record store) belongs to an engine that
//! makes its own thin devices in it (containerd's devmapper snapshotter,
//! Docker's devicemapper driver): thinbox only keeps it healthy. So an open
//! does not reconcile thin ids (they are the engine's, and its dm devices
//! are named `POOL-snap-N`, which the cleanup of thinbox's own would
//! touch), and every thin-device change is refused with
//! [`ErrorKind::Lent`]. What thinbox still does is pool-wide: status,
//! check, the low-water mark, and growing data and metadata.

use super::*;

/// A pool's data and metadata device sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    /// The data device.
    pub data: Bytes,
    /// The metadata device (as the kernel uses it).
    pub metadata: Bytes,
}

impl Pool {
    /// The engine the pool is lent to, if any.
    pub fn lent_to(&self) -> Option<&str> {
        self.lent_to.as_deref()
    }

    pub(super) fn refuse_if_lent(&self) -> Result<()> {
        match &self.lent_to {
            Some(to) => Err(Error::new(ErrorKind::Lent { to: to.clone() })),
            None => Ok(()),
        }
    }

    /// Lends the pool to engine `to` (idempotent). Refused while thinbox
    /// has thin devices (or half-done operations) in it: the engine would
    /// not know them, and thinbox would stop looking after them.
    pub fn lend(&mut self, to: &str) -> Result<()> {
        let r = (|| {
            if self.lent_to.as_deref() == Some(to) {
                return Ok(());
            }
            if self.lent_to.is_some() {
                // Passing from one engine to another: whatever the first one
                // made stays in the pool, which is the user's call.
                self.store.set_config("lent_to", to)?;
                self.lent_to = Some(to.to_owned());
                return Ok(());
            }
            let ours = self
                .store
                .thins()?
                .into_iter()
                .filter(|t| t.state != ThinState::Missing)
                .count()
                + self.store.pending()?.len();
            if ours > 0 {
                return Err(Error::new(ErrorKind::HasThins {
                    count: ours,
                    whose: "thinbox's",
                }));
            }
            self.store.set_config("lent_to", to)?;
            self.lent_to = Some(to.to_owned());
            Ok(())
        })();
        r.map_err(|e| self.err(e, "lend pool"))
    }

    /// Takes a lent pool back for thinbox's own thin devices: refused while
    /// the pool holds any thin device (the engine's), then reconciled as
    /// any open would be.
    pub fn take_back(&mut self) -> Result<()> {
        let r = (|| {
            if self.lent_to.is_none() {
                return Ok(());
            }
            let theirs = self.usage_inner()?.len();
            if theirs > 0 {
                return Err(Error::new(ErrorKind::HasThins {
                    count: theirs,
                    whose: "the engine's",
                }));
            }
            self.store.remove_config("lent_to")?;
            self.lent_to = None;
            self.reconcile(true)
        })();
        r.map_err(|e| self.err(e, "take back pool"))
    }

    /// The data and metadata device sizes.
    pub fn sizes(&self) -> Result<PoolSizes> {
        let r = (|| {
            if matches!(self.backing, Backing::Loopback { .. }) {
                return Ok(PoolSizes {
                    data: self.file_size(DATA_FILE)?,
                    metadata: self.file_size(META_FILE)?,
                });
            }
            let u = self.status_inner()?.into_usage()?;
            Ok(PoolSizes {
                data: self.table.length.bytes(),
                metadata: u.total_meta.sectors().bytes(),
            })
        })();
        r.map_err(|e| self.err(e, "read pool sizes"))
    }

    /// Grows data and/or metadata to the given sizes (a size equal to the
    /// current one is left; a smaller one is refused with
    /// [`ErrorKind::CannotShrink`]). A loopback pool grows its files; a
    /// direct-lvm pool runs lvextend on its VG, refused with the figures
    /// ([`ErrorKind::VgTooSmall`]) before anything changes when the VG lacks
    /// the room. An adopted pool is its owner's to grow. Returns what grew.
    pub fn grow_to(&mut self, data: Option<Bytes>, metadata: Option<Bytes>) -> Result<Extended> {
        let r = (|| {
            let cur = self.sizes()?;
            let wanted = |what, asked: Option<Bytes>, current: Bytes| match asked {
                Some(a) if a.0 < current.0 => Err(Error::new(ErrorKind::CannotShrink {
                    what,
                    asked: a,
                    current,
                })),
                Some(a) if a.0 > current.0 => Ok(Some(a)),
                _ => Ok(None),
            };
            let data = wanted("data", data, cur.data)?;
            let metadata = wanted("metadata", metadata, cur.metadata)?;
            let mut done = Extended::default();
            match self.backing.clone() {
                Backing::Loopback { .. } => {
                    if let Some(d) = data {
                        self.extend_data_inner(d, None)?;
                        done.data = Some(d);
                    }
                    if let Some(m) = metadata {
                        self.extend_metadata(m)?;
                        done.metadata = Some(m);
                    }
                }
                Backing::Lvm { vg, lv, .. } => {
                    let info = self
                        .deps
                        .lvm
                        .vg(&vg)?
                        .ok_or_else(|| Error::new(ErrorKind::NotFound { name: vg.clone() }))?;
                    let ext = info.extent_size.0.max(1);
                    let extents = |b: u64| b.div_ceil(ext);
                    let data_by = data.map_or(0, |d| d.0 - cur.data.0);
                    let meta_by = metadata.map_or(0, |m| m.0 - cur.metadata.0);
                    // lvm2 grows the spare metadata LV with the pool's.
                    let need = (extents(data_by) + 2 * extents(meta_by)) * ext;
                    let free = info.free_count * ext;
                    if need > free {
                        return Err(Error::new(ErrorKind::VgTooSmall {
                            vg,
                            need: Bytes(need),
                            free: Bytes(free),
                        }));
                    }
                    let full = format!("{vg}/{lv}");
                    if data_by > 0 {
                        self.deps
                            .lvm
                            .lvextend(&full, crate::lvm::LvExtend::DataBy(Bytes(data_by)))?;
                        // lvm2's reload carries the profile's low-water mark.
                        self.refresh_table()?;
                        done.data = Some(self.table.length.bytes());
                    }
                    if meta_by > 0 {
                        self.deps
                            .lvm
                            .lvextend(&full, crate::lvm::LvExtend::Metadata(Bytes(meta_by)))?;
                        self.refresh_table()?;
                        done.metadata = Some(self.sizes()?.metadata);
                    }
                }
                Backing::Adopted { .. } => {
                    return Err(Error::new(ErrorKind::Unsupported {
                        what: "growing an adopted pool (its owner grows it)",
                    }))
                }
            }
            Ok(done)
        })();
        r.map_err(|e| self.err(e, "extend pool"))
    }
}
