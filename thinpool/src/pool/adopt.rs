//! Adopted pools: a thin-pool another tool made, recorded and used
//! without being thinbox's to remove.

use super::*;

impl Pool {
    pub(super) fn live_pool_table(deps: &Deps, name: &str) -> Result<PoolTable> {
        if deps.dm.info(name)?.is_none() {
            return Err(Error::new(ErrorKind::NotFound {
                name: name.to_owned(),
            }));
        }
        let live = deps.dm.table(name)?;
        match live.as_slice() {
            [t] if t.target_type == PoolTable::TARGET => PoolTable::from_target(t),
            other => Err(Error::new(ErrorKind::NotAThinPool {
                device: name.to_owned(),
                target: other
                    .iter()
                    .map(|t| t.target_type.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            })),
        }
    }

    /// Adopts an existing thin-pool dm device, keeping thinbox's records in
    /// `store_path`. Unless `allow_foreign`, a pool with a non-zero
    /// transaction id or used data blocks is refused as someone else's; when
    /// allowed, its existing thin ids are reported as unknown.
    pub fn adopt(
        deps: &Deps,
        dm_name: &str,
        store_path: &Path,
        allow_foreign: bool,
    ) -> Result<Pool> {
        let r = (|| -> Result<Pool> {
            if store_path.exists() {
                return Err(Error::new(ErrorKind::NameTaken {
                    name: store_path.display().to_string(),
                }));
            }
            let table = Self::live_pool_table(deps, dm_name)?;
            let status = deps.dm.status(dm_name)?;
            let usage = match status
                .first()
                .map(|l| l.params.parse::<PoolStatus>())
                .transpose()?
            {
                Some(PoolStatus::Working(u)) => *u,
                other => {
                    return Err(Error::new(ErrorKind::PoolNotWritable {
                        mode: other.map(|s| s.to_string()).unwrap_or_default(),
                    }))
                }
            };
            if !allow_foreign
                && (usage.transaction_id.0 != 0 || usage.used_data != DataBlocks::ZERO)
            {
                return Err(Error::new(ErrorKind::OwnedElsewhere {
                    transaction_id: usage.transaction_id.0,
                    used: usage.used_data,
                }));
            }
            let meta_devnum = match &table.metadata {
                DevRef::Num(n) => *n,
                DevRef::Path(p) => {
                    return Err(Error::parse(
                        "metadata device",
                        &p.display().to_string(),
                        "expected MAJOR:MINOR from the kernel",
                    ))
                }
            };
            let meta = devnode_of(meta_devnum)?;
            let r = (|| {
                let store = Store::open(store_path)?;
                store.set_config("backing", "adopted")?;
                store.set_config("name", dm_name)?;
                store.set_config("txn", &usage.transaction_id.to_string())?;
                Self::finish_open(
                    deps,
                    dm_name.to_owned(),
                    store,
                    table,
                    Backing::Adopted { meta, meta_devnum },
                    false,
                    true,
                )
            })();
            r.inspect_err(|_| {
                let _ = remove_files(&store_files_of(store_path));
            })
        })();
        r.map_err(|e| e.op("adopt pool").pool(dm_name))
    }

    /// Adopts the thin-pool LV `vg/lv` (see [`Pool::adopt`]).
    pub fn adopt_lvm(
        deps: &Deps,
        vg: &str,
        lv: &str,
        store_path: &Path,
        allow_foreign: bool,
    ) -> Result<Pool> {
        let row = crate::lvm::lv(&*deps.lvm, vg, lv)
            .map_err(|e| e.op("adopt pool").pool(format!("{vg}/{lv}")))?;
        if !row.is_thin_pool() {
            return Err(Error::new(ErrorKind::NotAThinPool {
                device: format!("{vg}/{lv}"),
                target: row.lv_attr,
            })
            .op("adopt pool"));
        }
        Self::adopt(deps, row.dm_name(), store_path, allow_foreign)
    }

    /// Re-opens an adopted pool from its record store.
    pub fn open_adopted(deps: &Deps, store_path: &Path) -> Result<Pool> {
        let r = (|| {
            let store = Self::existing_store(store_path)?;
            let name = store.config("name")?.ok_or_else(|| {
                Error::parse(
                    "pool configuration",
                    "name",
                    "missing from the record store",
                )
            })?;
            let table = Self::live_pool_table(deps, &name)?;
            let DevRef::Num(meta_devnum) = table.metadata else {
                return Err(Error::parse(
                    "metadata device",
                    &table.metadata.to_string(),
                    "expected MAJOR:MINOR",
                ));
            };
            let meta = devnode_of(meta_devnum)?;
            Self::finish_open(
                deps,
                name,
                store,
                table,
                Backing::Adopted { meta, meta_devnum },
                false,
                // Another tool's pool: always compared.
                true,
            )
        })();
        r.map_err(|e| e.op("open adopted pool").path(store_path))
    }
}
