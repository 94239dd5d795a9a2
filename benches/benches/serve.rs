//! `thinbox serve` against containerd's own snapshotters: N concurrent
//! Prepare+Mounts (default 100, `THINBOX_BENCH_N`) on one committed
//! parent, interleaved round by round in one run, by the Go driver
//! `integration/containerd-suite/bench_test.go` (thinbox through
//! containerd's proxy client, containerd's snapshotter in the driver's
//! process, so thinbox pays a gRPC hop the peer does not):
//!
//! - thinbox btrfs vs containerd's btrfs, on one loop btrfs;
//! - thinbox btrfs vs containerd's overlayfs, and thinbox overlay vs
//!   containerd's overlayfs (on the temporary directory's filesystem);
//! - with dm-thin (the VM): thinbox's loopback dm-thin pool vs containerd's
//!   devmapper snapshotter on a pool made by hand with dmsetup the same way
//!   (same sizes, block size, sparse files on the same filesystem).
//!
//! It prints `bench concurrent_prepare_mounts ... thinbox/PEER = R.RRRx`,
//! the median of the per-round ratios, which docs/benchmarks.md records.
//! Needs root, the release binary (`cargo build --release -p cli`, or
//! `THINBOX_BIN`), Go and containerd's sources (scripts/setup.sh).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use integration::containerd::suite_binary;
use integration::fixtures::{run, sparse_file, temp_dir, LoopDevice, Mount};

fn thinbox_exe() -> PathBuf {
    let exe = std::env::var_os("THINBOX_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/thinbox"),
        PathBuf::from,
    );
    assert!(
        exe.exists(),
        "serve needs the release thinbox at {}: run `cargo build --release -p cli` (or set THINBOX_BIN)",
        exe.display()
    );
    exe
}

/// One pairing: the Go driver with these settings; its result lines.
fn pair(label: &str, env: &[(&str, &str)]) {
    let bin = suite_binary(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let tmp = temp_dir();
    let out = Command::new(&bin)
        .args(["-test.v", "-test.timeout=60m", "-test.run=^TestBenchConcurrentPrepare$"])
        .env("THINBOX_BIN", thinbox_exe())
        .env("TMPDIR", tmp.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{label}: {text}");
    for line in text.lines().filter(|l| l.starts_with("bench ")) {
        println!("serve {label}: {line}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn main() -> ExitCode {
    // `cargo bench` passes --bench; a listing (`--list`) runs nothing.
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let dir = temp_dir();
    // btrfs: both on one loop btrfs filesystem.
    let img = dir.path().join("btrfs.img");
    sparse_file(&img, 8 << 30);
    let dev = LoopDevice::attach(&img);
    run("mkfs.btrfs", &["-q", dev.as_str()]);
    let mnt = Mount::new(dev.as_str(), &dir.path().join("btrfs"), Some("btrfs"), "");
    let tb = mnt.target.join("thinbox");
    let peer = mnt.target.join("containerd");
    std::fs::create_dir_all(&tb).unwrap();
    std::fs::create_dir_all(&peer).unwrap();
    pair(
        "btrfs vs containerd btrfs",
        &[
            ("THINBOX_SUITE_BACKEND", "btrfs"),
            ("THINBOX_SUITE_BTRFS", s(&tb)),
            ("THINBOX_BENCH_PEER", "btrfs"),
            ("THINBOX_BENCH_PEER_ROOT", s(&peer)),
        ],
    );
    let overlay_root = dir.path().join("containerd-overlay");
    pair(
        "btrfs vs containerd overlayfs",
        &[
            ("THINBOX_SUITE_BACKEND", "btrfs"),
            ("THINBOX_SUITE_BTRFS", s(&tb)),
            ("THINBOX_BENCH_PEER", "overlay"),
            ("THINBOX_BENCH_PEER_ROOT", s(&overlay_root)),
        ],
    );
    pair(
        "overlay vs containerd overlayfs",
        &[
            ("THINBOX_SUITE_BACKEND", "overlay"),
            ("THINBOX_BENCH_PEER", "overlay"),
            ("THINBOX_BENCH_PEER_ROOT", s(&overlay_root)),
        ],
    );
    drop(mnt);
    drop(dev);
    if Path::new("/dev/mapper/control").exists() {
        devmapper(dir.path());
    }
    ExitCode::SUCCESS
}

/// containerd's devmapper snapshotter on a pool made by hand as thinbox's
/// loopback pool is (2 GiB data as the suite's config sets, 2 GiB sparse
/// metadata, 64 KiB blocks, zeroing on, error_if_no_space).
fn devmapper(dir: &Path) {
    let data = dir.join("peer-data");
    let meta = dir.join("peer-meta");
    sparse_file(&data, 2 << 30);
    sparse_file(&meta, 2 << 30);
    let d = LoopDevice::attach(&data);
    let m = LoopDevice::attach(&meta);
    run("dd", &["if=/dev/zero", &format!("of={}", m.as_str()), "bs=4096", "count=1"]);
    let name = integration::fixtures::unique_name("peer-pool");
    let table = format!(
        "0 {} thin-pool {} {} 128 0 1 error_if_no_space",
        (2u64 << 30) / 512,
        m.as_str(),
        d.as_str()
    );
    run("dmsetup", &["create", &name, "--table", &table]);
    let root = dir.join("containerd-devmapper");
    std::fs::create_dir_all(&root).unwrap();
    pair(
        "dm-thin vs containerd devmapper",
        &[
            ("THINBOX_SUITE_BACKEND", "devmapper"),
            ("THINBOX_BENCH_PEER", "devmapper"),
            ("THINBOX_BENCH_PEER_ROOT", s(&root)),
            ("THINBOX_BENCH_PEER_POOL", &name),
            ("DM_DISABLE_UDEV", "1"),
        ],
    );
    for _ in 0..3 {
        for dev in integration::fixtures::dm_names(&name) {
            let _ = Command::new("dmsetup").args(["remove", "--force", &dev]).status();
        }
    }
}
