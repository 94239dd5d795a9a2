//! The `thinbox` binary: parses, calls one library function, prints (human
//! or `--json`), and maps errors to exit codes.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod cmd;
mod exit;
mod logs;
mod print;
mod progress;

/// Options every subcommand takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// State directory (default /var/lib/thinbox, or `root` in the config file).
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Configuration file.
    #[arg(long, global = true, default_value = engine::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Machine-readable output (JSON) and no progress bars.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show the full error chain and a backtrace on failure.
    #[arg(long, global = true)]
    pub debug: bool,
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (i/o, a tool failed, damaged state, a container failed to start)
  2  usage: unknown command or flag, invalid value, bad configuration
  3  not found (pool, snapshot, image, container, file)
  4  already exists, or in use (busy, locked, has children, not empty)
  5  not root: run as root
  6  backend unavailable (no dm-thin, btrfs, zfs or a needed tool)
  7  out of space (pool full or below its free-space floor)
  8  a registry wants credentials, or refused them: log in
  9  a registry cannot be reached or does not answer in time

With no configuration, state lives under /var/lib/thinbox and the backend
is chosen on first use: a loopback dm-thin pool when the kernel has dm-thin,
else a loopback btrfs filesystem in ROOT/btrfs.img. The config file
(/etc/thinbox/config.toml) and flags override it.";

/// thinbox: dm thin-pools, copy-on-write snapshots and containers.
#[derive(Debug, Parser)]
#[command(name = "thinbox", version, after_long_help = EXIT_CODES)]
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
    /// Serves containerd's snapshots API on a unix socket (a proxy plugin).
    Serve(cmd::serve::ServeArgs),
    /// containerd: the config that makes thinbox its snapshotter.
    #[command(subcommand)]
    Containerd(cmd::serve::ContainerdCommand),
    /// Prometheus metrics of the root (pools, snapshots, containers).
    Metrics(cmd::metrics::MetricsArgs),
    /// Cross-checks the records with the kernel: pools, dm and loop
    /// devices, mounts, cgroups; each drift with its fix.
    Doctor(cmd::doctor::DoctorArgs),
    /// Prints the shell completion script for SHELL.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Writes the man pages (thinbox.1, thinbox-pool.1, ...) into DIR
    /// (for packages).
    #[command(hide = true)]
    Manpages {
        /// The directory to write into (made if missing).
        dir: PathBuf,
    },
}

/// Whether `--json` is among thinbox's own arguments (not after `--`,
/// where a container's command and its flags start).
fn wants_json(args: impl IntoIterator<Item = String>) -> bool {
    args.into_iter()
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

fn main() -> ExitCode {
    // Under --json even a usage error is one JSON object on stderr.
    let json = wants_json(std::env::args().skip(1));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if json && e.use_stderr() => {
            let message = e.to_string();
            let first = message.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("{}", exit::error_json("usage", 2, first));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let g = &cli.global;
    if g.debug {
        // Errors made from here on capture a backtrace, printed below.
        std::env::set_var("RUST_LIB_BACKTRACE", "1");
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .try_init();
    }
    let result = match &cli.command {
        Command::Pool(c) => cmd::pool::main(g, c),
        Command::Image(c) => cmd::image::main(g, c),
        Command::Snapshot(c) => cmd::snapshot::main(g, c),
        Command::Run(a) => cmd::run::run(g, a),
        Command::Ps(a) => cmd::run::ps(g, a),
        Command::Rm(a) => cmd::run::rm(g, a),
        Command::Serve(a) => cmd::serve::serve(g, a),
        Command::Containerd(c) => cmd::serve::containerd(g, c),
        Command::Metrics(a) => cmd::metrics::metrics(g, a),
        Command::Doctor(a) => cmd::doctor::doctor(g, a),
        Command::Completions { shell } => {
            cmd::docs::completions(&mut Cli::command(), *shell, &mut std::io::stdout())
        }
        Command::Manpages { dir } => cmd::docs::manpages(Cli::command(), dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let kind = engine::error::classify(e.as_ref());
            let message = e.to_string().replace('\n', " ");
            if g.debug {
                eprintln!("thinbox: {e:?}");
            } else if g.json {
                eprintln!(
                    "{}",
                    exit::error_json(exit::kind_name(kind), exit::code(kind), &message)
                );
            } else {
                eprintln!("thinbox: {message}");
            }
            ExitCode::from(exit::code(kind))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wants_json;

    #[test]
    fn json_is_thinboxs_flag_not_the_containers() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(wants_json(args("--json run bb:1")));
        assert!(wants_json(args("run --json bb:1 -- tool")));
        assert!(!wants_json(args("run bb:1 -- tool --json")));
        assert!(!wants_json(args("ps")));
    }
}
