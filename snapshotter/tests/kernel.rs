//! Real-kernel tests: the conformance suite against every backend on every
//! kernel where the backend exists (naive and overlay on the host; btrfs on
//! a loop device on the host and again inside the Debian-kernel VM), plus
//! layer apply/diff round trips and hostile layers on real mounts;
//! devmapper on a small loopback thin-pool and zfs inside the VM.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use integration::fixtures::{run, sparse_file, temp_dir, unique_name, LoopDevice, Mount, ZfsPool};
use integration::harness::{self, KernelTest};
use integration::need::Need;
use snapshotter::backend::devmapper::{Devmapper, DevmapperConfig};
use snapshotter::backend::{btrfs::Btrfs, naive::Naive, overlay::Overlay, zfs::Zfs};
use snapshotter::testsuite::{self, Case};
use snapshotter::Snapshotter;
use thinpool::pool::{Deps, LoopbackConfig, Pool};

#[path = "kernel/exact_usage.rs"]
mod exact_usage;

#[path = "support/layers.rs"]
mod layers;
#[path = "support/recovery.rs"]
mod recovery;

const NAIVE: &[Need] = &[Need::Root];
const OVERLAY: &[Need] = &[Need::Root, Need::Overlay];
const BTRFS: &[Need] = &[Need::Root, Need::Loop, Need::Btrfs];
const BTRFS_VM: &[Need] = &[Need::Root, Need::Loop, Need::Btrfs, Need::Vm];
const ZFS: &[Need] = &[Need::Root, Need::Zfs];
const DEVMAPPER: &[Need] = &[Need::Root, Need::Loop, Need::DmThin];

fn naive(case: Case) {
    let dir = temp_dir();
    testsuite::run(case, dir.path(), &|root: &Path| -> Box<dyn Snapshotter> {
        Box::new(Naive::open(root).expect("open naive"))
    });
}

fn overlay(case: Case) {
    let dir = temp_dir();
    testsuite::run(case, dir.path(), &|root: &Path| -> Box<dyn Snapshotter> {
        Box::new(Overlay::open(root).expect("open overlay"))
    });
}

/// `case` on overlay whose root is on an xfs mounted with project quotas
/// (`-o prjquota`), where snapshots can be bounded.
fn overlay_on_xfs_with_project_quotas(case: Case) {
    let dir = temp_dir();
    let image = dir.path().join("xfs.img");
    sparse_file(&image, 512 << 20);
    let dev = LoopDevice::attach(&image);
    run("mkfs.xfs", &["-q", "-f", dev.as_str()]);
    let mount = Mount::new(
        dev.as_str(),
        &dir.path().join("mnt"),
        Some("xfs"),
        "prjquota",
    );
    testsuite::run(
        case,
        &mount.target,
        &|root: &Path| -> Box<dyn Snapshotter> {
            let sn = Overlay::open(root).expect("open overlay");
            assert!(
                sn.capabilities().bounds_size,
                "xfs with prjquota bounds sizes"
            );
            Box::new(sn)
        },
    );
    drop(mount);
    drop(dev);
}

/// A fresh btrfs on a loop device, mounted; dropped in reverse order.
struct BtrfsFs {
    mount: Mount,
    _dev: LoopDevice,
    _dir: tempfile::TempDir,
}

fn btrfs_fs() -> BtrfsFs {
    let dir = temp_dir();
    let image = dir.path().join("btrfs.img");
    sparse_file(&image, 1 << 30);
    let dev = LoopDevice::attach(&image);
    run("mkfs.btrfs", &["-q", "-f", dev.as_str()]);
    let mount = Mount::new(dev.as_str(), &dir.path().join("mnt"), Some("btrfs"), "");
    BtrfsFs {
        mount,
        _dev: dev,
        _dir: dir,
    }
}

fn btrfs(case: Case) {
    let fs = btrfs_fs();
    testsuite::run(
        case,
        &fs.mount.target,
        &|root: &Path| -> Box<dyn Snapshotter> { Box::new(Btrfs::open(root).expect("open btrfs")) },
    );
}

fn with_naive(f: fn(&dyn Snapshotter)) {
    let dir = temp_dir();
    let sn = Naive::open(&dir.path().join("root")).expect("open naive");
    f(&sn);
}

fn with_overlay(f: fn(&dyn Snapshotter)) {
    let dir = temp_dir();
    let sn = Overlay::open(&dir.path().join("root")).expect("open overlay");
    f(&sn);
}

fn with_btrfs(f: fn(&dyn Snapshotter)) {
    let fs = btrfs_fs();
    let sn = Btrfs::open(&fs.mount.target.join("root")).expect("open btrfs");
    f(&sn);
}

/// A ZFS pool on a file with a parent dataset for the snapshotter.
struct ZfsDataset {
    zpool: ZfsPool,
    dataset: String,
}

fn zfs_pool() -> ZfsDataset {
    let zpool = ZfsPool::create(512 << 20);
    let dataset = format!("{}/snapshots", zpool.name);
    run("zfs", &["create", &dataset]);
    ZfsDataset { zpool, dataset }
}

fn zfs(case: Case) {
    let pool = zfs_pool();
    let dataset = pool.dataset.clone();
    testsuite::run(case, pool.zpool.dir.path(), &move |root: &Path| -> Box<
        dyn Snapshotter,
    > {
        Box::new(Zfs::open(root, &dataset).expect("open zfs"))
    });
}

fn with_zfs(f: fn(&dyn Snapshotter)) {
    let pool = zfs_pool();
    let sn = Zfs::open(&pool.zpool.dir.path().join("root"), &pool.dataset).expect("open zfs");
    f(&sn);
}

/// A small loopback thin-pool (1 GiB sparse data) in a temporary
/// directory, destroyed on drop (deferred, so a leaked mount cannot wedge
/// the test process).
struct ThinPool {
    deps: Deps,
    name: String,
    pool_dir: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for ThinPool {
    fn drop(&mut self) {
        match Pool::open_loopback(&self.deps, &self.pool_dir) {
            Ok(p) => {
                if let Err(e) = p.destroy_deferred() {
                    eprintln!("cannot destroy the test pool: {e}");
                }
            }
            Err(e) => eprintln!("cannot reopen the test pool: {e}"),
        }
    }
}

const DM_CONFIG: DevmapperConfig = DevmapperConfig {
    base_size: thinpool::Sectors::new((256 << 20) / 512),
    fs: thinpool::fs::Filesystem::Ext4,
    discard_blocks: true,
};

fn thin_pool() -> ThinPool {
    let deps = Deps::real().expect("open device-mapper control");
    let dir = temp_dir();
    let pool_dir = dir.path().join("pool");
    let name = unique_name("pool");
    let cfg = LoopbackConfig {
        data_size: thinpool::Bytes::gib(1),
        metadata_size: thinpool::Bytes::mib(64),
        max_thins: 1000,
        ..LoopbackConfig::new(name.clone(), &pool_dir)
    };
    Pool::create_loopback(&deps, &cfg)
        .expect("create pool")
        .shutdown()
        .expect("shut down the new pool");
    ThinPool {
        deps,
        name,
        pool_dir,
        dir,
    }
}

impl ThinPool {
    fn open(&self, root: &Path, cfg: DevmapperConfig) -> Box<dyn Snapshotter> {
        let pool = Pool::open_loopback(&self.deps, &self.pool_dir).expect("open pool");
        Box::new(Devmapper::open(root, pool, cfg).expect("open devmapper"))
    }
}

fn devmapper_with(case: Case, cfg: DevmapperConfig) {
    let pool = thin_pool();
    testsuite::run(case, pool.dir.path(), &|root: &Path| pool.open(root, cfg));
}

fn devmapper(case: Case) {
    devmapper_with(case, DM_CONFIG);
}

fn devmapper_xfs(case: Case) {
    devmapper_with(
        case,
        DevmapperConfig {
            // mkfs.xfs refuses filesystems under 300 MB.
            base_size: thinpool::Sectors::new((512 << 20) / 512),
            fs: thinpool::fs::Filesystem::Xfs,
            discard_blocks: true,
        },
    );
}

fn with_devmapper(f: fn(&dyn Snapshotter)) {
    let pool = thin_pool();
    let sn = pool.open(&pool.dir.path().join("root"), DM_CONFIG);
    f(&*sn);
}

macro_rules! suite {
    ($runner:ident, $prefix:literal, $needs:expr; $($case:ident => $name:literal,)*) => {
        vec![$(
            KernelTest::new(concat!($prefix, $name), {
                fn t() {
                    $runner(Case::$case)
                }
                t
            })
            .needs($needs)
            // 128 layers under TCG in the VM take minutes.
            .timeout(Duration::from_secs(900)),
        )*]
    };
}

macro_rules! all_cases {
    ($runner:ident, $prefix:literal, $needs:expr) => {
        suite!($runner, $prefix, $needs;
            Basic => "basic",
            StatActive => "stat_active",
            StatCommitted => "stat_committed",
            Transitivity => "transitivity",
            PrepareViewFailing => "prepare_view_failing",
            Update => "update",
            Remove => "remove",
            Walk => "walk",
            LayerFileUpdate => "layer_file_update",
            RemoveDirectoryInLowerLayer => "remove_directory_in_lower_layer",
            Chown => "chown",
            DirectoryPermissionOnCommit => "directory_permission_on_commit",
            RemoveIntermediateSnapshot => "remove_intermediate_snapshot",
            DeletedFilesInChildSnapshot => "deleted_files_in_child_snapshot",
            MoveFileFromLowerLayer => "move_file_from_lower_layer",
            ViewReadonly => "view_readonly",
            StatInWalk => "stat_in_walk",
            CloseTwice => "close_twice",
            RootPermission => "root_permission",
            Rename => "rename",
            Layers128Mount => "layers_128_mount",
            Errors => "errors",
            UsageExcludesParent => "usage_excludes_parent",
            MaxSizeLabel => "max_size_label",
            DiffChangedPaths => "diff_changed_paths",
        )
    };
}

/// `case` on btrfs with quotas on: usage comes from the qgroup's
/// exclusive bytes, and the size label sets a qgroup limit.
fn btrfs_with_quotas(case: Case) {
    let fs = btrfs_fs();
    run(
        "btrfs",
        &["quota", "enable", fs.mount.target.to_str().unwrap()],
    );
    testsuite::run(
        case,
        &fs.mount.target,
        &|root: &Path| -> Box<dyn Snapshotter> {
            let sn = Btrfs::open(root).expect("open btrfs");
            let caps = sn.capabilities();
            assert!(
                caps.exact_usage && caps.bounds_size,
                "quotas are on: usage must be exact and sizes bounded"
            );
            Box::new(sn)
        },
    );
}

/// A read-only snapshot left in ROOT/diff by a crash during a diff is
/// replaced by the next diff, removed with its snapshot, and reclaimed by
/// cleanup when its snapshot is gone.
/// Bytes the loopback pool's data file holds on disk (`du`).
fn data_file_bytes(pool: &ThinPool) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(pool.pool_dir.join("data"))
        .unwrap()
        .blocks()
        * 512
}

/// Removing a snapshot that wrote 32 MiB gives the data file its space
/// back only with `discard_blocks` (containerd #5691): deleting a thin
/// device frees its blocks inside the pool alone.
fn devmapper_removal_gives_blocks_back() {
    use snapshotter::{Key, Labels};
    for discard in [true, false] {
        let pool = thin_pool();
        let cfg = DevmapperConfig {
            discard_blocks: discard,
            ..DM_CONFIG
        };
        let sn = pool.open(&pool.dir.path().join("root"), cfg);
        let key = Key::new("filler").unwrap();
        let m = sn.prepare(&key, None, &Labels::new()).unwrap();
        let target = pool.dir.path().join("mnt");
        std::fs::create_dir_all(&target).unwrap();
        let g = snapshotter::MountGuard::new(&m, &target).unwrap();
        let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(target.join("big"), &data).unwrap();
        run("sync", &[]);
        g.unmount().unwrap();
        let full = data_file_bytes(&pool);
        sn.remove(&key).unwrap();
        let after = data_file_bytes(&pool);
        let given_back = full.saturating_sub(after);
        if discard {
            assert!(
                given_back >= 24 << 20,
                "with discard the data file went from {full} to {after} bytes"
            );
        } else {
            assert!(
                given_back < 8 << 20,
                "without discard the data file went from {full} to {after} bytes"
            );
        }
        sn.close().unwrap();
    }
}

/// A snapshot whose device is still open (mounted) is removed all the
/// same: its key is free at once, its dm device goes with deferred removal
/// when the mount goes, and cleanup then deletes the thin device.
fn devmapper_busy_removal_is_deferred() {
    use snapshotter::{Key, Labels};
    let pool = thin_pool();
    let sn = pool.open(&pool.dir.path().join("root"), DM_CONFIG);
    let key = Key::new("busy").unwrap();
    let m = sn.prepare(&key, None, &Labels::new()).unwrap();
    let target = pool.dir.path().join("mnt");
    std::fs::create_dir_all(&target).unwrap();
    let g = snapshotter::MountGuard::new(&m, &target).unwrap();
    let thins = || integration::fixtures::dm_names("").len();
    let before = thins();
    sn.remove(&key)
        .expect("a busy removal is deferred, not refused");
    assert_eq!(
        sn.stat(&key).unwrap_err().kind(),
        snapshotter::ErrorKind::NotFound
    );
    assert_eq!(thins(), before, "the open device stays while mounted");
    g.unmount().unwrap();
    assert_eq!(thins(), before - 1, "deferred removal took the device");
    sn.cleanup().unwrap();
    sn.close().unwrap();
    drop(sn);
    let listed = Pool::open_loopback(&pool.deps, &pool.pool_dir)
        .map(|p| p.thins().unwrap().len())
        .unwrap_or(usize::MAX);
    // Only the base device is left in the pool's records.
    assert_eq!(listed, 1, "cleanup deleted the thin device");
}

fn btrfs_diff_leftovers_are_reclaimed() {
    use snapshotter::{Key, Labels, Name};
    let fs = btrfs_fs();
    let root = fs.mount.target.join("root");
    let sn = Btrfs::open(&root).expect("open btrfs");
    let l = Labels::new();
    let k = |s: &str| Key::new(s).unwrap();
    sn.prepare(&k("base"), None, &l).unwrap();
    sn.commit(&Name::new("parent").unwrap(), &k("base"), &l)
        .unwrap();
    sn.prepare(&k("child"), Some(&Name::new("parent").unwrap()), &l)
        .unwrap();
    let id = std::fs::read_dir(root.join("active"))
        .unwrap()
        .next()
        .expect("the child's subvolume")
        .unwrap()
        .file_name();
    let leftover = root.join("diff").join(&id);
    let snapshot = |dst: &Path| {
        run(
            "btrfs",
            &[
                "subvolume",
                "snapshot",
                "-r",
                root.join("active").join(&id).to_str().unwrap(),
                dst.to_str().unwrap(),
            ],
        )
    };
    snapshot(&leftover);
    let listed = sn.changed_paths(&k("child")).expect("changed paths");
    assert_eq!(listed, Some(vec![]), "an unchanged child lists nothing");
    assert!(!leftover.exists(), "the diff's snapshot was left behind");
    snapshot(&leftover);
    sn.remove(&k("child")).unwrap();
    assert!(!leftover.exists(), "removal left the diff snapshot");
    let orphan = root.join("diff").join("999");
    snapshot_from(&root.join("snapshots"), &orphan);
    sn.cleanup().unwrap();
    assert!(!orphan.exists(), "cleanup left an orphaned diff snapshot");
}

/// A temporary diff mount left by a process that died during a diff is
/// unmounted when the zfs backend is next opened (it would keep the
/// dataset busy); a live process's diff mount is left alone.
fn zfs_diff_leftover_mounts_are_unmounted() {
    use snapshotter::{Key, Labels, Name};
    let pool = zfs_pool();
    let root = pool.zpool.dir.path().join("root");
    let l = Labels::new();
    let k = |s: &str| Key::new(s).unwrap();
    let sn = Zfs::open(&root, &pool.dataset).expect("open zfs");
    sn.prepare(&k("base"), None, &l).unwrap();
    sn.commit(&Name::new("parent").unwrap(), &k("base"), &l)
        .unwrap();
    sn.prepare(&k("child"), Some(&Name::new("parent").unwrap()), &l)
        .unwrap();
    drop(sn);
    let datasets = run(
        "zfs",
        &[
            "list",
            "-H",
            "-o",
            "name",
            "-t",
            "filesystem",
            "-r",
            "-d",
            "1",
            &pool.dataset,
        ],
    );
    // The parent was made first, so it has the lower id.
    let mut ids: Vec<u64> = datasets
        .lines()
        .skip(1)
        .map(|l| l.rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids.len(), 2, "{datasets}");
    let parent_ds = format!("{}/{}", pool.dataset, ids[0]);
    let parent_ds = parent_ds.as_str();
    let child_id = ids[1];
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    };
    let tmp = std::env::temp_dir();
    let stale = tmp.join(format!("thinbox-zfs-diff-{dead}-{child_id}"));
    let live = tmp.join(format!(
        "thinbox-zfs-diff-{}-{child_id}",
        std::process::id()
    ));
    for (dir, ds) in [(&stale, parent_ds), (&live, parent_ds)] {
        std::fs::create_dir_all(dir.join("from")).unwrap();
        run(
            "mount",
            &[
                "-t",
                "zfs",
                "-o",
                "ro",
                ds,
                dir.join("from").to_str().unwrap(),
            ],
        );
    }
    let is_mounted = |p: &Path| {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(p.to_str().unwrap()))
    };
    assert!(is_mounted(&stale.join("from")) && is_mounted(&live.join("from")));
    let sn = Zfs::open(&root, &pool.dataset).expect("reopen zfs");
    assert!(
        !is_mounted(&stale.join("from")),
        "the dead diff's mount is still there"
    );
    assert!(!stale.exists(), "the dead diff's directory is still there");
    assert!(
        is_mounted(&live.join("from")),
        "a live diff's mount was taken away"
    );
    run("umount", &[live.join("from").to_str().unwrap()]);
    std::fs::remove_dir_all(&live).unwrap();
    sn.remove(&k("child")).unwrap();
    sn.remove(&k("parent")).unwrap();
}

fn snapshot_from(src: &Path, dst: &Path) {
    let sub = std::fs::read_dir(src)
        .unwrap()
        .next()
        .expect("a committed subvolume")
        .unwrap()
        .path();
    run(
        "btrfs",
        &[
            "subvolume",
            "snapshot",
            "-r",
            sub.to_str().unwrap(),
            dst.to_str().unwrap(),
        ],
    );
}

fn btrfs_refuses_a_root_not_on_btrfs() {
    let dir = temp_dir();
    let e = Btrfs::open(dir.path()).expect_err("a root on ext4/tmpfs must be refused");
    assert_eq!(e.kind(), snapshotter::ErrorKind::BackendUnavailable);
    assert!(e.to_string().contains("btrfs: root is not on btrfs"), "{e}");
}

fn main() -> ExitCode {
    let mut tests = Vec::new();
    tests.extend(all_cases!(naive, "naive_", NAIVE));
    tests.extend(all_cases!(overlay, "overlay_", OVERLAY));
    tests.extend(all_cases!(btrfs, "btrfs_", BTRFS));
    tests.extend(all_cases!(btrfs, "vm_btrfs_", BTRFS_VM));
    tests.extend(all_cases!(zfs, "zfs_", ZFS));
    tests.extend(all_cases!(devmapper, "devmapper_", DEVMAPPER));
    // Every case on every backend, but size_bound (wired below: dm-thin's
    // bound is its device, which max_size_label shows).
    assert_eq!(
        tests.len(),
        6 * (Case::ALL.len() - 1),
        "a conformance case is not wired up"
    );
    // 128 layers take minutes under TCG: CI's smoke run mounts them on the
    // host's btrfs, overlay and naive; the full run in the VM too.
    for t in &mut tests {
        if matches!(
            t.name,
            "zfs_layers_128_mount" | "vm_btrfs_layers_128_mount" | "devmapper_layers_128_mount"
        ) {
            *t = t.not_in_smoke("btrfs_layers_128_mount");
        }
    }
    tests.push(
        KernelTest::new(
            "btrfs_refuses_a_root_not_on_btrfs",
            btrfs_refuses_a_root_not_on_btrfs,
        )
        .needs(&[Need::Root]),
    );
    tests.extend([
        KernelTest::new(
            "layers_hostile_layers_are_refused_or_confined",
            layers::hostile_layers,
        )
        .needs(NAIVE),
        KernelTest::new("naive_layers_round_trip", || with_naive(layers::round_trip)).needs(NAIVE),
        KernelTest::new("overlay_layers_round_trip", || {
            with_overlay(layers::round_trip)
        })
        .needs(OVERLAY),
        KernelTest::new("btrfs_layers_round_trip", || with_btrfs(layers::round_trip)).needs(BTRFS),
        KernelTest::new("vm_btrfs_layers_round_trip", || {
            with_btrfs(layers::round_trip)
        })
        .needs(BTRFS_VM),
        KernelTest::new("naive_failed_apply_leaves_nothing", || {
            with_naive(layers::failed_apply_leaves_nothing)
        })
        .needs(NAIVE),
        KernelTest::new("overlay_failed_apply_leaves_nothing", || {
            with_overlay(layers::failed_apply_leaves_nothing)
        })
        .needs(OVERLAY),
        KernelTest::new("btrfs_failed_apply_leaves_nothing", || {
            with_btrfs(layers::failed_apply_leaves_nothing)
        })
        .needs(BTRFS),
    ]);
    tests.extend([
        KernelTest::new("naive_crash_recovery", || {
            let dir = temp_dir();
            recovery::recovery(dir.path(), |r| Naive::new(r).expect("naive"));
        })
        .needs(NAIVE),
        KernelTest::new("overlay_crash_recovery", || {
            let dir = temp_dir();
            recovery::recovery(dir.path(), |r| Overlay::new(r).expect("overlay"));
        })
        .needs(OVERLAY),
        KernelTest::new("btrfs_qgroups_usage", || {
            btrfs_with_quotas(Case::UsageExcludesParent)
        })
        .needs(BTRFS),
        KernelTest::new("btrfs_qgroups_size_bound", || {
            btrfs_with_quotas(Case::SizeBound)
        })
        .needs(BTRFS),
        // Without quotas (and on naive, overlay) the label is refused.
        KernelTest::new("btrfs_size_bound_refused", || btrfs(Case::SizeBound)).needs(BTRFS),
        KernelTest::new("naive_size_bound_refused", || naive(Case::SizeBound)).needs(NAIVE),
        KernelTest::new("overlay_size_bound_refused", || overlay(Case::SizeBound)).needs(OVERLAY),
        KernelTest::new("zfs_size_bound", || zfs(Case::SizeBound)).needs(ZFS),
        // The host kernel has no XFS quota support (CONFIG_XFS_QUOTA).
        KernelTest::new("vm_overlay_xfs_prjquota_size_bound", || {
            overlay_on_xfs_with_project_quotas(Case::SizeBound)
        })
        .needs(&[Need::Root, Need::Overlay, Need::Loop, Need::Vm]),
        KernelTest::new(
            "btrfs_diff_leftovers_are_reclaimed",
            btrfs_diff_leftovers_are_reclaimed,
        )
        .needs(BTRFS),
        KernelTest::new("vm_btrfs_qgroups_usage", || {
            btrfs_with_quotas(Case::UsageExcludesParent)
        })
        .needs(BTRFS_VM),
        KernelTest::new("vm_btrfs_qgroups_size_bound", || {
            btrfs_with_quotas(Case::SizeBound)
        })
        .needs(BTRFS_VM),
        KernelTest::new("zfs_layers_round_trip", || with_zfs(layers::round_trip)).needs(ZFS),
        KernelTest::new("naive_real_tree_round_trip", || {
            with_naive(layers::real_tree_round_trip)
        })
        .needs(NAIVE),
        KernelTest::new("overlay_real_tree_round_trip", || {
            with_overlay(layers::real_tree_round_trip)
        })
        .needs(OVERLAY),
        KernelTest::new("btrfs_real_tree_round_trip", || {
            with_btrfs(layers::real_tree_round_trip)
        })
        .needs(BTRFS),
        KernelTest::new("zfs_real_tree_round_trip", || {
            with_zfs(layers::real_tree_round_trip)
        })
        .needs(ZFS)
        // A Debian tree takes a minute or more under TCG; the layer code is
        // the backends' shared apply, which the layers_round_trip tests
        // exercise on this backend.
        .not_in_smoke("btrfs_real_tree_round_trip"),
        KernelTest::new(
            "zfs_diff_leftover_mounts_are_unmounted",
            zfs_diff_leftover_mounts_are_unmounted,
        )
        .needs(ZFS),
        KernelTest::new("zfs_failed_apply_leaves_nothing", || {
            with_zfs(layers::failed_apply_leaves_nothing)
        })
        .needs(ZFS),
        KernelTest::new("zfs_crash_recovery", || {
            let pool = zfs_pool();
            let cli = snapshotter::backend::zfs::SystemZfs;
            recovery::recovery(pool.zpool.dir.path(), |_| {
                Zfs::new(&pool.dataset, cli).expect("zfs")
            });
        })
        .needs(ZFS),
        KernelTest::new("devmapper_xfs_basic", || devmapper_xfs(Case::Basic)).needs(DEVMAPPER),
        KernelTest::new(
            "btrfs_usage_is_the_qgroups",
            exact_usage::btrfs_usage_is_the_qgroups,
        )
        .needs(BTRFS),
        KernelTest::new(
            "vm_btrfs_usage_is_the_qgroups",
            exact_usage::btrfs_usage_is_the_qgroups,
        )
        .needs(BTRFS_VM),
        KernelTest::new("zfs_usage_is_used", exact_usage::zfs_usage_is_used).needs(ZFS),
        KernelTest::new(
            "devmapper_usage_is_thin_ls",
            exact_usage::devmapper_usage_is_thin_ls,
        )
        .needs(DEVMAPPER),
        KernelTest::new(
            "devmapper_busy_removal_is_deferred",
            devmapper_busy_removal_is_deferred,
        )
        .needs(DEVMAPPER),
        KernelTest::new(
            "devmapper_removal_gives_blocks_back",
            devmapper_removal_gives_blocks_back,
        )
        .needs(DEVMAPPER),
        KernelTest::new("devmapper_xfs_max_size_label", || {
            devmapper_xfs(Case::MaxSizeLabel)
        })
        .needs(DEVMAPPER),
        KernelTest::new("devmapper_xfs_view_readonly", || {
            devmapper_xfs(Case::ViewReadonly)
        })
        .needs(DEVMAPPER),
        KernelTest::new("devmapper_failed_apply_leaves_nothing", || {
            with_devmapper(layers::failed_apply_leaves_nothing)
        })
        .needs(DEVMAPPER),
        KernelTest::new("devmapper_real_tree_round_trip", || {
            with_devmapper(layers::real_tree_round_trip)
        })
        .needs(DEVMAPPER)
        // A Debian tree takes a minute or more under TCG; the layer code is
        // the backends' shared apply, which the layers_round_trip tests
        // exercise on this backend.
        .not_in_smoke("btrfs_real_tree_round_trip"),
        KernelTest::new("devmapper_crash_recovery", || {
            let pool = thin_pool();
            recovery::recovery(pool.dir.path(), |root| {
                let p = Pool::open_loopback(&pool.deps, &pool.pool_dir).expect("open pool");
                std::fs::create_dir_all(root).expect("create root");
                Devmapper::new(p, DM_CONFIG, root).expect("devmapper")
            });
        })
        .needs(DEVMAPPER),
        KernelTest::new("devmapper_layers_round_trip", || {
            with_devmapper(layers::round_trip)
        })
        .needs(DEVMAPPER),
        KernelTest::new("btrfs_crash_recovery", || {
            let fs = btrfs_fs();
            recovery::recovery(&fs.mount.target, |r| Btrfs::new(r).expect("btrfs"));
        })
        .needs(BTRFS),
    ]);
    // Each backend's basic case on every kernel of the matrix.
    harness::in_kernel_matrix(
        &mut tests,
        &[
            "naive_basic",
            "overlay_basic",
            "vm_btrfs_basic",
            "zfs_basic",
            "devmapper_basic",
        ],
    );
    harness::main(&tests)
}
