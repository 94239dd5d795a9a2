//! How pools are made and kept: the configuration of loopback and LVM
//! pools, the autoextend policy, how the watch loop waits, and what
//! reconciliation found.

use super::*;

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
    /// means the autoextend policy's mark when `autoextend` is set (at
    /// least one block), else a tenth of the pool.
    pub low_water_mark: Option<DataBlocks>,
    /// The autoextend policy the pool will be watched with, which sets the
    /// default low-water mark.
    pub autoextend: Option<AutoextendPolicy>,
    /// Feature arguments (default: `error_if_no_space`, so a full pool fails
    /// writes instead of hanging them).
    pub features: PoolFeatures,
    /// The most thin devices the metadata must hold (for the size check).
    pub max_thins: u64,
    /// Enable direct I/O on the loop devices where the filesystem allows.
    pub direct_io: bool,
}

impl LoopbackConfig {
    /// The low-water mark the pool is made with, for `blocks` data blocks.
    pub fn low_water_mark_for(&self, blocks: DataBlocks) -> DataBlocks {
        match (self.low_water_mark, &self.autoextend) {
            (Some(lwm), _) => lwm,
            (None, Some(policy)) => policy.low_water_mark(blocks).max(DataBlocks::new(1)),
            (None, None) => DataBlocks::new((blocks.get() / 10).max(1)),
        }
    }

    /// Docker-like defaults for a pool `name` in `dir`.
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>) -> LoopbackConfig {
        LoopbackConfig {
            name: name.into(),
            dir: dir.into(),
            data_size: Bytes::gib(100),
            metadata_size: Bytes::gib(2),
            block_size: BlockSize::DEFAULT,
            low_water_mark: None,
            autoextend: None,
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
    /// Ids were not compared: the records were known to match the pool at
    /// its transaction id and nothing was pending ([`Pool::rescan`] compares).
    pub trusted: bool,
}

impl Reconciliation {
    /// True when nothing needed repairing (a `thin_check` that passed is not a repair).
    pub fn is_clean(&self) -> bool {
        Reconciliation {
            checked: false,
            trusted: false,
            ..self.clone()
        } == Reconciliation::default()
    }
}
