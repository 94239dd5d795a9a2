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
//! And `ctr run --rm` of busybox's `/bin/true` through Debian's containerd
//! with `--snapshotter thinbox` (thinbox serve on btrfs) vs containerd's
//! built-in btrfs and overlayfs snapshotters (containerd's root on the
//! same btrfs), interleaved with [`benches::Pairs`].
//!
//! It prints `bench concurrent_prepare_mounts ... thinbox/PEER = R.RRRx`
//! and `serve ctr_run_rm thinbox/PEER = R.RRRx`, medians of the per-round
//! ratios, which docs/benchmarks.md records. `THINBOX_BENCH_ONLY=devmapper`
//! runs the dm-thin pairing alone (the VM). `THINBOX_BENCH_RUNS` sets the
//! `ctr run` rounds (default 20).
//! Needs root, the release binary (`cargo build --release -p cli`, or
//! `THINBOX_BIN`), Go and containerd's sources (scripts/setup.sh).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use benches::Pairs;
use snapshotter::image::write::{self, Entry, ImageSpec};
use snapshotter::image::ImageConfig;

use integration::containerd::{suite_binary, Containerd};
use integration::fixtures::{run, sparse_file, temp_dir, LoopDevice, Mount, Reap};

fn thinbox_exe() -> PathBuf {
    benches::thinbox_exe("serve")
}

/// One pairing: the Go driver with these settings; its result lines.
fn pair(label: &str, env: &[(&str, &str)]) {
    let bin = suite_binary(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let tmp = temp_dir();
    let out = Command::new(&bin)
        .args([
            "-test.v",
            "-test.timeout=60m",
            "-test.run=^TestBenchConcurrentPrepare$",
        ])
        .env("THINBOX_BIN", thinbox_exe())
        .env("TMPDIR", tmp.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
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
    // THINBOX_BENCH_ONLY=devmapper: the dm-thin pairing alone (the VM).
    if std::env::var("THINBOX_BENCH_ONLY").as_deref() == Ok("devmapper") {
        devmapper(dir.path());
        return ExitCode::SUCCESS;
    }
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
    ctr_run_rm(&mnt.target);
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
    run(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", m.as_str()),
            "bs=4096",
            "count=1",
        ],
    );
    let name = integration::fixtures::unique_name("peer-pool");
    let table = format!(
        "0 {} thin-pool {} {} 128 0 1 error_if_no_space",
        (2u64 << 30) / 512,
        m.as_str(),
        d.as_str()
    );
    // Without udev (the VM), libdevmapper makes /dev/mapper/NAME itself,
    // which containerd's devmapper snapshotter opens.
    let made = Command::new("dmsetup")
        .args(["create", &name, "--table", &table])
        .env("DM_DISABLE_UDEV", "1")
        .status()
        .unwrap();
    assert!(made.success(), "dmsetup create {name}");
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
            let _ = Command::new("dmsetup")
                .args(["remove", "--force", &dev])
                .status();
        }
    }
}

/// `ctr run --rm` through thinbox serve vs containerd's built-in
/// snapshotters, everything on the btrfs at `fs`.
fn ctr_run_rm(fs: &Path) {
    let work = fs.join("ctr-bench");
    let tb_root = work.join("thinbox");
    let objects = work.join("thinbox-objects");
    std::fs::create_dir_all(&tb_root).unwrap();
    std::fs::create_dir_all(&objects).unwrap();
    let config = work.join("thinbox.toml");
    std::fs::write(
        &config,
        format!(
            "backend = \"btrfs\"\n[btrfs]\npath = \"{}\"\n",
            objects.display()
        ),
    )
    .unwrap();
    let socket = work.join("thinbox.sock");
    let _daemon = Reap(
        Command::new(thinbox_exe())
            .args([
                "--root",
                s(&tb_root),
                "--config",
                s(&config),
                "serve",
                "--socket",
                s(&socket),
                "--metrics-address",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "thinbox serve made no socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ctd = Containerd::start(
        &work.join("containerd"),
        &format!(
            "[proxy_plugins.thinbox]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            socket.display()
        ),
    );
    let ctr = |args: &[&str]| ctd.ctr_command(args).output().unwrap();
    let image = "docker.io/library/busybox:latest";
    let tar = work.join("busybox.tar");
    write::docker_tar(&busybox(image), &tar).unwrap();
    let peers = ["btrfs", "overlayfs"];
    for sn in ["thinbox"].iter().chain(peers.iter()) {
        let o = ctr(&["images", "import", "--snapshotter", sn, s(&tar)]);
        assert!(
            o.status.success(),
            "import for {sn}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let rounds: u64 = std::env::var("THINBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let n = std::cell::Cell::new(0u64);
    let run = |sn: &str| {
        n.set(n.get() + 1);
        let id = format!("bench-{}", n.get());
        let t = Instant::now();
        let o = ctr(&["run", "--rm", "--snapshotter", sn, image, &id, "/bin/true"]);
        let d = t.elapsed();
        assert!(
            o.status.success(),
            "ctr run on {sn}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        d
    };
    for peer in peers {
        let mut pairs = Pairs::default();
        // One untimed run each first: containerd's first task start is slow.
        run("thinbox");
        run(peer);
        for r in 0..rounds {
            pairs.round(r, &mut || run("thinbox"), &mut || run(peer));
        }
        println!("serve {}", pairs.report("ctr_run_rm", "thinbox", peer));
    }
}

/// busybox-static's binary with the applets `ctr run` needs.
fn busybox(name: &str) -> ImageSpec {
    let bin = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut entries = vec![Entry::dir("bin"), Entry::file("bin/busybox", &bin, 0o755)];
    for a in ["sh", "true", "echo"] {
        entries.push(Entry::symlink(&format!("bin/{a}"), "busybox"));
    }
    let config = ImageConfig {
        env: vec!["PATH=/bin".into()],
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        working_dir: "/".into(),
        user: String::new(),
        ..Default::default()
    };
    ImageSpec::new(config, vec![write::layer_tar(&entries).unwrap()]).name(name)
}
