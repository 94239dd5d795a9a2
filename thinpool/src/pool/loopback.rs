//! Loopback pools: sparse data and metadata files on loop devices,
//! created, re-activated after a reboot, and loaded into dm.

use super::*;

impl Pool {
    /// Creates a loopback pool. Nothing is left behind if it fails.
    pub fn create_loopback(deps: &Deps, cfg: &LoopbackConfig) -> Result<Pool> {
        let r = (|| -> Result<Pool> {
            check_name(&cfg.name)?;
            let data = sectors_of("data device", cfg.data_size)?;
            let meta = sectors_of("metadata device", cfg.metadata_size)?;
            let blocks = cfg.block_size.blocks_exact("data device", data)?;
            if blocks == DataBlocks::ZERO {
                return Err(Error::new(ErrorKind::SizeTooSmall {
                    what: "data device",
                    size: cfg.data_size,
                    min: cfg.block_size.bytes(),
                }));
            }
            check_metadata_size(cfg.block_size, data, cfg.max_thins, meta)?;
            let lwm = cfg.low_water_mark_for(blocks);
            if deps.dm.info(&cfg.name)?.is_some() {
                return Err(Error::new(ErrorKind::NameTaken {
                    name: cfg.name.clone(),
                })
                .device(&cfg.name));
            }
            for f in [DATA_FILE, META_FILE, STORE_FILE] {
                let p = cfg.dir.join(f);
                if p.exists() {
                    return Err(Error::new(ErrorKind::NameTaken {
                        name: p.display().to_string(),
                    })
                    .path(p));
                }
            }
            let mut undo = Undo::default();
            let r = (|| {
                if !cfg.dir.exists() {
                    fs::create_dir_all(&cfg.dir).map_err(|e| Error::io(e, &cfg.dir))?;
                    undo.dir = Some(cfg.dir.clone());
                }
                undo.files.extend(store_files(&cfg.dir));
                let store = Store::open(&cfg.dir.join(STORE_FILE))?;
                for (k, v) in [
                    ("name", cfg.name.clone()),
                    ("data_size", cfg.data_size.0.to_string()),
                    ("metadata_size", cfg.metadata_size.0.to_string()),
                    ("block_size", cfg.block_size.to_string()),
                    ("low_water_mark", lwm.to_string()),
                    ("features", cfg.features.to_string()),
                    ("direct_io", cfg.direct_io.to_string()),
                    ("floor_percent", "0".to_owned()),
                    ("state", "creating".to_owned()),
                ] {
                    store.set_config(k, &v)?;
                }
                drop(store);
                check_room(
                    &cfg.dir,
                    None,
                    cfg.data_size.saturating_add(cfg.metadata_size),
                )?;
                for (f, size) in [(DATA_FILE, cfg.data_size), (META_FILE, cfg.metadata_size)] {
                    let p = cfg.dir.join(f);
                    let file = fs::File::create_new(&p).map_err(|e| Error::io(e, &p))?;
                    undo.files.push(p.clone());
                    file.set_len(size.0).map_err(|e| Error::io(e, &p))?;
                }
                Self::activate_pool(deps, &cfg.dir, Some(&mut undo))
            })();
            match r {
                Ok(p) => Ok(p),
                Err(e) => {
                    undo.run(deps);
                    Err(e)
                }
            }
        })();
        r.map_err(|e| e.op("create loopback pool").pool(&cfg.name))
    }

    /// Opens (re-activates if needed) the loopback pool in `dir` and
    /// reconciles its records with the kernel. Idempotent.
    pub fn open_loopback(deps: &Deps, dir: &Path) -> Result<Pool> {
        Self::activate_pool(deps, dir, None).map_err(|e| e.op("open loopback pool").path(dir))
    }

    pub(super) fn activate_pool(deps: &Deps, dir: &Path, undo: Option<&mut Undo>) -> Result<Pool> {
        // A repair cut short is finished (or dropped) before anything reads
        // the metadata.
        super::repair::settle_repair(deps, dir)?;
        let db = dir.join(STORE_FILE);
        if !db.exists() {
            return Err(Error::new(ErrorKind::NotFound {
                name: db.display().to_string(),
            }));
        }
        let store = Store::open(&db)?;
        let get = |k: &str| -> Result<String> {
            store.config(k)?.ok_or_else(|| {
                Error::parse("pool configuration", k, "missing from the record store").path(&db)
            })
        };
        let name = get("name")?;
        let data_size: Bytes = Bytes(
            get("data_size")?
                .parse()
                .map_err(|_| Error::parse("pool configuration", "data_size", "not a number"))?,
        );
        let block_size: BlockSize = get("block_size")?.parse()?;
        let lwm: DataBlocks = get("low_water_mark")?.parse()?;
        let features: PoolFeatures = get("features")?.parse()?;
        let direct_io = get("direct_io")? == "true";
        let unclean = get("state")? == "ready" && store.config("clean")?.as_deref() != Some("true");

        // Loop devices this call attached (not ones found attached), so a
        // failed open undoes only its own work.
        let mut fresh: Vec<PathBuf> = Vec::new();
        let mut made_dm = false;
        let r = (|| {
            let mut attach = |file: &str| -> Result<LoopInfo> {
                let p = dir.join(file);
                if let Some(l) = deps.loops.find(&p)? {
                    return Ok(l);
                }
                let l = deps.loops.attach(&p, direct_io)?;
                fresh.push(l.path.clone());
                Ok(l)
            };
            let data_loop = attach(DATA_FILE)?;
            let meta_loop = attach(META_FILE)?;
            let table = PoolTable {
                length: sectors_of("data device", data_size)?,
                metadata: DevRef::Num(meta_loop.devnum),
                data: DevRef::Num(data_loop.devnum),
                block_size,
                low_water_mark: lwm,
                features,
            };
            let mut checked = false;
            // Activated now (after a reboot, say): ids are compared on open.
            let mut activated = true;
            match deps.dm.info(&name)? {
                None => {
                    if unclean {
                        // Not shut down cleanly: check the metadata before
                        // the kernel trusts it.
                        checked = true;
                        deps.tools.check(MetaDev {
                            path: &meta_loop.path,
                            devnum: meta_loop.devnum,
                        })?;
                    }
                    deps.dm.create(&name)?;
                    made_dm = true;
                    Self::load_pool(deps, &name, &table)?;
                }
                Some(info) if !info.live_table => Self::load_pool(deps, &name, &table)?,
                Some(info) => {
                    activated = false;
                    let live = deps.dm.table(&name)?;
                    let found = live.first().map(PoolTable::from_target).transpose()?;
                    let same_devices = found.as_ref().is_some_and(|f| {
                        f.metadata == table.metadata
                            && f.data == table.data
                            && f.block_size == table.block_size
                    });
                    if same_devices && found.as_ref() != Some(&table) {
                        // Our own pool, stopped half-way through an extension
                        // (the records already have the new size): finish it.
                        deps.loops.refresh_capacity(&data_loop.path)?;
                        Self::reload_pool(deps, &name, &table)?;
                    } else if found.as_ref() != Some(&table) {
                        return Err(Error::new(ErrorKind::TableMismatch {
                            device: name.clone(),
                            found: found.map(|t| t.to_string()).unwrap_or_default(),
                            expected: table.to_string(),
                        }));
                    }
                    if info.suspended {
                        deps.dm.resume(&name)?;
                    }
                }
            }
            Ok((data_loop, meta_loop, table, checked, activated))
        })();
        let (data_loop, meta_loop, table, checked, activated) = match (r, undo) {
            (Ok(v), _) => v,
            // Creating: the caller's undo list removes everything.
            (Err(e), Some(u)) => {
                u.loops.extend(fresh);
                if made_dm {
                    u.dm = Some(name.clone());
                }
                return Err(e);
            }
            (Err(e), None) => {
                if made_dm {
                    let _ = deps.dm.remove(&name, false);
                }
                for l in fresh.iter().rev() {
                    let _ = deps.loops.detach(l);
                }
                return Err(e);
            }
        };
        let backing = Backing::Loopback {
            dir: dir.to_owned(),
            data_loop,
            meta_loop,
        };
        Self::finish_open(deps, name, store, table, backing, checked, activated)
    }

    pub(super) fn finish_open(
        deps: &Deps,
        name: String,
        store: Store,
        table: PoolTable,
        backing: Backing,
        checked: bool,
        scan: bool,
    ) -> Result<Pool> {
        store.set_config("state", "ready")?;
        store.set_config("clean", "false")?;
        let floor_percent = store
            .config("floor_percent")?
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        let store_lent_to = store.config("lent_to")?;
        let mut pool = Pool {
            name,
            deps: deps.clone(),
            store,
            table,
            backing,
            floor_percent,
            reconciliation: Reconciliation::default(),
            lent_to: store_lent_to,
        };
        if pool.lent_to.is_none() {
            // A lent pool's thin devices are its engine's (see `lend.rs`).
            pool.reconcile(scan)?;
        }
        pool.reconciliation.checked = checked;
        Ok(pool)
    }

    pub(super) fn load_pool(deps: &Deps, name: &str, table: &PoolTable) -> Result<()> {
        if let Err(e) = deps.dm.load(name, &[table.to_target()]) {
            let has_thin = deps
                .dm
                .target_types()
                .map(|t| t.iter().any(|t| t == PoolTable::TARGET))
                .unwrap_or(true);
            if !has_thin {
                return Err(Error::new(ErrorKind::DmThinUnsupported).device(name));
            }
            return Err(e);
        }
        deps.dm.resume(name)
    }

    /// Loads `table` and swaps it in (suspend, resume); always resumes.
    pub(super) fn reload_pool(deps: &Deps, name: &str, table: &PoolTable) -> Result<()> {
        deps.dm.load(name, &[table.to_target()])?;
        let suspended = deps.dm.suspend(name);
        let resumed = deps.dm.resume(name);
        suspended.and(resumed)
    }

    pub(super) fn loopback(&self, what: &'static str) -> Result<(PathBuf, LoopInfo, LoopInfo)> {
        match &self.backing {
            Backing::Loopback {
                dir,
                data_loop,
                meta_loop,
            } => Ok((dir.clone(), data_loop.clone(), meta_loop.clone())),
            _ => Err(Error::new(ErrorKind::Unsupported { what })),
        }
    }
}

/// Refuses sparse files of `size` in `dir` (growing `file`, if given)
/// beyond the room there (see [`crate::backing`]).
pub(super) fn check_room(dir: &Path, file: Option<&Path>, size: Bytes) -> Result<()> {
    use crate::backing::{Backing, Verdict};
    let b = Backing::of(dir, file).map_err(|e| Error::io(e, dir))?;
    match b.verdict(size) {
        Verdict::Fits => Ok(()),
        Verdict::TooBig { room } => Err(Error::new(ErrorKind::NoRoom {
            explained: b.explain(file.unwrap_or(dir), size),
            max: room.round_down(),
        })),
    }
}
