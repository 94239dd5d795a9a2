//! `thinbox image pull` against the tools users pull with, from one real
//! registry (Debian's docker-registry on 127.0.0.1, plain http), of one
//! image of about 200 MB in 4 layers and 4,000 files, interleaved round
//! by round with [`benches::Pairs`]:
//!
//! - `ctr images pull --plain-http` (Debian's containerd 1.6, overlayfs,
//!   which unpacks as it pulls), its root on the same loop btrfs as
//!   thinbox's, the image removed with `ctr images rm --sync` (content
//!   and snapshots garbage-collected) before each round;
//! - `skopeo copy docker://… oci:DIR` then `thinbox image import DIR`,
//!   the path users had before `image pull`.
//!
//! thinbox pulls onto btrfs (`[btrfs] path` on the same filesystem), the
//! image removed before each round. Peak RSS of each contender is read
//! with GNU time (`/usr/bin/time -f %M`). It prints `pull … A/B = R.RRRx`
//! lines, medians of the per-round ratios, which docs/benchmarks.md
//! records. `THINBOX_BENCH_RUNS` sets the rounds (default 5). Needs root,
//! the release binary (`cargo build --release -p cli`, or `THINBOX_BIN`),
//! docker-registry, skopeo and containerd (scripts/setup.sh).
#![forbid(unsafe_code)]

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use benches::run as run_ok;

use benches::Pairs;
use integration::containerd::Containerd;
use integration::fixtures::{run, sparse_file, temp_dir, LoopDevice, Mount};
use integration::registry::{s, Registry, RegistryOptions};
use snapshotter::image::write::{self, Compression, Entry, ImageSpec, LayerSpec};
use snapshotter::image::ImageConfig;

const LAYERS: usize = 4;
const FILES: usize = 1000;
const FILE_BYTES: usize = 48 << 10;

/// Layer `n`: FILES files, each half noise (incompressible) and half zeros.
fn layer(n: usize) -> LayerSpec {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1);
    let mut entries = vec![Entry::dir(&format!("l{n}"))];
    for f in 0..FILES {
        let mut data = vec![0u8; FILE_BYTES];
        for b in data[..FILE_BYTES / 2].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        entries.push(Entry::file(&format!("l{n}/f{f}"), &data, 0o644));
    }
    LayerSpec {
        tar: write::layer_tar(&entries).unwrap(),
        compression: Compression::Gzip,
    }
}

/// Runs `cmd` under GNU time: how long it took and its peak RSS in KiB.
fn timed(cmd: &mut Command) -> (Duration, u64) {
    let mut t = Command::new("/usr/bin/time");
    t.args(["-f", "%M"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            t.env(k, v);
        }
    }
    t.stdout(Stdio::null());
    let start = Instant::now();
    let out = t.output().expect("/usr/bin/time (Debian's time package)");
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {err}");
    let rss = err
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (took, rss)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let rounds: u64 = std::env::var("THINBOX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let thinbox = benches::thinbox_exe("pull");
    let dir = temp_dir();
    let img = dir.path().join("btrfs.img");
    sparse_file(&img, 16 << 30);
    let dev = LoopDevice::attach(&img);
    run("mkfs.btrfs", &["-q", dev.as_str()]);
    let mnt = Mount::new(dev.as_str(), &dir.path().join("btrfs"), Some("btrfs"), "");
    let fs = mnt.target.clone();

    let reg = Registry::start(RegistryOptions::default());
    let config = ImageConfig {
        env: vec!["PATH=/bin".into()],
        cmd: vec!["/bin/sh".into()],
        ..ImageConfig::default()
    };
    let spec = ImageSpec {
        layers: (0..LAYERS).map(layer).collect(),
        ..ImageSpec::new(config, Vec::new())
    };
    let layout = fs.join("layout");
    write::oci_dir(&spec, &layout).unwrap();
    reg.push(&layout, "bench/big:1", false);
    let reference = format!("{}/bench/big:1", reg.host);
    let blobs: u64 = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "pull image: {LAYERS} layers, {} files, {} MiB uncompressed, {} MiB of blobs",
        LAYERS * FILES,
        (LAYERS * FILES * FILE_BYTES) >> 20,
        blobs >> 20
    );

    // thinbox on btrfs, in a directory of the shared filesystem.
    let tb_root = fs.join("thinbox");
    let objects = fs.join("thinbox-objects");
    std::fs::create_dir_all(&tb_root).unwrap();
    std::fs::create_dir_all(&objects).unwrap();
    let tb_config = fs.join("thinbox.toml");
    std::fs::write(
        &tb_config,
        format!(
            "backend = \"btrfs\"\n[btrfs]\npath = \"{}\"\n",
            objects.display()
        ),
    )
    .unwrap();
    let tb = |args: &[&str]| {
        let mut c = Command::new(&thinbox);
        c.args(["--root", s(&tb_root), "--config", s(&tb_config)])
            .args(args);
        c
    };
    let tb_rm = || {
        let _ = tb(&["image", "rm", &reference]).output();
    };

    // containerd with its overlayfs snapshotter, its root on the same btrfs.
    let ctd = Containerd::start(&fs.join("containerd"), "");
    let ctr = |args: &[&str]| ctd.ctr_command(args);
    let ctr_rm = || {
        let _ = ctr(&["images", "rm", "--sync", &reference]).output();
    };
    let oci = fs.join("skopeo-oci");

    let mut rss_tb = Vec::new();
    let mut rss_ctr = Vec::new();
    let mut rss_import = Vec::new();
    let mut vs_ctr = Pairs::default();
    let mut vs_skopeo = Pairs::default();
    let pull_tb = |rss: &mut Vec<u64>| {
        tb_rm();
        let (d, m) = timed(&mut tb(&["image", "pull", &reference]));
        rss.push(m);
        d
    };
    // One untimed pull each first (page cache, containerd's first pull).
    pull_tb(&mut Vec::new());
    ctr_rm();
    let ctr_pull = [
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "overlayfs",
        &reference,
    ];
    run_ok(&mut ctr(&ctr_pull));
    for r in 0..rounds {
        vs_ctr.round(r, &mut || pull_tb(&mut rss_tb), &mut || {
            ctr_rm();
            let (d, m) = timed(&mut ctr(&ctr_pull));
            rss_ctr.push(m);
            d
        });
        vs_skopeo.round(r, &mut || pull_tb(&mut Vec::new()), &mut || {
            tb_rm();
            let _ = std::fs::remove_dir_all(&oci);
            let (copy, _) = timed(Command::new("skopeo").args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{reference}"),
                &format!("oci:{}", s(&oci)),
            ]));
            let (import, m) = timed(&mut tb(&["image", "import", s(&oci), "--name", &reference]));
            rss_import.push(m);
            copy + import
        });
    }
    println!(
        "pull {}",
        vs_ctr.report("pull_and_unpack", "thinbox", "ctr")
    );
    println!(
        "pull {}",
        vs_skopeo.report("pull_and_unpack", "thinbox", "skopeo+import")
    );
    println!(
        "pull peak RSS (median): thinbox pull {} MiB, ctr pull {} MiB, thinbox import {} MiB",
        median(rss_tb) >> 10,
        median(rss_ctr) >> 10,
        median(rss_import) >> 10
    );
    drop(reg);
    drop(mnt);
    drop(dev);
    ExitCode::SUCCESS
}
