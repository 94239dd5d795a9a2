//! Space: the free-space floor, data and metadata growth, autoextend by
//! policy, the low-water mark, and the watch loop on dm events.

use super::*;

impl Pool {
    pub(super) fn writable_usage(&self) -> Result<PoolUsage> {
        match self.status_inner()? {
            PoolStatus::Working(u) => match u.mode {
                PoolMode::ReadWrite => Ok(*u),
                PoolMode::OutOfDataSpace => Err(Error::new(ErrorKind::OutOfDataSpace {
                    used: u.used_data,
                    total: u.total_data,
                })),
                m => Err(Error::new(ErrorKind::PoolNotWritable {
                    mode: m.to_string(),
                })),
            },
            s => Err(Error::new(ErrorKind::PoolNotWritable {
                mode: s.to_string(),
            })),
        }
    }

    /// Refuses new thin devices while less than `percent` of the pool is free
    /// (0 turns the floor off).
    pub fn set_free_space_floor(&mut self, percent: u8) -> Result<()> {
        let percent = percent.min(100);
        self.store
            .set_config("floor_percent", &percent.to_string())?;
        self.floor_percent = percent;
        Ok(())
    }

    pub(super) fn check_floor(&self, u: &PoolUsage) -> Result<()> {
        let free = u128::from(u.free_data().get()) * 100;
        if self.floor_percent > 0
            && free < u128::from(u.total_data.get()) * u128::from(self.floor_percent)
        {
            return Err(Error::new(ErrorKind::BelowFreeSpaceFloor {
                used: u.used_data,
                total: u.total_data,
                floor_percent: self.floor_percent,
            }));
        }
        Ok(())
    }

    pub(super) fn check_txn(&self, u: &PoolUsage) -> Result<TransactionId> {
        let recorded = self.store.expected_txn()?;
        if u.transaction_id != recorded {
            return Err(Error::new(ErrorKind::TransactionMismatch {
                kernel: u.transaction_id.0,
                recorded: recorded.0,
            }));
        }
        Ok(recorded)
    }

    /// Grows the data file to `new_size` (a multiple of the block size), has
    /// the loop device re-read its capacity and reloads the pool table, with
    /// the low-water mark scaled to keep the same fraction free. The records
    /// get the new size before the kernel does, so a crash in between is
    /// finished by the next open.
    pub fn extend_data(&mut self, new_size: Bytes) -> Result<()> {
        self.extend_data_inner(new_size, None)
            .map_err(|e| self.err(e, "extend pool data"))
    }

    pub(super) fn extend_data_inner(
        &mut self,
        new_size: Bytes,
        lwm: Option<DataBlocks>,
    ) -> Result<()> {
        let length = sectors_of("data device", new_size)?;
        let blocks = self.table.block_size.blocks_exact("data device", length)?;
        let old_blocks = self.table.block_size.blocks_floor(self.table.length);
        if length < self.table.length {
            return Err(Error::new(ErrorKind::SizeTooSmall {
                what: "data device (pools cannot shrink)",
                size: new_size,
                min: self.table.length.bytes(),
            }));
        }
        let lwm = lwm.unwrap_or_else(|| {
            let scaled = u128::from(self.table.low_water_mark.get()) * u128::from(blocks.get())
                / u128::from(old_blocks.get().max(1));
            DataBlocks::new(scaled as u64)
        });
        let (dir, data_loop, _) = self.loopback("extending data to a given size")?;
        let path = dir.join(DATA_FILE);
        super::loopback::check_room(&dir, Some(&path), new_size)?;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(e, &path))?;
        if f.metadata().map_err(|e| Error::io(e, &path))?.len() < new_size.0 {
            f.set_len(new_size.0).map_err(|e| Error::io(e, &path))?;
        }
        f.sync_all().map_err(|e| Error::io(e, &path))?;
        self.store
            .set_config("data_size", &new_size.0.to_string())?;
        self.store.set_config("low_water_mark", &lwm.to_string())?;
        self.deps.loops.refresh_capacity(&data_loop.path)?;
        let table = PoolTable {
            length,
            low_water_mark: lwm,
            ..self.table.clone()
        };
        Self::reload_pool(&self.deps, &self.name, &table)?;
        self.table = table;
        Ok(())
    }

    /// Grows the metadata file to `new_size` and has the pool pick it up
    /// (the kernel resizes its metadata space map on resume).
    pub fn extend_metadata(&mut self, new_size: Bytes) -> Result<()> {
        let r = (|| {
            let (dir, _, meta_loop) = self.loopback("extending metadata to a given size")?;
            let path = dir.join(META_FILE);
            super::loopback::check_room(&dir, Some(&path), new_size)?;
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(e, &path))?;
            let cur = f.metadata().map_err(|e| Error::io(e, &path))?.len();
            if new_size.0 < cur {
                return Err(Error::new(ErrorKind::SizeTooSmall {
                    what: "metadata device (it cannot shrink)",
                    size: new_size,
                    min: Bytes(cur),
                }));
            }
            f.set_len(new_size.0).map_err(|e| Error::io(e, &path))?;
            f.sync_all().map_err(|e| Error::io(e, &path))?;
            self.store
                .set_config("metadata_size", &new_size.0.to_string())?;
            self.deps.loops.refresh_capacity(&meta_loop.path)?;
            let suspended = self.deps.dm.suspend(&self.name);
            let resumed = self.deps.dm.resume(&self.name);
            suspended.and(resumed)
        })();
        r.map_err(|e| self.err(e, "extend pool metadata"))
    }

    pub(super) fn file_size(&self, file: &str) -> Result<Bytes> {
        let (dir, ..) = self.loopback("file sizes")?;
        let p = dir.join(file);
        Ok(Bytes(fs::metadata(&p).map_err(|e| Error::io(e, &p))?.len()))
    }

    /// Extends data or metadata when their use reaches the policy's
    /// threshold (or the pool is out of data space). Returns what grew.
    pub fn maybe_extend(&mut self, policy: &AutoextendPolicy) -> Result<Extended> {
        let mut done = Extended::default();
        let u = self
            .status()?
            .into_usage()
            .map_err(|e| self.err(e, "autoextend pool"))?;
        let over = |used: u64, total: u64| {
            u128::from(used) * 100 >= u128::from(total) * u128::from(policy.threshold_percent)
        };
        if let Backing::Lvm { vg, lv, .. } = self.backing.clone() {
            return self.maybe_extend_lvm(policy, &u, &vg, &lv);
        }
        if over(u.used_data.get(), u.total_data.get()) || u.mode == PoolMode::OutOfDataSpace {
            let cur = self.file_size(DATA_FILE)?;
            let bs = self.table.block_size.bytes().0;
            let grow = percent_of(cur.0, policy.extend_percent).max(bs);
            let target = cur.0.saturating_add(grow).min(policy.max_data.0) / bs * bs;
            if target > cur.0 {
                let total = target / bs;
                let lwm = policy.low_water_mark(DataBlocks::new(total));
                self.extend_data_inner(Bytes(target), Some(lwm))
                    .map_err(|e| self.err(e, "autoextend pool data"))?;
                done.data = Some(Bytes(target));
            }
        }
        if over(u.used_meta.get(), u.total_meta.get()) {
            let cur = self.file_size(META_FILE)?;
            let max = policy.max_metadata.0.min(
                crate::metadata_size::MAX_METADATA_BLOCKS
                    .sectors()
                    .bytes()
                    .0,
            );
            let grow = percent_of(cur.0, policy.extend_percent).max(1 << 20);
            let target = cur.0.saturating_add(grow).min(max) >> 12 << 12;
            if target > cur.0 {
                self.extend_metadata(Bytes(target))?;
                done.metadata = Some(Bytes(target));
            }
        }
        Ok(done)
    }

    /// Reloads the pool table with a new low-water mark. Refused on an
    /// LVM pool: lvm2 owns its table (it sets the mark from the pool's
    /// profile on every reload), and a table swapped in beside lvm2's own,
    /// outside its VG lock, can leave the pool's sub-LVs suspended.
    pub fn set_low_water_mark(&mut self, lwm: DataBlocks) -> Result<()> {
        if matches!(self.backing, Backing::Lvm { .. }) {
            return Err(Error::new(ErrorKind::Unsupported {
                what: "setting an LVM pool's low-water mark (lvm2 sets it from the pool's profile: thin_pool_autoextend_threshold)",
            }));
        }
        let table = PoolTable {
            low_water_mark: lwm,
            ..self.table.clone()
        };
        if matches!(self.backing, Backing::Loopback { .. }) {
            self.store.set_config("low_water_mark", &lwm.to_string())?;
        }
        Self::reload_pool(&self.deps, &self.name, &table)?;
        self.table = table;
        Ok(())
    }

    pub(super) fn refresh_table(&mut self) -> Result<()> {
        let live = self.deps.dm.table(&self.name)?;
        let t = live.first().ok_or_else(|| {
            Error::new(ErrorKind::NotFound {
                name: self.name.clone(),
            })
        })?;
        self.table = PoolTable::from_target(t)?;
        Ok(())
    }

    /// Keeps the pool healthy until `stop` is set: sets the low-water mark
    /// from the policy, then sleeps on dm events (not a polling loop: the
    /// control device wakes it when the pool crosses its low-water mark or
    /// changes mode) and extends when needed, telling `checked` what each
    /// check grew. [`WatchOptions`] bound each wait so `stop` is noticed,
    /// add a check every interval without events, or make it one check.
    /// Returns how many extensions it made. On an LVM pool that dmeventd
    /// monitors ([`Pool::monitor`] says [`Monitor::Dmeventd`]) dmeventd
    /// also extends it by the pool's profile; make the pool with
    /// [`LvmConfig::monitor`] off to leave it to this loop alone.
    pub fn watch(
        &mut self,
        policy: &AutoextendPolicy,
        stop: &std::sync::atomic::AtomicBool,
        opts: WatchOptions,
        checked: &mut dyn FnMut(&Extended),
    ) -> Result<usize> {
        use std::sync::atomic::Ordering;
        let total = self.table.block_size.blocks_floor(self.table.length);
        let lwm = policy.low_water_mark(total);
        match self.backing.clone() {
            // lvm2 sets an LVM pool's mark from its profile (raising a
            // threshold below 50%, rounding its own way), so it is refreshed
            // through lvm2 only when the table has none: a pool whose profile
            // was attached without a reload. A reload suspends the pool.
            Backing::Lvm { vg, lv, .. }
                if self.table.low_water_mark == DataBlocks::ZERO && lwm != DataBlocks::ZERO =>
            {
                self.deps
                    .lvm
                    .lvchange(&format!("{vg}/{lv}"), &crate::lvm::LvChange::Refresh)
                    .and_then(|()| self.refresh_table())
                    .map_err(|e| self.err(e, "refresh low-water mark"))?;
            }
            Backing::Lvm { .. } => {}
            _ if lwm != self.table.low_water_mark => self
                .set_low_water_mark(lwm)
                .map_err(|e| self.err(e, "set low-water mark"))?,
            _ => {}
        }
        let mut extensions = 0;
        let mut due = true;
        let mut next = std::time::Instant::now();
        while !stop.load(Ordering::SeqCst) {
            self.deps
                .dm
                .arm_events()
                .map_err(|e| self.err(e, "watch pool"))?;
            if due {
                let d = self.maybe_extend(policy)?;
                extensions += usize::from(d.data.is_some()) + usize::from(d.metadata.is_some());
                checked(&d);
                if opts.once {
                    break;
                }
                next = opts
                    .interval
                    .map_or(next, |i| std::time::Instant::now() + i);
            }
            let wait = match opts.interval {
                Some(_) => next
                    .saturating_duration_since(std::time::Instant::now())
                    .min(opts.tick),
                None => opts.tick,
            };
            due = self
                .deps
                .dm
                .wait_events(wait)
                .map_err(|e| self.err(e, "watch pool"))?
                || opts
                    .interval
                    .is_some_and(|_| std::time::Instant::now() >= next);
        }
        Ok(extensions)
    }
}
