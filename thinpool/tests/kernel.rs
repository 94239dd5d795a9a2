//! Real-kernel tests for loopback pools: they run in the Debian-kernel VM
//! (dm-thin is not on the host). Small sizes: the guest's /tmp is a tmpfs in
//! 4 GiB of RAM, so data files are sparse and 512 MiB at most.
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use integration::fixtures::{run, temp_dir, try_run, unique_name, Mount};
use integration::harness::{self, KernelTest};
use integration::need::Need;
use thinpool::dm::{DmControl, DmInfo, RealDm};
use thinpool::fs::Filesystem;
use thinpool::loopdev::RealLoop;
use thinpool::lvm::{LvChange, LvExtend, LvRow, LvmControl, PvInfo, RealLvm, ThinPoolSpec, VgInfo};
use thinpool::metadata::ThinTools;
use thinpool::pool::{
    AutoextendPolicy, Deps, LoopbackConfig, LvmConfig, Monitor, Pool, WatchOptions,
};
use thinpool::status::{PoolMode, PoolStatus, ThinStatus};
use thinpool::store::ThinState;
use thinpool::table::{DevNum, PoolTable, TargetLine, ThinTable};
use thinpool::{Bytes, DataBlocks, ErrorKind, Sectors};

#[path = "common/cycle.rs"]
mod cycle;

const DM_THIN: &[Need] = &[Need::Root, Need::Loop, Need::DmThin];
const MIB: u64 = 1 << 20;
const CRASH_ENV: &str = "THINPOOL_CRASH_CHILD";
const NON_ROOT_ENV: &str = "THINPOOL_NON_ROOT_CHILD";
const LVM_CRASH_ENV: &str = "THINPOOL_LVM_CRASH_CHILD";
const LVM: &[Need] = &[Need::Root, Need::DmThin, Need::Lvm, Need::Disks(1)];

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(CRASH_ENV) {
        crash_child(&spec);
    }
    if let Ok(spec) = std::env::var(LVM_CRASH_ENV) {
        lvm_crash_child(&spec);
    }
    if let Ok(file) = std::env::var(NON_ROOT_ENV) {
        non_root_child(Path::new(&file));
    }
    harness::main(&[
        KernelTest::new(
            "non_root_caller_is_told_to_be_root",
            non_root_caller_is_told_to_be_root,
        )
        .needs(&[Need::Root, Need::Loop]),
        KernelTest::new("loopback_pool_lifecycle", loopback_pool_lifecycle).needs(DM_THIN),
        KernelTest::new(
            "loopback_pool_reactivates_from_files",
            loopback_pool_reactivates_from_files,
        )
        .needs(DM_THIN),
        KernelTest::new(
            "kernel_table_and_status_round_trip",
            kernel_table_and_status_round_trip,
        )
        .needs(DM_THIN),
        KernelTest::new("error_if_no_space_fails_fast", error_if_no_space_fails_fast)
            .needs(DM_THIN),
        KernelTest::new("usage_and_foreign_ids", usage_and_foreign_ids).needs(DM_THIN),
        KernelTest::new("autoextend_under_write_load", autoextend_under_write_load).needs(DM_THIN),
        KernelTest::new(
            "filesystems_mkfs_snapshot_resize",
            filesystems_mkfs_snapshot_resize,
        )
        .needs(DM_THIN),
        KernelTest::new("direct_lvm_pool_lifecycle", direct_lvm_pool_lifecycle).needs(LVM),
        KernelTest::new(
            "lvm_thin_ops_floor_and_enospc",
            lvm_thin_ops_floor_and_enospc,
        )
        .needs(LVM),
        KernelTest::new(
            "lvm_filesystems_mkfs_snapshot_resize",
            lvm_filesystems_mkfs_snapshot_resize,
        )
        .needs(LVM),
        KernelTest::new(
            "lvm_autoextend_under_write_load",
            lvm_autoextend_under_write_load,
        )
        .needs(LVM),
        KernelTest::new("sigkill_during_lvm_create", sigkill_during_lvm_create).needs(LVM),
        KernelTest::new("adopt_lvm_pool", adopt_lvm_pool).needs(LVM),
        KernelTest::new(
            "sigkill_during_thin_ops_on_lvm",
            sigkill_during_thin_ops_on_lvm,
        )
        .needs(LVM),
        KernelTest::new("adopt_existing_pool", adopt_existing_pool).needs(DM_THIN),
        KernelTest::new(
            "deferred_destroy_of_busy_pool",
            deferred_destroy_of_busy_pool,
        )
        .needs(DM_THIN),
        KernelTest::new(
            "free_space_floor_refuses_new_devices",
            free_space_floor_refuses_new_devices,
        )
        .needs(DM_THIN),
        KernelTest::new(
            "snapshot_cycle_sequences_work",
            snapshot_cycle_sequences_work,
        )
        .needs(DM_THIN),
        KernelTest::new("bad_input_leaves_nothing", bad_input_leaves_nothing).needs(DM_THIN),
        KernelTest::new("sigkill_during_create", sigkill_during_create).needs(DM_THIN),
        KernelTest::new("sigkill_during_snapshot", sigkill_during_snapshot).needs(DM_THIN),
        KernelTest::new("sigkill_during_delete", sigkill_during_delete).needs(DM_THIN),
        KernelTest::new("sigkill_during_resize", sigkill_during_resize).needs(DM_THIN),
    ])
}

fn deps() -> Deps {
    Deps::real().expect("open device-mapper control")
}

fn small_config(dir: &Path) -> LoopbackConfig {
    LoopbackConfig {
        data_size: Bytes::mib(512),
        metadata_size: Bytes::mib(16),
        max_thins: 100,
        ..LoopbackConfig::new(unique_name("pool"), dir.join("pool"))
    }
}

const THIN_SIZE: Sectors = Sectors::new(64 * MIB / 512);

/// Thin ids in the pool's metadata, read through a metadata snapshot with
/// thin_dump (an independent witness, not thinbox's own records).
fn kernel_thin_ids(pool: &str, meta_dev: &Path) -> Vec<u32> {
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

fn recorded_ids(p: &Pool) -> Vec<u32> {
    p.thins().unwrap().iter().map(|t| t.id.get()).collect()
}

fn dm_exists(name: &str) -> bool {
    try_run("dmsetup", &["info", name])
}

/// Whether any loop device's backing file lies under `dir` (or is `dir`).
fn loop_attached_to(dir: &Path) -> bool {
    fs::read_dir("/sys/block").unwrap().flatten().any(|e| {
        fs::read_to_string(e.path().join("loop/backing_file"))
            .is_ok_and(|b| Path::new(b.trim_end().trim_end_matches(" (deleted)")).starts_with(dir))
    })
}

fn write_at(dev: &Path, offset: u64, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

fn read_at(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = fs::File::open(dev).unwrap();
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

fn loopback_pool_lifecycle() {
    let tmp = temp_dir();
    let cfg = small_config(tmp.path());
    let deps = deps();
    let mut pool = Pool::create_loopback(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    assert!(dm_exists(&name));
    assert!(
        loop_attached_to(tmp.path()),
        "the helper sees our loop devices"
    );
    let u = pool.status().unwrap().usage().unwrap().clone();
    assert_eq!(u.total_data, DataBlocks::new(512 * MIB / (64 << 10)));
    assert_eq!(u.mode, PoolMode::ReadWrite);

    pool.create_thin("origin", THIN_SIZE).unwrap();
    let dev = pool.activate("origin").unwrap();
    assert_eq!(
        pool.activate("origin").unwrap(),
        dev,
        "activate is idempotent"
    );
    write_at(&dev, 0, b"before the snapshot");
    match pool.thin_status("origin").unwrap() {
        ThinStatus::Working { mapped, .. } => assert!(mapped >= Sectors::new(128), "{mapped:?}"),
        s => panic!("unexpected thin status {s:?}"),
    }
    // Snapshot while the origin is active: it must be resumed afterwards.
    pool.snapshot("origin", "snap").unwrap();
    let info = deps.dm.info(&format!("{name}-origin")).unwrap().unwrap();
    assert!(!info.suspended, "origin left suspended");
    write_at(&dev, 0, b"after the snapshot!");
    let snap = pool.activate("snap").unwrap();
    assert_eq!(read_at(&snap, 0, 19), b"before the snapshot");
    assert_eq!(read_at(&dev, 0, 19), b"after the snapshot!");

    // Busy devices are refused by delete, with a busy error.
    let holder = fs::File::open(&snap).unwrap();
    let err = pool.delete_thin("snap").unwrap_err();
    assert!(err.is_busy(), "{err}");
    drop(holder);
    pool.delete_thin("snap").unwrap();
    assert!(!dm_exists(&format!("{name}-snap")));
    pool.deactivate("origin", false).unwrap();
    pool.deactivate("origin", false).unwrap();
    let meta = pool.loops().unwrap().1.path.clone();
    assert_eq!(kernel_thin_ids(&name, &meta), vec![0]);
    assert_eq!(recorded_ids(&pool), vec![0]);

    // Re-opening an active pool is idempotent and clean.
    drop(pool);
    let again = Pool::open_loopback(&deps, &cfg.dir).unwrap();
    assert!(
        again.reconciliation().is_clean(),
        "{:?}",
        again.reconciliation()
    );
    drop(again);
    let pool = Pool::open_loopback(&deps, &cfg.dir).unwrap();
    pool.activate("origin").unwrap();

    let (data, meta) = (cfg.dir.join("data"), cfg.dir.join("metadata"));
    pool.destroy().unwrap();
    assert!(!dm_exists(&name));
    assert!(!dm_exists(&format!("{name}-origin")));
    assert!(!data.exists() && !meta.exists() && !cfg.dir.exists());
    assert!(!loop_attached_to(tmp.path()));
}

fn loopback_pool_reactivates_from_files() {
    let tmp = temp_dir();
    let cfg = small_config(tmp.path());
    let deps = deps();
    let mut pool = Pool::create_loopback(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    pool.create_thin("a", THIN_SIZE).unwrap();
    let dev = pool.activate("a").unwrap();
    write_at(&dev, 4096, b"survives a reboot");
    let (data_loop, meta_loop) = (
        pool.loops().unwrap().0.path.clone(),
        pool.loops().unwrap().1.path.clone(),
    );
    drop(pool);
    // "Reboot": the kernel forgets the devices, the files stay.
    run("dmsetup", &["remove", &format!("{name}-a")]);
    run("dmsetup", &["remove", &name]);
    run("losetup", &["-d", data_loop.to_str().unwrap()]);
    run("losetup", &["-d", meta_loop.to_str().unwrap()]);
    assert!(!dm_exists(&name));

    let pool = Pool::open_loopback(&deps, &cfg.dir).unwrap();
    assert!(pool.reconciliation().is_clean());
    assert!(
        pool.reconciliation().checked,
        "thin_check runs after an unclean stop"
    );
    assert_eq!(
        pool.status().unwrap().usage().unwrap().transaction_id.0,
        1,
        "transaction id kept in the metadata"
    );
    let dev = pool.activate("a").unwrap();
    assert_eq!(read_at(&dev, 4096, 17), b"survives a reboot");
    // Opening again changes nothing.
    let twice = Pool::open_loopback(&deps, &cfg.dir).unwrap();
    assert_eq!(twice.loops(), pool.loops());
    drop(twice);
    // A clean shutdown keeps files and records, and skips the check next time.
    pool.shutdown().unwrap();
    assert!(!dm_exists(&name));
    assert!(!loop_attached_to(tmp.path()));
    let pool = Pool::open_loopback(&deps, &cfg.dir).unwrap();
    assert!(!pool.reconciliation().checked);
    let dev = pool.activate("a").unwrap();
    assert_eq!(read_at(&dev, 4096, 17), b"survives a reboot");
    pool.destroy().unwrap();
}

fn usage_and_foreign_ids() {
    let tmp = temp_dir();
    let cfg = small_config(tmp.path());
    let deps = deps();
    let mut pool = Pool::create_loopback(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    pool.create_thin("o", THIN_SIZE).unwrap();
    let dev = pool.activate("o").unwrap();
    // 4 blocks of 64 KiB in the origin; the snapshot shares them, then the
    // origin overwrites one (copy-on-write: one exclusive block each).
    write_at(&dev, 0, &vec![1u8; 4 * 65536]);
    pool.snapshot("o", "s").unwrap();
    write_at(&dev, 0, &[2u8; 4096]);
    let u = pool.usage().unwrap();
    assert_eq!(u.len(), 2, "{u:?}");
    let (o, s) = (u[0], u[1]);
    assert_eq!(o.mapped, DataBlocks::new(4), "{u:?}");
    assert_eq!(s.mapped, DataBlocks::new(4), "{u:?}");
    assert_eq!(o.exclusive, DataBlocks::new(1), "{u:?}");
    assert_eq!(o.shared, DataBlocks::new(3), "{u:?}");
    // The snapshot is no longer held afterwards.
    assert_eq!(pool.status().unwrap().usage().unwrap().held_root, None);

    // Another tool adds a thin id: reported on open, removed on request.
    run("dmsetup", &["message", &name, "0", "create_thin 77"]);
    drop(pool);
    let mut pool = Pool::open_loopback(&deps, &cfg.dir).unwrap();
    assert_eq!(pool.reconciliation().unknown_ids.len(), 1);
    assert_eq!(pool.reconciliation().unknown_ids[0].get(), 77);
    assert_eq!(pool.remove_unknown().unwrap().len(), 1);
    let meta = pool.loops().unwrap().1.path.clone();
    assert_eq!(kernel_thin_ids(&name, &meta), vec![0, 1]);
    pool.destroy().unwrap();
}

fn kernel_table_and_status_round_trip() {
    let tmp = temp_dir();
    let mut cfg = small_config(tmp.path());
    cfg.features.skip_block_zeroing = true;
    cfg.features.no_discard_passdown = true;
    cfg.low_water_mark = Some(DataBlocks::new(77));
    let deps = deps();
    let mut pool = Pool::create_loopback(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    pool.create_thin("t", THIN_SIZE).unwrap();
    let dev = pool.activate("t").unwrap();
    write_at(&dev, 0, &[7u8; 4096]);

    // What dmsetup prints parses, and prints back the same.
    let table_text = run("dmsetup", &["table", &name]);
    let t: PoolTable = table_text.trim().parse().unwrap();
    assert_eq!(t.to_string(), table_text.trim());
    assert_eq!(&t, pool.table());
    let status_text = run("dmsetup", &["status", &name]);
    let line: TargetLine = status_text.trim().parse().unwrap();
    let s: PoolStatus = line.params.parse().unwrap();
    assert_eq!(s.to_string(), line.params);
    let u = s.usage().unwrap();
    assert!(u.used_data >= DataBlocks::new(1));
    assert!(
        u.metadata_low_watermark.is_some(),
        "6.1 prints the metadata low watermark"
    );

    let thin_table = run("dmsetup", &["table", &format!("{name}-t")]);
    let tt: ThinTable = thin_table.trim().parse().unwrap();
    assert_eq!(tt.to_string(), thin_table.trim());
    let pool_dev: DevNum = deps.dm.info(&name).unwrap().unwrap().devnum;
    assert_eq!(tt.pool, pool_dev.into());
    let thin_status = run("dmsetup", &["status", &format!("{name}-t")]);
    let line: TargetLine = thin_status.trim().parse().unwrap();
    let ts: ThinStatus = line.params.parse().unwrap();
    assert_eq!(ts.to_string(), line.params);
    assert_eq!(
        ts,
        ThinStatus::Working {
            mapped: Sectors::new(128),
            highest_mapped: Some(Sectors::new(127))
        }
    );
    pool.destroy().unwrap();
}

fn error_if_no_space_fails_fast() {
    let tmp = temp_dir();
    let mut cfg = small_config(tmp.path());
    cfg.data_size = Bytes::mib(8);
    let deps = deps();
    let mut pool = Pool::create_loopback(&deps, &cfg).unwrap();
    assert!(pool.table().features.error_if_no_space);
    pool.create_thin("big", THIN_SIZE).unwrap();
    let dev = pool.activate("big").unwrap();
    // 16 MiB of writes into 8 MiB of pool: must fail, not hang.
    let out = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", dev.display()),
            "bs=1M",
            "count=16",
            "oflag=direct",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "writes beyond the pool's space succeeded"
    );
    let st = pool.status().unwrap();
    assert_eq!(st.mode(), PoolMode::OutOfDataSpace, "{st}");
    let err = pool.create_thin("more", THIN_SIZE).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::OutOfDataSpace { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("out of data space"), "{err}");
    pool.destroy().unwrap();
}

fn autoextend_under_write_load() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = temp_dir();
    let mut cfg = small_config(tmp.path());
    cfg.data_size = Bytes::mib(64);
    // Queue (not fail) writes for the moment an extension takes.
    cfg.features.error_if_no_space = false;
    let deps = deps();
    let mut pool = Pool::create_loopback(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    pool.create_thin("w", Sectors::new(384 * MIB / 512))
        .unwrap();
    let dev = pool.activate("w").unwrap();
    let policy = AutoextendPolicy {
        threshold_percent: 50,
        extend_percent: 100,
        max_data: Bytes::mib(512),
        max_metadata: Bytes::mib(32),
    };
    let stop = AtomicBool::new(false);
    const WRITE_MIB: u64 = 256;
    let (extensions, written) = std::thread::scope(|s| {
        // The watcher only checks the pool after a dm event (or at start):
        // the 2 s bound on each wait is for noticing `stop`, not a poll.
        let watcher = s.spawn(|| {
            pool.watch(
                &policy,
                &stop,
                WatchOptions::on_events(std::time::Duration::from_secs(2)),
                &mut |_| {},
            )
        });
        let written = (|| -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new().write(true).open(&dev)?;
            for i in 0..WRITE_MIB {
                f.write_all(&vec![i as u8; MIB as usize])?;
                if i % 16 == 15 {
                    f.sync_data()?;
                }
            }
            f.sync_all()
        })();
        stop.store(true, Ordering::SeqCst);
        (watcher.join().unwrap(), written)
    });
    written.expect("the writer never sees an error");
    let extensions = extensions.unwrap();
    assert!(
        extensions >= 3,
        "64 -> 128 -> 256 -> 512 MiB, got {extensions} extensions"
    );
    let file = fs::metadata(cfg.dir.join("data")).unwrap().len();
    assert_eq!(file, 512 * MIB);
    let u = pool.status().unwrap().usage().unwrap().clone();
    assert_eq!(u.mode, PoolMode::ReadWrite);
    assert_eq!(u.total_data, DataBlocks::new(512 * MIB / 65536));
    assert!(u.used_data >= DataBlocks::new(WRITE_MIB * MIB / 65536));
    assert_eq!(
        run("dmsetup", &["table", &name]).trim(),
        pool.table().to_string(),
        "the kernel has the extended table"
    );
    for i in [0u64, 100, 255] {
        assert_eq!(read_at(&dev, i * MIB, 4096), vec![i as u8; 4096]);
    }
    // Metadata grows too: 16 MiB -> 32 MiB of 4 KiB blocks.
    let before = pool.status().unwrap().usage().unwrap().total_meta;
    pool.extend_metadata(Bytes::mib(32)).unwrap();
    let after = pool.status().unwrap().usage().unwrap().total_meta;
    assert!(after.get() >= before.get() * 2 - 8, "{before} -> {after}");
    // The new size survives a reopen.
    drop(pool);
    let pool = Pool::open_loopback(&deps, &cfg.dir).unwrap();
    assert_eq!(pool.table().length, Sectors::new(512 * MIB / 512));
    pool.destroy().unwrap();
}

fn fs_bytes(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    s.blocks() * s.fragment_size()
}

fn filesystems_mkfs_snapshot_resize() {
    let tmp = temp_dir();
    let cfg = small_config(tmp.path());
    let deps = deps();
    let pool = Pool::create_loopback(&deps, &cfg).unwrap();
    filesystems_on(pool, tmp.path());
}

fn lvm_filesystems_mkfs_snapshot_resize() {
    let tmp = temp_dir();
    let (_disk, _vg, _guard, mut cfg) = lvm_setup(tmp.path());
    cfg.data_percent = 10;
    let pool = Pool::create_lvm(&deps(), &cfg).unwrap();
    filesystems_on(pool, tmp.path());
}

/// ext4 and xfs on a pool's thin devices: mkfs once, snapshots of the
/// mounted origin inherit it (xfs with `nouuid`), resize grows the
/// filesystem; then the pool is destroyed.
fn filesystems_on(mut pool: Pool, tmp: &Path) {
    for (fs, size_mib) in [(Filesystem::Ext4, 64u64), (Filesystem::Xfs, 320)] {
        let base = format!("{fs}-base");
        let snap = format!("{fs}-snap");
        pool.create_thin(&base, Sectors::new(size_mib * MIB / 512))
            .unwrap();
        assert!(pool.mkfs(&base, fs).unwrap(), "{fs}: first mkfs formats");
        assert!(!pool.mkfs(&base, fs).unwrap(), "{fs}: mkfs happens once");
        let dev = pool.activate(&base).unwrap();
        let mnt = Mount::new(
            dev.to_str().unwrap(),
            &tmp.join(&base),
            Some(&fs.to_string()),
            pool.mount_options(&base).unwrap(),
        );
        fs::write(mnt.target.join("file"), "in the origin").unwrap();
        // Snapshot the mounted origin: the suspend freezes and flushes it.
        pool.snapshot(&base, &snap).unwrap();
        assert_eq!(pool.filesystem(&snap).unwrap(), Some(fs));
        assert!(
            !pool.mkfs(&snap, fs).unwrap(),
            "{fs}: snapshots inherit the filesystem"
        );
        let opts = pool.mount_options(&snap).unwrap();
        if fs == Filesystem::Xfs {
            assert_eq!(opts, "nouuid");
        }
        fs::write(mnt.target.join("file"), "changed").unwrap();
        let sdev = pool.activate(&snap).unwrap();
        {
            let smnt = Mount::new(
                sdev.to_str().unwrap(),
                &tmp.join(&snap),
                Some(&fs.to_string()),
                opts,
            );
            assert_eq!(
                fs::read_to_string(smnt.target.join("file")).unwrap(),
                "in the origin"
            );
        }
        // Grow the mounted origin and its filesystem.
        let before = fs_bytes(&mnt.target);
        pool.resize_thin_and_fs(
            &base,
            Sectors::new(2 * size_mib * MIB / 512),
            Some(&mnt.target),
        )
        .unwrap();
        let after = fs_bytes(&mnt.target);
        assert!(
            after > before + size_mib * MIB / 2,
            "{fs}: {before} -> {after}"
        );
        assert_eq!(
            fs::read_to_string(mnt.target.join("file")).unwrap(),
            "changed"
        );
        drop(mnt);
        pool.deactivate(&snap, false).unwrap();
        pool.delete_thin(&base).unwrap();
        // The snapshot keeps its filesystem after its origin is gone.
        assert_eq!(pool.filesystem(&snap).unwrap(), Some(fs));
    }
    pool.destroy().unwrap();
}

fn free_space_floor_refuses_new_devices() {
    let tmp = temp_dir();
    let mut cfg = small_config(tmp.path());
    cfg.data_size = Bytes::mib(64);
    let deps = deps();
    let mut pool = Pool::create_loopback(&deps, &cfg).unwrap();
    pool.set_free_space_floor(50).unwrap();
    pool.create_thin("fill", THIN_SIZE).unwrap();
    let dev = pool.activate("fill").unwrap();
    write_at(&dev, 0, &vec![9u8; 40 * MIB as usize]);
    let err = pool.create_thin("more", THIN_SIZE).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::BelowFreeSpaceFloor {
                floor_percent: 50,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("62% full") && msg.contains("extend"), "{msg}");
    assert!(
        pool.store().thin("more").unwrap().is_none(),
        "nothing recorded"
    );
    // The floor survives a reopen; lowering it lets the device through.
    drop(pool);
    let mut pool = Pool::open_loopback(&deps, &cfg.dir).unwrap();
    assert!(pool.create_thin("more", THIN_SIZE).is_err());
    pool.set_free_space_floor(10).unwrap();
    pool.create_thin("more", THIN_SIZE).unwrap();
    pool.destroy().unwrap();
}

fn bad_input_leaves_nothing() {
    let tmp = temp_dir();
    let deps = deps();
    let mut cfg = small_config(tmp.path());
    cfg.metadata_size = Bytes::kib(64);
    let err = Pool::create_loopback(&deps, &cfg).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::MetadataTooSmall { .. }),
        "{err}"
    );
    assert!(!cfg.dir.exists());
    let cfg = small_config(tmp.path());
    let pool = Pool::create_loopback(&deps, &cfg).unwrap();
    // Same dm name, other directory: refused, nothing made.
    let mut other = cfg.clone();
    other.dir = tmp.path().join("other");
    let err = Pool::create_loopback(&deps, &other).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NameTaken { .. }), "{err}");
    assert!(!other.dir.exists());
    pool.destroy().unwrap();
    assert!(!loop_attached_to(tmp.path()));
}

// ---- SIGKILL injection ----------------------------------------------------

/// Real dm control that SIGKILLs its own process at a matching call.
#[derive(Debug)]
struct KillAt {
    inner: RealDm,
    pattern: String,
    after: bool,
}

impl KillAt {
    fn around<T>(
        &self,
        desc: String,
        f: impl FnOnce() -> thinpool::Result<T>,
    ) -> thinpool::Result<T> {
        let hit = desc.starts_with(&self.pattern);
        if hit && !self.after {
            die();
        }
        let r = f();
        if hit && self.after && r.is_ok() {
            die();
        }
        r
    }
}

fn die() -> ! {
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL).unwrap();
    unreachable!("SIGKILL returned");
}

impl DmControl for KillAt {
    fn create(&self, name: &str) -> thinpool::Result<DmInfo> {
        self.around(format!("create {name}"), || self.inner.create(name))
    }
    fn load(&self, name: &str, table: &[TargetLine]) -> thinpool::Result<()> {
        self.around(format!("load {name}"), || self.inner.load(name, table))
    }
    fn suspend(&self, name: &str) -> thinpool::Result<()> {
        self.around(format!("suspend {name}"), || self.inner.suspend(name))
    }
    fn resume(&self, name: &str) -> thinpool::Result<()> {
        self.around(format!("resume {name}"), || self.inner.resume(name))
    }
    fn remove(&self, name: &str, deferred: bool) -> thinpool::Result<()> {
        self.around(format!("remove {name}"), || {
            self.inner.remove(name, deferred)
        })
    }
    fn message(&self, name: &str, msg: &str) -> thinpool::Result<Option<String>> {
        self.around(format!("message {msg}"), || self.inner.message(name, msg))
    }
    fn status(&self, name: &str) -> thinpool::Result<Vec<TargetLine>> {
        self.inner.status(name)
    }
    fn table(&self, name: &str) -> thinpool::Result<Vec<TargetLine>> {
        self.inner.table(name)
    }
    fn info(&self, name: &str) -> thinpool::Result<Option<DmInfo>> {
        self.inner.info(name)
    }
    fn list(&self) -> thinpool::Result<Vec<(String, DevNum)>> {
        self.inner.list()
    }
    fn target_types(&self) -> thinpool::Result<Vec<String>> {
        self.inner.target_types()
    }
    fn arm_events(&self) -> thinpool::Result<()> {
        self.inner.arm_events()
    }
    fn wait_events(&self, timeout: std::time::Duration) -> thinpool::Result<bool> {
        self.inner.wait_events(timeout)
    }
}

/// Child side: `DIR|OP|PATTERN|before|after`; opens the pool with a killing
/// dm, runs the operation and must die before returning.
fn crash_child(spec: &str) -> ! {
    let f: Vec<&str> = spec.split('|').collect();
    let deps = Deps {
        dm: Arc::new(KillAt {
            inner: RealDm::new().unwrap(),
            pattern: f[2].to_owned(),
            after: f[3] == "after",
        }),
        loops: Arc::new(RealLoop),
        tools: Arc::new(ThinTools),
        lvm: Arc::new(thinpool::lvm::RealLvm),
    };
    let mut pool = open_any(&deps, Path::new(f[0]));
    let r = match f[1] {
        "create" => pool.create_thin("new", THIN_SIZE).map(drop),
        "snapshot" => pool.snapshot("base", "new").map(drop),
        "delete" => pool.delete_thin("victim"),
        "resize" | "resize_inactive" => {
            let thin = if f[1] == "resize" { "base" } else { "victim" };
            let size = pool.store().thin(thin).unwrap().unwrap().size;
            pool.resize_thin(thin, Sectors::new(size.get() + THIN_SIZE.get()))
        }
        op => panic!("unknown op {op}"),
    };
    eprintln!("crash child survived: {r:?}");
    std::process::exit(3);
}

/// Opens a loopback pool (a directory) or a direct-lvm one (its `.db` store).
fn open_any(deps: &Deps, path: &Path) -> Pool {
    if path.extension().is_some_and(|e| e == "db") {
        Pool::open_lvm(deps, path).unwrap()
    } else {
        Pool::open_loopback(deps, path).unwrap()
    }
}

/// One crash case: runs OP in a child killed at PATTERN, then reopens and
/// checks that the kernel's thin ids (read with thin_dump) equal the records,
/// that nothing is half-made, and that the origin is not left suspended.
fn crash_case(dir: &Path, name: &str, op: &str, pattern: &str, after: bool) {
    let spec = format!(
        "{}|{op}|{pattern}|{}",
        dir.display(),
        if after { "after" } else { "before" }
    );
    let resized = if op == "resize" { "base" } else { "victim" };
    let size_before = open_any(&deps(), dir)
        .store()
        .thin(resized)
        .unwrap()
        .unwrap()
        .size;
    let status = Command::new(std::env::current_exe().unwrap())
        .env(CRASH_ENV, &spec)
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "{spec}: child was not killed: {status:?}"
    );

    let deps = deps();
    let mut pool = open_any(&deps, dir);
    let rec = pool.reconciliation().clone();
    assert_eq!(
        rec.completed.len() + rec.rolled_back.len(),
        1,
        "{spec}: {rec:?}"
    );
    let meta: PathBuf = pool.metadata_device().path.to_owned();
    let kernel = kernel_thin_ids(name, &meta);
    assert_eq!(
        kernel,
        recorded_ids(&pool),
        "{spec}: orphans or lost devices ({rec:?})"
    );
    assert!(pool
        .thins()
        .unwrap()
        .iter()
        .all(|t| t.state == ThinState::Ready));
    assert!(
        pool.store().thin("base").unwrap().is_some(),
        "{spec}: base lost"
    );
    let base = deps.dm.info(&format!("{name}-base")).unwrap().unwrap();
    assert!(!base.suspended, "{spec}: origin left suspended");
    let finished = after && pattern.starts_with("message set_transaction_id");
    match op {
        "delete" => assert!(pool.store().thin("victim").unwrap().is_none(), "{spec}"),
        "resize" | "resize_inactive" => {
            // A started resize is finished: record and live table agree on the new size.
            let want = Sectors::new(size_before.get() + THIN_SIZE.get());
            let rec_size = pool.store().thin(resized).unwrap().unwrap().size;
            assert_eq!(rec_size, want, "{spec}");
            let dev = pool.activate(resized).unwrap();
            let table = run("dmsetup", &["table", &format!("{name}-{resized}")]);
            let t: ThinTable = table.trim().parse().unwrap();
            assert_eq!(t.length, want, "{spec}: live table");
            let sectors: u64 = run("blockdev", &["--getsz", dev.to_str().unwrap()])
                .trim()
                .parse()
                .unwrap();
            assert_eq!(sectors, want.get(), "{spec}: device size");
            if op == "resize_inactive" {
                pool.deactivate(resized, false).unwrap();
            }
        }
        _ => assert_eq!(
            pool.store().thin("new").unwrap().is_some(),
            finished,
            "{spec}"
        ),
    }
    // Reset for the next case.
    if pool.store().thin("new").unwrap().is_some() {
        pool.delete_thin("new").unwrap();
    }
    if op == "delete" {
        pool.create_thin("victim", THIN_SIZE).unwrap();
    }
}

fn crash_suite(op: &str, points: &[(&str, bool)]) {
    let tmp = temp_dir();
    let cfg = small_config(tmp.path());
    let deps = deps();
    let mut pool = Pool::create_loopback(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    pool.create_thin("base", THIN_SIZE).unwrap();
    let dev = pool.activate("base").unwrap();
    write_at(&dev, 0, b"base data");
    pool.create_thin("victim", THIN_SIZE).unwrap();
    drop(pool);
    for (pattern, after) in points {
        crash_case(&cfg.dir, &name, op, pattern, *after);
    }
    let pool = Pool::open_loopback(&deps, &cfg.dir).unwrap();
    assert_eq!(read_at(&pool.activate("base").unwrap(), 0, 9), b"base data");
    pool.destroy().unwrap();
}

fn sigkill_during_create() {
    crash_suite(
        "create",
        &[
            ("message create_thin", false),
            ("message create_thin", true),
            ("message set_transaction_id", false),
            ("message set_transaction_id", true),
        ],
    );
}

fn sigkill_during_snapshot() {
    crash_suite(
        "snapshot",
        &[
            ("suspend", true),
            ("message create_snap", false),
            ("message create_snap", true),
            ("resume", false),
            ("message set_transaction_id", true),
        ],
    );
}

fn sigkill_during_resize() {
    crash_suite(
        "resize",
        &[
            ("load", false),
            ("load", true),
            ("suspend", true),
            ("resume", false),
            ("message set_transaction_id", false),
            ("message set_transaction_id", true),
        ],
    );
    crash_suite(
        "resize_inactive",
        &[
            ("message set_transaction_id", false),
            ("message set_transaction_id", true),
        ],
    );
}

/// The SIGKILL cases of every thin mutation on a direct-lvm pool (the
/// crash protocol is the same; the pool is opened with `lvchange -ay`).
fn sigkill_during_thin_ops_on_lvm() {
    let tmp = temp_dir();
    let (_disk, _vg, _guard, mut cfg) = lvm_setup(tmp.path());
    cfg.data_percent = 10;
    let deps = deps();
    let mut pool = Pool::create_lvm(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    pool.create_thin("base", THIN_SIZE).unwrap();
    let dev = pool.activate("base").unwrap();
    write_at(&dev, 0, b"base data");
    pool.create_thin("victim", THIN_SIZE).unwrap();
    drop(pool);
    for (op, pattern, after) in [
        ("create", "message create_thin", false),
        ("create", "message set_transaction_id", true),
        ("snapshot", "suspend", true),
        ("snapshot", "message create_snap", true),
        ("snapshot", "message set_transaction_id", true),
        ("delete", "message delete", true),
        ("delete", "message set_transaction_id", false),
        ("resize", "load", true),
        ("resize", "resume", false),
        ("resize", "message set_transaction_id", true),
    ] {
        crash_case(&cfg.store, &name, op, pattern, after);
    }
    let pool = Pool::open_lvm(&deps, &cfg.store).unwrap();
    assert_eq!(read_at(&pool.activate("base").unwrap(), 0, 9), b"base data");
    pool.destroy().unwrap();
}

fn sigkill_during_delete() {
    crash_suite(
        "delete",
        &[
            ("message delete", false),
            ("message delete", true),
            ("message set_transaction_id", true),
        ],
    );
}

// ---- direct-lvm and adoption ----------------------------------------------

/// Removes a test VG and wipes its disk on drop, whatever the test did.
struct VgGuard(String, String);

impl Drop for VgGuard {
    fn drop(&mut self) {
        try_run("vgremove", &["-f", &self.0]);
        try_run("pvremove", &["-ff", "-y", &self.1]);
        try_run("wipefs", &["-a", &self.1]);
        let _ = fs::remove_file(format!("/etc/lvm/profile/thinbox-{}-pool.profile", self.0));
    }
}

fn direct_lvm_pool_lifecycle() {
    let disk = std::env::var(integration::vm::DISKS_ENV).unwrap();
    let disk = disk.split_whitespace().next().unwrap().to_owned();
    let tmp = temp_dir();
    let vg = unique_name("vg").replace('-', "_");
    let _guard = VgGuard(vg.clone(), disk.clone());
    let deps = deps();
    let mut cfg = LvmConfig::new(
        vec![PathBuf::from(&disk)],
        &vg,
        "pool",
        tmp.path().join("lvm.db"),
    );
    cfg.data_percent = 50;
    cfg.metadata_percent = 2;

    // A device with a filesystem is refused, naming what was found.
    run("mkfs.ext4", &["-q", "-F", &disk]);
    let err = Pool::create_lvm(&deps, &cfg).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::DeviceHasSignature { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("ext4"), "{err}");
    assert!(!try_run("vgs", &[&vg]), "nothing made");
    assert!(!cfg.store.exists());

    cfg.force = true;
    let mut pool = Pool::create_lvm(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    assert_eq!(pool.table().block_size.bytes(), Bytes::kib(512));
    assert!(pool.table().features.skip_block_zeroing, "zeroing off");
    let profile =
        fs::read_to_string(cfg.profile_dir.join(format!("thinbox-{vg}-pool.profile"))).unwrap();
    assert!(
        profile.contains("thin_pool_autoextend_threshold=80"),
        "{profile}"
    );
    let lvs = run(
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "lv_profile",
            &format!("{vg}/pool"),
        ],
    );
    assert!(lvs.contains(&format!("thinbox-{vg}-pool")), "{lvs}");
    // Monitoring: lvm2 starts dmeventd where it is installed; thinbox reports
    // which monitor is active, as lvs (read independently) sees it.
    let lvs = run(
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "seg_monitor",
            &format!("{vg}/pool"),
        ],
    );
    let monitored = lvs.contains("\"monitored\"");
    assert_eq!(monitored, Path::new("/sbin/dmeventd").exists(), "{lvs}");
    let expected = if monitored {
        Monitor::Dmeventd
    } else {
        Monitor::Watch
    };
    assert_eq!(pool.monitor().unwrap(), expected);

    let size = Sectors::new(64 * MIB / 512);
    pool.create_thin("a", size).unwrap();
    let dev = pool.activate("a").unwrap();
    write_at(&dev, 0, b"on lvm");
    pool.snapshot("a", "s").unwrap();
    write_at(&dev, 0, b"changed");
    assert_eq!(read_at(&pool.activate("s").unwrap(), 0, 6), b"on lvm");
    pool.deactivate("s", false).unwrap();
    pool.delete_thin("s").unwrap();
    assert_eq!(kernel_thin_ids(&name, pool.metadata_device().path), vec![0]);

    // Autoextend through lvextend.
    let before = pool.table().length;
    let policy = AutoextendPolicy {
        threshold_percent: 0,
        extend_percent: 10,
        ..AutoextendPolicy::default()
    };
    let meta_before = pool.status().unwrap().usage().unwrap().total_meta;
    let grown = pool.maybe_extend(&policy).unwrap();
    assert!(grown.data.is_some());
    assert!(pool.table().length > before);
    // At a 0% threshold the metadata LV grows too (lvextend --poolmetadatasize).
    assert!(grown.metadata.is_some());
    let meta_after = pool.status().unwrap().usage().unwrap().total_meta;
    assert!(meta_after > meta_before, "{meta_before} -> {meta_after}");
    let table_text = run("dmsetup", &["table", &name]);
    assert_eq!(table_text.trim(), pool.table().to_string());

    // Shut down (lvchange -an) and open again: thin devices and data survive.
    pool.shutdown().unwrap();
    assert!(!dm_exists(&name));
    let pool = Pool::open_lvm(&deps, &cfg.store).unwrap();
    assert!(
        pool.reconciliation().is_clean(),
        "{:?}",
        pool.reconciliation()
    );
    assert_eq!(read_at(&pool.activate("a").unwrap(), 0, 7), b"changed");

    pool.destroy().unwrap();
    assert!(!try_run("vgs", &[&vg]));
    assert!(thinpool::lvm::signatures(Path::new(&disk))
        .unwrap()
        .is_empty());
    assert!(!cfg.store.exists());
    assert!(!cfg
        .profile_dir
        .join(format!("thinbox-{vg}-pool.profile"))
        .exists());
}

fn adopt_existing_pool() {
    use integration::fixtures::{sparse_file, LoopDevice};
    let tmp = temp_dir();
    let (meta_file, data_file) = (tmp.path().join("meta"), tmp.path().join("data"));
    sparse_file(&meta_file, 16 * MIB);
    sparse_file(&data_file, 256 * MIB);
    let meta = LoopDevice::attach(&meta_file);
    let data = LoopDevice::attach(&data_file);
    let pool_name = unique_name("pool");
    let linear = unique_name("linear");
    struct Remove(Vec<String>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for n in self.0.iter().rev() {
                try_run("dmsetup", &["remove", "--force", n]);
            }
        }
    }
    let table = format!(
        "0 {} thin-pool {} {} 128 0 0",
        256 * MIB / 512,
        meta.as_str(),
        data.as_str()
    );
    run("dmsetup", &["create", &pool_name, "--table", &table]);
    let mut guard = Remove(vec![pool_name.clone()]);
    run(
        "dmsetup",
        &[
            "create",
            &linear,
            "--table",
            &format!("0 2048 linear {} 0", data.as_str()),
        ],
    );
    guard.0.push(linear.clone());
    let deps = deps();

    let err = Pool::adopt(&deps, &linear, &tmp.path().join("x.db"), false).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NotAThinPool { .. }),
        "{err}"
    );
    assert!(!tmp.path().join("x.db").exists());

    // Someone else's pool (transaction id moved, a thin id in it) is refused...
    run("dmsetup", &["message", &pool_name, "0", "create_thin 5"]);
    run(
        "dmsetup",
        &["message", &pool_name, "0", "set_transaction_id 0 3"],
    );
    let err = Pool::adopt(&deps, &pool_name, &tmp.path().join("a.db"), false).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::OwnedElsewhere {
                transaction_id: 3,
                ..
            }
        ),
        "{err}"
    );
    // ...unless allowed; its thin ids are then reported as unknown.
    let mut pool = Pool::adopt(&deps, &pool_name, &tmp.path().join("a.db"), true).unwrap();
    assert_eq!(pool.reconciliation().unknown_ids.len(), 1);
    assert_eq!(pool.reconciliation().unknown_ids[0].get(), 5);
    pool.create_thin("mine", THIN_SIZE).unwrap();
    let dev = pool.activate("mine").unwrap();
    write_at(&dev, 0, b"adopted");
    assert_eq!(pool.status().unwrap().usage().unwrap().transaction_id.0, 4);
    // Adopted pools are released, not destroyed.
    assert!(matches!(
        Pool::open_adopted(&deps, &tmp.path().join("a.db"))
            .unwrap()
            .reconciliation()
            .unknown_ids
            .len(),
        1
    ));
    pool.shutdown().unwrap();
    assert!(dm_exists(&pool_name), "the adopted pool stays");
    assert!(!dm_exists(&format!("{pool_name}-mine")));
    let pool = Pool::open_adopted(&deps, &tmp.path().join("a.db")).unwrap();
    assert_eq!(read_at(&pool.activate("mine").unwrap(), 0, 7), b"adopted");
    let err = pool.destroy().unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unsupported { .. }), "{err}");
    run("dmsetup", &["remove", &format!("{pool_name}-mine")]);
    drop(guard);
}

/// Waits (bounded) until `cond` holds: the kernel finishes deferred removal
/// and loop auto-clear in work queues after the last close.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{what} did not happen");
}

fn deferred_destroy_of_busy_pool() {
    let tmp = temp_dir();
    let cfg = small_config(tmp.path());
    let deps = deps();
    let mut pool = Pool::create_loopback(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    pool.create_thin("busy", THIN_SIZE).unwrap();
    let dev = pool.activate("busy").unwrap();
    let holder = fs::File::open(&dev).unwrap();
    let err = Pool::open_loopback(&deps, &cfg.dir)
        .unwrap()
        .destroy()
        .unwrap_err();
    assert!(err.is_busy(), "{err}");
    assert!(dm_exists(&name), "a refused destroy changes nothing");
    pool.destroy_deferred().unwrap();
    assert!(!cfg.dir.exists(), "files and records go at once");
    assert!(
        dm_exists(&format!("{name}-busy")),
        "the open device stays while held"
    );
    drop(holder);
    eventually("deferred removal of the thin device and pool", || {
        !dm_exists(&format!("{name}-busy")) && !dm_exists(&name)
    });
    eventually("loop auto-clear", || !loop_attached_to(tmp.path()));
}

/// Child side: drops to nobody, then every kernel seam must say NotRoot.
fn non_root_child(file: &Path) -> ! {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    use thinpool::loopdev::LoopControl;
    setgroups(&[]).unwrap();
    setgid(Gid::from_raw(65534)).unwrap();
    setuid(Uid::from_raw(65534)).unwrap();
    let dm = RealDm::new().unwrap_err();
    assert_eq!(dm.kind(), &ErrorKind::NotRoot, "{dm}");
    assert!(dm.to_string().contains("run as root"), "{dm}");
    let lo = RealLoop.attach(file, true).unwrap_err();
    assert_eq!(lo.kind(), &ErrorKind::NotRoot, "{lo}");
    let lvm = RealLvm.vg("thinbox-test-vg").unwrap_err();
    assert_eq!(lvm.kind(), &ErrorKind::NotRoot, "{lvm}");
    let wipefs = RealLvm.signatures(file).unwrap_err();
    assert_eq!(wipefs.kind(), &ErrorKind::NotRoot, "{wipefs}");
    std::process::exit(0);
}

fn non_root_caller_is_told_to_be_root() {
    let tmp = temp_dir();
    let file = tmp.path().join("data");
    integration::fixtures::sparse_file(&file, MIB);
    let status = Command::new(std::env::current_exe().unwrap())
        .env(NON_ROOT_ENV, &file)
        .status()
        .unwrap();
    assert!(status.success(), "the non-root child failed: {status:?}");
    assert!(!loop_attached_to(tmp.path()));
}

/// The benchmark's two sequences work and leave nothing behind (so the
/// benchmark measures what it says).
fn snapshot_cycle_sequences_work() {
    let mut f = cycle::Fixture::new(&unique_name("pool"));
    let name = f.pool.name().to_owned();
    for _ in 0..3 {
        f.library_cycle();
        f.dmsetup_cycle();
    }
    let meta = f.pool.metadata_device().path.to_owned();
    assert_eq!(kernel_thin_ids(&name, &meta), vec![0]);
    assert_eq!(recorded_ids(&f.pool), vec![0]);
    assert!(!dm_exists(&format!("{name}-snap")));
    assert!(!dm_exists(&format!("{name}-cli-snap")));
    let info = f.pool.thins().unwrap();
    assert_eq!(info.len(), 1);
    f.pool.destroy().unwrap();
}

// ---- direct-lvm: thin operations, autoextend, crash during creation -------

/// The first spare disk, a fresh VG name, a guard that removes the VG and
/// wipes the disk whatever happens, and a config over them.
fn lvm_setup(tmp: &Path) -> (String, String, VgGuard, LvmConfig) {
    let disk = std::env::var(integration::vm::DISKS_ENV).unwrap();
    let disk = disk.split_whitespace().next().unwrap().to_owned();
    let vg = unique_name("vg").replace('-', "_");
    let guard = VgGuard(vg.clone(), disk.clone());
    let mut cfg = LvmConfig::new(vec![PathBuf::from(&disk)], &vg, "pool", tmp.join("lvm.db"));
    cfg.force = true;
    (disk, vg, guard, cfg)
}

/// `lvs` of one LV, read independently of thinbox: (size in bytes, row).
fn lv_size(vg: &str) -> u64 {
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

fn lvm_thin_ops_floor_and_enospc() {
    let tmp = temp_dir();
    let (_disk, vg, _guard, mut cfg) = lvm_setup(tmp.path());
    // 1% of an 8 GiB disk: about 80 MiB of data in 64 KiB chunks.
    cfg.data_percent = 1;
    cfg.metadata_percent = 1;
    cfg.chunk_size = thinpool::BlockSize::DEFAULT;
    // No dmeventd: it would extend the pool (by its profile) while the test
    // fills it, at a moment nothing here controls.
    cfg.monitor = false;
    let deps = deps();
    let mut pool = Pool::create_lvm(&deps, &cfg).unwrap();
    let name = pool.name().to_owned();
    assert_eq!(pool.monitor().unwrap(), Monitor::Watch);
    assert!(pool.table().features.error_if_no_space, "--errorwhenfull y");
    let lvs = run(
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "lv_when_full",
            &format!("{vg}/pool"),
        ],
    );
    assert!(lvs.contains("\"error\""), "{lvs}");
    let total = pool.status().unwrap().usage().unwrap().total_data;
    assert_eq!(total.get() * 65536, lv_size(&vg), "status agrees with lvs");
    // The table and status lvm2 loaded parse, and print back the same.
    let table_text = run("dmsetup", &["table", &name]);
    let t: PoolTable = table_text.trim().parse().unwrap();
    assert_eq!(t.to_string(), table_text.trim());
    assert_eq!(&t, pool.table());
    let status_text = run("dmsetup", &["status", &name]);
    let line: TargetLine = status_text.trim().parse().unwrap();
    let st: PoolStatus = line.params.parse().unwrap();
    assert_eq!(st.to_string(), line.params);
    // The VG name is taken now: refused, nothing made, nothing of ours touched.
    let mut other = cfg.clone();
    other.store = tmp.path().join("other.db");
    let err = Pool::create_lvm(&deps, &other).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NameTaken { .. }), "{err}");
    assert!(!other.store.exists());
    assert!(dm_exists(&name));

    // Thin create, activate, status, usage, resize, snapshot, delete.
    pool.create_thin("a", THIN_SIZE).unwrap();
    let dev = pool.activate("a").unwrap();
    write_at(&dev, 0, &vec![1u8; 4 * 65536]);
    match pool.thin_status("a").unwrap() {
        ThinStatus::Working { mapped, .. } => assert_eq!(mapped, Sectors::new(4 * 128)),
        s => panic!("unexpected thin status {s:?}"),
    }
    pool.snapshot("a", "s").unwrap();
    write_at(&dev, 0, &[2u8; 4096]);
    let u = pool.usage().unwrap();
    assert_eq!(u.len(), 2, "{u:?}");
    assert_eq!(u[0].exclusive, DataBlocks::new(1), "{u:?}");
    assert_eq!(u[0].shared, DataBlocks::new(3), "{u:?}");
    let bigger = Sectors::new(THIN_SIZE.get() * 2);
    pool.resize_thin("a", bigger).unwrap();
    let sectors: u64 = run("blockdev", &["--getsz", dev.to_str().unwrap()])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(sectors, bigger.get());
    assert_eq!(read_at(&dev, 4096, 4), vec![1u8; 4], "data kept");
    pool.deactivate("a", false).unwrap();
    pool.delete_thin("s").unwrap();
    assert_eq!(kernel_thin_ids(&name, pool.metadata_device().path), vec![0]);

    // The free-space floor: 60% used with half to be kept free is refused.
    pool.set_free_space_floor(50).unwrap();
    let dev = pool.activate("a").unwrap();
    let fill = (total.get() * 65536 * 6 / 10) as usize;
    write_at(&dev, 0, &vec![3u8; fill]);
    let err = pool.create_thin("more", THIN_SIZE).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::BelowFreeSpaceFloor {
                floor_percent: 50,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("extend"), "{err}");
    pool.set_free_space_floor(0).unwrap();

    // Out of space with --errorwhenfull y: writes fail fast, reported as such.
    let out = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", dev.display()),
            "bs=1M",
            &format!("count={}", THIN_SIZE.get() * 2 * 512 / MIB),
            "oflag=direct",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "writes beyond the pool's space succeeded"
    );
    let st = pool.status().unwrap();
    assert_eq!(st.mode(), PoolMode::OutOfDataSpace, "{st}");
    let err = pool.create_thin("more", THIN_SIZE).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::OutOfDataSpace { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("out of data space"), "{err}");
    pool.destroy().unwrap();
    assert!(!try_run("vgs", &[&vg]));
}

fn lvm_autoextend_under_write_load() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = temp_dir();
    let (_disk, vg, _guard, mut cfg) = lvm_setup(tmp.path());
    cfg.data_percent = 1;
    cfg.metadata_percent = 1;
    cfg.chunk_size = thinpool::BlockSize::DEFAULT;
    // Queue (not fail) writes for the moment an extension takes, and leave
    // the monitoring to thinbox's watch loop.
    cfg.error_when_full = false;
    cfg.monitor = false;
    let deps = deps();
    let mut pool = Pool::create_lvm(&deps, &cfg).unwrap();
    assert_eq!(pool.monitor().unwrap(), Monitor::Watch);
    let before = lv_size(&vg);
    pool.create_thin("w", Sectors::new(384 * MIB / 512))
        .unwrap();
    let dev = pool.activate("w").unwrap();
    let policy = AutoextendPolicy {
        threshold_percent: 50,
        extend_percent: 100,
        max_data: Bytes::mib(1024),
        max_metadata: Bytes::mib(128),
    };
    let stop = AtomicBool::new(false);
    const WRITE_MIB: u64 = 256;
    let (extensions, written) = std::thread::scope(|s| {
        // The watcher checks the pool after a dm event (or at start); the
        // 2 s bound on each wait is for noticing `stop`, not a poll.
        let watcher = s.spawn(|| {
            pool.watch(
                &policy,
                &stop,
                WatchOptions::on_events(std::time::Duration::from_secs(2)),
                &mut |_| {},
            )
        });
        let written = (|| -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new().write(true).open(&dev)?;
            for i in 0..WRITE_MIB {
                f.write_all(&vec![i as u8; MIB as usize])?;
                if i % 16 == 15 {
                    f.sync_data()?;
                }
            }
            f.sync_all()
        })();
        stop.store(true, Ordering::SeqCst);
        (watcher.join().unwrap(), written)
    });
    written.expect("the writer never sees an error");
    let extensions = extensions.unwrap();
    assert!(extensions >= 1, "no extension");
    let after = lv_size(&vg);
    assert!(
        after >= WRITE_MIB * MIB && after > before,
        "the pool LV grew: {before} -> {after}"
    );
    let u = pool.status().unwrap().usage().unwrap().clone();
    assert_eq!(u.mode, PoolMode::ReadWrite);
    assert_eq!(u.total_data.get() * 65536, after, "kernel and lvs agree");
    for i in [0u64, 100, 255] {
        assert_eq!(read_at(&dev, i * MIB, 4096), vec![i as u8; 4096]);
    }
    pool.destroy().unwrap();
}

/// lvm2 that SIGKILLs its own process at a matching command (description
/// `pvcreate`, `vgcreate`, `lvcreate`, `lvchange --metadataprofile`, ...).
#[derive(Debug)]
struct KillLvm {
    inner: RealLvm,
    pattern: String,
    after: bool,
}

impl KillLvm {
    fn around<T>(
        &self,
        desc: &str,
        f: impl FnOnce() -> thinpool::Result<T>,
    ) -> thinpool::Result<T> {
        let hit = desc.starts_with(&self.pattern);
        if hit && !self.after {
            die();
        }
        let r = f();
        if hit && self.after && r.is_ok() {
            die();
        }
        r
    }
}

impl LvmControl for KillLvm {
    fn signatures(&self, dev: &Path) -> thinpool::Result<Vec<String>> {
        self.inner.signatures(dev)
    }
    fn wipe(&self, dev: &Path) -> thinpool::Result<()> {
        self.around("wipefs", || self.inner.wipe(dev))
    }
    fn pvcreate(&self, devs: &[PathBuf]) -> thinpool::Result<()> {
        self.around("pvcreate", || self.inner.pvcreate(devs))
    }
    fn pvremove(&self, devs: &[PathBuf]) -> thinpool::Result<()> {
        self.around("pvremove", || self.inner.pvremove(devs))
    }
    fn pvs(&self) -> thinpool::Result<Vec<PvInfo>> {
        self.inner.pvs()
    }
    fn vgcreate(&self, vg: &str, devs: &[PathBuf]) -> thinpool::Result<()> {
        self.around("vgcreate", || self.inner.vgcreate(vg, devs))
    }
    fn vgremove(&self, vg: &str) -> thinpool::Result<()> {
        self.around("vgremove", || self.inner.vgremove(vg))
    }
    fn vg(&self, vg: &str) -> thinpool::Result<Option<VgInfo>> {
        self.inner.vg(vg)
    }
    fn create_thin_pool(&self, spec: &ThinPoolSpec) -> thinpool::Result<()> {
        self.around("lvcreate", || self.inner.create_thin_pool(spec))
    }
    fn lvs(&self, vg: &str) -> thinpool::Result<Vec<LvRow>> {
        self.inner.lvs(vg)
    }
    fn lvchange(&self, lv: &str, change: &LvChange) -> thinpool::Result<()> {
        let desc = format!("lvchange {}", change.args().join(" "));
        self.around(&desc, || self.inner.lvchange(lv, change))
    }
    fn lvextend(&self, lv: &str, extend: LvExtend) -> thinpool::Result<()> {
        self.around("lvextend", || self.inner.lvextend(lv, extend))
    }
    fn lvremove(&self, lv: &str) -> thinpool::Result<()> {
        self.around("lvremove", || self.inner.lvremove(lv))
    }
}

/// Child side: `DISK|VG|STORE|PROFILE_DIR|PATTERN|before|after`; creates the
/// pool with a killing lvm2 and must die before returning.
fn lvm_crash_child(spec: &str) -> ! {
    let f: Vec<&str> = spec.split('|').collect();
    let deps = Deps {
        lvm: Arc::new(KillLvm {
            inner: RealLvm,
            pattern: f[4].to_owned(),
            after: f[5] == "after",
        }),
        ..deps()
    };
    let mut cfg = LvmConfig::new(vec![PathBuf::from(f[0])], f[1], "pool", f[2]);
    cfg.profile_dir = PathBuf::from(f[3]);
    cfg.force = true;
    cfg.data_percent = 10;
    let r = Pool::create_lvm(&deps, &cfg).map(drop);
    eprintln!("lvm crash child survived: {r:?}");
    std::process::exit(3);
}

/// Nothing of the pool is left: no VG, no PV label on the disk, no dm
/// device of the VG, no profile, no store.
fn assert_no_lvm_leftovers(disk: &str, vg: &str, cfg: &LvmConfig, what: &str) {
    assert!(!try_run("vgs", &[vg]), "{what}: VG left");
    let pvs = run("pvs", &["--reportformat", "json", "-o", "pv_name"]);
    assert!(!pvs.contains(disk), "{what}: PV left: {pvs}");
    let sigs = thinpool::lvm::signatures(Path::new(disk)).unwrap();
    assert!(!sigs.iter().any(|s| s == "LVM2_member"), "{what}: {sigs:?}");
    let dm = run("dmsetup", &["ls"]);
    assert!(!dm.contains(vg), "{what}: dm devices left: {dm}");
    assert!(!cfg.store.exists(), "{what}: store left");
    let profile = cfg.profile_dir.join(format!("thinbox-{vg}-pool.profile"));
    assert!(!profile.exists(), "{what}: profile left");
}

fn sigkill_during_lvm_create() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = temp_dir();
    let (disk, vg, _guard, mut cfg) = lvm_setup(tmp.path());
    cfg.data_percent = 10;
    let deps = deps();
    // (pattern, after, whether a reopen finishes the creation)
    let points = [
        ("wipefs", true, false),
        ("pvcreate", true, false),
        ("vgcreate", true, false),
        ("lvcreate", false, false),
        ("lvcreate", true, false),
        ("lvchange --metadataprofile", false, false),
        ("lvchange --metadataprofile", true, false),
        ("lvchange --monitor", true, false),
        ("lvchange -ay", false, true),
    ];
    for (i, (pattern, after, forward)) in points.into_iter().enumerate() {
        let what = format!("{pattern} {}", if after { "after" } else { "before" });
        let spec = format!(
            "{disk}|{vg}|{}|{}|{pattern}|{}",
            cfg.store.display(),
            cfg.profile_dir.display(),
            if after { "after" } else { "before" }
        );
        let status = Command::new(std::env::current_exe().unwrap())
            .env(LVM_CRASH_ENV, &spec)
            .status()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{what}: child was not killed: {status:?}"
        );
        if forward {
            let pool = Pool::open_lvm(&deps, &cfg.store).unwrap();
            assert!(pool.reconciliation().is_clean(), "{what}");
            pool.destroy().unwrap();
        } else if i % 2 == 0 {
            // Retry by opening: the creation is rolled back.
            let err = Pool::open_lvm(&deps, &cfg.store).unwrap_err();
            assert!(
                matches!(err.kind(), ErrorKind::CreationRolledBack { .. }),
                "{what}: {err}"
            );
            assert_no_lvm_leftovers(&disk, &vg, &cfg, &what);
        } else {
            // Retry by creating again: rolled back first, then made anew.
            let mut pool = Pool::create_lvm(&deps, &cfg).unwrap();
            pool.create_thin("t", THIN_SIZE).unwrap();
            pool.destroy().unwrap();
        }
        assert_no_lvm_leftovers(&disk, &vg, &cfg, &what);
    }
}

/// A thin-pool LV someone else made with lvcreate: adopted by its LVM name
/// (a linear LV and a missing LV are refused), used, released and reopened.
fn adopt_lvm_pool() {
    let tmp = temp_dir();
    let (disk, vg, _guard, _) = lvm_setup(tmp.path());
    run("pvcreate", &["-y", &disk]);
    run("vgcreate", &[&vg, &disk]);
    run("lvcreate", &["-y", "-n", "lin", "-L", "16m", &vg]);
    run(
        "lvcreate",
        &["-y", "--type", "thin-pool", "-n", "pool", "-L", "256m", &vg],
    );
    let deps = deps();
    let x = tmp.path().join("x.db");
    let err = Pool::adopt_lvm(&deps, &vg, "lin", &x, false).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NotAThinPool { .. }),
        "{err}"
    );
    let err = Pool::adopt_lvm(&deps, &vg, "nope", &x, false).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!x.exists());

    let store = tmp.path().join("a.db");
    let mut pool = Pool::adopt_lvm(&deps, &vg, "pool", &store, false).unwrap();
    assert_eq!(pool.name(), format!("{vg}-pool"));
    assert_eq!(
        pool.monitor().unwrap(),
        Monitor::Watch,
        "adopted: thinbox watches"
    );
    pool.create_thin("mine", THIN_SIZE).unwrap();
    let dev = pool.activate("mine").unwrap();
    write_at(&dev, 0, b"adopted lvm");
    pool.snapshot("mine", "snap").unwrap();
    pool.shutdown().unwrap();
    assert!(dm_exists(&format!("{vg}-pool")), "the adopted pool stays");
    assert!(!dm_exists(&format!("{vg}-pool-mine")));

    let pool = Pool::open_adopted(&deps, &store).unwrap();
    assert!(
        pool.reconciliation().is_clean(),
        "{:?}",
        pool.reconciliation()
    );
    assert_eq!(
        kernel_thin_ids(pool.name(), pool.metadata_device().path),
        vec![0, 1]
    );
    let err = pool.destroy().unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unsupported { .. }), "{err}");
    let mut pool = Pool::open_adopted(&deps, &store).unwrap();
    assert_eq!(
        read_at(&pool.activate("snap").unwrap(), 0, 11),
        b"adopted lvm"
    );
    pool.delete_thin("snap").unwrap();
    pool.delete_thin("mine").unwrap();
    pool.shutdown().unwrap();
}
