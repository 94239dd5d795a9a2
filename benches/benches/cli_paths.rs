//! End to end, as a user runs them: the release `thinbox` binary against
//! the tools users pick instead, interleaved pair by pair in one run
//! ([`benches::Pairs`]), on the root's default backend (a loop btrfs on the
//! build machines, a loopback dm-thin pool in the VM):
//!
//! - `run_rm`: `thinbox run --rm busybox -- /bin/true` vs `runc run` of a
//!   ready bundle of the same busybox (no snapshot work for runc);
//! - `snapshot_cycle`: `thinbox snapshot prepare K IMAGE` + `snapshot rm K`
//!   vs the raw tools doing the same on the same kind of storage: btrfs
//!   `subvolume snapshot` + `subvolume delete` of a busybox subvolume on the
//!   root's own btrfs; dm-thin `dmsetup message create_snap`, `create`,
//!   `remove`, `message delete` on a second pool made the same way;
//! - `import`: `thinbox image import` of the busybox layout (digests
//!   verified; the image and its layer removed between rounds, untimed) vs
//!   `tar -xzf` of the same layer into a fresh directory on the same
//!   filesystem (btrfs only: a dm-thin layer lands in ext4 on a thin device);
//! - `ls_scaling`: `thinbox snapshot ls` of a root with N snapshots
//!   (`THINBOX_BENCH_SNAPSHOTS`, default 1000) vs one with 10.
//!
//! Each line it prints is `cli_paths SCENARIO A/B = R.RRRx (...)`, the
//! median of the per-round ratios, which docs/benchmarks.md records. Needs
//! root, the release binary (`cargo build --release -p cli`, or
//! `THINBOX_BIN`), runc, busybox-static and the Debian archive for
//! `scripts/make-busybox-image.sh` (or a layout it made, named by
//! `THINBOX_BENCH_IMAGE`). Setup is outside every timed region.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use benches::{run, Bundle, Pairs};
use criterion::{Criterion, SamplingMode};

/// A state root driven through the binary.
struct Root {
    exe: PathBuf,
    dir: PathBuf,
    config: PathBuf,
}

impl Root {
    fn new(exe: &Path, parent: &Path, name: &str) -> Root {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = parent.join(format!("{name}.toml"));
        std::fs::write(&config, "").unwrap();
        Root {
            exe: exe.to_owned(),
            dir,
            config,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--root")
            .arg(&self.dir)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        run(&mut self.cmd(args))
    }

    /// Runs `args`, checked, and returns how long it took.
    fn timed(&self, args: &[&str]) -> Duration {
        timed(&mut self.cmd(args))
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("thinbox --json")
    }

    /// The backend record's `backend` (btrfs, devmapper, ...).
    fn backend(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("backend.toml")).unwrap_or_default();
        let v: toml::Value = toml::from_str(&text).expect("backend.toml");
        v["backend"].as_str().unwrap_or_default().to_owned()
    }
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn thinbox_exe() -> PathBuf {
    benches::thinbox_exe("cli_paths")
}

/// The busybox layout from the project's script (or the one named by
/// `THINBOX_BENCH_IMAGE`, for the VM, which cannot reach the archive), and
/// its one layer blob.
fn busybox_layout(dir: &Path) -> (PathBuf, PathBuf) {
    let out = match std::env::var_os("THINBOX_BENCH_IMAGE") {
        Some(given) => PathBuf::from(given),
        None => {
            let out = dir.join("busybox-oci");
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-busybox-image.sh");
            run(Command::new(script).arg(&out));
            out
        }
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| {
        out.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    (out, layer)
}

const SAMPLES: usize = 10;

/// Runs `rounds` interleaved rounds per criterion iteration and keeps the
/// pairs; criterion reports A's time.
fn pair_bench(
    c: &mut Criterion,
    name: &str,
    a: &mut dyn FnMut() -> Duration,
    b: &mut dyn FnMut() -> Duration,
) -> Pairs {
    let mut pairs = Pairs::default();
    let mut g = c.benchmark_group("cli_paths");
    g.sample_size(SAMPLES).sampling_mode(SamplingMode::Flat);
    let mut round = 0u64;
    g.bench_function(name, |bench| {
        bench.iter_custom(|n| {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let mut took = Duration::ZERO;
                pairs.round(
                    round,
                    &mut || {
                        let d = a();
                        took = d;
                        d
                    },
                    &mut *b,
                );
                total += took;
                round += 1;
            }
            total
        })
    });
    g.finish();
    pairs
}

fn main() -> ExitCode {
    let mut c = Criterion::default().configure_from_args();
    let exe = thinbox_exe();
    let bundle = Bundle::new();
    let work = bundle.dir().to_owned();
    let (layout, layer) = busybox_layout(&work);
    let root = Root::new(&exe, &work, "root");
    root.ok(&["image", "import", layout.to_str().unwrap()]);
    let backend = root.backend();
    let top = root.json(&["image", "inspect", "busybox"])["top_snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    println!("cli_paths: backend {backend}, thinbox {}", exe.display());
    let mut lines = Vec::new();

    // run --rm vs runc run.
    let mut next = 0u64;
    let p = pair_bench(
        &mut c,
        "run_rm",
        &mut || root.timed(&["run", "--rm", "busybox", "--", "/bin/true"]),
        &mut || {
            next += 1;
            let id = format!("{}-{next}", bundle.id);
            timed(
                Command::new("runc")
                    .args(["run", "--bundle"])
                    .arg(&bundle.bundle)
                    .arg(id),
            )
        },
    );
    lines.push(p.report("cli_paths run_rm", "thinbox", "runc"));

    // snapshot prepare + rm vs the raw tools.
    let mut k = 0u64;
    let mut thinbox_cycle = || {
        k += 1;
        let key = format!("k{k}");
        root.timed(&["snapshot", "prepare", &key, &top]) + root.timed(&["snapshot", "rm", &key])
    };
    match backend.as_str() {
        "btrfs" => {
            let mnt = root.dir.join("btrfs");
            let src = mnt.join("bench-src");
            run(Command::new("btrfs")
                .args(["subvolume", "create"])
                .arg(&src));
            run(Command::new("cp")
                .arg("-a")
                .arg(bundle.rootfs.join("."))
                .arg(&src));
            let dst = mnt.join("bench-dst");
            let p = pair_bench(&mut c, "snapshot_cycle", &mut thinbox_cycle, &mut || {
                timed(
                    Command::new("btrfs")
                        .args(["subvolume", "snapshot"])
                        .arg(&src)
                        .arg(&dst),
                ) + timed(
                    Command::new("btrfs")
                        .args(["subvolume", "delete"])
                        .arg(&dst),
                )
            });
            lines.push(p.report("cli_paths snapshot_cycle", "thinbox", "btrfs"));

            // import vs tar -x onto the same filesystem.
            let into = mnt.join("bench-tar");
            let mut fresh = 0u64;
            let p = pair_bench(
                &mut c,
                "import",
                &mut || {
                    root.ok(&["image", "rm", "busybox"]);
                    root.timed(&["image", "import", layout.to_str().unwrap()])
                },
                &mut || {
                    fresh += 1;
                    let d = into.join(fresh.to_string());
                    let _ = std::fs::remove_dir_all(&into);
                    std::fs::create_dir_all(&d).unwrap();
                    timed(
                        Command::new("tar")
                            .arg("-xzf")
                            .arg(&layer)
                            .arg("-C")
                            .arg(&d),
                    )
                },
            );
            lines.push(p.report("cli_paths import", "thinbox", "tar"));
        }
        "dm-thin" | "devmapper" => {
            // A second pool like the root's, driven with dmsetup alone.
            let raw = Root::new(&exe, &work, "raw");
            let pool = format!("thinbox-test-{}-rawpool", std::process::id());
            raw.ok(&[
                "pool",
                "create",
                "--name",
                &pool,
                "--data-size",
                "4G",
                "--metadata-size",
                "256M",
            ]);
            let msg = |m: &str| {
                Command::new("dmsetup")
                    .args(["message", &pool, "0", m])
                    .output()
            };
            msg("create_thin 1").unwrap();
            let thin = format!("{pool}-snap");
            // By device number: without udev there may be no /dev/mapper node.
            let num = run(Command::new("dmsetup").args([
                "info",
                "-c",
                "--noheadings",
                "-o",
                "major,minor",
                &pool,
            ]));
            let table = format!("0 2097152 thin {} 2", num.trim());
            let p = pair_bench(&mut c, "snapshot_cycle", &mut thinbox_cycle, &mut || {
                timed(Command::new("dmsetup").args(["message", &pool, "0", "create_snap 2 1"]))
                    + timed(Command::new("dmsetup").args(["create", &thin, "--table", &table]))
                    + timed(Command::new("dmsetup").args(["remove", &thin]))
                    + timed(Command::new("dmsetup").args(["message", &pool, "0", "delete 2"]))
            });
            lines.push(p.report("cli_paths snapshot_cycle", "thinbox", "dmsetup"));
            let _ = msg("delete 1");
            raw.ok(&["pool", "destroy", &pool]);
        }
        other => {
            println!("cli_paths: no raw-tool peer for backend {other}; snapshot_cycle skipped")
        }
    }

    // snapshot ls at N snapshots vs at 10.
    let n: usize = std::env::var("THINBOX_BENCH_SNAPSHOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let few = Root::new(&exe, &work, "few");
    let many = Root::new(&exe, &work, "many");
    for (r, count) in [(&few, 10), (&many, n)] {
        for i in 0..count {
            r.ok(&["snapshot", "prepare", &format!("s{i}")]);
        }
    }
    let p = pair_bench(
        &mut c,
        "ls_scaling",
        &mut || many.timed(&["snapshot", "ls"]),
        &mut || few.timed(&["snapshot", "ls"]),
    );
    lines.push(p.report(&format!("cli_paths ls_scaling {n}"), "ls", "ls10"));

    c.final_summary();
    for l in &lines {
        println!("{l}");
    }
    // The roots' btrfs mounts and loop devices go with the temp dir (a
    // dm-thin root's pool is left to the VM, which goes too).
    for r in [&root, &few, &many] {
        if r.backend() == "btrfs" {
            let _ = Command::new("umount").arg(r.dir.join("btrfs")).output();
            let image = r.dir.join("btrfs.img");
            let loops = Command::new("losetup").arg("-j").arg(&image).output();
            for line in loops.iter().flat_map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .into_owned()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            }) {
                if let Some(dev) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", dev]).output();
                }
            }
        }
    }
    ExitCode::SUCCESS
}
