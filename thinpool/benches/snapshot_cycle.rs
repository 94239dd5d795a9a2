//! create-snapshot + activate + deactivate + delete through the library vs
//! the same through `dmsetup` commands, in one run, reported as a ratio
//! (library / dmsetup; the library should be well under 1.0x). Needs root
//! and dm-thin: run it in the VM
//! (docs/benchmarks.md says how).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};

#[path = "../tests/common/cycle.rs"]
mod cycle;

fn bench(c: &mut Criterion) {
    let name = format!("thinbox-test-{}-bench", std::process::id());
    let mut f = cycle::Fixture::new(&name);
    let mut totals = [Duration::ZERO; 2];
    let mut counts = [0u64; 2];
    let mut g = c.benchmark_group("snapshot_cycle");
    g.bench_function("library", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                f.library_cycle();
            }
            let d = t.elapsed();
            totals[0] += d;
            counts[0] += n;
            d
        })
    });
    g.bench_function("dmsetup", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            for _ in 0..n {
                f.dmsetup_cycle();
            }
            let d = t.elapsed();
            totals[1] += d;
            counts[1] += n;
            d
        })
    });
    g.finish();
    let per = |i: usize| totals[i].as_secs_f64() / counts[i].max(1) as f64;
    println!(
        "snapshot_cycle ratio library/dmsetup = {:.3}x ({:.2} ms vs {:.2} ms per cycle)",
        per(0) / per(1),
        per(0) * 1e3,
        per(1) * 1e3
    );
    f.pool.destroy_deferred().expect("destroy pool");
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
