//! Shutdown (keep) and destroy (remove), immediate or deferred.

use super::*;

impl Pool {
    /// Shuts the pool down cleanly: removes its thin dm devices and the pool
    /// device, detaches the loop devices, and records the clean shutdown (so
    /// the next open skips `thin_check`). Files and records stay. Fails,
    /// changing nothing, if a thin device is open.
    pub fn shutdown(self) -> Result<()> {
        let name = self.name.clone();
        self.teardown(false, false)
            .map_err(|e| e.op("shut down pool").pool(name))
    }

    /// Removes the pool and everything on it: thin dm devices, the pool dm
    /// device, the loop devices, the files and the records. Fails (changing
    /// nothing) if a thin device is open.
    pub fn destroy(self) -> Result<()> {
        let name = self.name.clone();
        self.teardown(true, false)
            .map_err(|e| e.op("destroy pool").pool(name))
    }

    /// Like [`Pool::destroy`], but devices still open (mounted, or held by
    /// a process) are removed with deferred removal: they, the pool and its
    /// loop devices (which the kernel then auto-clears) go away when the
    /// last holder closes. Files and records are removed at once.
    /// Loopback pools only.
    pub fn destroy_deferred(self) -> Result<()> {
        let name = self.name.clone();
        let r = match self.backing {
            Backing::Loopback { .. } => self.teardown(true, true),
            _ => Err(Error::new(ErrorKind::Unsupported {
                what: "deferred destruction of a non-loopback pool",
            })),
        };
        r.map_err(|e| e.op("destroy pool (deferred)").pool(name))
    }

    pub(super) fn teardown(self, destroy: bool, deferred: bool) -> Result<()> {
        if destroy && matches!(self.backing, Backing::Adopted { .. }) {
            // The pool is not ours to remove.
            return Err(Error::new(ErrorKind::Unsupported {
                what: "destroying an adopted pool (shut it down instead)",
            }));
        }
        let thins = thin_devices_of(&self.deps, &self.name)?;
        if !deferred {
            refuse_open(&self.deps, &thins)?;
        }
        for t in &thins {
            self.deps.dm.remove(t, deferred)?;
        }
        let store_path = self.store.path().to_owned();
        let mut files = store_files_of(&store_path);
        match self.backing.clone() {
            Backing::Loopback {
                dir,
                data_loop,
                meta_loop,
            } => {
                if self.deps.dm.info(&self.name)?.is_some() {
                    self.deps.dm.remove(&self.name, deferred)?;
                }
                // A loop device still held by a (deferred) pool is set to
                // auto-clear on its last close by LOOP_CLR_FD itself.
                self.deps.loops.detach(&data_loop.path)?;
                self.deps.loops.detach(&meta_loop.path)?;
                if !destroy {
                    return self.store.set_config("clean", "true");
                }
                files.extend([dir.join(DATA_FILE), dir.join(META_FILE)]);
                drop(self);
                remove_files(&files)?;
                // Remove the directory too when nothing else is in it.
                let _ = fs::remove_dir(&dir);
                Ok(())
            }
            Backing::Lvm {
                vg,
                lv,
                devices,
                profile,
                ..
            } => {
                let full = format!("{vg}/{lv}");
                if !destroy {
                    self.deps
                        .lvm
                        .lvchange(&full, &crate::lvm::LvChange::Deactivate)?;
                    return self.store.set_config("clean", "true");
                }
                self.deps.lvm.lvremove(&full)?;
                self.deps.lvm.vgremove(&vg)?;
                self.deps.lvm.pvremove(&devices)?;
                files.push(profile);
                drop(self);
                remove_files(&files)
            }
            // The pool is not ours to remove: release it, keep the records.
            Backing::Adopted { .. } => self.store.set_config("clean", "true"),
        }
    }
}
