//! What the kernel tests share: the pool factory (one pool of each kind,
//! loopback, direct-lvm or adopted, made the same way for every behaviour),
//! and the independent witnesses they check thinbox against (dmsetup,
//! thin_dump, lvs, the data files, /sys/block).

use std::any::Any;
use std::fs;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use integration::fixtures::{run, sparse_file, temp_dir, try_run, unique_name, LoopDevice};
use integration::need::Need;
use thinpool::pool::{Deps, LoopbackConfig, LvmConfig, Pool};
use thinpool::table::PoolFeatures;
use thinpool::{BlockSize, Bytes, DataBlocks, Sectors};

pub const MIB: u64 = 1 << 20;
pub const THIN_SIZE: Sectors = Sectors::new(64 * MIB / 512);
pub const DM_THIN: &[Need] = &[Need::Root, Need::Loop, Need::DmThin];
pub const LVM: &[Need] = &[Need::Root, Need::DmThin, Need::Lvm, Need::Disks(1)];
/// Every pool the factory makes has 64 KiB data blocks.
pub const BLOCK: u64 = 64 << 10;

pub fn deps() -> Deps {
    Deps::real().expect("open device-mapper control")
}

pub fn small_config(dir: &Path) -> LoopbackConfig {
    LoopbackConfig {
        data_size: Bytes::mib(512),
        metadata_size: Bytes::mib(16),
        max_thins: 100,
        ..LoopbackConfig::new(unique_name("pool"), dir.join("pool"))
    }
}

/// The kinds of pool thinbox drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sparse files on loop devices, made by thinbox.
    Loopback,
    /// A thin-pool LV on a spare disk, made by thinbox through lvm2.
    Lvm,
    /// A thin-pool dm device made by hand with dmsetup, adopted.
    Adopted,
}

impl Kind {
    /// What a test on this kind needs.
    pub const fn needs(self) -> &'static [Need] {
        match self {
            Kind::Loopback | Kind::Adopted => DM_THIN,
            Kind::Lvm => LVM,
        }
    }
}

/// How a test wants its pool.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// About this much data space (direct-lvm: rounded to a percent of the
    /// disk, at least 1%).
    pub data_mib: u64,
    /// Queue writes when the pool is full (instead of failing them).
    pub queue_when_full: bool,
    /// Extra feature arguments (loopback and adopted pools; lvm2 chooses
    /// its own).
    pub features: PoolFeatures,
    /// The low-water mark (loopback and adopted pools).
    pub low_water_mark: Option<DataBlocks>,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            data_mib: 512,
            queue_when_full: false,
            features: PoolFeatures::default(),
            low_water_mark: None,
        }
    }
}

impl Spec {
    /// A pool of about `mib` MiB of data.
    pub fn mib(mib: u64) -> Spec {
        Spec {
            data_mib: mib,
            ..Spec::default()
        }
    }
}

/// A pool of one kind with what cleans it up and what sees it from outside.
/// Derefs to the [`Pool`].
pub struct TestPool {
    pool: Option<Pool>,
    pub kind: Kind,
    pub deps: Deps,
    /// Loopback: the pool's directory; direct-lvm and adopted: the store.
    pub path: PathBuf,
    pub tmp: tempfile::TempDir,
    /// Direct-lvm: the VG.
    pub vg: Option<String>,
    /// Loopback and adopted: the data file.
    data_file: Option<PathBuf>,
    /// Dropped last: dm devices, loop devices, VGs made for the pool.
    _guards: Vec<Box<dyn Any>>,
}

/// Removes dm devices (last made first) on drop, whatever the test did.
pub struct DmGuard(pub Vec<String>);

impl Drop for DmGuard {
    fn drop(&mut self) {
        for n in self.0.iter().rev() {
            for dev in dm_names_with_prefix(&format!("{n}-")) {
                try_run("dmsetup", &["remove", "--force", &dev]);
            }
            try_run("dmsetup", &["remove", "--force", n]);
        }
    }
}

/// Removes a test VG and wipes its disk on drop, whatever the test did.
pub struct VgGuard(pub String, pub String);

impl Drop for VgGuard {
    fn drop(&mut self) {
        try_run("vgremove", &["-f", &self.0]);
        try_run("pvremove", &["-ff", "-y", &self.1]);
        try_run("wipefs", &["-a", &self.1]);
        let _ = fs::remove_file(format!("/etc/lvm/profile/thinbox-{}-pool.profile", self.0));
    }
}

/// The first spare disk, a fresh VG name, a guard that removes the VG and
/// wipes the disk whatever happens, and a config over them.
pub fn lvm_setup(tmp: &Path) -> (String, String, VgGuard, LvmConfig) {
    let disk = std::env::var(integration::vm::DISKS_ENV).unwrap();
    let disk = disk.split_whitespace().next().unwrap().to_owned();
    let vg = unique_name("vg").replace('-', "_");
    let guard = VgGuard(vg.clone(), disk.clone());
    let mut cfg = LvmConfig::new(vec![PathBuf::from(&disk)], &vg, "pool", tmp.join("lvm.db"));
    cfg.force = true;
    (disk, vg, guard, cfg)
}

impl TestPool {
    /// Makes a pool of `kind` as `spec` says.
    pub fn make(kind: Kind, spec: Spec) -> TestPool {
        let tmp = temp_dir();
        let deps = deps();
        let error_if_no_space = !spec.queue_when_full;
        let mut guards: Vec<Box<dyn Any>> = Vec::new();
        let (pool, path, vg, data_file) = match kind {
            Kind::Loopback => {
                let mut cfg = small_config(tmp.path());
                cfg.data_size = Bytes::mib(spec.data_mib);
                cfg.features = PoolFeatures {
                    error_if_no_space,
                    ..spec.features
                };
                cfg.low_water_mark = spec.low_water_mark;
                let pool = Pool::create_loopback(&deps, &cfg).unwrap();
                (pool, cfg.dir.clone(), None, Some(cfg.dir.join("data")))
            }
            Kind::Lvm => {
                let (disk, vg, guard, mut cfg) = lvm_setup(tmp.path());
                guards.push(Box::new(guard));
                let disk_mib: u64 = run("blockdev", &["--getsize64", &disk])
                    .trim()
                    .parse::<u64>()
                    .unwrap()
                    / MIB;
                cfg.data_percent =
                    u8::try_from((spec.data_mib * 100 / disk_mib).clamp(1, 90)).unwrap();
                cfg.metadata_percent = 1;
                cfg.chunk_size = BlockSize::DEFAULT;
                cfg.error_when_full = error_if_no_space;
                // No dmeventd: it would extend the pool (by its profile)
                // while a test fills it, at a moment nothing here controls.
                cfg.monitor = false;
                let pool = Pool::create_lvm(&deps, &cfg).unwrap();
                (pool, cfg.store.clone(), Some(vg), None)
            }
            Kind::Adopted => {
                let (meta_file, data_file) = (tmp.path().join("meta"), tmp.path().join("data"));
                sparse_file(&meta_file, 16 * MIB);
                sparse_file(&data_file, spec.data_mib * MIB);
                let meta = LoopDevice::attach(&meta_file);
                let data = LoopDevice::attach(&data_file);
                let name = unique_name("pool");
                let mut features = Vec::new();
                let f = &spec.features;
                for (on, arg) in [
                    (f.skip_block_zeroing, "skip_block_zeroing"),
                    (f.ignore_discard, "ignore_discard"),
                    (f.no_discard_passdown, "no_discard_passdown"),
                    (error_if_no_space, "error_if_no_space"),
                ] {
                    if on {
                        features.push(arg);
                    }
                }
                let lwm = spec
                    .low_water_mark
                    .map_or(spec.data_mib * MIB / BLOCK / 10, |l| l.get());
                let table = format!(
                    "0 {} thin-pool {} {} {} {lwm} {} {}",
                    spec.data_mib * MIB / 512,
                    meta.as_str(),
                    data.as_str(),
                    BLOCK / 512,
                    features.len(),
                    features.join(" ")
                );
                // Loop devices go after the dm devices over them.
                guards.push(Box::new(data));
                guards.push(Box::new(meta));
                run("dmsetup", &["create", &name, "--table", table.trim_end()]);
                guards.push(Box::new(DmGuard(vec![name.clone()])));
                let store = tmp.path().join("adopted.db");
                let pool = Pool::adopt(&deps, &name, &store, false).unwrap();
                (pool, store, None, Some(data_file))
            }
        };
        guards.reverse();
        TestPool {
            pool: Some(pool),
            kind,
            deps,
            path,
            tmp,
            vg,
            data_file,
            _guards: guards,
        }
    }

    /// The pool's dm name.
    pub fn dm_name(&self) -> String {
        Pool::name(self).to_owned()
    }

    /// Opens the pool as `deps` would after a restart of thinbox.
    pub fn open(kind: Kind, deps: &Deps, path: &Path) -> Pool {
        match kind {
            Kind::Loopback => Pool::open_loopback(deps, path).unwrap(),
            Kind::Lvm => Pool::open_lvm(deps, path).unwrap(),
            Kind::Adopted => Pool::open_adopted(deps, path).unwrap(),
        }
    }

    /// Closes the pool (as a process exiting would) and opens it again.
    pub fn reopen(&mut self) -> &mut Pool {
        self.close();
        self.pool = Some(TestPool::open(self.kind, &self.deps, &self.path));
        self.pool.as_mut().unwrap()
    }

    /// Closes the pool, keeping what it is made of (for a child process to
    /// open it).
    pub fn close(&mut self) {
        drop(self.pool.take());
    }

    /// The data space as seen from outside thinbox: the data file's size,
    /// or the pool LV's size in `lvs`.
    pub fn data_bytes_outside(&self) -> u64 {
        match (&self.data_file, &self.vg) {
            (Some(f), _) => fs::metadata(f).unwrap().len(),
            (None, Some(vg)) => lv_size(vg),
            (None, None) => unreachable!("every kind has a witness"),
        }
    }

    /// Removes the pool and checks nothing of it is left (an adopted pool
    /// is released: thinbox does not remove what it did not make).
    pub fn finish(mut self) {
        let pool = match self.pool.take() {
            Some(p) => p,
            None => TestPool::open(self.kind, &self.deps, &self.path),
        };
        let name = pool.name().to_owned();
        match self.kind {
            Kind::Adopted => {
                pool.shutdown().unwrap();
                assert!(dm_exists(&name), "the adopted pool stays");
                assert!(
                    dm_names_with_prefix(&format!("{name}-")).is_empty(),
                    "its thin devices are gone"
                );
            }
            Kind::Loopback => {
                pool.destroy().unwrap();
                assert!(!dm_exists(&name));
                assert!(!self.path.exists(), "files and records removed");
                assert!(!loop_attached_to(self.tmp.path()));
            }
            Kind::Lvm => {
                pool.destroy().unwrap();
                assert!(!dm_exists(&name));
                let vg = self.vg.as_deref().unwrap();
                assert!(!try_run("vgs", &[vg]), "the VG is removed");
                assert!(!self.path.exists(), "store removed");
            }
        }
    }
}

impl Deref for TestPool {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        self.pool.as_ref().expect("the pool is open")
    }
}

impl DerefMut for TestPool {
    fn deref_mut(&mut self) -> &mut Pool {
        self.pool.as_mut().expect("the pool is open")
    }
}

/// Thin ids in the pool's metadata, read through a metadata snapshot with
/// thin_dump (an independent witness, not thinbox's own records).
pub fn kernel_thin_ids(pool: &str, meta_dev: &Path) -> Vec<u32> {
    run("dmsetup", &["message", pool, "0", "reserve_metadata_snap"]);
    let out = Command::new("thin_dump")
        .args(["--metadata-snap", meta_dev.to_str().unwrap()])
        .output()
        .expect("run thin_dump");
    run("dmsetup", &["message", pool, "0", "release_metadata_snap"]);
    assert!(
        out.status.success(),
        "thin_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = String::from_utf8_lossy(&out.stdout);
    let mut ids: Vec<u32> = xml
        .split("dev_id=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    ids
}

pub fn recorded_ids(p: &Pool) -> Vec<u32> {
    p.thins().unwrap().iter().map(|t| t.id.get()).collect()
}

pub fn dm_exists(name: &str) -> bool {
    try_run("dmsetup", &["info", name])
}

/// dm devices whose name starts with `prefix`.
pub fn dm_names_with_prefix(prefix: &str) -> Vec<String> {
    integration::fixtures::dm_names(prefix)
}

/// Whether any loop device's backing file lies under `dir` (or is `dir`).
pub fn loop_attached_to(dir: &Path) -> bool {
    fs::read_dir("/sys/block").unwrap().flatten().any(|e| {
        fs::read_to_string(e.path().join("loop/backing_file"))
            .is_ok_and(|b| Path::new(b.trim_end().trim_end_matches(" (deleted)")).starts_with(dir))
    })
}

pub fn write_at(dev: &Path, offset: u64, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

pub fn read_at(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = fs::File::open(dev).unwrap();
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// A device's size in sectors, from `blockdev`.
pub fn device_sectors(dev: &Path) -> u64 {
    run("blockdev", &["--getsz", dev.to_str().unwrap()])
        .trim()
        .parse()
        .unwrap()
}

/// `lvs` of one LV, read independently of thinbox: its size in bytes.
pub fn lv_size(vg: &str) -> u64 {
    let out = run(
        "lvs",
        &[
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_size",
            &format!("{vg}/pool"),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["report"][0]["lv"][0]["lv_size"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits (bounded) until `cond` holds: the kernel finishes deferred removal
/// and loop auto-clear in work queues after the last close.
pub fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{what} did not happen");
}

pub fn fs_bytes(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    s.blocks() * s.fragment_size()
}
