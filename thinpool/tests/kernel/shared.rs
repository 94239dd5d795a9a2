//! One body per behaviour, run against every pool kind the factory makes
//! (see `support::TestPool`), the way the snapshotter's conformance suite
//! runs one body per backend.

use std::fs;
use std::process::Command;

use integration::fixtures::{run, Mount};
use thinpool::fs::Filesystem;
use thinpool::pool::{AutoextendPolicy, Monitor, WatchOptions};
use thinpool::status::{PoolMode, PoolStatus, ThinStatus};
use thinpool::table::{DevNum, PoolFeatures, PoolTable, TargetLine, ThinTable};
use thinpool::{Bytes, DataBlocks, ErrorKind, Sectors};

use crate::support::*;

/// Thin devices and snapshots: create, activate (idempotent), copy-on-write
/// seen through the devices and in `usage`, busy delete refused, resize,
/// deactivate (idempotent), delete; the kernel's thin ids (thin_dump) match
/// the records; a thin id another tool adds is reported on open and removed
/// on request.
pub fn thin_ops_and_usage(kind: Kind) {
    let mut tp = TestPool::make(kind, Spec::default());
    let name = tp.dm_name();
    tp.create_thin("o", THIN_SIZE).unwrap();
    let dev = tp.activate("o").unwrap();
    assert_eq!(tp.activate("o").unwrap(), dev, "activate is idempotent");
    // 4 blocks of 64 KiB in the origin; the snapshot shares them, then the
    // origin overwrites one (copy-on-write: one exclusive block each).
    write_at(&dev, 0, &vec![1u8; 4 * BLOCK as usize]);
    match tp.thin_status("o").unwrap() {
        ThinStatus::Working { mapped, .. } => {
            assert_eq!(mapped, Sectors::new(4 * BLOCK / 512))
        }
        s => panic!("unexpected thin status {s:?}"),
    }
    // Snapshot while the origin is active: it must be resumed afterwards.
    tp.snapshot("o", "s").unwrap();
    let info = tp.deps.dm.info(&format!("{name}-o")).unwrap().unwrap();
    assert!(!info.suspended, "origin left suspended");
    write_at(&dev, 0, &[2u8; 4096]);
    let snap = tp.activate("s").unwrap();
    assert_eq!(read_at(&snap, 0, 4096), vec![1u8; 4096]);
    assert_eq!(read_at(&dev, 0, 4096), vec![2u8; 4096]);
    let u = tp.usage().unwrap();
    assert_eq!(u.len(), 2, "{u:?}");
    let (o, s) = (u[0], u[1]);
    assert_eq!(o.mapped, DataBlocks::new(4), "{u:?}");
    assert_eq!(s.mapped, DataBlocks::new(4), "{u:?}");
    assert_eq!(o.exclusive, DataBlocks::new(1), "{u:?}");
    assert_eq!(o.shared, DataBlocks::new(3), "{u:?}");
    // The metadata snapshot is no longer held afterwards.
    assert_eq!(tp.status().unwrap().usage().unwrap().held_root, None);

    // Busy devices are refused by delete, with a busy error.
    let holder = fs::File::open(&snap).unwrap();
    let err = tp.delete_thin("s").unwrap_err();
    assert!(err.is_busy(), "{err}");
    drop(holder);

    // Resize: the live device grows, its data stays.
    let bigger = Sectors::new(THIN_SIZE.get() * 2);
    tp.resize_thin("o", bigger).unwrap();
    assert_eq!(device_sectors(&dev), bigger.get());
    assert_eq!(read_at(&dev, 4096, 4), vec![1u8; 4], "data kept");

    tp.deactivate("o", false).unwrap();
    tp.deactivate("o", false).unwrap();
    tp.delete_thin("s").unwrap();
    assert!(!dm_exists(&format!("{name}-s")));
    assert!(!dm_exists(&format!("{name}-o")));
    let meta = tp.metadata_device().path.to_owned();
    assert_eq!(kernel_thin_ids(&name, &meta), vec![0]);
    assert_eq!(recorded_ids(&tp), vec![0]);

    // Another tool adds a thin id without a transaction id of its own: an
    // open of the active pool trusts the records (an adopted pool's always
    // compares), a rescan reports it, and it is removed on request.
    run("dmsetup", &["message", &name, "0", "create_thin 77"]);
    let pool = tp.reopen();
    pool.rescan().unwrap();
    assert_eq!(pool.reconciliation().unknown_ids.len(), 1);
    assert_eq!(pool.reconciliation().unknown_ids[0].get(), 77);
    assert_eq!(pool.remove_unknown().unwrap().len(), 1);
    assert_eq!(kernel_thin_ids(&name, &meta), vec![0]);
    let dev = tp.activate("o").unwrap();
    assert_eq!(
        read_at(&dev, 0, 4096),
        vec![2u8; 4096],
        "data survives a reopen"
    );
    tp.finish();
}

/// The table and status lines the kernel prints (for the pool and a thin
/// device) parse and print back the same, agree with thinbox's view, and
/// the data space agrees with the outside (data file, `lvs`).
pub fn table_and_status_round_trip(kind: Kind) {
    let mut tp = TestPool::make(
        kind,
        Spec {
            features: PoolFeatures {
                skip_block_zeroing: true,
                no_discard_passdown: true,
                ..PoolFeatures::default()
            },
            low_water_mark: Some(DataBlocks::new(77)),
            ..Spec::default()
        },
    );
    let name = tp.dm_name();
    tp.create_thin("t", THIN_SIZE).unwrap();
    let dev = tp.activate("t").unwrap();
    write_at(&dev, 0, &[7u8; 4096]);

    let table_text = run("dmsetup", &["table", &name]);
    let t: PoolTable = table_text.trim().parse().unwrap();
    assert_eq!(t.to_string(), table_text.trim());
    assert_eq!(&t, tp.table());
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
    assert_eq!(
        u.total_data.get() * BLOCK,
        tp.data_bytes_outside(),
        "the kernel and the outside agree on the data space"
    );

    let thin_table = run("dmsetup", &["table", &format!("{name}-t")]);
    let tt: ThinTable = thin_table.trim().parse().unwrap();
    assert_eq!(tt.to_string(), thin_table.trim());
    let pool_dev: DevNum = tp.deps.dm.info(&name).unwrap().unwrap().devnum;
    assert_eq!(tt.pool, pool_dev.into());
    let thin_status = run("dmsetup", &["status", &format!("{name}-t")]);
    let line: TargetLine = thin_status.trim().parse().unwrap();
    let ts: ThinStatus = line.params.parse().unwrap();
    assert_eq!(ts.to_string(), line.params);
    assert_eq!(
        ts,
        ThinStatus::Working {
            mapped: Sectors::new(BLOCK / 512),
            highest_mapped: Some(Sectors::new(BLOCK / 512 - 1))
        }
    );
    tp.finish();
}

/// The free-space floor refuses new devices (naming how full the pool is
/// and what to do), survives a reopen and can be lowered; a full pool with
/// `error_if_no_space` fails writes at once and says it is out of space.
pub fn floor_and_enospc(kind: Kind) {
    let mut tp = TestPool::make(kind, Spec::mib(64));
    assert!(tp.table().features.error_if_no_space);
    let total = tp.status().unwrap().usage().unwrap().total_data;
    let thin = Sectors::new(2 * total.get() * BLOCK / 512);
    tp.set_free_space_floor(50).unwrap();
    tp.create_thin("fill", thin).unwrap();
    let dev = tp.activate("fill").unwrap();
    write_at(&dev, 0, &vec![9u8; (total.get() * BLOCK * 6 / 10) as usize]);
    let err = tp.create_thin("more", THIN_SIZE).unwrap_err();
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
    let u = tp.status().unwrap().usage().unwrap().clone();
    let full = u.used_data.get() * 100 / u.total_data.get();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{full}% full")) && msg.contains("extend"),
        "{msg}"
    );
    assert!(
        tp.store().thin("more").unwrap().is_none(),
        "nothing recorded"
    );
    // The floor survives a reopen; lowering it lets the device through.
    tp.reopen();
    assert!(tp.create_thin("more", THIN_SIZE).is_err());
    tp.set_free_space_floor(0).unwrap();
    tp.create_thin("more", THIN_SIZE).unwrap();

    // Twice the pool's space written: the writes fail, they do not hang.
    let dev = tp.activate("fill").unwrap();
    let out = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", dev.display()),
            "bs=1M",
            &format!("count={}", thin.get() * 512 / MIB),
            "oflag=direct",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "writes beyond the pool's space succeeded"
    );
    let st = tp.status().unwrap();
    assert_eq!(st.mode(), PoolMode::OutOfDataSpace, "{st}");
    let err = tp.create_thin("more2", THIN_SIZE).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::OutOfDataSpace { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("out of data space"), "{err}");
    tp.finish();
}

/// A writer fills a small pool past its threshold while `Pool::watch`
/// sleeps on dm events; the pool grows before the writer sees an error, the
/// outside (data file, `lvs`) agrees with the kernel, the data reads back
/// and the new size survives a reopen.
pub fn autoextend_under_write_load(kind: Kind) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut tp = TestPool::make(
        kind,
        Spec {
            // Queue (not fail) writes for the moment an extension takes.
            queue_when_full: true,
            ..Spec::mib(64)
        },
    );
    let name = tp.dm_name();
    assert_eq!(tp.monitor().unwrap(), Monitor::Watch);
    let before = tp.data_bytes_outside();
    tp.create_thin("w", Sectors::new(384 * MIB / 512)).unwrap();
    let dev = tp.activate("w").unwrap();
    let policy = AutoextendPolicy {
        threshold_percent: 50,
        extend_percent: 100,
        max_data: Bytes::mib(512),
        max_metadata: Bytes::mib(32),
    };
    let stop = AtomicBool::new(false);
    const WRITE_MIB: u64 = 256;
    let pool: &mut thinpool::pool::Pool = &mut tp;
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
    let after = tp.data_bytes_outside();
    assert!(
        after >= WRITE_MIB * MIB && after > before,
        "the pool grew: {before} -> {after}"
    );
    // Each extension at most doubles the pool (extend by 100%).
    let doublings = (after / before).ilog2() as usize;
    assert!(
        extensions >= doublings.max(1),
        "{before} -> {after} in {extensions} extensions"
    );
    if kind == Kind::Loopback {
        // A loopback pool grows its file to the policy's maximum exactly:
        // 64 -> 128 -> 256 -> 512 MiB.
        assert_eq!(after, 512 * MIB);
        assert!(extensions >= 3, "{extensions}");
    }
    let u = tp.status().unwrap().usage().unwrap().clone();
    assert_eq!(u.mode, PoolMode::ReadWrite);
    assert_eq!(
        u.total_data.get() * BLOCK,
        after,
        "kernel and outside agree"
    );
    assert!(u.used_data >= DataBlocks::new(WRITE_MIB * MIB / BLOCK));
    assert_eq!(
        run("dmsetup", &["table", &name]).trim(),
        tp.table().to_string(),
        "the kernel has the extended table"
    );
    for i in [0u64, 100, 255] {
        assert_eq!(read_at(&dev, i * MIB, 4096), vec![i as u8; 4096]);
    }
    // The new size survives a reopen.
    let length = tp.table().length;
    assert_eq!(tp.reopen().table().length, length);
    tp.finish();
}

/// ext4 and xfs on a pool's thin devices: mkfs once, snapshots of the
/// mounted origin inherit it (xfs with `nouuid`), resize grows the
/// filesystem.
pub fn filesystems_mkfs_snapshot_resize(kind: Kind) {
    let mut tp = TestPool::make(kind, Spec::default());
    let tmp = tp.tmp.path().to_owned();
    for (fs, size_mib) in [(Filesystem::Ext4, 64u64), (Filesystem::Xfs, 320)] {
        let base = format!("{fs}-base");
        let snap = format!("{fs}-snap");
        tp.create_thin(&base, Sectors::new(size_mib * MIB / 512))
            .unwrap();
        assert!(tp.mkfs(&base, fs).unwrap(), "{fs}: first mkfs formats");
        assert!(!tp.mkfs(&base, fs).unwrap(), "{fs}: mkfs happens once");
        let dev = tp.activate(&base).unwrap();
        let mnt = Mount::new(
            dev.to_str().unwrap(),
            &tmp.join(&base),
            Some(&fs.to_string()),
            tp.mount_options(&base).unwrap(),
        );
        fs::write(mnt.target.join("file"), "in the origin").unwrap();
        // Snapshot the mounted origin: the suspend freezes and flushes it.
        tp.snapshot(&base, &snap).unwrap();
        assert_eq!(tp.filesystem(&snap).unwrap(), Some(fs));
        assert!(
            !tp.mkfs(&snap, fs).unwrap(),
            "{fs}: snapshots inherit the filesystem"
        );
        let opts = tp.mount_options(&snap).unwrap();
        if fs == Filesystem::Xfs {
            assert_eq!(opts, "nouuid");
        }
        fs::write(mnt.target.join("file"), "changed").unwrap();
        let sdev = tp.activate(&snap).unwrap();
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
        tp.resize_thin_and_fs(
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
        tp.deactivate(&snap, false).unwrap();
        tp.delete_thin(&base).unwrap();
        // The snapshot keeps its filesystem after its origin is gone.
        assert_eq!(tp.filesystem(&snap).unwrap(), Some(fs));
    }
    tp.finish();
}
