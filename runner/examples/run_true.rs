//! Starts `/bin/true` in a container N times on a prepared rootfs and prints
//! the mean start-to-exit time: a quick check before the criterion
//! benchmark. Usage: `run_true ROOTFS [N]` (as root).

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rootfs = args.next().ok_or("usage: run_true ROOTFS [N]")?;
    let n: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let runtime = runner::Runtime::detect()?;
    let start = Instant::now();
    for i in 0..n {
        let config = runner::ContainerConfig::builder(&rootfs)
            .id(format!("run-true-{}-{i}", std::process::id()))
            .args(["/bin/true"])
            .build()?;
        let report = runtime.run(&config)?;
        if report.exit_code != 0 {
            return Err(format!("/bin/true failed: {}", report.to_json()).into());
        }
    }
    let mean = start.elapsed() / n;
    println!(
        "{n} runs, mean start-to-exit {:.1} ms",
        mean.as_secs_f64() * 1e3
    );
    Ok(())
}
