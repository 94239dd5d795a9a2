//! Loopback pools ("loop-lvm" done right) and their thin devices.
//!
//! A loopback pool lives in one directory: sparse `data` and `metadata` files
//! attached to loop devices (direct I/O where the filesystem allows it), a
//! `thin-pool` dm device over them, and the record store `thinbox.db`.
//!
//! Lifecycle: [`Pool::create_loopback`] makes the files, loop devices and
//! pool; [`Pool::open_loopback`] re-activates it from the same files (after a
//! reboot, or when it is already active: idempotent) and reconciles the
//! records with the kernel; [`Pool::destroy`] removes everything.
//!
//! Every thin mutation (create, snapshot, delete) is: intent record →
//! pool message → `set_transaction_id from to` → done record. Reconciliation
//! reads the pool's transaction id: equal to `to` means the kernel finished
//! (the record is completed); equal to `from` means the message may or may
//! not have landed (the thin id is deleted if present: a half-made device is
//! rolled back, a half-done delete is finished). Devices left suspended by a
//! crash mid-snapshot are resumed, and dm devices with no table (a crash
//! mid-activation) are removed.
//!
//! Kernel: dm-thin-pool (any 3.x+ kernel; `error_if_no_space` needs 3.16),
//! loop devices.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dm::{check_dm_name, DmControl, DmInfo};
use crate::error::{Error, ErrorKind, Result};
use crate::fs::Filesystem;
use crate::loopdev::{LoopControl, LoopInfo};
use crate::lvm::LvmControl;
use crate::metadata::{MetaDev, MetadataTools, ThinUsage};
use crate::metadata_size::check_metadata_size;
use crate::status::{PoolMode, PoolStatus, PoolUsage, ThinStatus};
use crate::store::{Intent, OpKind, OpRecord, Store, ThinRecord, ThinState};
use crate::table::{DevRef, PoolFeatures, PoolTable, TargetLine, ThinTable};
use crate::units::{BlockSize, Bytes, DataBlocks, Sectors, ThinId, TransactionId};

/// The kernel interfaces a pool drives, passed in by the caller.
#[derive(Debug, Clone)]
pub struct Deps {
    /// Device-mapper control.
    pub dm: Arc<dyn DmControl>,
    /// Loop-device control.
    pub loops: Arc<dyn LoopControl>,
    /// Offline metadata tools (thin_ls, thin_check).
    pub tools: Arc<dyn MetadataTools>,
    /// lvm2 (and wipefs), for direct-lvm pools.
    pub lvm: Arc<dyn LvmControl>,
}

impl Deps {
    /// The real kernel interfaces.
    pub fn real() -> Result<Deps> {
        Ok(Deps {
            dm: Arc::new(crate::dm::RealDm::new()?),
            loops: Arc::new(crate::loopdev::RealLoop),
            tools: Arc::new(crate::metadata::ThinTools),
            lvm: Arc::new(crate::lvm::RealLvm),
        })
    }
}

/// How to make a loopback pool.
#[derive(Debug, Clone)]
pub struct LoopbackConfig {
    /// The pool's dm name (1..=64 of `A-Z a-z 0-9 _ . + -`).
    pub name: String,
    /// Directory for the data and metadata files and the record store.
    pub dir: PathBuf,
    /// Data file size (default 100 GiB, sparse): a multiple of the block size.
    pub data_size: Bytes,
    /// Metadata file size (default 2 GiB, sparse).
    pub metadata_size: Bytes,
    /// Data block size (default 64 KiB).
    pub block_size: BlockSize,
    /// Free data blocks below which the kernel raises a dm event; `None`
    /// means a tenth of the pool.
    pub low_water_mark: Option<DataBlocks>,
    /// Feature arguments (default: `error_if_no_space`, so a full pool fails
    /// writes instead of hanging them).
    pub features: PoolFeatures,
    /// The most thin devices the metadata must hold (for the size check).
    pub max_thins: u64,
    /// Enable direct I/O on the loop devices where the filesystem allows.
    pub direct_io: bool,
}

impl LoopbackConfig {
    /// Docker-like defaults for a pool `name` in `dir`.
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>) -> LoopbackConfig {
        LoopbackConfig {
            name: name.into(),
            dir: dir.into(),
            data_size: Bytes::gib(100),
            metadata_size: Bytes::gib(2),
            block_size: BlockSize::DEFAULT,
            low_water_mark: None,
            features: PoolFeatures {
                error_if_no_space: true,
                ..PoolFeatures::default()
            },
            max_thins: 10_000,
            direct_io: true,
        }
    }
}

/// When and how far to grow a pool (like lvm's thin_pool_autoextend_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoextendPolicy {
    /// Extend when this percentage of data (or metadata) is used.
    pub threshold_percent: u8,
    /// Grow by this percentage of the current size.
    pub extend_percent: u8,
    /// Never grow the data file beyond this.
    pub max_data: Bytes,
    /// Never grow the metadata file beyond this.
    pub max_metadata: Bytes,
}

impl AutoextendPolicy {
    /// The low-water mark that raises an event at the threshold.
    pub fn low_water_mark(&self, total: DataBlocks) -> DataBlocks {
        let free_pct = 100u64.saturating_sub(u64::from(self.threshold_percent.min(100)));
        DataBlocks::new((u128::from(total.get()) * u128::from(free_pct) / 100) as u64)
    }
}

impl Default for AutoextendPolicy {
    /// LVM's usual settings: extend by 20% at 80% full.
    fn default() -> Self {
        AutoextendPolicy {
            threshold_percent: 80,
            extend_percent: 20,
            max_data: Bytes(u64::MAX),
            max_metadata: Bytes::gib(16),
        }
    }
}

/// What an autoextend check grew.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extended {
    /// The new data size.
    pub data: Option<Bytes>,
    /// The new metadata size.
    pub metadata: Option<Bytes>,
}

/// How [`Pool::watch`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// The longest single wait, so `stop` is looked at this often.
    pub tick: std::time::Duration,
    /// Also check this long after the last check without a dm event
    /// (`None`: only on events).
    pub interval: Option<std::time::Duration>,
    /// One check, then return.
    pub once: bool,
}

impl WatchOptions {
    /// Checks on dm events only, looking at `stop` every `tick`.
    pub fn on_events(tick: std::time::Duration) -> WatchOptions {
        WatchOptions {
            tick,
            interval: None,
            once: false,
        }
    }
}

/// Who watches a pool and extends it before it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    /// lvm2's dmeventd (its thin plugin extends the LV by the pool's profile).
    Dmeventd,
    /// Nothing outside thinbox: [`Pool::watch`] must run to keep the pool healthy.
    Watch,
}

impl std::fmt::Display for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Monitor::Dmeventd => "dmeventd",
            Monitor::Watch => "thinbox watch",
        })
    }
}

/// How to make a direct-lvm pool (Docker's direct-lvm, done by thinbox).
#[derive(Debug, Clone)]
pub struct LvmConfig {
    /// Block devices for the volume group.
    pub devices: Vec<PathBuf>,
    /// Volume group name.
    pub vg: String,
    /// Thin-pool LV name.
    pub lv: String,
    /// Data LV size as a percentage of the VG (Docker's dm.thinp_percent, default 95).
    pub data_percent: u8,
    /// Metadata LV size as a percentage of the VG (dm.thinp_metapercent, default 1).
    pub metadata_percent: u8,
    /// Chunk (data block) size (default 512 KiB, as Docker used).
    pub chunk_size: BlockSize,
    /// Zero new blocks (default off, as Docker had it).
    pub zero: bool,
    /// Threshold and percent written to the pool's LVM profile.
    pub autoextend: AutoextendPolicy,
    /// Where LVM profiles live: must be lvm.conf's `config/profile_dir`
    /// (default /etc/lvm/profile), since every later lvm command on the VG reads it.
    pub profile_dir: PathBuf,
    /// The record store file.
    pub store: PathBuf,
    /// Wipe signatures found on the devices instead of refusing them.
    pub force: bool,
    /// Fail writes at once when the pool is full (`lvchange --errorwhenfull
    /// y`, the pool's `error_if_no_space`) instead of queueing them (default on).
    pub error_when_full: bool,
    /// Ask dmeventd to monitor the pool (`lvchange --monitor y`; default
    /// on). Where dmeventd is missing, or with this off, thinbox's own
    /// [`Pool::watch`] is the monitor; [`Pool::monitor`] says which.
    pub monitor: bool,
}

impl LvmConfig {
    /// Docker-like defaults.
    pub fn new(
        devices: Vec<PathBuf>,
        vg: impl Into<String>,
        lv: impl Into<String>,
        store: impl Into<PathBuf>,
    ) -> LvmConfig {
        LvmConfig {
            devices,
            vg: vg.into(),
            lv: lv.into(),
            data_percent: 95,
            metadata_percent: 1,
            chunk_size: BlockSize::from_sectors(Sectors::new(1024))
                .expect("512 KiB is a valid block size"),
            zero: false,
            autoextend: AutoextendPolicy::default(),
            profile_dir: PathBuf::from("/etc/lvm/profile"),
            store: store.into(),
            force: false,
            error_when_full: true,
            monitor: true,
        }
    }
}

/// What reconciliation did when a pool was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Operations the kernel had finished, and resizes finished now; their
    /// records were completed.
    pub completed: Vec<OpRecord>,
    /// Operations undone (half-made devices removed) or finished (deletes).
    pub rolled_back: Vec<OpRecord>,
    /// Thin dm devices found suspended and resumed.
    pub resumed: Vec<String>,
    /// Thin dm devices found without a table and removed.
    pub removed: Vec<String>,
    /// Thin ids the pool has that no record explains (see [`Pool::remove_unknown`]).
    pub unknown_ids: Vec<ThinId>,
    /// Recorded thin devices the pool does not have (now marked missing).
    pub missing: Vec<String>,
    /// `thin_check` ran before activation because the pool was not shut down cleanly.
    pub checked: bool,
    /// The metadata could not be scanned (thin-provisioning-tools missing),
    /// so unknown and missing ids were not looked for.
    pub unscanned: bool,
}

impl Reconciliation {
    /// True when nothing needed repairing (a `thin_check` that passed is not a repair).
    pub fn is_clean(&self) -> bool {
        Reconciliation {
            checked: false,
            ..self.clone()
        } == Reconciliation::default()
    }
}

const DATA_FILE: &str = "data";
const META_FILE: &str = "metadata";
const STORE_FILE: &str = "thinbox.db";

/// An active pool.
#[derive(Debug)]
pub struct Pool {
    name: String,
    deps: Deps,
    store: Store,
    table: PoolTable,
    backing: Backing,
    floor_percent: u8,
    reconciliation: Reconciliation,
}

/// What a pool's data and metadata devices are.
#[derive(Debug, Clone)]
enum Backing {
    /// Sparse files on loop devices, in `dir`.
    Loopback {
        dir: PathBuf,
        data_loop: LoopInfo,
        meta_loop: LoopInfo,
    },
    /// An LVM thin-pool LV that thinbox made on `devices`.
    Lvm {
        vg: String,
        lv: String,
        devices: Vec<PathBuf>,
        profile: PathBuf,
        meta: PathBuf,
        meta_devnum: crate::table::DevNum,
    },
    /// A thin-pool someone else made.
    Adopted {
        meta: PathBuf,
        meta_devnum: crate::table::DevNum,
    },
}

/// Checks a pool or thin name: 1..=64 of `A-Z a-z 0-9 _ . + -`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::InvalidName {
            name: name.to_owned(),
        }))
    }
}

fn sectors_of(what: &'static str, b: Bytes) -> Result<Sectors> {
    b.to_sectors().ok_or_else(|| {
        Error::new(ErrorKind::NotBlockMultiple {
            what,
            size: b,
            block_size: Bytes(512),
        })
    })
}

fn percent_of(n: u64, pct: u8) -> u64 {
    (u128::from(n) * u128::from(pct) / 100).min(u128::from(u64::MAX)) as u64
}

fn is_errno(e: &Error, errno: i32) -> bool {
    matches!(e.kind(), ErrorKind::Kernel { errno: Some(n) } if *n == errno)
}

/// Undo list for a half-made pool.
#[derive(Default)]
struct Undo {
    files: Vec<PathBuf>,
    loops: Vec<PathBuf>,
    dm: Option<String>,
    dir: Option<PathBuf>,
}

impl Undo {
    fn run(self, deps: &Deps) {
        if let Some(name) = &self.dm {
            let _ = deps.dm.remove(name, false);
        }
        for l in self.loops.iter().rev() {
            let _ = deps.loops.detach(l);
        }
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        if let Some(d) = &self.dir {
            let _ = fs::remove_dir(d);
        }
    }
}

fn store_files(dir: &Path) -> Vec<PathBuf> {
    store_files_of(&dir.join(STORE_FILE))
}

fn store_files_of(db: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .collect()
}

/// The device node of a block device number, from sysfs (no udev needed).
fn devnode_of(n: crate::table::DevNum) -> Result<PathBuf> {
    let p = PathBuf::from(format!("/sys/dev/block/{n}/uevent"));
    let text = fs::read_to_string(&p).map_err(|e| Error::io(e, &p))?;
    text.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|d| PathBuf::from(format!("/dev/{d}")))
        .ok_or_else(|| Error::parse("uevent", &text, "no DEVNAME").path(p))
}

fn remove_files(files: &[PathBuf]) -> Result<()> {
    for f in files {
        match fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(e, f)),
            _ => {}
        }
    }
    Ok(())
}

impl Pool {
    /// Creates a loopback pool. Nothing is left behind if it fails.
    pub fn create_loopback(deps: &Deps, cfg: &LoopbackConfig) -> Result<Pool> {
        Self::create_inner(deps, cfg).map_err(|e| e.op("create loopback pool").pool(&cfg.name))
    }

    fn create_inner(deps: &Deps, cfg: &LoopbackConfig) -> Result<Pool> {
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
        let lwm = cfg
            .low_water_mark
            .unwrap_or(DataBlocks::new((blocks.get() / 10).max(1)));
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
    }

    /// Opens (re-activates if needed) the loopback pool in `dir` and
    /// reconciles its records with the kernel. Idempotent.
    pub fn open_loopback(deps: &Deps, dir: &Path) -> Result<Pool> {
        Self::activate_pool(deps, dir, None).map_err(|e| e.op("open loopback pool").path(dir))
    }

    fn activate_pool(deps: &Deps, dir: &Path, undo: Option<&mut Undo>) -> Result<Pool> {
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
            Ok((data_loop, meta_loop, table, checked))
        })();
        let (data_loop, meta_loop, table, checked) = match (r, undo) {
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
        Self::finish_open(deps, name, store, table, backing, checked)
    }

    fn finish_open(
        deps: &Deps,
        name: String,
        store: Store,
        table: PoolTable,
        backing: Backing,
        checked: bool,
    ) -> Result<Pool> {
        store.set_config("state", "ready")?;
        store.set_config("clean", "false")?;
        let floor_percent = store
            .config("floor_percent")?
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        let mut pool = Pool {
            name,
            deps: deps.clone(),
            store,
            table,
            backing,
            floor_percent,
            reconciliation: Reconciliation::default(),
        };
        pool.reconcile()?;
        pool.reconciliation.checked = checked;
        Ok(pool)
    }

    /// Makes a direct-lvm pool: PVs on `cfg.devices`, a VG, a thin-pool LV
    /// with its metadata LV (sizes as percentages of the VG), zeroing off by
    /// default, an LVM profile with the autoextend threshold and percent, and
    /// monitoring on. A device holding a partition table, filesystem or PV
    /// signature is refused unless `cfg.force`. Nothing is left behind if it fails.
    pub fn create_lvm(deps: &Deps, cfg: &LvmConfig) -> Result<Pool> {
        let pool = format!("{}/{}", cfg.vg, cfg.lv);
        Self::create_lvm_inner(deps, cfg).map_err(|e| e.op("create lvm pool").pool(pool))
    }

    fn create_lvm_inner(deps: &Deps, cfg: &LvmConfig) -> Result<Pool> {
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
    }

    /// Removes what an interrupted or failed `create_lvm` made, as far as
    /// its recorded step shows it got: the profile, the VG (only when every
    /// PV in it is one of the pool's devices), the PV labels (only on the
    /// pool's devices and only when they are in no VG), and the store.
    /// Anything else is refused as [`ErrorKind::NotOurs`]. Idempotent, so a
    /// crash during the rollback is rolled back by the next try.
    fn roll_back_lvm_create(deps: &Deps, store: Store) -> Result<()> {
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

    fn open_lvm_inner(deps: &Deps, store_path: &Path) -> Result<Pool> {
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
        Self::finish_open(deps, name, store, table, backing, false)
    }

    fn existing_store(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(Error::new(ErrorKind::NotFound {
                name: path.display().to_string(),
            }));
        }
        Store::open(path)
    }

    fn live_pool_table(deps: &Deps, name: &str) -> Result<PoolTable> {
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
        Self::adopt_inner(deps, dm_name, store_path, allow_foreign)
            .map_err(|e| e.op("adopt pool").pool(dm_name))
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

    fn adopt_inner(
        deps: &Deps,
        dm_name: &str,
        store_path: &Path,
        allow_foreign: bool,
    ) -> Result<Pool> {
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
        if !allow_foreign && (usage.transaction_id.0 != 0 || usage.used_data != DataBlocks::ZERO) {
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
            )
        })();
        r.inspect_err(|_| {
            let _ = remove_files(&store_files_of(store_path));
        })
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
            )
        })();
        r.map_err(|e| e.op("open adopted pool").path(store_path))
    }

    fn load_pool(deps: &Deps, name: &str, table: &PoolTable) -> Result<()> {
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
    fn reload_pool(deps: &Deps, name: &str, table: &PoolTable) -> Result<()> {
        deps.dm.load(name, &[table.to_target()])?;
        let suspended = deps.dm.suspend(name);
        let resumed = deps.dm.resume(name);
        suspended.and(resumed)
    }

    /// The pool's dm name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool's table.
    pub fn table(&self) -> &PoolTable {
        &self.table
    }

    /// The data and metadata loop devices of a loopback pool.
    pub fn loops(&self) -> Option<(&LoopInfo, &LoopInfo)> {
        match &self.backing {
            Backing::Loopback {
                data_loop,
                meta_loop,
                ..
            } => Some((data_loop, meta_loop)),
            _ => None,
        }
    }

    /// The metadata device.
    pub fn metadata_device(&self) -> MetaDev<'_> {
        match &self.backing {
            Backing::Loopback { meta_loop, .. } => MetaDev {
                path: &meta_loop.path,
                devnum: meta_loop.devnum,
            },
            Backing::Lvm {
                meta, meta_devnum, ..
            }
            | Backing::Adopted { meta, meta_devnum } => MetaDev {
                path: meta,
                devnum: *meta_devnum,
            },
        }
    }

    fn loopback(&self, what: &'static str) -> Result<(PathBuf, LoopInfo, LoopInfo)> {
        match &self.backing {
            Backing::Loopback {
                dir,
                data_loop,
                meta_loop,
            } => Ok((dir.clone(), data_loop.clone(), meta_loop.clone())),
            _ => Err(Error::new(ErrorKind::Unsupported { what })),
        }
    }

    /// What reconciliation did when this pool was opened.
    pub fn reconciliation(&self) -> &Reconciliation {
        &self.reconciliation
    }

    /// The record store (shared with the snapshotter).
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn err(&self, e: Error, op: &'static str) -> Error {
        e.op(op).pool(&self.name)
    }

    /// Who monitors the pool: dmeventd when lvm2 reports the pool LV as
    /// monitored, otherwise thinbox's own [`Pool::watch`] (always so for
    /// loopback and adopted pools).
    pub fn monitor(&self) -> Result<Monitor> {
        match &self.backing {
            Backing::Lvm { vg, lv, .. } => {
                let row = crate::lvm::lv(&*self.deps.lvm, vg, lv)
                    .map_err(|e| self.err(e, "read pool monitoring"))?;
                Ok(if row.is_monitored() {
                    Monitor::Dmeventd
                } else {
                    Monitor::Watch
                })
            }
            _ => Ok(Monitor::Watch),
        }
    }

    /// The pool's status.
    pub fn status(&self) -> Result<PoolStatus> {
        self.status_inner()
            .map_err(|e| self.err(e, "read pool status"))
    }

    fn status_inner(&self) -> Result<PoolStatus> {
        let lines = self.deps.dm.status(&self.name)?;
        let line = lines.first().ok_or_else(|| {
            Error::new(ErrorKind::NotFound {
                name: self.name.clone(),
            })
        })?;
        line.params.parse()
    }

    fn writable_usage(&self) -> Result<PoolUsage> {
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

    fn check_floor(&self, u: &PoolUsage) -> Result<()> {
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

    fn check_txn(&self, u: &PoolUsage) -> Result<TransactionId> {
        let recorded = self.store.expected_txn()?;
        if u.transaction_id != recorded {
            return Err(Error::new(ErrorKind::TransactionMismatch {
                kernel: u.transaction_id.0,
                recorded: recorded.0,
            }));
        }
        Ok(recorded)
    }

    fn thin_dm_name(&self, thin: &str) -> String {
        format!("{}-{thin}", self.name)
    }

    fn record(&self, name: &str) -> Result<ThinRecord> {
        match self.store.thin(name)? {
            Some(r) if r.state == ThinState::Ready => Ok(r),
            _ => Err(Error::new(ErrorKind::NotFound {
                name: name.to_owned(),
            })),
        }
    }

    fn message(&self, msg: &str) -> Result<()> {
        self.deps.dm.message(&self.name, msg).map(drop)
    }

    /// Records, sends `msg`, advances the transaction id, records done.
    fn mutate(
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

    fn new_intent(
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
    fn reserve_new_thin(&self, name: &str) -> Result<(ThinId, TransactionId)> {
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
        self.create_thin_inner(name, size).map_err(|e| {
            self.err(e, "create thin device")
                .device(self.thin_dm_name(name))
        })
    }

    fn create_thin_inner(&mut self, name: &str, size: Sectors) -> Result<ThinId> {
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
        self.snapshot_inner(origin, name).map_err(|e| {
            self.err(e, "snapshot thin device")
                .device(self.thin_dm_name(name))
        })
    }

    fn snapshot_inner(&mut self, origin: &str, name: &str) -> Result<ThinId> {
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

    /// Deletes a thin device (deactivating it first; fails if it is busy).
    pub fn delete_thin(&mut self, name: &str) -> Result<()> {
        self.delete_inner(name).map_err(|e| {
            self.err(e, "delete thin device")
                .device(self.thin_dm_name(name))
        })
    }

    fn delete_inner(&mut self, name: &str) -> Result<()> {
        let r = self.record(name)?;
        self.deactivate_inner(name, false)?;
        let u = self.status_inner()?.into_usage()?;
        let txn = self.check_txn(&u)?;
        let intent = self.new_intent(OpKind::Delete, r.id, name, r.size, r.origin, txn)?;
        self.mutate(intent, &format!("delete {}", r.id), |_| Ok(None))?;
        self.store.remove_config(&format!("fs:{name}"))
    }

    /// Activates a thin device; returns its device node (`/dev/dm-N`). Idempotent.
    pub fn activate(&self, name: &str) -> Result<PathBuf> {
        self.activate_inner(name).map_err(|e| {
            self.err(e, "activate thin device")
                .device(self.thin_dm_name(name))
        })
    }

    fn pool_info(&self) -> Result<DmInfo> {
        self.deps.dm.info(&self.name)?.ok_or_else(|| {
            Error::new(ErrorKind::NotFound {
                name: self.name.clone(),
            })
        })
    }

    fn activate_inner(&self, name: &str) -> Result<PathBuf> {
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

    fn reload_thin(&self, dm_name: &str, table: &ThinTable) -> Result<()> {
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
        self.resize_inner(name, new_size).map_err(|e| {
            self.err(e, "resize thin device")
                .device(self.thin_dm_name(name))
        })
    }

    fn resize_inner(&mut self, name: &str, new_size: Sectors) -> Result<()> {
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
    }

    /// The length of a thin device's live table, if it is active.
    fn live_thin_length(&self, name: &str) -> Result<Option<Sectors>> {
        let dm_name = self.thin_dm_name(name);
        match self.deps.dm.info(&dm_name)? {
            Some(i) if i.live_table => Ok(self.deps.dm.table(&dm_name)?.first().map(|t| t.length)),
            _ => Ok(None),
        }
    }

    /// Gives an active thin device's live table `size` (reload, suspend,
    /// resume: always resumed); an inactive one gets it on activation.
    fn grow_live_thin(&self, name: &str, id: ThinId, size: Sectors) -> Result<()> {
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
        fs.grow(&dev, mountpoint).map_err(|e| {
            self.err(e, "grow filesystem")
                .device(self.thin_dm_name(name))
        })
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
        r.map_err(|e| {
            self.err(e, "make filesystem")
                .device(self.thin_dm_name(name))
        })
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
        self.deactivate_inner(name, deferred).map_err(|e| {
            self.err(e, "deactivate thin device")
                .device(self.thin_dm_name(name))
        })
    }

    fn deactivate_inner(&self, name: &str, deferred: bool) -> Result<()> {
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

    fn reconcile(&mut self) -> Result<()> {
        let r = self.reconcile_inner();
        r.map_err(|e| self.err(e, "reconcile pool records"))
    }

    fn reconcile_inner(&mut self) -> Result<()> {
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
        for op in self.store.pending()? {
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
        self.reconciliation = report;
        self.resume_and_clean_thins()
    }

    /// Resumes thin devices left suspended and removes ones left without a
    /// table (a crash mid-snapshot or mid-activation).
    fn resume_and_clean_thins(&mut self) -> Result<()> {
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
    fn resolve(&mut self, op: OpRecord, txn: TransactionId) -> Result<TransactionId> {
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

    /// Grows the data file to `new_size` (a multiple of the block size), has
    /// the loop device re-read its capacity and reloads the pool table, with
    /// the low-water mark scaled to keep the same fraction free. The records
    /// get the new size before the kernel does, so a crash in between is
    /// finished by the next open.
    pub fn extend_data(&mut self, new_size: Bytes) -> Result<()> {
        self.extend_data_inner(new_size, None)
            .map_err(|e| self.err(e, "extend pool data"))
    }

    fn extend_data_inner(&mut self, new_size: Bytes, lwm: Option<DataBlocks>) -> Result<()> {
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

    fn file_size(&self, file: &str) -> Result<Bytes> {
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

    /// Reloads the pool table with a new low-water mark.
    pub fn set_low_water_mark(&mut self, lwm: DataBlocks) -> Result<()> {
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

    fn refresh_table(&mut self) -> Result<()> {
        let live = self.deps.dm.table(&self.name)?;
        let t = live.first().ok_or_else(|| {
            Error::new(ErrorKind::NotFound {
                name: self.name.clone(),
            })
        })?;
        self.table = PoolTable::from_target(t)?;
        Ok(())
    }

    fn maybe_extend_lvm(
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
                self.refresh_table()?;
                let total = self.table.block_size.blocks_floor(self.table.length);
                self.set_low_water_mark(policy.low_water_mark(total))?;
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
        if lwm != self.table.low_water_mark {
            self.set_low_water_mark(lwm)
                .map_err(|e| self.err(e, "set low-water mark"))?;
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

    /// Exact per-device usage (mapped, exclusive and shared blocks), read
    /// from a metadata snapshot the way `thin_ls` reports it.
    pub fn usage(&self) -> Result<Vec<ThinUsage>> {
        self.usage_inner()
            .map_err(|e| self.err(e, "read thin usage"))
    }

    fn usage_inner(&self) -> Result<Vec<ThinUsage>> {
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
    fn with_metadata_snapshot<T>(&self, f: impl FnOnce(MetaDev<'_>) -> Result<T>) -> Result<T> {
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

    fn teardown(self, destroy: bool, deferred: bool) -> Result<()> {
        if destroy && matches!(self.backing, Backing::Adopted { .. }) {
            // The pool is not ours to remove.
            return Err(Error::new(ErrorKind::Unsupported {
                what: "destroying an adopted pool (shut it down instead)",
            }));
        }
        let prefix = format!("{}-", self.name);
        let thins: Vec<String> = self
            .deps
            .dm
            .list()?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with(&prefix))
            .collect();
        for t in thins.iter().filter(|_| !deferred) {
            if let Some(i) = self.deps.dm.info(t)? {
                if i.open_count > 0 {
                    return Err(Error::new(ErrorKind::Busy { device: t.clone() }).device(t.clone()));
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::{CrashWhen, FakeDm};
    use crate::loopdev::FakeLoop;
    use crate::metadata::FakeTools;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    struct Env {
        dm: FakeDm,
        loops: FakeLoop,
        lvm: crate::lvm::FakeLvm,
        deps: Deps,
        _tmp: tempfile::TempDir,
        dir: PathBuf,
    }

    fn env() -> Env {
        let dm = FakeDm::new();
        let loops = FakeLoop::new();
        let lvm = crate::lvm::FakeLvm::new(&dm);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pool");
        Env {
            deps: Deps {
                dm: Arc::new(dm.clone()),
                loops: Arc::new(loops.clone()),
                tools: Arc::new(FakeTools::new(&dm)),
                lvm: Arc::new(lvm.clone()),
            },
            dm,
            loops,
            lvm,
            _tmp: tmp,
            dir,
        }
    }

    fn cfg(e: &Env) -> LoopbackConfig {
        LoopbackConfig {
            data_size: Bytes::mib(64),
            metadata_size: Bytes::mib(4),
            max_thins: 100,
            ..LoopbackConfig::new("tp", &e.dir)
        }
    }

    const MIB16: Sectors = Sectors::new(32768);

    /// Thin ids in the fake pool's metadata.
    fn kernel_ids(e: &Env, p: &Pool) -> Vec<u32> {
        e.dm.thin_ids(&p.table().metadata.to_string())
    }

    fn recorded_ids(p: &Pool) -> Vec<u32> {
        p.thins().unwrap().iter().map(|t| t.id.get()).collect()
    }

    #[test]
    fn create_reopen_destroy_leaves_nothing() {
        let e = env();
        let p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        assert_eq!(e.loops.attached(), 2);
        assert_eq!(p.table().block_size, BlockSize::DEFAULT);
        assert!(p.table().features.error_if_no_space);
        // 64 MiB / 64 KiB = 1024 blocks; the low-water mark defaults to a tenth.
        assert_eq!(p.table().low_water_mark, DataBlocks::new(102));
        let u = p.status().unwrap().usage().unwrap().clone();
        assert_eq!(u.total_data, DataBlocks::new(1024));
        drop(p);
        // Re-opening an active pool is idempotent.
        let p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        let p2 = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        assert!(p2.reconciliation().is_clean());
        assert_eq!(e.loops.attached(), 2);
        drop(p2);
        p.destroy().unwrap();
        assert_eq!(e.loops.attached(), 0);
        assert!(e.dm.list().unwrap().is_empty());
        assert!(!e.dir.exists());
    }

    #[test]
    fn bad_input_gets_its_own_kind_and_leaves_nothing() {
        let e = env();
        let mut c = cfg(&e);
        c.data_size = Bytes(Bytes::mib(64).0 + Bytes::kib(4).0);
        let err = Pool::create_loopback(&e.deps, &c).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::NotBlockMultiple { .. }),
            "{err}"
        );
        let mut c = cfg(&e);
        c.data_size = Bytes::gib(100);
        c.metadata_size = Bytes::mib(1);
        let err = Pool::create_loopback(&e.deps, &c).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::MetadataTooSmall { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("create loopback pool, pool tp"),
            "{err}"
        );
        let mut c = cfg(&e);
        c.name = "bad name".into();
        assert!(matches!(
            Pool::create_loopback(&e.deps, &c).unwrap_err().kind(),
            ErrorKind::InvalidName { .. }
        ));
        // A failure half-way (table load) undoes everything.
        e.dm.fail_next("load tp", ErrorKind::Injected);
        assert!(Pool::create_loopback(&e.deps, &cfg(&e)).is_err());
        assert_eq!(e.loops.attached(), 0);
        assert!(e.dm.list().unwrap().is_empty());
        assert!(!e.dir.exists());
        // Name taken.
        let p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        let mut c = cfg(&e);
        c.dir = e.dir.with_file_name("other");
        assert!(matches!(
            Pool::create_loopback(&e.deps, &c).unwrap_err().kind(),
            ErrorKind::NameTaken { .. }
        ));
        assert!(!c.dir.exists());
        p.destroy().unwrap();
    }

    #[test]
    fn no_thin_target_is_its_own_error() {
        let e = env();
        e.dm.without_thin_target();
        let err = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::DmThinUnsupported);
        assert_eq!(e.loops.attached(), 0);
        assert!(!e.dir.exists());
    }

    #[test]
    fn thin_lifecycle() {
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        let a = p.create_thin("a", MIB16).unwrap();
        assert_eq!(a, ThinId::new(0).unwrap());
        assert!(matches!(
            p.create_thin("a", MIB16).unwrap_err().kind(),
            ErrorKind::NameTaken { .. }
        ));
        assert!(matches!(
            p.create_thin("b", Sectors::new(1000)).unwrap_err().kind(),
            ErrorKind::NotBlockMultiple { .. }
        ));
        let dev = p.activate("a").unwrap();
        assert!(dev.to_str().unwrap().starts_with("/dev/dm-"));
        assert_eq!(p.activate("a").unwrap(), dev);
        e.dm.provision("tp-a", 4).unwrap();
        let s = p.thin_status("a").unwrap();
        assert_eq!(
            s,
            ThinStatus::Working {
                mapped: Sectors::new(512),
                highest_mapped: Some(Sectors::new(511))
            }
        );
        // Snapshot of an active origin suspends it and resumes it.
        let before = e.dm.calls().len();
        let s = p.snapshot("a", "s").unwrap();
        assert_eq!(s, ThinId::new(1).unwrap());
        let calls = e.dm.calls()[before..].to_vec();
        let sus = calls
            .iter()
            .position(|c| c == "suspend tp-a")
            .expect("suspended");
        let snap = calls
            .iter()
            .position(|c| c.starts_with("message create_snap 1 0"))
            .unwrap();
        let res = calls
            .iter()
            .position(|c| c == "resume tp-a")
            .expect("resumed");
        assert!(sus < snap && snap < res, "{calls:?}");
        // A failing snapshot still resumes the origin.
        e.dm.fail_next("message create_snap", ErrorKind::Injected);
        assert!(p.snapshot("a", "s2").is_err());
        assert!(!e.dm.info("tp-a").unwrap().unwrap().suspended);
        assert!(p.store().thin("s2").unwrap().is_none());
        // Snapshot of an inactive origin does not suspend.
        p.deactivate("a", false).unwrap();
        p.deactivate("a", false).unwrap();
        let before = e.dm.calls().len();
        p.snapshot("a", "s3").unwrap();
        assert!(!e.dm.calls()[before..]
            .iter()
            .any(|c| c.starts_with("suspend")));
        // Delete refuses a busy device, then works.
        p.activate("s").unwrap();
        e.dm.open("tp-s");
        assert!(p.delete_thin("s").unwrap_err().is_busy());
        e.dm.close("tp-s");
        p.delete_thin("s").unwrap();
        assert_eq!(kernel_ids(&e, &p), vec![0, 2]);
        assert_eq!(recorded_ids(&p), vec![0, 2]);
        assert_eq!(
            p.status().unwrap().usage().unwrap().transaction_id,
            TransactionId(4)
        );
        p.destroy().unwrap();
        assert!(e.dm.list().unwrap().is_empty());
    }

    #[test]
    fn free_space_floor() {
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        p.create_thin("a", MIB16).unwrap();
        p.activate("a").unwrap();
        e.dm.provision("tp-a", 900).unwrap();
        p.set_free_space_floor(20).unwrap();
        let err = p.create_thin("b", MIB16).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::BelowFreeSpaceFloor { .. }));
        assert!(err.to_string().contains("87% full"), "{err}");
        p.set_free_space_floor(0).unwrap();
        p.create_thin("b", MIB16).unwrap();
        p.destroy().unwrap();
    }

    #[test]
    fn foreign_transaction_is_detected() {
        let e = env();
        let p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        e.dm.message("tp", "set_transaction_id 0 7").unwrap();
        drop(p);
        let err = Pool::open_loopback(&e.deps, &e.dir).unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::TransactionMismatch {
                kernel: 7,
                recorded: 0
            }
        );
    }

    /// Runs `op` with a crash injected at `(pattern, when)`, reopens, and
    /// checks reconciliation: no orphan ids, nothing reported done lost, no
    /// device left suspended, and the pool usable again.
    fn crash_case(op: &str, pattern: &str, when: CrashWhen) {
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        p.create_thin("base", MIB16).unwrap();
        p.activate("base").unwrap();
        p.create_thin("victim", MIB16).unwrap();
        let done_before = recorded_ids(&p);
        e.dm.crash_at(pattern, when);
        let r = catch_unwind(AssertUnwindSafe(|| match op {
            "create" => p.create_thin("new", MIB16).map(drop),
            "snapshot" => p.snapshot("base", "new").map(drop),
            "delete" => p.delete_thin("victim"),
            _ => unreachable!(),
        }));
        assert!(
            r.is_err(),
            "{op} {pattern} {when:?}: the crash did not happen"
        );
        drop(p);
        let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        let rec = p.reconciliation().clone();
        let kernel = kernel_ids(&e, &p);
        let recorded = recorded_ids(&p);
        assert_eq!(
            kernel, recorded,
            "{op} {pattern} {when:?}: orphans ({rec:?})"
        );
        assert!(p
            .thins()
            .unwrap()
            .iter()
            .all(|t| t.state == ThinState::Ready));
        assert!(recorded.contains(&0), "base lost");
        if op != "delete" {
            for id in &done_before {
                assert!(recorded.contains(id), "{id} was done and is lost");
            }
        }
        let finished = pattern.contains("set_transaction_id") && when == CrashWhen::After;
        match op {
            "delete" => assert!(!recorded.contains(&1), "a started delete is finished"),
            _ => assert_eq!(p.store().thin("new").unwrap().is_some(), finished),
        }
        assert_eq!(rec.completed.len() + rec.rolled_back.len(), 1, "{rec:?}");
        let info = e.dm.info("tp-base").unwrap().unwrap();
        assert!(!info.suspended, "origin left suspended");
        // The pool works afterwards.
        p.create_thin("after", MIB16).unwrap();
        p.destroy().unwrap();
    }

    #[test]
    fn crash_matrix() {
        for (op, msg) in [
            ("create", "message create_thin"),
            ("snapshot", "message create_snap"),
            ("delete", "message delete"),
        ] {
            crash_case(op, msg, CrashWhen::Before);
            crash_case(op, msg, CrashWhen::After);
            crash_case(op, "message set_transaction_id", CrashWhen::After);
        }
        // Mid-snapshot, with the origin suspended.
        crash_case("snapshot", "suspend tp-base", CrashWhen::After);
        crash_case("snapshot", "resume tp-base", CrashWhen::Before);
    }

    #[test]
    fn failed_resize_changes_nothing() {
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        p.create_thin("a", MIB16).unwrap();
        p.activate("a").unwrap();
        let big = Sectors::new(MIB16.get() * 2);
        let txn = p.store().expected_txn().unwrap();
        e.dm.fail_next("load tp-a", ErrorKind::Injected);
        let err = p.resize_thin("a", big).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Injected);
        assert_eq!(p.store().thin("a").unwrap().unwrap().size, MIB16);
        assert!(p.store().pending().unwrap().is_empty());
        assert_eq!(p.store().expected_txn().unwrap(), txn);
        let live = ThinTable::from_target(&e.dm.table("tp-a").unwrap()[0]).unwrap();
        assert_eq!(live.length, MIB16);
        // A failed resume: the new table never went live, so neither does
        // the size; the next resize resumes the device with it.
        e.dm.fail_next("resume tp-a", ErrorKind::Injected);
        assert!(p.resize_thin("a", big).is_err());
        assert_eq!(p.store().thin("a").unwrap().unwrap().size, MIB16);
        assert!(p.store().pending().unwrap().is_empty());
        p.resize_thin("a", big).unwrap();
        assert_eq!(p.store().thin("a").unwrap().unwrap().size, big);
        let live = ThinTable::from_target(&e.dm.table("tp-a").unwrap()[0]).unwrap();
        assert_eq!(live.length, big);
        assert!(!e.dm.info("tp-a").unwrap().unwrap().suspended);
        p.destroy().unwrap();
    }

    #[test]
    fn resize_crash_matrix() {
        let big = Sectors::new(MIB16.get() * 2);
        for (active, pattern, when) in [
            (true, "load tp-a", CrashWhen::Before),
            (true, "load tp-a", CrashWhen::After),
            (true, "suspend tp-a", CrashWhen::After),
            (true, "resume tp-a", CrashWhen::Before),
            (true, "message set_transaction_id", CrashWhen::Before),
            (true, "message set_transaction_id", CrashWhen::After),
            (false, "message set_transaction_id", CrashWhen::Before),
            (false, "message set_transaction_id", CrashWhen::After),
        ] {
            let what = format!("active={active} {pattern} {when:?}");
            let e = env();
            let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
            p.create_thin("a", MIB16).unwrap();
            if active {
                p.activate("a").unwrap();
            }
            e.dm.crash_at(pattern, when);
            let r = catch_unwind(AssertUnwindSafe(|| p.resize_thin("a", big)));
            assert!(r.is_err(), "{what}: no crash");
            drop(p);
            let p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
            let rec = p.reconciliation().clone();
            assert_eq!(rec.completed.len(), 1, "{what}: {rec:?}");
            assert_eq!(rec.completed[0].intent.kind, OpKind::Resize);
            assert_eq!(p.store().thin("a").unwrap().unwrap().size, big, "{what}");
            assert!(p.store().pending().unwrap().is_empty());
            assert_eq!(kernel_ids(&e, &p), recorded_ids(&p), "{what}");
            assert_eq!(p.is_active("a").unwrap(), active, "{what}");
            let dev = p.activate("a").unwrap();
            assert!(dev.to_str().unwrap().starts_with("/dev/dm-"));
            let t = ThinTable::from_target(&e.dm.table("tp-a").unwrap()[0]).unwrap();
            assert_eq!(t.length, big, "{what}: live table disagrees");
            assert!(!e.dm.info("tp-a").unwrap().unwrap().suspended, "{what}");
            assert_eq!(
                p.status().unwrap().usage().unwrap().transaction_id,
                p.store().expected_txn().unwrap()
            );
            p.destroy().unwrap();
        }
    }

    #[test]
    fn unknown_and_missing_ids_are_reported() {
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        p.create_thin("a", MIB16).unwrap();
        p.create_thin("b", MIB16).unwrap();
        // Another tool adds id 5 and deletes b's id behind thinbox's back.
        e.dm.message("tp", "create_thin 5").unwrap();
        e.dm.message("tp", "delete 1").unwrap();
        drop(p);
        let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        let r = p.reconciliation().clone();
        assert_eq!(r.unknown_ids, vec![ThinId::new(5).unwrap()]);
        assert_eq!(r.missing, vec!["b".to_owned()]);
        // New devices do not collide with the unknown id.
        for n in ["c", "d", "e", "f", "g"] {
            p.create_thin(n, MIB16).unwrap();
        }
        assert!(!recorded_ids(&p).contains(&5), "{:?}", recorded_ids(&p));
        for n in ["c", "d", "e", "f", "g"] {
            p.delete_thin(n).unwrap();
        }
        assert_eq!(
            p.store().thin("b").unwrap().unwrap().state,
            ThinState::Missing
        );
        assert!(p.activate("b").unwrap_err().is_not_found());
        assert_eq!(p.remove_unknown().unwrap(), vec![ThinId::new(5).unwrap()]);
        assert_eq!(kernel_ids(&e, &p), vec![0]);
        drop(p);
        let p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        assert!(p.reconciliation().is_clean(), "{:?}", p.reconciliation());
        p.destroy().unwrap();
    }

    #[test]
    fn usage_reads_a_metadata_snapshot() {
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        p.create_thin("a", MIB16).unwrap();
        p.activate("a").unwrap();
        e.dm.provision("tp-a", 7).unwrap();
        let u = p.usage().unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].mapped, DataBlocks::new(7));
        let calls = e.dm.calls();
        let n = calls.len();
        assert_eq!(calls[n - 2..].len(), 2);
        assert!(calls.iter().any(|c| c == "message reserve_metadata_snap"));
        assert_eq!(calls.last().unwrap(), "message release_metadata_snap");
        p.destroy().unwrap();
    }

    #[test]
    fn check_live_checks_a_metadata_snapshot_and_releases_it() {
        let e = env();
        let tools = FakeTools::new(&e.dm);
        let deps = Deps {
            tools: Arc::new(tools.clone()),
            ..e.deps.clone()
        };
        let p = Pool::create_loopback(&deps, &cfg(&e)).unwrap();
        p.check_live().unwrap();
        assert_eq!(
            e.dm.calls().last().unwrap(),
            "message release_metadata_snap"
        );
        tools.set_corrupt(true);
        let err = p.check_live().unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::MetadataCheckFailed { .. }),
            "{err}"
        );
        let calls = e.dm.calls();
        assert_eq!(calls.last().unwrap(), "message release_metadata_snap");
        assert_eq!(
            calls[calls.len() - 2],
            "message reserve_metadata_snap",
            "checked while holding the snapshot: {calls:?}"
        );
        tools.set_corrupt(false);
        p.destroy().unwrap();
    }

    #[test]
    fn watch_once_reports_one_check() {
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut checks = 0;
        let opts = WatchOptions {
            once: true,
            ..WatchOptions::on_events(std::time::Duration::from_millis(5))
        };
        let n = p
            .watch(&AutoextendPolicy::default(), &stop, opts, &mut |_| {
                checks += 1
            })
            .unwrap();
        assert_eq!((n, checks), (0, 1));
        p.destroy().unwrap();
    }

    #[test]
    fn unclean_shutdown_runs_thin_check() {
        let e = env();
        let tools = FakeTools::new(&e.dm);
        let deps = Deps {
            tools: Arc::new(tools.clone()),
            ..e.deps.clone()
        };
        let mut p = Pool::create_loopback(&deps, &cfg(&e)).unwrap();
        assert!(!p.reconciliation().checked, "a new pool needs no check");
        p.create_thin("a", MIB16).unwrap();
        p.activate("a").unwrap();
        // A clean shutdown: the next open skips the check.
        p.shutdown().unwrap();
        assert_eq!(e.loops.attached(), 0);
        assert!(e.dm.list().unwrap().is_empty());
        let p = Pool::open_loopback(&deps, &e.dir).unwrap();
        assert!(!p.reconciliation().checked);
        // A crash: devices vanish without the clean flag.
        let (d, m) = (
            p.loops().unwrap().0.path.clone(),
            p.loops().unwrap().1.path.clone(),
        );
        drop(p);
        e.dm.remove("tp", false).unwrap();
        e.loops.detach(&d).unwrap();
        e.loops.detach(&m).unwrap();
        tools.set_corrupt(true);
        let err = Pool::open_loopback(&deps, &e.dir).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::MetadataCheckFailed { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("thin_repair"), "{err}");
        assert_eq!(
            e.loops.attached(),
            0,
            "a failed open leaves no loop devices"
        );
        tools.set_corrupt(false);
        let p = Pool::open_loopback(&deps, &e.dir).unwrap();
        assert!(p.reconciliation().checked);
        assert!(p.reconciliation().is_clean());
        p.destroy().unwrap();
    }

    #[test]
    fn autoextend_on_low_water_event() {
        let e = env();
        let mut c = cfg(&e);
        c.features.error_if_no_space = false;
        let mut p = Pool::create_loopback(&e.deps, &c).unwrap();
        p.create_thin("a", Sectors::new(2 * 131072)).unwrap();
        p.activate("a").unwrap();
        let policy = AutoextendPolicy {
            threshold_percent: 50,
            extend_percent: 100,
            max_data: Bytes::mib(256),
            max_metadata: Bytes::mib(8),
        };
        assert_eq!(
            policy.low_water_mark(DataBlocks::new(1024)),
            DataBlocks::new(512)
        );
        // Below the threshold nothing happens.
        e.dm.provision("tp-a", 100).unwrap();
        assert_eq!(p.maybe_extend(&policy).unwrap(), Extended::default());
        // Crossing it doubles the data file and reloads the table.
        e.dm.provision("tp-a", 500).unwrap();
        let d = p.maybe_extend(&policy).unwrap();
        assert_eq!(d.data, Some(Bytes::mib(128)));
        assert_eq!(fs::metadata(e.dir.join("data")).unwrap().len(), 128 << 20);
        assert_eq!(p.table().length, Sectors::new(262144));
        assert_eq!(p.table().low_water_mark, DataBlocks::new(1024));
        let u = p.status().unwrap().usage().unwrap().clone();
        assert_eq!(u.total_data, DataBlocks::new(2048));
        // The watcher wakes on the low-water event and extends up to the cap.
        e.dm.provision("tp-a", 500).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let dm = e.dm.clone();
        let stopper = std::thread::scope(|s| {
            let h = s.spawn(|| {
                p.watch(
                    &policy,
                    &stop,
                    WatchOptions::on_events(std::time::Duration::from_millis(5)),
                    &mut |_| {},
                )
            });
            while fs::metadata(e.dir.join("data")).unwrap().len() < 256 << 20 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            h.join().unwrap()
        });
        assert_eq!(stopper.unwrap(), 1);
        assert!(dm.calls().iter().any(|c| c == "wait_events"));
        // Reopen keeps the new size; the capped pool does not grow further.
        drop(p);
        let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        assert_eq!(p.table().length, Sectors::new(524288));
        e.dm.provision("tp-a", 2900).unwrap();
        assert_eq!(p.maybe_extend(&policy).unwrap().data, None);
        assert!(matches!(
            p.extend_data(Bytes::mib(64)).unwrap_err().kind(),
            ErrorKind::SizeTooSmall { .. }
        ));
        p.extend_metadata(Bytes::mib(8)).unwrap();
        p.destroy().unwrap();
    }

    #[test]
    fn resize_grows_record_and_live_table() {
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        p.create_thin("a", MIB16).unwrap();
        p.create_thin("b", MIB16).unwrap();
        p.activate("a").unwrap();
        let big = Sectors::new(MIB16.get() * 2);
        p.resize_thin("a", big).unwrap();
        p.resize_thin("b", big).unwrap();
        let t: ThinTable = e.dm.table("tp-a").unwrap()[0].to_string().parse().unwrap();
        assert_eq!(t.length, big);
        assert_eq!(p.store().thin("b").unwrap().unwrap().size, big);
        assert!(!p.is_active("b").unwrap(), "resize does not activate");
        assert!(matches!(
            p.resize_thin("a", MIB16).unwrap_err().kind(),
            ErrorKind::SizeTooSmall { .. }
        ));
        assert!(matches!(
            p.resize_thin("a", Sectors::new(big.get() + 8))
                .unwrap_err()
                .kind(),
            ErrorKind::NotBlockMultiple { .. }
        ));
        // No filesystem recorded: nothing to grow, and snapshots inherit that.
        assert_eq!(p.filesystem("a").unwrap(), None);
        assert_eq!(p.mount_options("a").unwrap(), "");
        p.destroy().unwrap();
    }

    #[test]
    fn deferred_destroy_of_a_busy_pool() {
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        p.create_thin("a", MIB16).unwrap();
        p.activate("a").unwrap();
        e.dm.open("tp-a");
        let p2 = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        drop(p);
        assert!(
            p2.destroy().unwrap_err().is_busy(),
            "strict destroy refuses"
        );
        let p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        p.destroy_deferred().unwrap();
        assert!(!e.dir.exists(), "files go at once");
        assert!(
            e.dm.info("tp-a").unwrap().is_some(),
            "the open device stays"
        );
        assert!(e.dm.info("tp").unwrap().is_some());
        e.dm.close("tp-a");
        assert!(
            e.dm.list().unwrap().is_empty(),
            "all gone after the last close"
        );
    }

    #[test]
    fn crash_during_pool_creation_is_finished_on_open() {
        for (pattern, when) in [
            ("create tp", CrashWhen::After),
            ("load tp", CrashWhen::Before),
            ("resume tp", CrashWhen::Before),
        ] {
            // A fresh fake each time: its metadata outlives the pool, as a
            // metadata file would.
            let e = env();
            e.dm.crash_at(pattern, when);
            let r = catch_unwind(AssertUnwindSafe(|| {
                Pool::create_loopback(&e.deps, &cfg(&e))
            }));
            assert!(r.is_err(), "{pattern}: no crash");
            let mut p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
            p.create_thin("a", MIB16).unwrap();
            assert_eq!(e.loops.attached(), 2, "{pattern}");
            p.destroy().unwrap();
            assert!(
                e.dm.list().unwrap().is_empty() && !e.dir.exists(),
                "{pattern}"
            );
        }
    }

    #[test]
    fn failed_open_undoes_only_its_own_work() {
        let e = env();
        let p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        let (d, m) = (
            p.loops().unwrap().0.path.clone(),
            p.loops().unwrap().1.path.clone(),
        );
        drop(p);
        // An active pool whose reopen fails keeps its loop devices.
        e.dm.fail_next("table tp", ErrorKind::Injected);
        assert!(Pool::open_loopback(&e.deps, &e.dir).is_err());
        assert_eq!(e.loops.attached(), 2);
        assert!(e.dm.info("tp").unwrap().is_some());
        // After a "reboot", a failed activation leaves nothing attached.
        e.dm.remove("tp", false).unwrap();
        e.loops.detach(&d).unwrap();
        e.loops.detach(&m).unwrap();
        e.dm.fail_next("load tp", ErrorKind::Injected);
        assert!(Pool::open_loopback(&e.deps, &e.dir).is_err());
        assert_eq!(e.loops.attached(), 0);
        assert!(e.dm.list().unwrap().is_empty());
        Pool::open_loopback(&e.deps, &e.dir)
            .unwrap()
            .destroy()
            .unwrap();
    }

    #[test]
    fn opens_without_metadata_tools() {
        #[derive(Debug)]
        struct NoTools;
        impl MetadataTools for NoTools {
            fn list(&self, _: MetaDev<'_>, _: bool) -> Result<Vec<ThinUsage>> {
                Err(Error::new(ErrorKind::ToolMissing {
                    tool: "thin_ls".into(),
                }))
            }
            fn check(&self, _: MetaDev<'_>) -> Result<()> {
                Ok(())
            }
            fn check_snapshot(&self, _: MetaDev<'_>) -> Result<()> {
                Ok(())
            }
        }
        let e = env();
        let deps = Deps {
            tools: Arc::new(NoTools),
            ..e.deps.clone()
        };
        let mut p = Pool::create_loopback(&deps, &cfg(&e)).unwrap();
        assert!(p.reconciliation().unscanned);
        p.create_thin("a", MIB16).unwrap();
        assert!(matches!(
            p.usage().unwrap_err().kind(),
            ErrorKind::ToolMissing { .. }
        ));
        p.destroy().unwrap();
    }

    #[test]
    fn crash_mid_activation_is_cleaned() {
        let e = env();
        let mut p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        p.create_thin("a", MIB16).unwrap();
        e.dm.crash_at("load tp-a", CrashWhen::Before);
        assert!(catch_unwind(AssertUnwindSafe(|| p.activate("a"))).is_err());
        drop(p);
        let p = Pool::open_loopback(&e.deps, &e.dir).unwrap();
        assert_eq!(p.reconciliation().removed, vec!["tp-a".to_owned()]);
        p.activate("a").unwrap();
        p.destroy().unwrap();
    }

    // ---- direct-lvm pools over the fake lvm2 ----------------------------

    const DISK: &str = "/dev/fake-vda";

    fn lvm_cfg(e: &Env) -> LvmConfig {
        let mut c = LvmConfig::new(
            vec![PathBuf::from(DISK)],
            "vg0",
            "pool",
            e.dir.join("lvm.db"),
        );
        c.profile_dir = e.dir.join("profile");
        c.data_percent = 50;
        c.metadata_percent = 2;
        c
    }

    fn lvm_env(signatures: &[&str]) -> Env {
        let e = env();
        fs::create_dir_all(&e.dir).unwrap();
        e.lvm.add_disk(DISK, Bytes::gib(1), signatures);
        e
    }

    /// Nothing of a pool is left: no VG, no PV label, no profile, no
    /// store, no dm device.
    fn assert_no_lvm_leftovers(e: &Env, c: &LvmConfig, what: &str) {
        assert!(e.lvm.vg_names().is_empty(), "{what}: VG left");
        assert!(e.lvm.pv_devices().is_empty(), "{what}: PV left");
        assert!(
            !e.lvm
                .signatures(Path::new(DISK))
                .unwrap()
                .contains(&"LVM2_member".to_owned()),
            "{what}: PV signature left"
        );
        assert!(!c.store.exists(), "{what}: store left");
        assert!(
            fs::read_dir(&c.profile_dir).map_or(true, |mut d| d.next().is_none()),
            "{what}: profile left"
        );
        assert!(e.dm.list().unwrap().is_empty(), "{what}: dm devices left");
    }

    #[test]
    fn lvm_pool_lifecycle() {
        let e = lvm_env(&[]);
        let c = lvm_cfg(&e);
        let mut p = Pool::create_lvm(&e.deps, &c).unwrap();
        // 1 GiB disk: 255 extents of 4 MiB; 50% data = 127 extents, 2% metadata = 5.
        assert_eq!(p.name(), "vg0-pool");
        assert_eq!(p.table().length, Sectors::new(127 * 8192));
        assert_eq!(p.table().block_size.bytes(), Bytes::kib(512));
        assert!(p.table().features.skip_block_zeroing, "zeroing off");
        assert!(p.table().features.error_if_no_space, "--errorwhenfull y");
        let row = crate::lvm::lv(&e.lvm, "vg0", "pool").unwrap();
        assert_eq!(row.lv_profile, "thinbox-vg0-pool");
        assert_eq!(row.lv_when_full, "error");
        let profile = fs::read_to_string(c.profile_dir.join("thinbox-vg0-pool.profile")).unwrap();
        assert!(
            profile.contains("thin_pool_autoextend_threshold=80"),
            "{profile}"
        );
        assert!(e
            .lvm
            .calls()
            .iter()
            .any(|c| c == "lvchange --monitor y vg0/pool"));
        assert_eq!(p.monitor().unwrap(), Monitor::Dmeventd);
        // Thin devices on it.
        p.create_thin("a", MIB16).unwrap();
        p.activate("a").unwrap();
        p.snapshot("a", "s").unwrap();
        p.resize_thin("a", Sectors::new(MIB16.get() * 2)).unwrap();
        p.delete_thin("s").unwrap();
        assert_eq!(kernel_ids(&e, &p), vec![0]);
        // Autoextend through lvextend, then the low-water mark is set again.
        let policy = AutoextendPolicy {
            threshold_percent: 0,
            extend_percent: 10,
            ..AutoextendPolicy::default()
        };
        let grown = p.maybe_extend(&policy).unwrap();
        assert!(e
            .lvm
            .calls()
            .iter()
            .any(|c| c == "lvextend -l +10%LV vg0/pool"));
        assert_eq!(p.table().length, Sectors::new(140 * 8192));
        assert_eq!(grown.data, Some(p.table().length.bytes()));
        // Shut down and reopen: the records and the thin device survive.
        p.shutdown().unwrap();
        assert!(e.dm.info("vg0-pool").unwrap().is_none());
        let p = Pool::open_lvm(&e.deps, &c.store).unwrap();
        assert!(p.reconciliation().is_clean(), "{:?}", p.reconciliation());
        assert_eq!(recorded_ids(&p), vec![0]);
        p.activate("a").unwrap();
        p.destroy().unwrap();
        assert_no_lvm_leftovers(&e, &c, "destroy");
    }

    #[test]
    fn lvm_refuses_signatures_unless_forced() {
        let e = lvm_env(&["ext4", "dos"]);
        let mut c = lvm_cfg(&e);
        let err = Pool::create_lvm(&e.deps, &c).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::DeviceHasSignature { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("/dev/fake-vda holds ext4, dos"),
            "{err}"
        );
        assert!(err.to_string().contains("force"), "{err}");
        assert!(!e.lvm.calls().iter().any(|c| c.starts_with("pvcreate")));
        assert!(!c.store.exists());
        c.force = true;
        let p = Pool::create_lvm(&e.deps, &c).unwrap();
        assert!(e.lvm.calls().iter().any(|c| c == "wipefs -a /dev/fake-vda"));
        p.destroy().unwrap();
        assert_no_lvm_leftovers(&e, &c, "destroy");
    }

    #[test]
    fn lvm_bad_input_and_taken_names() {
        let e = lvm_env(&[]);
        let mut c = lvm_cfg(&e);
        c.data_percent = 90;
        c.metadata_percent = 10;
        let err = Pool::create_lvm(&e.deps, &c).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Parse { .. }), "{err}");
        assert!(err.to_string().contains("spare"), "{err}");
        assert!(e.lvm.calls().is_empty(), "refused before any command");
        let mut c = lvm_cfg(&e);
        c.devices.clear();
        assert!(Pool::create_lvm(&e.deps, &c).unwrap_err().is_not_found());
        // A VG of that name exists already.
        let c = lvm_cfg(&e);
        let p = Pool::create_lvm(&e.deps, &c).unwrap();
        let mut other = lvm_cfg(&e);
        other.store = e.dir.join("other.db");
        let err = Pool::create_lvm(&e.deps, &other).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::NameTaken { .. }), "{err}");
        assert!(!other.store.exists());
        // A failure half-way (lvcreate) rolls everything back.
        p.destroy().unwrap();
        e.lvm.fail_next("lvcreate");
        let err = Pool::create_lvm(&e.deps, &c).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::ToolFailed { .. }), "{err}");
        assert_no_lvm_leftovers(&e, &c, "failed lvcreate");
    }

    #[test]
    fn lvm_without_dmeventd_thinbox_watches() {
        let e = lvm_env(&[]);
        e.lvm.set_dmeventd(false);
        let c = lvm_cfg(&e);
        let p = Pool::create_lvm(&e.deps, &c).unwrap();
        assert!(
            e.lvm
                .calls()
                .iter()
                .any(|c| c == "lvchange --monitor y vg0/pool"),
            "monitoring is attempted"
        );
        assert_eq!(p.monitor().unwrap(), Monitor::Watch);
        assert_eq!(p.monitor().unwrap().to_string(), "thinbox watch");
        p.destroy().unwrap();
        // Turned off on request even where dmeventd runs.
        e.lvm.set_dmeventd(true);
        let mut c = lvm_cfg(&e);
        c.monitor = false;
        c.error_when_full = false;
        let p = Pool::create_lvm(&e.deps, &c).unwrap();
        assert_eq!(p.monitor().unwrap(), Monitor::Watch);
        assert!(!p.table().features.error_if_no_space, "writes queue");
        drop(p);
        // A reopen (lvchange -ay) keeps monitoring off.
        let p = Pool::open_lvm(&e.deps, &c.store).unwrap();
        assert_eq!(p.monitor().unwrap(), Monitor::Watch);
        p.destroy().unwrap();
        let p = Pool::create_loopback(&e.deps, &cfg(&e)).unwrap();
        assert_eq!(p.monitor().unwrap(), Monitor::Watch);
        p.destroy().unwrap();
    }

    #[test]
    fn lvm_create_crash_matrix() {
        // (pattern, when, rolled forward by open)
        let points = [
            ("wipefs -a", CrashWhen::Before, false),
            ("wipefs -a", CrashWhen::After, false),
            ("pvcreate", CrashWhen::Before, false),
            ("pvcreate", CrashWhen::After, false),
            ("vgcreate", CrashWhen::After, false),
            ("lvcreate", CrashWhen::Before, false),
            ("lvcreate", CrashWhen::After, false),
            ("--metadataprofile", CrashWhen::Before, false),
            ("--metadataprofile", CrashWhen::After, false),
            ("--errorwhenfull", CrashWhen::After, false),
            ("--monitor", CrashWhen::After, false),
            ("lvchange -ay", CrashWhen::Before, true),
        ];
        for (pattern, when, forward) in points {
            for retry_by_create in [false, true] {
                let what = format!("{pattern} {when:?} retry_by_create={retry_by_create}");
                let e = lvm_env(&["ext4"]);
                let mut c = lvm_cfg(&e);
                c.force = true;
                e.lvm.crash_at(pattern, when);
                let r = catch_unwind(AssertUnwindSafe(|| Pool::create_lvm(&e.deps, &c)));
                assert!(r.is_err(), "{what}: no crash");
                if retry_by_create && !forward {
                    // Creating again rolls the interrupted creation back first.
                    let p = Pool::create_lvm(&e.deps, &c).unwrap();
                    p.destroy().unwrap();
                    assert_no_lvm_leftovers(&e, &c, &what);
                    continue;
                }
                match Pool::open_lvm(&e.deps, &c.store) {
                    Ok(p) => {
                        assert!(forward, "{what}: an uncommitted creation was opened");
                        assert!(p.reconciliation().is_clean());
                        p.destroy().unwrap();
                        assert_no_lvm_leftovers(&e, &c, &what);
                    }
                    Err(err) => {
                        assert!(!forward, "{what}: {err}");
                        assert!(
                            matches!(err.kind(), ErrorKind::CreationRolledBack { .. }),
                            "{what}: {err}"
                        );
                        assert!(err.to_string().contains("create the pool again"), "{err}");
                        assert_no_lvm_leftovers(&e, &c, &what);
                        let p = Pool::create_lvm(&e.deps, &c).unwrap();
                        p.destroy().unwrap();
                    }
                }
            }
        }
    }

    #[test]
    fn lvm_rollback_leaves_what_is_not_ours() {
        let e = lvm_env(&[]);
        e.lvm.add_disk("/dev/fake-vdb", Bytes::gib(1), &[]);
        let c = lvm_cfg(&e);
        e.lvm.crash_at("vgcreate", CrashWhen::Before);
        assert!(catch_unwind(AssertUnwindSafe(|| Pool::create_lvm(&e.deps, &c))).is_err());
        // Someone else makes a VG of that name on another disk meanwhile.
        let other = vec![PathBuf::from("/dev/fake-vdb")];
        e.lvm.pvcreate(&other).unwrap();
        e.lvm.vgcreate("vg0", &other).unwrap();
        let err = Pool::open_lvm(&e.deps, &c.store).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::NotOurs { .. }), "{err}");
        assert!(err.to_string().contains("volume group vg0"), "{err}");
        assert_eq!(e.lvm.vg_names(), vec!["vg0".to_owned()], "their VG stays");
        assert!(!e.lvm.calls().iter().any(|c| c.starts_with("vgremove")));
    }
}
