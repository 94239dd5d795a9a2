//! The snapshotter's backends against the raw peer sequences, in one
//! criterion run per environment, reported as ratios (thinbox / peer, lower
//! is better); and the cost of `prepare` as the number of existing
//! snapshots grows from 10 to 1,000.
//!
//! One cycle is `prepare` on a committed parent holding a small tree, mount,
//! unmount, `remove`. The peer does the same with the tools a person would
//! use, on its own parent with the same tree:
//!
//! | backend | peer cycle |
//! |---|---|
//! | naive | `cp -a`, `mount --bind`, `umount`, `rm -rf` |
//! | overlay | `mkdir -p upper work`, `mount -t overlay`, `umount`, `rm -rf` |
//! | btrfs | `btrfs subvolume snapshot`, `mount --bind`, `umount`, `btrfs subvolume delete` |
//! | zfs | (`zfs snapshot` once) `zfs clone`, `mount -t zfs`, `umount`, `zfs destroy` |
//! | devmapper | `dmsetup message create_snap`, `dmsetup create`, `dmsetup mknodes`, `mount`, `umount`, `dmsetup remove`, `dmsetup message delete` |
//!
//! The devmapper peer's origin is an inactive thin device (thinbox's
//! committed parents are inactive too), so no suspend is needed around
//! `create_snap`.
//!
//! Backends run where their kernel support is (naive, overlay and btrfs on
//! a loop device on the host; btrfs, zfs and devmapper in the VM);
//! `THINBOX_BENCH_BACKENDS=btrfs,zfs` narrows the list and
//! `THINBOX_BENCH_SCALE=10,100` the scaling points. Setup (pools,
//! filesystems, parents, the existing snapshots of the scaling group)
//! happens outside the timed region. Needs root; docs/benchmarks.md says how
//! to run it in the VM.
#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use integration::fixtures::{sparse_file, temp_dir, unique_name, LoopDevice, Mount, ZfsPool};
use integration::need::{Environment, Need};
use snapshotter::backend::devmapper::{Devmapper, DevmapperConfig};
use snapshotter::backend::{btrfs::Btrfs, naive::Naive, overlay::Overlay, zfs::Zfs};
use snapshotter::{Key, Labels, MountGuard, Name, Snapshotter};
use thinpool::pool::{Deps, LoopbackConfig, Pool};

/// Samples per benchmark (criterion's minimum; runs are slow under TCG).
const SAMPLES: usize = 10;
/// Numbers of existing snapshots for the scaling group, unless
/// `THINBOX_BENCH_SCALE` (comma-separated, ascending) says otherwise.
const SCALE: [usize; 3] = [10, 100, 1000];

fn scale() -> Vec<usize> {
    match std::env::var("THINBOX_BENCH_SCALE") {
        Ok(v) => v
            .split(',')
            .map(|n| n.trim().parse().expect("THINBOX_BENCH_SCALE: numbers"))
            .collect(),
        Err(_) => SCALE.to_vec(),
    }
}

/// Runs a program, panicking with its stderr when it fails.
fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The small tree every parent holds: 3 directories of 10 files of 1 KiB,
/// a symlink and an empty directory.
fn write_tree(root: &Path) {
    for d in 0..3 {
        let dir = root.join(format!("dir{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..10 {
            fs::write(dir.join(format!("file{f}")), vec![b'a' + f as u8; 1024]).unwrap();
        }
    }
    std::os::unix::fs::symlink("dir0/file0", root.join("link")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
}

/// The peer of one backend: its own cycle with command-line tools.
trait Peer {
    fn cycle(&mut self);
}

/// What one backend needs for both groups; fields drop in order (the
/// snapshotter before the filesystems and pools it lives on).
struct Setup {
    name: &'static str,
    sn: Box<dyn Snapshotter>,
    parent: Name,
    target: PathBuf,
    peer: Box<dyn Peer>,
    _keep: Vec<Box<dyn std::any::Any>>,
}

/// Makes the committed parent (`parent`) holding the tree.
fn make_parent(sn: &dyn Snapshotter, mnt: &Path) -> Name {
    let key = Key::new("parent-src").unwrap();
    let mounts = sn.prepare(&key, None, &Labels::new()).expect("prepare");
    let g = MountGuard::new(&mounts, mnt).expect("mount");
    write_tree(mnt);
    g.unmount().expect("unmount");
    let name = Name::new("parent").unwrap();
    sn.commit(&name, &key, &Labels::new()).expect("commit");
    name
}

fn thinbox_cycle(s: &Setup, key: &Key) {
    let mounts = s.sn.prepare(key, Some(&s.parent), &Labels::new()).unwrap();
    let g = MountGuard::new(&mounts, &s.target).unwrap();
    g.unmount().unwrap();
    s.sn.remove(key).unwrap();
}

// ---- naive and overlay ----

struct CpPeer {
    parent: PathBuf,
    child: PathBuf,
    target: PathBuf,
}

impl Peer for CpPeer {
    fn cycle(&mut self) {
        sh("cp", &["-a", p(&self.parent), p(&self.child)]);
        sh("mount", &["--bind", p(&self.child), p(&self.target)]);
        sh("umount", &[p(&self.target)]);
        sh("rm", &["-rf", p(&self.child)]);
    }
}

struct OverlayPeer {
    lower: PathBuf,
    child: PathBuf,
    target: PathBuf,
}

impl Peer for OverlayPeer {
    fn cycle(&mut self) {
        let (upper, work) = (self.child.join("upper"), self.child.join("work"));
        sh("mkdir", &["-p", p(&upper), p(&work)]);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            p(&self.lower),
            p(&upper),
            p(&work)
        );
        sh(
            "mount",
            &["-t", "overlay", "overlay", "-o", &opts, p(&self.target)],
        );
        sh("umount", &[p(&self.target)]);
        sh("rm", &["-rf", p(&self.child)]);
    }
}

fn dirs(dir: &Path) -> (PathBuf, PathBuf) {
    let (mnt, target) = (dir.join("mnt"), dir.join("target"));
    fs::create_dir_all(&mnt).unwrap();
    fs::create_dir_all(&target).unwrap();
    (mnt, target)
}

fn naive() -> Setup {
    let dir = temp_dir();
    let (mnt, target) = dirs(dir.path());
    let sn = Naive::open(&dir.path().join("root")).expect("open naive");
    let parent = make_parent(&sn, &mnt);
    let peer_parent = dir.path().join("peer-parent");
    write_tree(&peer_parent);
    Setup {
        name: "naive",
        sn: Box::new(sn),
        parent,
        peer: Box::new(CpPeer {
            parent: peer_parent,
            child: dir.path().join("peer-child"),
            target: target.clone(),
        }),
        target,
        _keep: vec![Box::new(dir)],
    }
}

fn overlay() -> Setup {
    let dir = temp_dir();
    let (mnt, target) = dirs(dir.path());
    let sn = Overlay::open(&dir.path().join("root")).expect("open overlay");
    let parent = make_parent(&sn, &mnt);
    let lower = dir.path().join("peer-lower");
    write_tree(&lower);
    Setup {
        name: "overlay",
        sn: Box::new(sn),
        parent,
        peer: Box::new(OverlayPeer {
            lower,
            child: dir.path().join("peer-child"),
            target: target.clone(),
        }),
        target,
        _keep: vec![Box::new(dir)],
    }
}

// ---- btrfs ----

struct BtrfsPeer {
    parent: PathBuf,
    child: PathBuf,
    target: PathBuf,
}

impl Peer for BtrfsPeer {
    fn cycle(&mut self) {
        sh(
            "btrfs",
            &[
                "-q",
                "subvolume",
                "snapshot",
                p(&self.parent),
                p(&self.child),
            ],
        );
        sh("mount", &["--bind", p(&self.child), p(&self.target)]);
        sh("umount", &[p(&self.target)]);
        sh("btrfs", &["-q", "subvolume", "delete", p(&self.child)]);
    }
}

fn btrfs() -> Setup {
    let dir = temp_dir();
    let (mnt, target) = dirs(dir.path());
    let image = dir.path().join("btrfs.img");
    sparse_file(&image, 2 << 30);
    let dev = LoopDevice::attach(&image);
    sh("mkfs.btrfs", &["-q", "-f", dev.as_str()]);
    let fs = Mount::new(dev.as_str(), &dir.path().join("fs"), Some("btrfs"), "");
    let sn = Btrfs::open(&fs.target.join("root")).expect("open btrfs");
    let parent = make_parent(&sn, &mnt);
    let peer_parent = fs.target.join("peer-parent");
    sh("btrfs", &["-q", "subvolume", "create", p(&peer_parent)]);
    write_tree(&peer_parent);
    sh("btrfs", &["property", "set", p(&peer_parent), "ro", "true"]);
    Setup {
        name: "btrfs",
        sn: Box::new(sn),
        parent,
        peer: Box::new(BtrfsPeer {
            parent: peer_parent,
            child: fs.target.join("peer-child"),
            target: target.clone(),
        }),
        target,
        // Unmount before detaching the loop device, then the directory.
        _keep: vec![Box::new(fs), Box::new(dev), Box::new(dir)],
    }
}

// ---- zfs ----

struct ZfsPeer {
    origin: String,
    child: String,
    target: PathBuf,
}

impl Peer for ZfsPeer {
    fn cycle(&mut self) {
        sh(
            "zfs",
            &[
                "clone",
                "-o",
                "mountpoint=legacy",
                &self.origin,
                &self.child,
            ],
        );
        sh("mount", &["-t", "zfs", &self.child, p(&self.target)]);
        sh("umount", &[p(&self.target)]);
        sh("zfs", &["destroy", &self.child]);
    }
}

fn zfs() -> Setup {
    let zpool = ZfsPool::create(1 << 30);
    let (mnt, target) = dirs(zpool.dir.path());
    let dataset = format!("{}/snapshots", zpool.name);
    sh("zfs", &["create", &dataset]);
    let sn = Zfs::open(&zpool.dir.path().join("root"), &dataset).expect("open zfs");
    let parent = make_parent(&sn, &mnt);
    let peer_parent = format!("{}/peer-parent", zpool.name);
    sh("zfs", &["create", "-o", "mountpoint=legacy", &peer_parent]);
    {
        let m = Mount::new(&peer_parent, &mnt, Some("zfs"), "");
        write_tree(&m.target);
    }
    let origin = format!("{peer_parent}@base");
    sh("zfs", &["snapshot", &origin]);
    Setup {
        name: "zfs",
        sn: Box::new(sn),
        parent,
        peer: Box::new(ZfsPeer {
            origin,
            child: format!("{}/peer-child", zpool.name),
            target: target.clone(),
        }),
        target,
        _keep: vec![Box::new(zpool)],
    }
}

// ---- devmapper ----

/// Destroys the loopback pool (deferred) once the snapshotter holding it
/// has been dropped.
struct PoolFiles {
    deps: Deps,
    pool_dir: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for PoolFiles {
    fn drop(&mut self) {
        match Pool::open_loopback(&self.deps, &self.pool_dir) {
            Ok(pool) => {
                if let Err(e) = pool.destroy_deferred() {
                    eprintln!("snapshot_backends: cannot destroy the pool: {e}");
                }
            }
            Err(e) => eprintln!("snapshot_backends: cannot reopen the pool: {e}"),
        }
    }
}

struct DmPeer {
    pool: String,
    pool_devnum: String,
    origin_id: String,
    size: String,
    name: String,
    target: PathBuf,
}

/// A thin id the library never hands out in this pool.
const PEER_THIN_ID: &str = "16777000";

impl Peer for DmPeer {
    fn cycle(&mut self) {
        let table = format!("0 {} thin {} {PEER_THIN_ID}", self.size, self.pool_devnum);
        let node = format!("/dev/mapper/{}", self.name);
        sh(
            "dmsetup",
            &[
                "message",
                &self.pool,
                "0",
                &format!("create_snap {PEER_THIN_ID} {}", self.origin_id),
            ],
        );
        sh("dmsetup", &["create", &self.name, "--table", &table]);
        // Without udev (the VM) the node appears only by mknodes.
        sh("dmsetup", &["mknodes", &self.name]);
        sh("mount", &["-t", "ext4", &node, p(&self.target)]);
        sh("umount", &[p(&self.target)]);
        sh("dmsetup", &["remove", &self.name]);
        sh(
            "dmsetup",
            &[
                "message",
                &self.pool,
                "0",
                &format!("delete {PEER_THIN_ID}"),
            ],
        );
    }
}

fn devmapper() -> Setup {
    let deps = Deps::real().expect("open device-mapper control");
    let dir = temp_dir();
    let (mnt, target) = dirs(dir.path());
    let pool_dir = dir.path().join("pool");
    let cfg = LoopbackConfig {
        data_size: thinpool::Bytes::gib(2),
        metadata_size: thinpool::Bytes::mib(128),
        max_thins: 1200,
        ..LoopbackConfig::new(unique_name("pool"), &pool_dir)
    };
    let mut pool = Pool::create_loopback(&deps, &cfg).expect("create pool");
    let size = thinpool::Sectors::new((256 << 20) / 512);
    // The peer's origin: an ext4 thin device holding the tree, inactive.
    let origin_id = pool.create_thin("peer-origin", size).expect("create thin");
    pool.mkfs("peer-origin", thinpool::fs::Filesystem::Ext4)
        .expect("mkfs");
    let dev = pool.activate("peer-origin").expect("activate");
    {
        let m = Mount::new(p(&dev), &mnt, Some("ext4"), "");
        write_tree(&m.target);
    }
    pool.deactivate("peer-origin", false).expect("deactivate");
    let pool_name = pool.name().to_owned();
    let pool_devnum = deps
        .dm
        .info(&pool_name)
        .expect("pool info")
        .expect("pool exists")
        .devnum
        .to_string();
    let files = PoolFiles {
        deps,
        pool_dir,
        dir,
    };
    let sn = Devmapper::open(
        &files.dir.path().join("root"),
        pool,
        DevmapperConfig {
            base_size: size,
            fs: thinpool::fs::Filesystem::Ext4,
            // As containerd's devmapper snapshotter by default.
            discard_blocks: false,
        },
    )
    .expect("open devmapper");
    let parent = make_parent(&sn, &mnt);
    Setup {
        name: "devmapper",
        sn: Box::new(sn),
        parent,
        peer: Box::new(DmPeer {
            name: format!("{pool_name}-peer-snap"),
            pool: pool_name,
            pool_devnum,
            origin_id: origin_id.to_string(),
            size: size.to_string(),
            target: target.clone(),
        }),
        target,
        _keep: vec![Box::new(files)],
    }
}

/// Makes one backend's [`Setup`].
type Make = fn() -> Setup;

/// The backends this machine has, narrowed by `THINBOX_BENCH_BACKENDS`.
fn backends() -> Vec<(&'static str, Make)> {
    let env = Environment::probe();
    let has = |needs: &[Need]| needs.iter().all(|n| env.has(*n));
    let all: [(&'static str, Make, &[Need]); 5] = [
        ("naive", naive, &[Need::Root]),
        ("overlay", overlay, &[Need::Root, Need::Overlay]),
        ("btrfs", btrfs, &[Need::Root, Need::Loop, Need::Btrfs]),
        ("zfs", zfs, &[Need::Root, Need::Zfs]),
        (
            "devmapper",
            devmapper,
            &[Need::Root, Need::Loop, Need::DmThin],
        ),
    ];
    let wanted = std::env::var("THINBOX_BENCH_BACKENDS").ok();
    let mut out = Vec::new();
    for (name, f, needs) in all {
        if let Some(w) = &wanted {
            if !w.split(',').any(|x| x.trim() == name) {
                continue;
            }
        }
        if has(needs) {
            out.push((name, f));
        } else {
            let missing = env.missing(needs);
            println!("snapshot_backends: skipping {name}: this machine lacks {missing:?}");
        }
    }
    out
}

/// Mean seconds per iteration over the last [`SAMPLES`] batches (criterion
/// calls the routine for its warm-up first).
fn per(batches: &[(Duration, u64)]) -> f64 {
    let measured = &batches[batches.len().saturating_sub(SAMPLES)..];
    let d: Duration = measured.iter().map(|b| b.0).sum();
    let n: u64 = measured.iter().map(|b| b.1).sum();
    d.as_secs_f64() / n.max(1) as f64
}

fn cycle_group(c: &mut Criterion, s: &mut Setup) -> (f64, f64) {
    let key = Key::new("cycle").unwrap();
    let mut ours: Vec<(Duration, u64)> = Vec::new();
    let mut theirs: Vec<(Duration, u64)> = Vec::new();
    let mut g = c.benchmark_group(format!("snapshot_cycle/{}", s.name));
    g.sample_size(SAMPLES).sampling_mode(SamplingMode::Flat);
    g.bench_function("thinbox", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                thinbox_cycle(s, &key);
            }
            let d = t.elapsed();
            ours.push((d, n));
            d
        })
    });
    let peer = &mut s.peer;
    g.bench_function("peer", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                peer.cycle();
            }
            let d = t.elapsed();
            theirs.push((d, n));
            d
        })
    });
    g.finish();
    (per(&ours), per(&theirs))
}

/// `prepare` alone (timed) with 10, 100 and 1,000 active snapshots of the
/// parent already there; each probe snapshot is removed untimed.
fn scaling_group(c: &mut Criterion, s: &Setup) -> Vec<(usize, f64)> {
    let probe = Key::new("probe").unwrap();
    let mut existing = 0;
    let mut results = Vec::new();
    let mut g = c.benchmark_group(format!("snapshot_prepare_scaling/{}", s.name));
    g.sample_size(SAMPLES).sampling_mode(SamplingMode::Flat);
    for n in scale() {
        let t = Instant::now();
        while existing < n {
            let key = Key::new(format!("existing-{existing}")).unwrap();
            s.sn.prepare(&key, Some(&s.parent), &Labels::new())
                .expect("prepare an existing snapshot");
            existing += 1;
        }
        println!(
            "snapshot_backends: {}: {n} existing snapshots made in {:.1} s (untimed)",
            s.name,
            t.elapsed().as_secs_f64()
        );
        let mut batches: Vec<(Duration, u64)> = Vec::new();
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut d = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    s.sn.prepare(&probe, Some(&s.parent), &Labels::new())
                        .unwrap();
                    d += t.elapsed();
                    s.sn.remove(&probe).unwrap();
                }
                batches.push((d, iters));
                d
            })
        });
        results.push((n, per(&batches)));
    }
    g.finish();
    results
}

fn bench(c: &mut Criterion) {
    let mut summary = Vec::new();
    for (name, make) in backends() {
        let t = Instant::now();
        let mut s = make();
        println!(
            "snapshot_backends: {name}: set up in {:.1} s (untimed)",
            t.elapsed().as_secs_f64()
        );
        let (ours, theirs) = cycle_group(c, &mut s);
        let scaling = scaling_group(c, &s);
        summary.push((name, ours, theirs, scaling));
        let t = Instant::now();
        drop(s);
        println!(
            "snapshot_backends: {name}: torn down in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    for (name, ours, theirs, scaling) in &summary {
        println!(
            "snapshot_backends ratio {name} thinbox/peer = {:.3}x ({:.2} ms vs {:.2} ms per prepare+mount+umount+remove)",
            ours / theirs,
            ours * 1e3,
            theirs * 1e3
        );
        let base = scaling.first().map_or(f64::NAN, |s| s.1);
        for (n, t) in scaling {
            println!(
                "snapshot_backends scaling {name} prepare with {n} existing = {:.2} ms ({:.2}x of 10)",
                t * 1e3,
                t / base
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
