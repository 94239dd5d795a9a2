//! Start-to-exit latency of `/bin/true` in a container: thinbox (the
//! `runner` crate) vs `runc run` and `crun run`, in one criterion run, on the
//! same prepared busybox rootfs, reported as ratios (thinbox / peer, lower
//! is better). Needs root, busybox-static, runc and (optionally) crun.
//!
//! thinbox is measured two ways:
//! - `thinbox-process`: this binary re-executes itself with
//!   `THINBOX_BENCH_CHILD=<bundle>`; the child loads the same OCI bundle the
//!   peers run (`ContainerConfig::from_bundle`), runs it with
//!   `Runtime::run` and exits with the container's code. The timed region
//!   is spawn-to-wait of that process, as for `runc run`/`crun run`: this
//!   is the apples-to-apples number.
//! - `thinbox-in-process`: `Runtime::run` called in this process (no exec
//!   of a runtime binary), for reference.
//!
//! Setup (rootfs, OCI bundle, the thinbox config, probing whether each peer
//! works here) happens outside the timed region. crun refuses hybrid cgroup
//! hosts; when a peer fails its probe run the benchmark says so and compares
//! against the others instead of failing. docs/benchmarks.md says how to run
//! it in the VM with pure cgroup v1 and v2.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use benches::Bundle;
use criterion::{criterion_group, Criterion, SamplingMode};
use runner::config::default_cgroup_path;
use runner::{ContainerConfig, Runtime};

/// Set in the re-executed child: the bundle directory it runs.
const CHILD_ENV: &str = "THINBOX_BENCH_CHILD";

/// The shared busybox bundle, and the two ways of running it.
struct Fixture(Bundle);

impl std::ops::Deref for Fixture {
    type Target = Bundle;
    fn deref(&self) -> &Bundle {
        &self.0
    }
}

impl Fixture {
    fn new() -> Fixture {
        Fixture(Bundle::new())
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

    /// One run of the bundle by this binary re-executed as a thinbox
    /// runtime process (see [`child`]); Err with its output on failure.
    fn thinbox_process(&self, exe: &Path) -> Result<(), String> {
        let out = Command::new(exe)
            .env(CHILD_ENV, &self.bundle)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "thinbox child: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// The re-executed child: what a thinbox runtime process does with a
/// bundle (load it, detect the cgroup layout, start, wait, remove the
/// cgroup), with a cgroup of its own. Exits with the container's code, or
/// 125 with the error on stderr.
fn child(bundle: &Path) -> ExitCode {
    let ran = (|| -> runner::Result<runner::ExitReport> {
        let mut config = ContainerConfig::from_bundle(bundle)?;
        config.cgroup_path =
            default_cgroup_path(&format!("thinbox-test-{}-bench", std::process::id()))?;
        Runtime::detect()?.run(&config)
    })();
    match ran {
        Ok(report) if report.cgroup_removed => {
            ExitCode::from(u8::try_from(report.exit_code).unwrap_or(125))
        }
        Ok(report) => {
            eprintln!("the cgroup was left behind: {report:?}");
            ExitCode::from(125)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(125)
        }
    }
}

/// Samples per benchmark (flat sampling: with short measurement times
/// under TCG each sample is one run).
const SAMPLES: usize = 20;

fn thinbox_once(rt: &Runtime, config: &ContainerConfig) -> Result<(), String> {
    let report = rt.run(config).map_err(|e| e.to_string())?;
    if report.exit_code == 0 && report.cgroup_removed {
        Ok(())
    } else {
        Err(format!("{report:?}"))
    }
}

/// One contender: its criterion name, one run of `/bin/true`, and every
/// timed batch as (elapsed, iterations). Criterion calls the routine for
/// its warm-up first, then once per sample, so ratios are taken over the
/// last SAMPLES batches only.
struct Contender<'a> {
    name: &'static str,
    once: Box<dyn Fn() -> Result<(), String> + 'a>,
    batches: Vec<(Duration, u64)>,
}

impl Contender<'_> {
    /// Mean seconds per run over the measured samples.
    fn per_run(&self) -> f64 {
        let measured = &self.batches[self.batches.len().saturating_sub(SAMPLES)..];
        let d: Duration = measured.iter().map(|b| b.0).sum();
        let n: u64 = measured.iter().map(|b| b.1).sum();
        d.as_secs_f64() / n.max(1) as f64
    }
}

fn bench(c: &mut Criterion) {
    let f = Fixture::new();
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let rt = Runtime::detect().expect("detect cgroup hierarchies");
    let config = ContainerConfig::builder(&f.rootfs)
        .id(format!("{}-thinbox", f.id))
        .args(["/bin/true"])
        .env("PATH", "/bin")
        .readonly_root(true)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("thinbox config");

    let mut ours: Vec<Contender<'_>> = vec![
        Contender {
            name: "thinbox-process",
            once: Box::new(|| f.thinbox_process(&exe)),
            batches: Vec::new(),
        },
        Contender {
            name: "thinbox-in-process",
            once: Box::new(|| thinbox_once(&rt, &config)),
            batches: Vec::new(),
        },
    ];
    // Every thinbox variant must work; probe them outside the timed region.
    for t in &ours {
        if let Err(e) = (t.once)() {
            panic!("container_start: {} does not work: {e}", t.name);
        }
    }
    // Probe each peer once; one that does not work here is left out.
    let mut peers: Vec<Contender<'_>> = Vec::new();
    let fixture = &f;
    for name in ["runc", "crun"] {
        match f.peer(name) {
            Ok(()) => peers.push(Contender {
                name,
                once: Box::new(move || fixture.peer(name)),
                batches: Vec::new(),
            }),
            Err(e) => println!("container_start: skipping {name}, it does not work here: {e}"),
        }
    }

    let mut g = c.benchmark_group("container_start");
    g.sample_size(SAMPLES).sampling_mode(SamplingMode::Flat);
    for t in ours.iter_mut().chain(peers.iter_mut()) {
        let Contender {
            name,
            once,
            batches,
        } = t;
        g.bench_function(*name, |b| {
            b.iter_custom(|n| {
                let t = Instant::now();
                for _ in 0..n {
                    once().unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                let d = t.elapsed();
                batches.push((d, n));
                d
            })
        });
    }
    g.finish();

    for t in &ours {
        let mine = t.per_run();
        for p in &peers {
            let theirs = p.per_run();
            println!(
                "container_start ratio {}/{} = {:.3}x ({:.2} ms vs {:.2} ms per /bin/true)",
                t.name,
                p.name,
                mine / theirs,
                mine * 1e3,
                theirs * 1e3
            );
        }
    }
    if !peers.iter().any(|p| p.name == "crun") {
        println!("container_start: no thinbox/crun ratio on this host (crun skipped above)");
    }
}

criterion_group!(benches, bench);

fn main() -> ExitCode {
    // First of all: the re-executed child runs one container and exits.
    if let Some(bundle) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&bundle));
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    ExitCode::SUCCESS
}
