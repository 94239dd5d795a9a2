//! Metadata repair of a loopback pool: `thin_repair` from the damaged
//! metadata file into a fresh one of the same size, checked, then swapped
//! in with the pool offline. The damaged file is kept beside it.
//!
//! Crash safety rests on the files alone. The fresh file is written as
//! `metadata.repaired`; the swap is two renames (`metadata` to
//! `metadata.damaged[.N]`, then `metadata.repaired` to `metadata`). A cut
//! repair leaves either both `metadata` and `metadata.repaired` (before the
//! swap: the repaired file is dropped) or `metadata.repaired` alone (between
//! the renames: the swap is finished). [`settle_repair`] does that on every
//! open, before the pool is activated.

use super::*;

/// The fresh metadata file while a repair writes it.
pub(super) const REPAIRED_FILE: &str = "metadata.repaired";

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// Where the damaged metadata was kept.
    pub damaged: PathBuf,
    /// Thin ids the repaired metadata holds.
    pub thin_ids: Vec<ThinId>,
}

impl Pool {
    /// Repairs the metadata of the loopback pool in `dir`, which must be
    /// offline or idle: its thin devices are deactivated (refused, changing
    /// nothing, if one is open) and its pool device removed; then
    /// `thin_repair` writes a fresh file, `thin_check` accepts it, it is
    /// swapped in and the pool is opened on it (reconciling the records
    /// with the ids it holds).
    pub fn repair_loopback(deps: &Deps, dir: &Path) -> Result<(Pool, Repaired)> {
        Self::repair_inner(deps, dir).map_err(|e| e.op("repair pool metadata").path(dir))
    }

    fn repair_inner(deps: &Deps, dir: &Path) -> Result<(Pool, Repaired)> {
        settle_repair(deps, dir)?;
        let db = dir.join(STORE_FILE);
        if !db.exists() {
            return Err(Error::new(ErrorKind::NotFound {
                name: db.display().to_string(),
            }));
        }
        let name = Store::open(&db)?.config("name")?.ok_or_else(|| {
            Error::parse(
                "pool configuration",
                "name",
                "missing from the record store",
            )
            .path(&db)
        })?;

        // Offline: no thin device open, then none at all, then no pool.
        let thins = thin_devices_of(deps, &name)?;
        refuse_open(deps, &thins)?;
        for t in &thins {
            deps.dm.remove(t, false)?;
        }
        if deps.dm.info(&name)?.is_some() {
            deps.dm.remove(&name, false)?;
        }
        if let Some(l) = deps.loops.find(&dir.join(DATA_FILE))? {
            deps.loops.detach(&l.path)?;
        }

        let meta = dir.join(META_FILE);
        let size = fs::metadata(&meta).map_err(|e| Error::io(e, &meta))?.len();
        let repaired = dir.join(REPAIRED_FILE);
        super::loopback::check_room(dir, None, Bytes(size))?;
        let f = fs::File::create(&repaired).map_err(|e| Error::io(e, &repaired))?;
        f.set_len(size).map_err(|e| Error::io(e, &repaired))?;
        f.sync_all().map_err(|e| Error::io(e, &repaired))?;
        drop(f);

        let r = (|| {
            let attach = |p: &Path| -> Result<LoopInfo> {
                match deps.loops.find(p)? {
                    Some(l) => Ok(l),
                    None => deps.loops.attach(p, false),
                }
            };
            let from = attach(&meta)?;
            let to = attach(&repaired)?;
            deps.tools.repair(meta_dev(&from), meta_dev(&to))?;
            deps.tools.check(meta_dev(&to))?;
            Ok((from, to))
        })();
        // The pool is down: nothing else holds the loop devices.
        let detached: Result<()> = [&meta, &repaired]
            .into_iter()
            .filter_map(|p| deps.loops.find(p).transpose())
            .try_for_each(|l| deps.loops.detach(&l?.path));
        if let Err(e) = r.and_then(|v| detached.map(|()| v)) {
            let _ = fs::remove_file(&repaired);
            return Err(e);
        }

        // The swap.
        let damaged = free_name(dir, "metadata.damaged");
        fs::rename(&meta, &damaged).map_err(|e| Error::io(e, &meta))?;
        sync_dir(dir)?;
        fs::rename(&repaired, &meta).map_err(|e| Error::io(e, &repaired))?;
        sync_dir(dir)?;

        let pool = Self::activate_pool(deps, dir, None)?;
        let thin_ids = pool.store().thins()?.iter().map(|t| t.id).collect();
        Ok((pool, Repaired { damaged, thin_ids }))
    }
}

fn meta_dev(l: &LoopInfo) -> MetaDev<'_> {
    MetaDev {
        path: &l.path,
        devnum: l.devnum,
    }
}

/// Finishes or drops a repair cut short in `dir` (see the module's
/// overview).
pub(super) fn settle_repair(deps: &Deps, dir: &Path) -> Result<()> {
    let repaired = dir.join(REPAIRED_FILE);
    if !repaired.exists() {
        return Ok(());
    }
    if let Some(l) = deps.loops.find(&repaired)? {
        deps.loops.detach(&l.path)?;
    }
    let meta = dir.join(META_FILE);
    if meta.exists() {
        fs::remove_file(&repaired).map_err(|e| Error::io(e, &repaired))?;
    } else {
        fs::rename(&repaired, &meta).map_err(|e| Error::io(e, &repaired))?;
    }
    sync_dir(dir)
}

/// `base`, or `base.2`, `base.3`, ... : the first not taken in `dir`.
fn free_name(dir: &Path, base: &str) -> PathBuf {
    let first = dir.join(base);
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|n| dir.join(format!("{base}.{n}")))
        .find(|p| !p.exists())
        .expect("a free name")
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(e, dir))
}
