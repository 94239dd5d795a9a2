//! Direct-lvm pools: a thin-pool LV made by lvm2 on the caller's devices,
//! opened, rolled back when a creation was interrupted, and grown by lvextend.

use super::*;

impl Pool {
    /// Makes a direct-lvm pool: PVs on `cfg.devices`, a VG, a thin-pool LV
    /// with its metadata LV (sizes as percentages of the VG), zeroing off by
    /// default, an LVM profile with the autoextend threshold and percent, and
    /// monitoring on. A device holding a partition table, filesystem or PV
    /// signature is refused unless `cfg.force`. Nothing is left behind if it fails.
    pub fn create_lvm(deps: &Deps, cfg: &LvmConfig) -> Result<Pool> {
        let r = (|| -> Result<Pool> {
            use crate::lvm::{profile_name, profile_path, profile_text, LvChange, ThinPoolSpec};
            check_name(&cfg.vg)?;
            check_name(&cfg.lv)?;
            if cfg.devices.is_empty() {
                return Err(Error::new(ErrorKind::NotFound {
                    name: "a device for the volume group".to_owned(),
                }));
            }
            // The percentages are checked again against the VG once it exists.
            let nominal = crate::lvm::VgInfo {
                name: cfg.vg.clone(),
                extent_size: Bytes::mib(4),
                extent_count: 1 << 40,
                free_count: 1 << 40,
            };
            ThinPoolSpec::from_percent(
                &nominal,
                &cfg.lv,
                cfg.data_percent,
                cfg.metadata_percent,
                cfg.chunk_size,
                cfg.zero,
            )?;
            if cfg.store.exists() {
                // A creation a crash interrupted is rolled back first; any other
                // store means the name is taken.
                let store = Store::open(&cfg.store)?;
                let interrupted = store.config("state")?.as_deref() == Some("creating")
                    && store.config("vg")?.as_deref() == Some(cfg.vg.as_str());
                if !interrupted {
                    return Err(Error::new(ErrorKind::NameTaken {
                        name: cfg.store.display().to_string(),
                    })
                    .path(&cfg.store));
                }
                Self::roll_back_lvm_create(deps, store)?;
            }
            if deps.lvm.vg(&cfg.vg)?.is_some() {
                return Err(Error::new(ErrorKind::NameTaken {
                    name: cfg.vg.clone(),
                }));
            }
            for d in &cfg.devices {
                let found = deps.lvm.device_use(d)?;
                if found != crate::lvm::DeviceUse::Free {
                    return Err(Error::new(ErrorKind::DeviceUnusable {
                        device: d.display().to_string(),
                        found,
                    })
                    .path(d));
                }
            }
            for d in &cfg.devices {
                let found = deps.lvm.signatures(d)?;
                if !found.is_empty() && !cfg.force {
                    return Err(Error::new(ErrorKind::DeviceHasSignature {
                        device: d.display().to_string(),
                        found,
                    })
                    .path(d));
                }
            }
            let full = format!("{}/{}", cfg.vg, cfg.lv);
            let profile = profile_path(&cfg.profile_dir, &cfg.vg, &cfg.lv);
            let devs: Vec<String> = cfg
                .devices
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            // The plan is recorded before anything is made, and each step before
            // it is taken, so a crash at any point can be rolled back.
            let store = Store::open(&cfg.store)?;
            let r = (|| {
                for (k, v) in [
                    ("backing", "lvm".to_owned()),
                    ("vg", cfg.vg.clone()),
                    ("lv", cfg.lv.clone()),
                    ("devices", devs.join("\n")),
                    ("profile", profile.display().to_string()),
                    ("floor_percent", "0".to_owned()),
                    ("state", "creating".to_owned()),
                    ("lvm_step", "none".to_owned()),
                    ("monitor", cfg.monitor.to_string()),
                ] {
                    store.set_config(k, &v)?;
                }
                let step = |s: &str| store.set_config("lvm_step", s);
                if cfg.force {
                    step("wipe")?;
                    for d in &cfg.devices {
                        deps.lvm.wipe(d)?;
                    }
                }
                step("pvcreate")?;
                deps.lvm.pvcreate(&cfg.devices)?;
                step("vgcreate")?;
                deps.lvm.vgcreate(&cfg.vg, &cfg.devices)?;
                let vg = deps.lvm.vg(&cfg.vg)?.ok_or_else(|| {
                    Error::new(ErrorKind::NotFound {
                        name: cfg.vg.clone(),
                    })
                })?;
                let spec = ThinPoolSpec::from_percent(
                    &vg,
                    &cfg.lv,
                    cfg.data_percent,
                    cfg.metadata_percent,
                    cfg.chunk_size,
                    cfg.zero,
                )?;
                step("lvcreate")?;
                deps.lvm.create_thin_pool(&spec)?;
                step("profile")?;
                fs::create_dir_all(&cfg.profile_dir).map_err(|e| Error::io(e, &cfg.profile_dir))?;
                fs::write(
                    &profile,
                    profile_text(
                        cfg.autoextend.threshold_percent,
                        cfg.autoextend.extend_percent,
                    ),
                )
                .map_err(|e| Error::io(e, &profile))?;
                deps.lvm
                    .lvchange(&full, &LvChange::Profile(profile_name(&cfg.vg, &cfg.lv)))?;
                // lvm2 refuses to set either to what it already is.
                let row = crate::lvm::lv(&*deps.lvm, &cfg.vg, &cfg.lv)?;
                if (row.lv_when_full == "error") != cfg.error_when_full {
                    deps.lvm
                        .lvchange(&full, &LvChange::ErrorWhenFull(cfg.error_when_full))?;
                }
                // The table takes the profile's low-water mark on a reload.
                deps.lvm.lvchange(&full, &LvChange::Refresh)?;
                if cfg.monitor {
                    // dmeventd monitors when it is there; without it, thinbox's
                    // own watch loop is the monitor (see `Pool::monitor`).
                    if let Err(e) = deps.lvm.lvchange(&full, &LvChange::Monitor(true)) {
                        tracing::info!("{e}: dmeventd does not monitor {full}; run Pool::watch");
                    }
                } else if row.is_monitored() {
                    deps.lvm.lvchange(&full, &LvChange::Monitor(false))?;
                }
                // The creation is committed: from here an open rolls forward.
                store.set_config("state", "made")
            })();
            if let Err(e) = r {
                let _ = Self::roll_back_lvm_create(deps, store);
                return Err(e);
            }
            drop(store);
            Self::open_lvm_inner(deps, &cfg.store).inspect_err(|_| {
                if let Ok(store) = Store::open(&cfg.store) {
                    let _ = Self::roll_back_lvm_create(deps, store);
                }
            })
        })();
        r.map_err(|e| {
            e.op("create lvm pool")
                .pool(format!("{}/{}", cfg.vg, cfg.lv))
        })
    }

    /// Removes what an interrupted or failed `create_lvm` made, as far as
    /// its recorded step shows it got: the profile, the VG (only when every
    /// PV in it is one of the pool's devices), the PV labels (only on the
    /// pool's devices and only when they are in no VG), and the store.
    /// Anything else is refused as [`ErrorKind::NotOurs`]. Idempotent, so a
    /// crash during the rollback is rolled back by the next try.
    pub(super) fn roll_back_lvm_create(deps: &Deps, store: Store) -> Result<()> {
        const STEPS: [&str; 6] = [
            "none", "wipe", "pvcreate", "vgcreate", "lvcreate", "profile",
        ];
        let get = |k: &str| -> Result<String> { Ok(store.config(k)?.unwrap_or_default()) };
        let step = get("lvm_step")?;
        let at = STEPS
            .iter()
            .position(|s| *s == step)
            .ok_or_else(|| Error::parse("recorded lvm step", &step, "unknown step"))?;
        let reached = |s: &str| STEPS.iter().position(|x| *x == s).is_some_and(|i| at >= i);
        let vg = get("vg")?;
        let devices: Vec<PathBuf> = get("devices")?
            .split('\n')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect();
        if reached("profile") {
            remove_files(&[PathBuf::from(get("profile")?)])?;
        }
        if reached("vgcreate") && !vg.is_empty() && deps.lvm.vg(&vg)?.is_some() {
            let foreign = deps
                .lvm
                .pvs()?
                .into_iter()
                .any(|p| p.vg.as_deref() == Some(vg.as_str()) && !devices.contains(&p.device));
            if foreign {
                return Err(Error::new(ErrorKind::NotOurs {
                    what: format!("volume group {vg}"),
                }));
            }
            deps.lvm.vgremove(&vg)?;
        }
        if reached("pvcreate") {
            let pvs = deps.lvm.pvs()?;
            let ours: Vec<PathBuf> = devices
                .iter()
                .filter(|d| pvs.iter().any(|p| &p.device == *d && p.vg.is_none()))
                .cloned()
                .collect();
            if !ours.is_empty() {
                deps.lvm.pvremove(&ours)?;
            }
        }
        let files = store_files_of(store.path());
        drop(store);
        remove_files(&files)
    }

    /// Opens (activating with `lvchange -ay` if needed) a direct-lvm pool
    /// from its record store, and reconciles. Idempotent. (LVM itself runs
    /// thin_check when it activates a pool.) A creation a crash interrupted
    /// before it was committed is rolled back instead, and reported as
    /// [`ErrorKind::CreationRolledBack`]; one interrupted after is finished.
    pub fn open_lvm(deps: &Deps, store_path: &Path) -> Result<Pool> {
        Self::open_lvm_inner(deps, store_path).map_err(|e| e.op("open lvm pool").path(store_path))
    }

    pub(super) fn open_lvm_inner(deps: &Deps, store_path: &Path) -> Result<Pool> {
        use crate::lvm::LvChange;
        let store = Self::existing_store(store_path)?;
        let get = |k: &str| -> Result<String> {
            store.config(k)?.ok_or_else(|| {
                Error::parse("pool configuration", k, "missing from the record store")
            })
        };
        let (vg, lv) = (get("vg")?, get("lv")?);
        if get("state")? == "creating" {
            Self::roll_back_lvm_create(deps, store)?;
            return Err(Error::new(ErrorKind::CreationRolledBack {
                pool: format!("{vg}/{lv}"),
            }));
        }
        let devices = get("devices")?.split('\n').map(PathBuf::from).collect();
        let profile = PathBuf::from(get("profile")?);
        let full = format!("{vg}/{lv}");
        // lvm2's dm name while the pool has no thin LVs (ours never has).
        let expected = format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"));
        let activated = deps.dm.info(&expected)?.is_none_or(|i| !i.live_table);
        deps.lvm.lvchange(&full, &LvChange::Activate)?;
        let row = crate::lvm::lv(&*deps.lvm, &vg, &lv)?;
        if store.config("monitor")?.as_deref() == Some("false") && row.is_monitored() {
            // Activation turned dmeventd monitoring on again.
            deps.lvm.lvchange(&full, &LvChange::Monitor(false))?;
        }
        let name = row.dm_name().to_owned();
        let table = Self::live_pool_table(deps, &name)?;
        let tmeta = format!("{name}_tmeta");
        let meta_info = deps.dm.info(&tmeta)?.ok_or_else(|| {
            Error::new(ErrorKind::NotFound {
                name: tmeta.clone(),
            })
        })?;
        let backing = Backing::Lvm {
            vg,
            lv,
            devices,
            profile,
            meta: meta_info.devnode(),
            meta_devnum: meta_info.devnum,
        };
        Self::finish_open(deps, name, store, table, backing, false, activated)
    }

    pub(super) fn existing_store(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(Error::new(ErrorKind::NotFound {
                name: path.display().to_string(),
            }));
        }
        Store::open(path)
    }

    pub(super) fn maybe_extend_lvm(
        &mut self,
        policy: &AutoextendPolicy,
        u: &PoolUsage,
        vg: &str,
        lv: &str,
    ) -> Result<Extended> {
        let mut done = Extended::default();
        let full = format!("{vg}/{lv}");
        let over = |used: u64, total: u64| {
            u128::from(used) * 100 >= u128::from(total) * u128::from(policy.threshold_percent)
        };
        let r = (|| {
            let cur = self.table.length.bytes();
            if (over(u.used_data.get(), u.total_data.get()) || u.mode == PoolMode::OutOfDataSpace)
                && cur < policy.max_data
            {
                self.deps.lvm.lvextend(
                    &full,
                    crate::lvm::LvExtend::DataPercent(policy.extend_percent.max(1)),
                )?;
                // lvm2's reload carries the profile's low-water mark.
                self.refresh_table()?;
                done.data = Some(self.table.length.bytes());
            }
            let meta_bytes = u.total_meta.sectors().bytes();
            if over(u.used_meta.get(), u.total_meta.get()) && meta_bytes < policy.max_metadata {
                let mib = (percent_of(meta_bytes.0, policy.extend_percent) >> 20).max(1);
                self.deps
                    .lvm
                    .lvextend(&full, crate::lvm::LvExtend::Metadata(Bytes::mib(mib)))?;
                self.refresh_table()?;
                done.metadata = Some(Bytes(meta_bytes.0 + (mib << 20)));
            }
            Ok(done)
        })();
        r.map_err(|e| self.err(e, "autoextend lvm pool"))
    }
}
