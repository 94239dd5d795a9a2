//! The `thinbox` binary: parses, calls one library function, prints (human
//! or `--json`), and maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Options every subcommand takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// State directory (default /var/lib/thinbox, or `root` in the config file).
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Configuration file.
    #[arg(long, global = true, default_value = "/etc/thinbox/config.toml")]
    pub config: PathBuf,
    /// Machine-readable output (JSON) and no progress bars.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show the full error chain and a backtrace on failure.
    #[arg(long, global = true)]
    pub debug: bool,
}

/// thinbox: dm thin-pools, copy-on-write snapshots and containers.
#[derive(Debug, Parser)]
#[command(name = "thinbox", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Thin-pools: create, status, extend, check, destroy, monitor.
    #[command(subcommand)]
    Pool(cmd::pool::PoolCommand),
    /// Images: import, ls, inspect, rm.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Snapshots: the snapshotter API from the shell.
    #[command(subcommand)]
    Snapshot(cmd::snapshot::SnapshotCommand),
    /// Runs a container from an image.
    Run(cmd::run::RunArgs),
    /// Lists containers.
    Ps(cmd::run::PsArgs),
    /// Removes containers.
    Rm(cmd::run::RmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = &cli.global;
    let result = match &cli.command {
        Command::Pool(c) => cmd::pool::main(g, c),
        Command::Image(c) => cmd::image::main(g, c),
        Command::Snapshot(c) => cmd::snapshot::main(g, c),
        Command::Run(a) => cmd::run::run(g, a),
        Command::Ps(a) => cmd::run::ps(g, a),
        Command::Rm(a) => cmd::run::rm(g, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if g.debug {
                eprintln!("thinbox: {e:?}");
            } else {
                eprintln!("thinbox: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
