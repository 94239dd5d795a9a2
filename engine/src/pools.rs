//! Named pools under `ROOT/pools/NAME`: the record of what each pool is
//! (loopback, direct-lvm or adopted), a lock per pool, and the operations
//! behind `thinbox pool ...` on top of [`thinpool::pool::Pool`].
//!
//! Layout: `ROOT/pools/NAME/pool.toml` (a [`PoolRecord`]), `lock` (held by
//! whoever has the pool open for changes), `monitor.lock` (held by the one
//! process that keeps the pool grown), `extensions.toml` (how often
//! thinbox grew it), and for a loopback pool in its default place also
//! the `data` and `metadata` files and `thinbox.db`.
//!
//! Crash safety: the record is written with `state = "creating"` before the
//! pool is made and switched to `"ready"` after; a record left `creating`
//! by a crash is finished (when thinpool can open what was made) or undone
//! by the next `create` or `destroy` of that name. Reading status takes no
//! lock and opens nothing: it reads the kernel's table and status lines.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use thinpool::pool::{AutoextendPolicy, Deps, LoopbackConfig, LvmConfig, Pool};
use thinpool::table::PoolTable;

use crate::error::{Error, ErrorKind, Result};
use crate::observer::{Observer, Silent};
use crate::state::{crash_point, holder_of, lock_file, read_toml, try_lock_file, write_toml};

/// The lock file held by a pool's one monitor.
const MONITOR_LOCK: &str = "monitor.lock";

/// What kind of pool a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Sparse files on loop devices.
    Loopback,
    /// A thin-pool LV thinbox made on block devices.
    Lvm,
    /// A thin-pool someone else made.
    Adopted,
}

impl std::fmt::Display for PoolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolKind::Loopback => "loopback",
            PoolKind::Lvm => "lvm",
            PoolKind::Adopted => "adopted",
        })
    }
}

/// Whether the pool a record describes was finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// Written before the pool was made; a crash may have left it half-made.
    Creating,
    /// The pool was made.
    Ready,
}

/// `ROOT/pools/NAME/pool.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRecord {
    /// thinbox's name for the pool (the directory name).
    pub name: String,
    /// What it is.
    pub kind: PoolKind,
    /// Made or half-made.
    pub state: RecordState,
    /// The loopback pool's directory (data, metadata, thinbox.db).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// The record store of an lvm or adopted pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<PathBuf>,
    /// The dm name of an adopted pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_name: Option<String>,
    /// The volume group of an lvm pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vg: Option<String>,
    /// The thin-pool LV of an lvm pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lv: Option<String>,
    /// The devices of an lvm pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<PathBuf>,
    /// Percent used at which `monitor` grows the pool.
    pub autoextend_threshold: u8,
    /// Percent `monitor` grows the pool by.
    pub autoextend_percent: u8,
    /// Percent that must stay free for new thin devices.
    pub free_space_floor: u8,
    /// The engine that owns the pool's thin devices, when lent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lent_to: Option<LentTo>,
}

impl PoolRecord {
    /// The autoextend policy of this pool.
    pub fn policy(&self) -> AutoextendPolicy {
        AutoextendPolicy {
            threshold_percent: self.autoextend_threshold,
            extend_percent: self.autoextend_percent,
            ..AutoextendPolicy::default()
        }
    }

    /// The dm name of the pool.
    pub fn dm_name(&self) -> String {
        if let Some(n) = &self.dm_name {
            return n.clone();
        }
        match self.kind {
            PoolKind::Loopback => self.name.clone(),
            PoolKind::Adopted => self.dm_name.clone().unwrap_or_else(|| self.name.clone()),
            // lvm's dm name: VG-LV with hyphens in each doubled, and -tpool
            // while the pool has thin LVs; thinbox only uses dm thins, so the
            // plain form is the live one.
            PoolKind::Lvm => format!(
                "{}-{}",
                self.vg.as_deref().unwrap_or_default().replace('-', "--"),
                self.lv.as_deref().unwrap_or_default().replace('-', "--")
            ),
        }
    }
}

/// Bytes and use of one of a pool's two devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Space {
    /// Used blocks.
    pub used_blocks: u64,
    /// Total blocks.
    pub total_blocks: u64,
    /// Used bytes.
    pub used_bytes: u64,
    /// Total bytes.
    pub total_bytes: u64,
    /// Used, in percent of total (rounded down).
    pub used_percent: u64,
}

impl Space {
    fn new(used: u64, total: u64, block_bytes: u64) -> Space {
        Space {
            used_blocks: used,
            total_blocks: total,
            used_bytes: used.saturating_mul(block_bytes),
            total_bytes: total.saturating_mul(block_bytes),
            used_percent: if total == 0 {
                0
            } else {
                (u128::from(used) * 100 / u128::from(total)) as u64
            },
        }
    }
}

/// What `thinbox pool status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolReport {
    /// thinbox's name.
    pub name: String,
    /// Loopback, lvm or adopted.
    pub kind: PoolKind,
    /// The dm device.
    pub dm_name: String,
    /// Whether the dm device exists.
    pub active: bool,
    /// `rw`, `ro`, `out_of_data_space`, `Fail`, or `inactive`.
    pub mode: String,
    /// The pool's transaction id.
    pub transaction_id: Option<u64>,
    /// Data blocks.
    pub data: Option<Space>,
    /// Metadata blocks (4 KiB each).
    pub metadata: Option<Space>,
    /// Data block size in bytes.
    pub block_size: Option<u64>,
    /// Free data blocks below which the kernel raises an event.
    pub low_water_mark: Option<u64>,
    /// The metadata needs `thin_check` before the pool can be written.
    pub needs_check: bool,
    /// What the pool does when out of data space (`error` or `queue`).
    pub no_space_policy: Option<String>,
    /// Percent used at which `monitor` grows the pool.
    pub autoextend_threshold: u8,
    /// Percent `monitor` grows the pool by.
    pub autoextend_percent: u8,
    /// Percent that must stay free for new thin devices.
    pub free_space_floor: u8,
    /// Whether less than the floor is free (a lent pool's engine is not
    /// held to it: this is the view its monitoring reads).
    pub below_floor: bool,
    /// The engine the pool is lent to (it owns the thin devices).
    pub lent_to: Option<LentTo>,
    /// The dm device's event counter: low-water crossings and mode
    /// changes since the device was made.
    pub dm_events: Option<u32>,
}

/// A pool opened for changes, with its lock held.
#[derive(Debug)]
pub struct OpenPool {
    /// The pool.
    pub pool: Pool,
    /// Its record.
    pub record: PoolRecord,
    lock: Flock<File>,
}

impl OpenPool {
    /// Lets other users of the pool in (its lock becomes shared) once the
    /// pool-wide work (autoextend on open) is done.
    pub fn share(&self) -> Result<()> {
        self.lock
            .relock(nix::fcntl::FlockArg::LockShared)
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot share a pool lock: {e}")))
    }

    /// Releases the lock while keeping the pool open (for `monitor`,
    /// which only grows the pool and must not keep others out).
    pub fn unlock(self) -> (Pool, PoolRecord) {
        drop(self.lock);
        (self.pool, self.record)
    }

    /// The pool, its record and its lock.
    pub fn into_parts(self) -> (Pool, PoolRecord, Flock<File>) {
        (self.pool, self.record, self.lock)
    }
}

/// What `check` found besides the metadata being sound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Thin ids in the pool that no record explains (another tool's).
    pub unknown_ids: Vec<u32>,
    /// Recorded thin devices the pool no longer has.
    pub missing: Vec<String>,
}

/// One check of [`Pools::monitor`]: what grew, and the pool's state after.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorCheck {
    /// The new data size in bytes, when data grew.
    pub extended_data_to: Option<u64>,
    /// The new metadata size in bytes, when metadata grew.
    pub extended_metadata_to: Option<u64>,
    /// The pool's status after the check.
    pub status: PoolReport,
}

impl MonitorCheck {
    /// Whether data or metadata grew.
    pub fn grew(&self) -> bool {
        self.extended_data_to.is_some() || self.extended_metadata_to.is_some()
    }

    /// Whether the pool needs its owner: not read-write, or needing a check.
    pub fn needs_attention(&self) -> bool {
        self.status.needs_check || self.status.mode != "rw"
    }
}

/// The pools under one state root.
#[derive(Debug)]
pub struct Pools {
    dir: PathBuf,
    deps: Deps,
    observer: Arc<dyn Observer>,
}

const RECORD: &str = "pool.toml";

fn not_found(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("pool {name:?} does not exist: create it with `thinbox pool create --name {name}` or list pools with `thinbox pool status`"),
    )
}

impl Pools {
    /// The pools under `root` (`root/pools`), driving the real kernel.
    pub fn open(root: &Path) -> Result<Pools> {
        let deps = Deps::real()?;
        Ok(Pools::with_deps(root, deps))
    }

    /// The pools under `root` with the given kernel interfaces.
    pub fn with_deps(root: &Path, deps: Deps) -> Pools {
        Pools {
            dir: root.join("pools"),
            deps,
            observer: Arc::new(Silent),
        }
    }

    /// The pools under `root` through the engine's seams, reporting lock
    /// waits to the engine's observer.
    pub fn for_engine(root: &Path, opts: &crate::options::EngineOptions) -> Result<Pools> {
        let mut pools = Pools::with_deps(root, opts.deps.pool_deps()?);
        pools.observer = Arc::clone(&opts.observer);
        Ok(pools)
    }

    /// The kernel interfaces.
    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    /// The directory of pool `name`.
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Names of all recorded pools, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    if e.path().join(RECORD).exists() {
                        v.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot list", &self.dir, e)),
        }
        v.sort();
        Ok(v)
    }

    /// The record of pool `name`.
    pub fn record(&self, name: &str) -> Result<PoolRecord> {
        thinpool::pool::check_name(name)?;
        let p = self.dir_of(name).join(RECORD);
        if !p.exists() {
            return Err(not_found(name));
        }
        read_toml(&p)
    }

    fn lock(&self, name: &str) -> Result<Flock<File>> {
        let d = self.dir_of(name);
        std::fs::create_dir_all(&d).map_err(|e| Error::io("cannot create", &d, e))?;
        lock_file(&d.join("lock"), self.observer.as_ref())
    }

    fn save(&self, rec: &PoolRecord) -> Result<()> {
        write_toml(&self.dir_of(&rec.name).join(RECORD), rec)
    }

    fn start(&self, rec: &PoolRecord) -> Result<Flock<File>> {
        thinpool::pool::check_name(&rec.name)?;
        let lock = self.lock(&rec.name)?;
        match self.record(&rec.name) {
            Ok(old) if old.state == RecordState::Creating => {
                // A create interrupted by a crash: undo what it made.
                self.undo(&old);
            }
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "pool {:?} already exists: choose another name or `thinbox pool destroy {}` first",
                        rec.name, rec.name
                    ),
                ))
            }
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.save(rec)?;
        Ok(lock)
    }

    fn finish(&self, mut rec: PoolRecord, pool: Pool, lock: Flock<File>) -> Result<OpenPool> {
        crash_point("pool-created");
        let mut pool = pool;
        pool.set_free_space_floor(rec.free_space_floor)?;
        rec.dm_name = Some(pool.name().to_owned());
        rec.state = RecordState::Ready;
        self.save(&rec)?;
        Ok(OpenPool {
            pool,
            record: rec,
            lock,
        })
    }

    fn failed(&self, rec: &PoolRecord, lock: Flock<File>) {
        let d = self.dir_of(&rec.name);
        let _ = std::fs::remove_file(d.join(RECORD));
        let _ = std::fs::remove_file(d.join("lock"));
        let _ = std::fs::remove_file(d.join(MONITOR_LOCK));
        drop(lock);
        let _ = std::fs::remove_dir(&d);
    }

    /// Makes a loopback pool called `cfg.name` (its files in `cfg.dir`).
    pub fn create_loopback(
        &self,
        cfg: &LoopbackConfig,
        policy: &AutoextendPolicy,
        floor: u8,
    ) -> Result<OpenPool> {
        let rec = PoolRecord {
            name: cfg.name.clone(),
            kind: PoolKind::Loopback,
            state: RecordState::Creating,
            dir: Some(cfg.dir.clone()),
            store: None,
            dm_name: None,
            vg: None,
            lv: None,
            devices: Vec::new(),
            autoextend_threshold: policy.threshold_percent,
            autoextend_percent: policy.extend_percent,
            free_space_floor: floor,
            lent_to: None,
        };
        // The policy's low-water mark from the start: a monitor then has
        // no table to reload (a suspend) while the pool is in use.
        let mut cfg = cfg.clone();
        cfg.autoextend.get_or_insert(*policy);
        let lock = self.start(&rec)?;
        match Pool::create_loopback(&self.deps, &cfg) {
            Ok(pool) => self.finish(rec, pool, lock),
            Err(e) => {
                self.failed(&rec, lock);
                Err(e.into())
            }
        }
    }

    /// Makes a direct-lvm pool called `name` (`cfg.store` is replaced by
    /// the pool's own record store).
    pub fn create_lvm(&self, name: &str, cfg: &LvmConfig, floor: u8) -> Result<OpenPool> {
        let store = self.dir_of(name).join("thinbox.db");
        let cfg = LvmConfig {
            store: store.clone(),
            ..cfg.clone()
        };
        let rec = PoolRecord {
            name: name.to_owned(),
            kind: PoolKind::Lvm,
            state: RecordState::Creating,
            dir: None,
            store: Some(store),
            dm_name: None,
            vg: Some(cfg.vg.clone()),
            lv: Some(cfg.lv.clone()),
            devices: cfg.devices.clone(),
            autoextend_threshold: cfg.autoextend.threshold_percent,
            autoextend_percent: cfg.autoextend.extend_percent,
            free_space_floor: floor,
            lent_to: None,
        };
        let lock = self.start(&rec)?;
        match Pool::create_lvm(&self.deps, &cfg) {
            Ok(pool) => self.finish(rec, pool, lock),
            Err(e) => {
                self.failed(&rec, lock);
                Err(e.into())
            }
        }
    }

    /// Adopts the existing thin-pool dm device `dm_name` as pool `name`.
    pub fn adopt(
        &self,
        name: &str,
        dm_name: &str,
        allow_foreign: bool,
        policy: &AutoextendPolicy,
        floor: u8,
    ) -> Result<OpenPool> {
        let store = self.dir_of(name).join("thinbox.db");
        let rec = PoolRecord {
            name: name.to_owned(),
            kind: PoolKind::Adopted,
            state: RecordState::Creating,
            dir: None,
            store: Some(store.clone()),
            dm_name: Some(dm_name.to_owned()),
            vg: None,
            lv: None,
            devices: Vec::new(),
            autoextend_threshold: policy.threshold_percent,
            autoextend_percent: policy.extend_percent,
            free_space_floor: floor,
            lent_to: None,
        };
        let lock = self.start(&rec)?;
        match Pool::adopt(&self.deps, dm_name, &store, allow_foreign) {
            Ok(pool) => self.finish(rec, pool, lock),
            Err(e) => {
                self.failed(&rec, lock);
                Err(e.into())
            }
        }
    }

    fn open_record(&self, rec: &PoolRecord) -> thinpool::Result<Pool> {
        let r = self.open_record_inner(rec);
        if let Err(e) = &r {
            if matches!(e.kind(), thinpool::ErrorKind::MetadataCheckFailed { .. }) {
                // Kept for `pool status` (the pool stays inactive).
                let _ = self.mark_damaged(&rec.name, &e.to_string());
            }
        }
        r
    }

    fn open_record_inner(&self, rec: &PoolRecord) -> thinpool::Result<Pool> {
        let missing = |what: &str| {
            thinpool::Error::new(thinpool::ErrorKind::NotFound {
                name: format!("{what} in the record of pool {}", rec.name),
            })
        };
        match rec.kind {
            PoolKind::Loopback => Pool::open_loopback(
                &self.deps,
                rec.dir.as_deref().ok_or_else(|| missing("dir"))?,
            ),
            PoolKind::Lvm => Pool::open_lvm(
                &self.deps,
                rec.store.as_deref().ok_or_else(|| missing("store"))?,
            ),
            PoolKind::Adopted => Pool::open_adopted(
                &self.deps,
                rec.store.as_deref().ok_or_else(|| missing("store"))?,
            ),
        }
    }

    /// Opens pool `name` for changes (activating it if needed), holding its
    /// lock; waits while another thinbox holds it.
    pub fn open_pool(&self, name: &str) -> Result<OpenPool> {
        self.open_pool_locked(name, false)
    }

    /// [`Pools::open_pool`] beside other users of the pool (engines of one
    /// root: their changes take turns on the snapshotter's lock): holds
    /// its lock shared, so only pool-wide changes (extend, destroy) wait.
    pub fn open_pool_shared(&self, name: &str) -> Result<OpenPool> {
        self.open_pool_locked(name, true)
    }

    fn open_pool_locked(&self, name: &str, shared: bool) -> Result<OpenPool> {
        let rec = self.record(name)?;
        let lock = if shared {
            let d = self.dir_of(name);
            std::fs::create_dir_all(&d).map_err(|e| Error::io("cannot create", &d, e))?;
            crate::state::lock_file_shared(&d.join("lock"), self.observer.as_ref())?
        } else {
            self.lock(name)?
        };
        let rec = self.record(name).unwrap_or(rec);
        if rec.state == RecordState::Creating {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "pool {name:?} was left half-made by an interrupted create: run `thinbox pool destroy {name}` and create it again"
                ),
            ));
        }
        let pool = self.open_record(&rec).map_err(|e| {
            let damaged = matches!(e.kind(), thinpool::ErrorKind::MetadataCheckFailed { .. });
            let err = Error::from(e);
            if damaged {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("{err}: the pool stays inactive: run `thinbox pool repair {name}`"),
                )
            } else {
                err
            }
        })?;
        Ok(OpenPool {
            pool,
            record: rec,
            lock,
        })
    }

    /// Checks pool `name`'s metadata with `thin_check` on a metadata
    /// snapshot of the live pool (so the pool keeps working meanwhile),
    /// then compares its thin ids with thinbox's records (a lent pool's are
    /// its engine's): what another tool made or deleted is reported.
    pub fn check(&self, name: &str) -> Result<CheckReport> {
        let mut p = self.open_pool(name)?;
        self.check_metadata(name, &p.pool)?;
        self.clear_damaged(name)?;
        if p.record.lent_to.is_some() {
            return Ok(CheckReport::default());
        }
        let r = p.pool.rescan()?;
        Ok(CheckReport {
            unknown_ids: r.unknown_ids.iter().map(|i| i.get()).collect(),
            missing: r.missing.clone(),
        })
    }

    fn check_metadata(&self, name: &str, pool: &Pool) -> Result<()> {
        pool.check_live().map_err(|e| {
            let damaged = matches!(e.kind(), thinpool::ErrorKind::MetadataCheckFailed { .. });
            let err = Error::from(e);
            if damaged {
                let _ = self.mark_damaged(name, &err.to_string());
                Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "thin_check found damaged metadata in pool {name:?}: stop using it and run `thinbox pool repair {name}`"
                    ),
                )
                .with_source(err)
            } else {
                err
            }
        })
    }

    /// Keeps pool `name` healthy until `stop` is set (or after one check
    /// with `once`): waits for its dm events, and at least every
    /// `interval`, grows data and metadata past the autoextend threshold,
    /// and tells `report` after each check. Holds the pool's lock only
    /// while opening (reconciliation); growing the pool afterwards only
    /// reloads its table, which other thinbox processes tolerate. One
    /// monitor per pool (`monitor.lock`): a second is refused with InUse,
    /// naming the first, since both would grow the pool at one crossing.
    pub fn monitor(
        &self,
        name: &str,
        stop: &std::sync::atomic::AtomicBool,
        interval: std::time::Duration,
        once: bool,
        report: &mut dyn FnMut(MonitorCheck),
    ) -> Result<usize> {
        if self.record(name)?.kind == PoolKind::Adopted {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("pool {name:?} is adopted: thinbox does not grow pools it did not make; monitor it with its owner's tools"),
            ));
        }
        let lock_path = self.dir_of(name).join(MONITOR_LOCK);
        let Some(_monitoring) = try_lock_file(&lock_path)? else {
            let by = holder_of(&lock_path).map_or(String::new(), |h| format!(" ({h})"));
            return Err(Error::new(
                ErrorKind::InUse,
                format!(
                    "pool {name:?} is already monitored by another process{by}: one monitor per pool (two would both grow it at one crossing); stop the other (thinbox serve monitors every pool of its root unless [serve] monitor_pools = false)"
                ),
            ));
        };
        let (mut pool, rec) = self.open_beside_engines(name)?;
        let opts = thinpool::pool::WatchOptions {
            tick: std::time::Duration::from_secs(1),
            interval: Some(interval.max(std::time::Duration::from_secs(1))),
            once,
        };
        let mut failed = None;
        let n = pool.watch(&rec.policy(), stop, opts, &mut |grew| match self
            .count_extension(name, grew)
            .and_then(|()| self.status(name))
        {
            Ok(status) => report(MonitorCheck {
                extended_data_to: grew.data.map(|b| b.0),
                extended_metadata_to: grew.metadata.map(|b| b.0),
                status,
            }),
            Err(e) => failed = Some(e),
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Opens pool `name` while the root's engines may be using it (a
    /// daemon holds it for its life): the pool's lock shared, and the
    /// root's snapshotter lock exclusively while the pool opens, so its
    /// reconciliation waits out the mutations in flight instead of
    /// settling an operation half-way. Both are released after.
    fn open_beside_engines(&self, name: &str) -> Result<(Pool, PoolRecord)> {
        let snapshots = self
            .dir
            .parent()
            .map(|root| root.join("snapshots"))
            .filter(|d| d.is_dir());
        let settling = snapshots
            .map(|d| snapshotter::core::lock_root(&d))
            .transpose()?;
        let opened = self.open_pool_shared(name)?.unlock();
        drop(settling);
        Ok(opened)
    }

    /// Removes pool `name`: everything thinbox made for it (an adopted
    /// pool is only forgotten: its dm device is not thinbox's to remove).
    /// A lent pool holds its engine's thin devices: only `force` removes it.
    pub fn destroy(&self, name: &str, force: bool) -> Result<()> {
        let rec = self.record(name)?;
        if let (Some(to), false) = (rec.lent_to, force) {
            return Err(Error::new(
                ErrorKind::InUse,
                format!(
                    "pool {name:?} is lent to {to}, whose thin devices it holds: stop {to} and take the pool back (`thinbox pool hand-over {name} --to thinbox`), or destroy it with --force"
                ),
            ));
        }
        let lock = self.lock(name)?;
        match (rec.state, rec.kind) {
            (RecordState::Creating, _) => self.undo(&rec),
            (_, PoolKind::Adopted) => {
                let pool = self.open_record(&rec)?;
                drop(pool);
                if let Some(s) = &rec.store {
                    for suffix in ["", "-wal", "-shm", "-journal"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", s.display()));
                    }
                }
            }
            _ => self.open_record(&rec)?.destroy()?,
        }
        let d = self.dir_of(name);
        let _ = std::fs::remove_file(d.join(RECORD));
        let _ = std::fs::remove_file(d.join("lock"));
        let _ = std::fs::remove_file(d.join(MONITOR_LOCK));
        drop(lock);
        let _ = std::fs::remove_dir(&d);
        Ok(())
    }

    /// Best-effort removal of whatever a half-made pool left.
    fn undo(&self, rec: &PoolRecord) {
        if let Ok(pool) = self.open_record(rec) {
            if rec.kind == PoolKind::Adopted {
                drop(pool);
            } else {
                let _ = pool.destroy();
            }
        }
        let files: Vec<PathBuf> = match rec.kind {
            PoolKind::Loopback => {
                let dir = rec.dir.clone().unwrap_or_else(|| self.dir_of(&rec.name));
                if let Ok(Some(info)) = self.deps.dm.info(&rec.name) {
                    // Ours only when it sits on our files' loop devices.
                    let ours = self.deps.loops.find(&dir.join("data")).ok().flatten();
                    let table = self.deps.dm.table(&rec.name).ok();
                    let on_ours = ours.zip(table).is_some_and(|(l, t)| {
                        t.first()
                            .and_then(|t| PoolTable::from_target(t).ok())
                            .is_some_and(|t| t.data == thinpool::table::DevRef::Num(l.devnum))
                    });
                    if on_ours || !info.live_table {
                        let _ = self.deps.dm.remove(&rec.name, false);
                    }
                }
                for f in ["data", "metadata"] {
                    if let Ok(Some(l)) = self.deps.loops.find(&dir.join(f)) {
                        let _ = self.deps.loops.detach(&l.path);
                    }
                }
                [
                    "data",
                    "metadata",
                    "thinbox.db",
                    "thinbox.db-wal",
                    "thinbox.db-shm",
                    "thinbox.db-journal",
                ]
                .iter()
                .map(|f| dir.join(f))
                .collect()
            }
            _ => rec
                .store
                .iter()
                .flat_map(|s| {
                    ["", "-wal", "-shm", "-journal"]
                        .map(|x| PathBuf::from(format!("{}{x}", s.display())))
                })
                .collect(),
        };
        for f in files {
            let _ = std::fs::remove_file(f);
        }
    }
}

mod extensions;
mod grow;
mod lend;
mod repair;
mod status;

pub use extensions::Extensions;
pub use grow::{Extension, SizeChange};
pub use lend::{merge_containerd, merge_docker, EngineSettings, HandOver, LentTo};
pub use repair::RepairReport;

#[cfg(test)]
mod tests;
