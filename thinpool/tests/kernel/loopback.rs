//! Tests only loopback pools have: sparse files and loop devices made and
//! removed, re-activation from the files after a "reboot", bad sizes,
//! deferred removal of a busy pool, a non-root caller, and the benchmark's
//! sequences.

use std::fs;
use std::path::Path;
use std::process::Command;

use integration::fixtures::{run, temp_dir, unique_name};
use thinpool::dm::RealDm;
use thinpool::loopdev::RealLoop;
use thinpool::lvm::{LvmControl, RealLvm};
use thinpool::pool::Pool;
use thinpool::status::PoolMode;
use thinpool::{Bytes, DataBlocks, ErrorKind};

use crate::support::*;

/// The environment variable that makes the test binary a non-root child.
pub const NON_ROOT_ENV: &str = "THINPOOL_NON_ROOT_CHILD";

/// What a loopback pool is made of: its dm device over two loop devices on
/// sparse files of the configured sizes; re-opening an active pool is
/// idempotent and clean; metadata grows on request; destroy removes the
/// devices, the loop devices and the files. (Thin devices: see
/// `shared::thin_ops_and_usage`, run on every kind.)
pub fn loopback_pool_lifecycle() {
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
    assert_eq!(fs::metadata(cfg.dir.join("data")).unwrap().len(), 512 * MIB);
    assert_eq!(
        fs::metadata(cfg.dir.join("metadata")).unwrap().len(),
        16 * MIB
    );
    pool.create_thin("origin", THIN_SIZE).unwrap();
    let dev = pool.activate("origin").unwrap();
    write_at(&dev, 0, b"kept");

    // Metadata grows too: 16 MiB -> 32 MiB of 4 KiB blocks.
    let before = pool.status().unwrap().usage().unwrap().total_meta;
    pool.extend_metadata(Bytes::mib(32)).unwrap();
    let after = pool.status().unwrap().usage().unwrap().total_meta;
    assert!(after.get() >= before.get() * 2 - 8, "{before} -> {after}");
    assert_eq!(
        fs::metadata(cfg.dir.join("metadata")).unwrap().len(),
        32 * MIB
    );

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
    assert_eq!(
        pool.status().unwrap().usage().unwrap().total_meta,
        after,
        "the metadata size survives a reopen"
    );
    assert_eq!(read_at(&pool.activate("origin").unwrap(), 0, 4), b"kept");

    let (data, meta) = (cfg.dir.join("data"), cfg.dir.join("metadata"));
    pool.destroy().unwrap();
    assert!(!dm_exists(&name));
    assert!(!dm_exists(&format!("{name}-origin")));
    assert!(!data.exists() && !meta.exists() && !cfg.dir.exists());
    assert!(!loop_attached_to(tmp.path()));
}

pub fn loopback_pool_reactivates_from_files() {
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

pub fn bad_input_leaves_nothing() {
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

pub fn deferred_destroy_of_busy_pool() {
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
pub fn non_root_child(file: &Path) -> ! {
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

pub fn non_root_caller_is_told_to_be_root() {
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
pub fn snapshot_cycle_sequences_work() {
    let mut f = crate::cycle::Fixture::new(&unique_name("pool"));
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

/// The `dio` the kernel shows for loop device `dev` (`/dev/loopN`).
fn kernel_dio(dev: &Path) -> bool {
    let name = dev.file_name().unwrap().to_string_lossy().into_owned();
    fs::read_to_string(format!("/sys/block/{name}/loop/dio"))
        .unwrap()
        .trim()
        == "1"
}

/// Loop devices get direct I/O (no second page cache between the pool
/// and its files) where the filesystem under the file supports it (ext4
/// here), and what [`LoopControl`] reports is what the kernel shows, also
/// where it cannot (tmpfs before Linux 6.6).
pub fn loop_devices_use_direct_io() {
    use thinpool::loopdev::LoopControl;
    let dir = temp_dir();
    let img = dir.path().join("ext4.img");
    integration::fixtures::sparse_file(&img, 64 << 20);
    run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
    let lower = integration::fixtures::LoopDevice::attach(&img);
    let mnt = integration::fixtures::Mount::new(
        lower.as_str(),
        &dir.path().join("mnt"),
        Some("ext4"),
        "",
    );
    let loops = RealLoop;
    let on_ext4 = mnt.target.join("data");
    integration::fixtures::sparse_file(&on_ext4, 16 << 20);
    let l = loops.attach(&on_ext4, true).unwrap();
    let dio = kernel_dio(&l.path);
    loops.detach(&l.path).unwrap();
    assert!(
        l.direct_io && dio,
        "on ext4: asked for direct I/O, got {} (kernel {dio})",
        l.direct_io
    );
    let found_later = {
        let l = loops.attach(&on_ext4, false).unwrap();
        let f = loops.find(&on_ext4).unwrap().unwrap();
        loops.detach(&l.path).unwrap();
        (l.direct_io, f.direct_io)
    };
    assert_eq!(found_later, (false, false), "not asked, not set");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let on_tmpfs = shm.path().join("data");
    integration::fixtures::sparse_file(&on_tmpfs, 16 << 20);
    let l = loops.attach(&on_tmpfs, true).unwrap();
    let dio = kernel_dio(&l.path);
    let found = loops.find(&on_tmpfs).unwrap().unwrap().direct_io;
    loops.detach(&l.path).unwrap();
    assert_eq!(
        (l.direct_io, found),
        (dio, dio),
        "on tmpfs the report follows the kernel"
    );
}

/// Autoextend grows a loopback pool's metadata, not only its data: with
/// the threshold at 1%, a pool whose metadata holds a few thin devices
/// (and whose data is untouched) gets a bigger metadata file, which the
/// kernel picks up, and stays writable.
pub fn metadata_autoextends() {
    use thinpool::pool::AutoextendPolicy;
    let tmp = temp_dir();
    let cfg = small_config(tmp.path());
    let deps = deps();
    let mut pool = Pool::create_loopback(&deps, &cfg).unwrap();
    for i in 0..4 {
        pool.create_thin(&format!("t{i}"), THIN_SIZE).unwrap();
    }
    let before = pool.status().unwrap().usage().unwrap().clone();
    assert!(
        before.used_meta.get() > 0 && before.used_data.get() == 0,
        "{before:?}"
    );
    let policy = AutoextendPolicy {
        threshold_percent: 1,
        extend_percent: 50,
        ..AutoextendPolicy::default()
    };
    let done = pool.maybe_extend(&policy).unwrap();
    assert_eq!(done.data, None, "no data was used, none added");
    assert_eq!(done.metadata, Some(Bytes::mib(24)), "{done:?}");
    let after = pool.status().unwrap().usage().unwrap().clone();
    assert!(
        after.total_meta.get() > before.total_meta.get() * 14 / 10,
        "{} -> {} metadata blocks",
        before.total_meta,
        after.total_meta
    );
    assert_eq!(
        fs::metadata(cfg.dir.join("metadata")).unwrap().len(),
        24 * MIB
    );
    assert_eq!(after.mode, PoolMode::ReadWrite);
    pool.create_thin("after", THIN_SIZE).unwrap();
    pool.destroy().unwrap();
}
