//! Thin devices and snapshots: crash-safe create, snapshot, delete and
//! resize (intent, message, transaction id, done), activation, filesystems,
//! usage from a metadata snapshot, and the live metadata check.

use super::*;

impl Pool {
    pub(super) fn thin_dm_name(&self, thin: &str) -> String {
        format!("{}-{thin}", self.name)
    }

    pub(super) fn record(&self, name: &str) -> Result<ThinRecord> {
        match self.store.thin(name)? {
            Some(r) if r.state == ThinState::Ready => Ok(r),
            _ => Err(Error::new(ErrorKind::NotFound {
                name: name.to_owned(),
            })),
        }
    }

    pub(super) fn message(&self, msg: &str) -> Result<()> {
        self.deps.dm.message(&self.name, msg).map(drop)
    }

    /// Records, sends `msg`, advances the transaction id, records done.
    pub(super) fn mutate(
        &mut self,
        intent: Intent,
        msg: &str,
        before: impl FnOnce(&Pool) -> Result<Option<String>>,
    ) -> Result<()> {
        let seq = self.store.begin(&intent)?;
        let suspended = match before(self) {
            Ok(s) => s,
            Err(e) => {
                self.store.roll_back(seq)?;
                return Err(e);
            }
        };
        let sent = self.message(msg);
        // Resume whatever was suspended, even when the message failed.
        let resumed = match &suspended {
            Some(dev) => self.deps.dm.resume(dev),
            None => Ok(()),
        };
        if let Err(e) = sent {
            let gone = intent.kind == OpKind::Delete && is_errno(&e, libc::ENODATA);
            if !gone {
                self.store.roll_back(seq)?;
                return Err(e);
            }
        }
        let set_txn = format!("set_transaction_id {} {}", intent.txn_from, intent.txn_to);
        if let Err(e) = self.message(&set_txn) {
            // Resolve it now the way reconciliation would after a crash
            // here; if that fails too, the intent stays for the next open.
            if let Ok(op) = self.store.op(seq) {
                let _ = self.resolve(op, intent.txn_from);
            }
            return Err(e);
        }
        self.store.finish(seq)?;
        resumed
    }

    pub(super) fn new_intent(
        &self,
        kind: OpKind,
        thin_id: ThinId,
        name: &str,
        size: Sectors,
        origin: Option<ThinId>,
        from: TransactionId,
    ) -> Result<Intent> {
        Ok(Intent {
            kind,
            thin_id,
            name: name.to_owned(),
            size,
            origin,
            txn_from: from,
            txn_to: from.next()?,
        })
    }

    /// The checks every new thin device (created or snapshotted) passes, and
    /// the id and transaction id it will take: the name is free, the pool is
    /// writable and above its free-space floor, and the transaction id is
    /// the one the records expect.
    pub(super) fn reserve_new_thin(&self, name: &str) -> Result<(ThinId, TransactionId)> {
        self.refuse_if_lent()?;
        if self.store.thin(name)?.is_some() {
            return Err(Error::new(ErrorKind::NameTaken {
                name: name.to_owned(),
            }));
        }
        let u = self.writable_usage()?;
        self.check_floor(&u)?;
        let txn = self.check_txn(&u)?;
        let id = self
            .store
            .free_thin_id_except(&self.reconciliation.unknown_ids)?;
        Ok((id, txn))
    }

    /// Creates a thin device of `size` (a multiple of the block size).
    pub fn create_thin(&mut self, name: &str, size: Sectors) -> Result<ThinId> {
        let r = self.retry_if_id_taken(|p| p.create_thin_once(name, size));
        self.thin_context(r, "create thin device", name)
    }

    fn create_thin_once(&mut self, name: &str, size: Sectors) -> Result<ThinId> {
        check_name(name)?;
        self.table.block_size.blocks_exact("thin device", size)?;
        if size == Sectors::ZERO {
            return Err(Error::new(ErrorKind::SizeTooSmall {
                what: "thin device",
                size: Bytes(0),
                min: self.table.block_size.bytes(),
            }));
        }
        let (id, txn) = self.reserve_new_thin(name)?;
        let intent = self.new_intent(OpKind::Create, id, name, size, None, txn)?;
        self.mutate(intent, &format!("create_thin {id}"), |_| Ok(None))?;
        Ok(id)
    }

    /// Snapshots `origin` as `name`. An active origin is suspended for the
    /// moment of the snapshot and always resumed.
    pub fn snapshot(&mut self, origin: &str, name: &str) -> Result<ThinId> {
        let r = self.retry_if_id_taken(|p| p.snapshot_once(origin, name));
        self.thin_context(r, "snapshot thin device", name)
    }

    fn snapshot_once(&mut self, origin: &str, name: &str) -> Result<ThinId> {
        check_name(name)?;
        let o = self.record(origin)?;
        let (id, txn) = self.reserve_new_thin(name)?;
        let intent = self.new_intent(OpKind::Snapshot, id, name, o.size, Some(o.id), txn)?;
        let origin_dm = self.thin_dm_name(origin);
        let fs = self.filesystem(origin)?;
        self.mutate(intent, &format!("create_snap {id} {}", o.id), |p| {
            match p.deps.dm.info(&origin_dm)? {
                Some(i) if i.live_table && !i.suspended => {
                    p.deps.dm.suspend(&origin_dm)?;
                    Ok(Some(origin_dm.clone()))
                }
                _ => Ok(None),
            }
        })?;
        if let Some(fs) = fs {
            // Snapshots keep their filesystem even after the origin is deleted.
            self.store
                .set_config(&format!("fs:{name}"), &fs.to_string())?;
        }
        Ok(id)
    }

    /// Runs `f` again after comparing the records with the pool when the
    /// kernel refused a new thin id as taken: another tool made it without
    /// a transaction id of its own, so the open trusted the records.
    fn retry_if_id_taken<T>(&mut self, f: impl Fn(&mut Pool) -> Result<T>) -> Result<T> {
        match f(self) {
            Err(e) if matches!(e.kind(), ErrorKind::NameTaken { name } if *name == self.name) => {
                self.reconcile(true)?;
                f(self)
            }
            r => r,
        }
    }

    /// Deletes a thin device (deactivating it first; fails if it is busy).
    pub fn delete_thin(&mut self, name: &str) -> Result<()> {
        let r = (|| -> Result<()> {
            let r = self.record(name)?;
            self.deactivate_inner(name, false)?;
            let u = self.status_inner()?.into_usage()?;
            let txn = self.check_txn(&u)?;
            let intent = self.new_intent(OpKind::Delete, r.id, name, r.size, r.origin, txn)?;
            self.mutate(intent, &format!("delete {}", r.id), |_| Ok(None))?;
            self.store.remove_config(&format!("fs:{name}"))
        })();
        self.thin_context(r, "delete thin device", name)
    }

    /// Activates a thin device; returns its device node (`/dev/dm-N`). Idempotent.
    pub fn activate(&self, name: &str) -> Result<PathBuf> {
        self.thin_context(self.activate_inner(name), "activate thin device", name)
    }

    pub(super) fn pool_info(&self) -> Result<DmInfo> {
        self.deps.dm.info(&self.name)?.ok_or_else(|| {
            Error::new(ErrorKind::NotFound {
                name: self.name.clone(),
            })
        })
    }

    pub(super) fn activate_inner(&self, name: &str) -> Result<PathBuf> {
        let r = self.record(name)?;
        let dm_name = self.thin_dm_name(name);
        check_dm_name(&dm_name)?;
        let table = ThinTable {
            length: r.size,
            pool: DevRef::Num(self.pool_info()?.devnum),
            id: r.id,
            external_origin: None,
        };
        match self.deps.dm.info(&dm_name)? {
            Some(i) if i.live_table => {
                let live = self.deps.dm.table(&dm_name)?;
                let found = live.first().map(ThinTable::from_target).transpose()?;
                let smaller = found.as_ref().is_some_and(|f| {
                    f.length < table.length
                        && ThinTable {
                            length: table.length,
                            ..f.clone()
                        } == table
                });
                if smaller {
                    // The records have a grown size the device does not yet.
                    self.reload_thin(&dm_name, &table)?;
                    return Ok(i.devnode());
                }
                if found.as_ref() != Some(&table) {
                    return Err(Error::new(ErrorKind::TableMismatch {
                        device: dm_name,
                        found: found.map(|t| t.to_string()).unwrap_or_default(),
                        expected: table.to_string(),
                    }));
                }
                if i.suspended {
                    self.deps.dm.resume(&dm_name)?;
                }
                Ok(i.devnode())
            }
            existing => {
                let info = match existing {
                    Some(i) => i,
                    None => self.deps.dm.create(&dm_name)?,
                };
                let r = self
                    .deps
                    .dm
                    .load(&dm_name, &[table.to_target()])
                    .and_then(|_| self.deps.dm.resume(&dm_name));
                if let Err(e) = r {
                    let _ = self.deps.dm.remove(&dm_name, false);
                    return Err(e);
                }
                Ok(info.devnode())
            }
        }
    }

    pub(super) fn reload_thin(&self, dm_name: &str, table: &ThinTable) -> Result<()> {
        self.deps.dm.load(dm_name, &[table.to_target()])?;
        let suspended = self.deps.dm.suspend(dm_name);
        let resumed = self.deps.dm.resume(dm_name);
        suspended.and(resumed)
    }

    /// Grows a thin device to `new_size` (a multiple of the block size),
    /// live if it is active. Crash-safe like the other mutations: intent
    /// record → live table reloaded (when active) → `set_transaction_id` →
    /// done record, which gives the record its new size. A resize a crash
    /// interrupted is finished by the next open (growing is always safe), so
    /// the record and the live table agree on one size. Grow its filesystem
    /// with [`Filesystem::grow`] afterwards (or use [`Pool::resize_thin_and_fs`]).
    pub fn resize_thin(&mut self, name: &str, new_size: Sectors) -> Result<()> {
        let r = (|| -> Result<()> {
            let r = self.record(name)?;
            self.table
                .block_size
                .blocks_exact("thin device", new_size)?;
            if new_size < r.size {
                return Err(Error::new(ErrorKind::SizeTooSmall {
                    what: "thin device (shrinking is not supported)",
                    size: new_size.bytes(),
                    min: r.size.bytes(),
                }));
            }
            if new_size == r.size {
                return Ok(());
            }
            let u = self.status_inner()?.into_usage()?;
            let txn = self.check_txn(&u)?;
            let intent = self.new_intent(OpKind::Resize, r.id, name, new_size, r.origin, txn)?;
            let seq = self.store.begin(&intent)?;
            let grown = self.grow_live_thin(name, r.id, new_size);
            if grown.is_err() && self.live_thin_length(name).ok().flatten() != Some(new_size) {
                // The kernel refused before the new table went live: nothing
                // changed, so the intent is rolled back.
                self.store.roll_back(seq)?;
                return grown;
            }
            // (When the new table is live despite an error, say a failed
            // resume, the size is committed and the error reported after.)
            let r = self.message(&format!(
                "set_transaction_id {} {}",
                intent.txn_from, intent.txn_to
            ));
            if let Err(e) = r {
                // Finish it now the way reconciliation would; if that fails
                // too, the intent stays for the next open.
                if let Ok(op) = self.store.op(seq) {
                    let txn = self
                        .status_inner()
                        .ok()
                        .and_then(|s| s.usage().map(|u| u.transaction_id));
                    if let Some(txn) = txn {
                        let _ = self.resolve(op, txn);
                    }
                }
                return Err(e);
            }
            self.store.finish(seq)?;
            grown
        })();
        self.thin_context(r, "resize thin device", name)
    }

    /// The length of a thin device's live table, if it is active.
    pub(super) fn live_thin_length(&self, name: &str) -> Result<Option<Sectors>> {
        let dm_name = self.thin_dm_name(name);
        match self.deps.dm.info(&dm_name)? {
            Some(i) if i.live_table => Ok(self.deps.dm.table(&dm_name)?.first().map(|t| t.length)),
            _ => Ok(None),
        }
    }

    /// Gives an active thin device's live table `size` (reload, suspend,
    /// resume: always resumed); an inactive one gets it on activation.
    pub(super) fn grow_live_thin(&self, name: &str, id: ThinId, size: Sectors) -> Result<()> {
        let dm_name = self.thin_dm_name(name);
        match self.deps.dm.info(&dm_name)? {
            Some(i) if i.live_table => {
                let live = self.deps.dm.table(&dm_name)?;
                let found = live.first().map(ThinTable::from_target).transpose()?;
                match found {
                    Some(t) if t.id == id && t.length == size => {
                        if i.suspended {
                            self.deps.dm.resume(&dm_name)?;
                        }
                        Ok(())
                    }
                    Some(t) if t.id == id => {
                        self.reload_thin(&dm_name, &ThinTable { length: size, ..t })
                    }
                    other => Err(Error::new(ErrorKind::TableMismatch {
                        device: dm_name,
                        found: other.map(|t| t.to_string()).unwrap_or_default(),
                        expected: format!("thin id {id}"),
                    })),
                }
            }
            _ => Ok(()),
        }
    }

    /// Grows a thin device and then its filesystem (`mountpoint` is needed
    /// for xfs).
    pub fn resize_thin_and_fs(
        &mut self,
        name: &str,
        new_size: Sectors,
        mountpoint: Option<&Path>,
    ) -> Result<()> {
        self.resize_thin(name, new_size)?;
        let fs = self.filesystem(name)?.ok_or_else(|| {
            self.err(
                Error::new(ErrorKind::NotFound {
                    name: format!("filesystem on {name}"),
                }),
                "grow filesystem",
            )
        })?;
        let dev = self.activate(name)?;
        self.thin_context(fs.grow(&dev, mountpoint), "grow filesystem", name)
    }

    /// Makes `fs` on a base thin device, once: snapshots inherit it. Returns
    /// false when the device (or its origin) already has that filesystem.
    pub fn mkfs(&mut self, name: &str, fs: Filesystem) -> Result<bool> {
        let r = (|| {
            match self.filesystem(name)? {
                Some(f) if f == fs => return Ok(false),
                Some(f) => {
                    return Err(Error::new(ErrorKind::NameTaken {
                        name: format!("{name} already has {f}"),
                    }))
                }
                None => {}
            }
            let dev = self.activate_inner(name)?;
            fs.mkfs(&dev)?;
            self.store
                .set_config(&format!("fs:{name}"), &fs.to_string())?;
            Ok(true)
        })();
        self.thin_context(r, "make filesystem", name)
    }

    /// The filesystem on a thin device, inherited from its origins.
    pub fn filesystem(&self, name: &str) -> Result<Option<Filesystem>> {
        let mut r = self.record(name)?;
        loop {
            if let Some(f) = self.store.config(&format!("fs:{}", r.name))? {
                return f.parse().map(Some);
            }
            match r
                .origin
                .map(|o| self.store.thin_by_id(o))
                .transpose()?
                .flatten()
            {
                Some(o) => r = o,
                None => return Ok(None),
            }
        }
    }

    /// Mount options for a thin device (xfs snapshots need `nouuid`).
    pub fn mount_options(&self, name: &str) -> Result<&'static str> {
        let snapshot = self.record(name)?.origin.is_some();
        Ok(self
            .filesystem(name)?
            .map(|f| f.mount_options(snapshot))
            .unwrap_or(""))
    }

    /// Deactivates a thin device; with `deferred`, a busy device goes away
    /// on last close. Idempotent.
    pub fn deactivate(&self, name: &str, deferred: bool) -> Result<()> {
        self.thin_context(
            self.deactivate_inner(name, deferred),
            "deactivate thin device",
            name,
        )
    }

    pub(super) fn deactivate_inner(&self, name: &str, deferred: bool) -> Result<()> {
        let dm_name = self.thin_dm_name(name);
        if self.deps.dm.info(&dm_name)?.is_none() {
            return Ok(());
        }
        match self.deps.dm.remove(&dm_name, deferred) {
            Err(e) if e.is_not_found() => Ok(()),
            r => r,
        }
    }

    /// A thin device's status (it must be active).
    pub fn thin_status(&self, name: &str) -> Result<ThinStatus> {
        let dm_name = self.thin_dm_name(name);
        let r = (|| {
            self.record(name)?;
            let lines = self.deps.dm.status(&dm_name)?;
            let line: &TargetLine = lines.first().ok_or_else(|| {
                Error::new(ErrorKind::NotFound {
                    name: dm_name.clone(),
                })
            })?;
            line.params.parse()
        })();
        r.map_err(|e| self.err(e, "read thin status").device(dm_name.clone()))
    }

    /// The recorded thin devices.
    pub fn thins(&self) -> Result<Vec<ThinRecord>> {
        self.store.thins()
    }

    /// Whether a thin device is active.
    pub fn is_active(&self, name: &str) -> Result<bool> {
        Ok(self
            .deps
            .dm
            .info(&self.thin_dm_name(name))?
            .is_some_and(|i| i.live_table))
    }

    /// Exact per-device usage (mapped, exclusive and shared blocks), read
    /// from a metadata snapshot the way `thin_ls` reports it.
    pub fn usage(&self) -> Result<Vec<ThinUsage>> {
        self.usage_inner()
            .map_err(|e| self.err(e, "read thin usage"))
    }

    pub(super) fn usage_inner(&self) -> Result<Vec<ThinUsage>> {
        self.with_metadata_snapshot(|meta| self.deps.tools.list(meta, true))
    }

    /// Checks the live pool's metadata with `thin_check` on a metadata
    /// snapshot, so the pool keeps working meanwhile.
    pub fn check_live(&self) -> Result<()> {
        self.with_metadata_snapshot(|meta| self.deps.tools.check_snapshot(meta))
            .map_err(|e| self.err(e, "check metadata"))
    }

    /// Runs `f` while the pool holds a metadata snapshot, releasing it
    /// afterwards (also when `f` fails).
    pub(super) fn with_metadata_snapshot<T>(
        &self,
        f: impl FnOnce(MetaDev<'_>) -> Result<T>,
    ) -> Result<T> {
        if self.message("reserve_metadata_snap").is_err() {
            // A snapshot left held (by a crash, or another tool): release and retry.
            let _ = self.message("release_metadata_snap");
            self.message("reserve_metadata_snap")?;
        }
        let r = f(self.metadata_device());
        let released = self.message("release_metadata_snap");
        let v = r?;
        released?;
        Ok(v)
    }

    /// Deletes thin ids the pool has that no record explains (as reported by
    /// reconciliation in [`Reconciliation::unknown_ids`]). Returns what it removed.
    pub fn remove_unknown(&mut self) -> Result<Vec<ThinId>> {
        self.refuse_if_lent()
            .map_err(|e| self.err(e, "remove unknown thin ids"))?;
        let ids = std::mem::take(&mut self.reconciliation.unknown_ids);
        let recorded: Vec<ThinId> = self.store.thins()?.iter().map(|t| t.id).collect();
        let mut removed = Vec::new();
        for id in ids {
            if recorded.contains(&id) {
                continue;
            }
            match self.message(&format!("delete {id}")) {
                Ok(()) => removed.push(id),
                Err(e) if is_errno(&e, libc::ENODATA) => {}
                Err(e) => return Err(self.err(e, "remove unknown thin ids")),
            }
        }
        Ok(removed)
    }
}
