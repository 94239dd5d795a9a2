//! Reconciliation on open: the records set against the kernel's
//! transaction id and thin ids, half-done operations finished or rolled back.

use super::*;

impl Pool {
    /// Compares the records with the pool's thin ids (thin_ls on a metadata
    /// snapshot) whatever the records say: thin ids another tool made or
    /// deleted without a transaction id of its own are found here, and by
    /// every open that activates the pool (see [`Pool::reconcile`]).
    pub fn rescan(&mut self) -> Result<&Reconciliation> {
        self.refuse_if_lent()
            .map_err(|e| self.err(e, "reconcile pool records"))?;
        self.reconcile(true)?;
        Ok(&self.reconciliation)
    }

    /// Reconciliation on open. The id comparison (thin_ls, which costs
    /// more as the pool fills) runs when `scan`, when an operation was left
    /// pending, or when the records are not known to match the pool at its
    /// transaction id ([`Store::ids_checked_at`]); otherwise the last
    /// command ended cleanly and the open costs a status ioctl and a list.
    pub(super) fn reconcile(&mut self, scan: bool) -> Result<()> {
        let r = (|| -> Result<()> {
            let mut report = Reconciliation::default();
            let txn = match self.status_inner()? {
                PoolStatus::Working(u) => u.transaction_id,
                s => {
                    return Err(Error::new(ErrorKind::PoolNotWritable {
                        mode: s.to_string(),
                    }))
                }
            };
            let mut txn = txn;
            let pending = self.store.pending()?;
            let scan = scan || !pending.is_empty();
            for op in pending {
                let done = txn == op.intent.txn_to || op.intent.kind == OpKind::Resize;
                txn = self.resolve(op.clone(), txn)?;
                if done {
                    report.completed.push(op);
                } else {
                    report.rolled_back.push(op);
                }
            }
            let recorded = self.store.expected_txn()?;
            if txn != recorded {
                return Err(Error::new(ErrorKind::TransactionMismatch {
                    kernel: txn.0,
                    recorded: recorded.0,
                }));
            }
            if !scan && self.store.ids_checked_at()? == Some(txn) {
                report.trusted = true;
                self.reconciliation = report;
                return self.resume_and_clean_thins();
            }
            let in_pool: Vec<ThinId> = match self.usage_inner() {
                Ok(v) => v.iter().map(|u| u.id).collect(),
                Err(e) if matches!(e.kind(), ErrorKind::ToolMissing { .. }) => {
                    // Without thin-provisioning-tools the pool still opens; it
                    // just cannot be compared id by id.
                    tracing::warn!("{e}: thin ids not compared with the records");
                    report.unscanned = true;
                    self.reconciliation = report;
                    return self.resume_and_clean_thins();
                }
                Err(e) => return Err(e),
            };
            for t in self.store.thins()? {
                if !in_pool.contains(&t.id) && t.state != ThinState::Missing {
                    self.store.mark_missing(t.id)?;
                    report.missing.push(t.name);
                }
            }
            let recorded: Vec<ThinId> = self.store.thins()?.iter().map(|t| t.id).collect();
            report.unknown_ids = in_pool
                .into_iter()
                .filter(|id| !recorded.contains(id))
                .collect();
            // Unknown ids keep every open comparing (and reporting them).
            self.store
                .set_ids_checked_at(report.unknown_ids.is_empty().then_some(txn))?;
            self.reconciliation = report;
            self.resume_and_clean_thins()
        })();
        r.map_err(|e| self.err(e, "reconcile pool records"))
    }

    /// Resumes thin devices left suspended and removes ones left without a
    /// table (a crash mid-snapshot or mid-activation).
    pub(super) fn resume_and_clean_thins(&mut self) -> Result<()> {
        let mut report = std::mem::take(&mut self.reconciliation);
        let prefix = format!("{}-", self.name);
        for (dev, _) in self.deps.dm.list()? {
            if !dev.starts_with(&prefix) {
                continue;
            }
            let Some(info) = self.deps.dm.info(&dev)? else {
                continue;
            };
            if !info.live_table {
                self.deps.dm.remove(&dev, false)?;
                report.removed.push(dev);
            } else if info.suspended {
                self.deps.dm.resume(&dev)?;
                report.resumed.push(dev);
            }
        }
        self.reconciliation = report;
        Ok(())
    }

    /// Resolves one operation left in the intent state, given the pool's
    /// transaction id; returns the transaction id after.
    pub(super) fn resolve(&mut self, op: OpRecord, txn: TransactionId) -> Result<TransactionId> {
        let i = &op.intent;
        if txn == i.txn_to {
            self.store.finish(op.seq)?;
            return Ok(txn);
        }
        if txn != i.txn_from {
            return Err(Error::new(ErrorKind::TransactionMismatch {
                kernel: txn.0,
                recorded: i.txn_from.0,
            }));
        }
        if i.kind == OpKind::Resize {
            // The reload may or may not have happened: growing is always
            // safe, so finish it.
            self.grow_live_thin(&i.name, i.thin_id, i.size)?;
            self.message(&format!("set_transaction_id {} {}", i.txn_from, i.txn_to))?;
            self.store.finish(op.seq)?;
            return Ok(i.txn_to);
        }
        // The message may or may not have landed: make sure the id is gone.
        match self.message(&format!("delete {}", i.thin_id)) {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
        if i.kind == OpKind::Delete {
            self.message(&format!("set_transaction_id {} {}", i.txn_from, i.txn_to))?;
            self.store.finish(op.seq)?;
            Ok(i.txn_to)
        } else {
            self.store.roll_back(op.seq)?;
            Ok(txn)
        }
    }
}
