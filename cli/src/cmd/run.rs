//! `thinbox run`, `thinbox ps`, `thinbox rm`: parse, call
//! [`engine::containers`], print.

use std::time::Duration;

use clap::Args;
use engine::config::Bytes;
use engine::containers::{self, ContainerRecord, RunOptions};

use super::engine_options;

/// `thinbox run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Container name (default: a random `c-...`).
    #[arg(long)]
    pub name: Option<String>,
    /// Memory limit, e.g. 64M, 1G (bytes without a suffix).
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Read bandwidth limit on the root device, e.g. 10M (per second).
    #[arg(long, value_parser = parse_size)]
    pub io_read_bps: Option<u64>,
    /// Write bandwidth limit on the root device, e.g. 10M (per second).
    #[arg(long, value_parser = parse_size)]
    pub io_write_bps: Option<u64>,
    /// Mount the container's root read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Remove the container and its snapshot when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Commit the container's changes as a new image NAME when it exits.
    #[arg(long, value_name = "NAME")]
    pub commit: Option<String>,
    /// Extra environment variable KEY=VALUE (repeatable).
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// Kill the container after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// The most the container's root may hold, e.g. 1G (default: `[run]
    /// size` in the config, else 10G; on dm-thin the device size).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// The image (name, as `thinbox image ls` shows it).
    pub image: String,
    /// The command and its arguments (default: the image's Entrypoint and Cmd).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `thinbox ps` arguments.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show exited containers too.
    #[arg(long, short = 'a')]
    pub all: bool,
}

/// `thinbox rm` arguments.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill running containers first.
    #[arg(long, short = 'f')]
    pub force: bool,
    /// The containers to remove.
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// A size as `--memory` and the io flags take it: 64M, 1G, 512K or bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<Bytes>().map(|v| v.0).map_err(|e| e.to_string())
}

/// Runs `thinbox run`. Like `docker run`, thinbox exits with the
/// container's exit code when the container ran (its own failures use the
/// codes in `thinbox --help`).
pub fn run(global: &crate::Global, args: &RunArgs) -> anyhow::Result<()> {
    let opts = RunOptions {
        image: args.image.clone(),
        name: args.name.clone(),
        args: args.command.clone(),
        env: args.env.clone(),
        memory: args.memory,
        cpus: args.cpus,
        pids: args.pids,
        io_read_bps: args.io_read_bps,
        io_write_bps: args.io_write_bps,
        read_only: args.read_only,
        remove: args.rm,
        commit: args.commit.clone(),
        timeout: args.timeout.map(Duration::from_secs),
        size: args.size,
    };
    let outcome = containers::run(&engine_options(global), &opts, &mut |_| {})?;
    let r = &outcome.report;
    if global.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        let mut line = format!(
            "thinbox: container {} ended: {} (exit code {})",
            outcome.name,
            serde_json::to_value(r.reason)?
                .as_str()
                .unwrap_or("unknown"),
            r.exit_code
        );
        if r.reason == runner::ExitReason::RootSizeReached {
            if let Some(size) = outcome.root_size {
                line.push_str(&format!(", its root reached its size {}", Bytes(size)));
            }
        }
        if r.events.oom_kills > 0 {
            line.push_str(&format!(", {} OOM kill(s)", r.events.oom_kills));
        }
        if let Some(img) = &outcome.committed {
            line.push_str(&format!(", changes committed as image {}", img.name));
        }
        if outcome.removed {
            line.push_str(", removed");
        }
        eprintln!("{line}");
    }
    let code = r.exit_code.clamp(0, 255);
    if code != 0 {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    Ok(())
}

fn state_text(c: &ContainerRecord) -> String {
    match (&c.report, c.state) {
        (Some(r), _) => format!(
            "exited: {} ({})",
            serde_json::to_value(r.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            r.exit_code
        ),
        (None, s) => serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
    }
}

/// Runs `thinbox ps`.
pub fn ps(global: &crate::Global, args: &PsArgs) -> anyhow::Result<()> {
    let list: Vec<ContainerRecord> = containers::ps(&engine_options(global))?
        .into_iter()
        .filter(|c| args.all || c.state != containers::State::Exited)
        .collect();
    if global.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    println!("{:<20} {:<24} {:<8} STATE", "NAME", "IMAGE", "PID");
    for c in &list {
        let pid = c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<24} {:<8} {}",
            c.name,
            c.image,
            pid,
            state_text(c)
        );
    }
    Ok(())
}

/// Runs `thinbox rm`.
pub fn rm(global: &crate::Global, args: &RmArgs) -> anyhow::Result<()> {
    let removed = containers::rm(&engine_options(global), &args.names, args.force)?;
    if global.json {
        println!("{}", serde_json::json!({ "removed": removed }));
    } else {
        for n in removed {
            println!("{n}");
        }
    }
    Ok(())
}
