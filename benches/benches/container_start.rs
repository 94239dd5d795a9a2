//! Start-to-exit latency of `/bin/true` in a container: thinbox (the
//! `runner` crate) vs `runc run` and `crun run`, in one criterion run, on the
//! same prepared busybox rootfs, reported as ratios (thinbox / peer, lower
//! is better). Needs root, busybox-static, runc and (optionally) crun.
//!
//! Setup (rootfs, OCI bundles, the thinbox config, probing whether each peer
//! works here) happens outside the timed region. crun refuses hybrid cgroup
//! hosts; when a peer fails its probe run the benchmark says so and compares
//! against the others instead of failing. docs/benchmarks.md says how to run
//! it in the VM with pure cgroup v1 and v2.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use runner::{ContainerConfig, Runtime};

/// A busybox rootfs plus one OCI bundle directory per peer runtime.
struct Fixture {
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
    bundle: PathBuf,
    id: String,
}

impl Fixture {
    fn new() -> Fixture {
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("thinbox-test-{pid}-bench-"))
            .tempdir()
            .expect("temp dir");
        let bundle = dir.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("copy /bin/busybox (install busybox-static)");
        // In a chroot so the applet links point at /bin/busybox inside the
        // rootfs, not at the temp dir's host path.
        run(Command::new("chroot")
            .arg(&rootfs)
            .args(["/bin/busybox", "--install", "-s", "/bin"]));
        if !rootfs.join("bin/true").exists() {
            symlink("busybox", rootfs.join("bin/true")).unwrap();
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();

        // `runc spec` writes the default bundle config; crun reads the same.
        run(Command::new("runc").arg("spec").current_dir(&bundle));
        let path = bundle.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        spec["process"]["args"] = serde_json::json!(["/bin/true"]);
        spec["process"]["terminal"] = serde_json::json!(false);
        spec["root"]["path"] = serde_json::json!(rootfs.to_str().unwrap());
        fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

        Fixture {
            _dir: dir,
            rootfs,
            bundle,
            id: format!("thinbox-test-{pid}-bench"),
        }
    }

    /// One `<runtime> run` of the bundle; Err with its output on failure.
    fn peer(&self, runtime: &str) -> Result<(), String> {
        let out = Command::new(runtime)
            .args(["run", "--bundle"])
            .arg(&self.bundle)
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{runtime}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            // A failed start can leave the container's state behind.
            let _ = Command::new(runtime)
                .args(["delete", "--force", &self.id])
                .output();
            Err(format!(
                "{runtime} run: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Samples per benchmark (criterion's minimum; runs are slow under TCG).
const SAMPLES: usize = 10;

fn thinbox_once(rt: &Runtime, config: &ContainerConfig) {
    let report = rt.run(config).expect("thinbox run");
    assert_eq!(report.exit_code, 0, "{report:?}");
    assert!(report.cgroup_removed, "{report:?}");
}

fn bench(c: &mut Criterion) {
    let f = Fixture::new();
    let rt = Runtime::detect().expect("detect cgroup hierarchies");
    let config = ContainerConfig::builder(&f.rootfs)
        .id(format!("{}-thinbox", f.id))
        .args(["/bin/true"])
        .env("PATH", "/bin")
        .readonly_root(true)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("thinbox config");
    thinbox_once(&rt, &config);

    // Probe each peer once, outside the timed region.
    let mut peers: Vec<&str> = Vec::new();
    for name in ["runc", "crun"] {
        match f.peer(name) {
            Ok(()) => peers.push(name),
            Err(e) => println!("container_start: skipping {name}, it does not work here: {e}"),
        }
    }

    // Every timed batch as (elapsed, iterations); criterion calls the
    // routine for its warm-up first, then once per sample, so the ratio is
    // taken over the last SAMPLES batches only.
    let mut thinbox: Vec<(Duration, u64)> = Vec::new();
    let mut peer_batches: Vec<Vec<(Duration, u64)>> = vec![Vec::new(); peers.len()];
    let mut g = c.benchmark_group("container_start");
    g.sample_size(SAMPLES);
    g.bench_function("thinbox", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                thinbox_once(&rt, &config);
            }
            let d = t.elapsed();
            thinbox.push((d, n));
            d
        })
    });
    for (name, total) in peers.iter().zip(peer_batches.iter_mut()) {
        g.bench_function(*name, |b| {
            b.iter_custom(|n| {
                let t = Instant::now();
                for _ in 0..n {
                    f.peer(name).unwrap();
                }
                let d = t.elapsed();
                total.push((d, n));
                d
            })
        });
    }
    g.finish();

    let per = |batches: &[(Duration, u64)]| {
        let measured = &batches[batches.len().saturating_sub(SAMPLES)..];
        let d: Duration = measured.iter().map(|b| b.0).sum();
        let n: u64 = measured.iter().map(|b| b.1).sum();
        d.as_secs_f64() / n.max(1) as f64
    };
    let ours = per(&thinbox);
    for (name, batches) in peers.iter().zip(&peer_batches) {
        let theirs = per(batches);
        println!(
            "container_start ratio thinbox/{name} = {:.3}x ({:.2} ms vs {:.2} ms per /bin/true)",
            ours / theirs,
            ours * 1e3,
            theirs * 1e3
        );
    }
    if !peers.contains(&"crun") {
        println!("container_start: no thinbox/crun ratio on this host (crun skipped above)");
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
