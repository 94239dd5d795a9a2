//! `thinbox pool ...`: named thin-pools under `ROOT/pools` (see `engine::pools`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use engine::config::Bytes;
use engine::pools::{MonitorCheck, PoolKind, PoolReport};
use engine::{Error, ErrorKind};
use thinpool::pool::{AutoextendPolicy, LoopbackConfig, LvmConfig};
use thinpool::table::PoolFeatures;
use thinpool::{BlockSize, DataBlocks};

use super::{engine_options, human, print_json};
use crate::progress::Progress;
use crate::Global;

/// `thinbox pool` subcommands.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Creates a pool: loopback (sparse files, the default), direct-lvm on
    /// block devices (--lvm), or adopts an existing thin-pool (--adopt).
    Create(Box<CreateArgs>),
    /// Shows data and metadata use, mode, low-water mark and thresholds
    /// (all pools without NAME).
    Status {
        /// The pool.
        name: Option<String>,
    },
    /// Grows a loopback pool's data or metadata file to SIZE.
    Extend {
        /// The pool.
        name: String,
        /// New data size (a multiple of the block size).
        #[arg(long, value_name = "SIZE")]
        data: Option<Bytes>,
        /// New metadata size.
        #[arg(long, value_name = "SIZE")]
        metadata: Option<Bytes>,
    },
    /// Checks the pool's metadata with thin_check, on a metadata snapshot
    /// so the pool keeps working.
    Check {
        /// The pool.
        name: String,
    },
    /// Removes the pool, its thin devices, loop devices and files (an
    /// adopted pool is only forgotten).
    Destroy {
        /// The pool.
        name: String,
    },
    /// Keeps the pool healthy in the foreground: waits for its dm events
    /// and grows data and metadata past the autoextend threshold (see
    /// cli/systemd/thinbox-monitor@.service). Stops on SIGINT or SIGTERM.
    Monitor {
        /// The pool.
        name: String,
        /// Check once and exit.
        #[arg(long)]
        once: bool,
        /// Longest wait between checks, in seconds.
        #[arg(long, default_value_t = 5)]
        interval: u64,
    },
}

/// `thinbox pool create` arguments.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The pool's name (loopback: also its dm name; lvm: the thin-pool LV).
    #[arg(long, required_unless_present = "adopt")]
    pub name: Option<String>,
    /// Directory for a loopback pool's files (default ROOT/pools/NAME).
    #[arg(long, conflicts_with_all = ["lvm", "adopt"])]
    pub dir: Option<PathBuf>,
    /// Loopback data file size (sparse).
    #[arg(long, default_value = "100G", value_name = "SIZE")]
    pub data_size: Bytes,
    /// Loopback metadata file size (sparse).
    #[arg(long, default_value = "2G", value_name = "SIZE")]
    pub metadata_size: Bytes,
    /// Data block size: 64K..1G, a multiple of 64K.
    #[arg(long, default_value = "64K", value_name = "SIZE")]
    pub block_size: Bytes,
    /// Free data blocks below which the kernel raises an event (default: from the autoextend threshold).
    #[arg(long, value_name = "BLOCKS")]
    pub low_water_mark: Option<u64>,
    /// Fail writes when out of data space instead of queueing them (the default).
    #[arg(long, conflicts_with = "queue_if_no_space")]
    pub error_if_no_space: bool,
    /// Queue writes when out of data space (until the pool is extended).
    #[arg(long)]
    pub queue_if_no_space: bool,
    /// Do not zero newly provisioned blocks.
    #[arg(long)]
    pub skip_block_zeroing: bool,
    /// Disable discard support.
    #[arg(long)]
    pub ignore_discard: bool,
    /// Do not pass discards down to the data device.
    #[arg(long)]
    pub no_discard_passdown: bool,
    /// Do not use direct I/O on the loop devices.
    #[arg(long)]
    pub no_direct_io: bool,
    /// The most thin devices the metadata must hold (for the size check).
    #[arg(long, default_value_t = 10_000)]
    pub max_thins: u64,
    /// Grow the pool when this percent is used.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub autoextend_threshold: u8,
    /// Grow by this percent.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub autoextend_percent: u8,
    /// Refuse new thin devices while less than this percent is free.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub free_space_floor: u8,
    /// Make a direct-lvm pool on these block devices.
    #[arg(long, num_args = 1.., value_name = "DEVICE", conflicts_with = "adopt")]
    pub lvm: Vec<PathBuf>,
    /// Volume group for --lvm (default NAME-vg).
    #[arg(long, requires = "lvm")]
    pub vg: Option<String>,
    /// Data LV size in percent of the VG (--lvm).
    #[arg(long, default_value_t = 95, requires = "lvm")]
    pub data_percent: u8,
    /// Metadata LV size in percent of the VG (--lvm).
    #[arg(long, default_value_t = 1, requires = "lvm")]
    pub metadata_percent: u8,
    /// Chunk size for --lvm.
    #[arg(long, default_value = "512K", value_name = "SIZE", requires = "lvm")]
    pub chunk_size: Bytes,
    /// Zero new blocks (--lvm; off by default as Docker had it).
    #[arg(long, requires = "lvm")]
    pub zero: bool,
    /// Wipe signatures found on the --lvm devices instead of refusing them.
    #[arg(long, requires = "lvm")]
    pub force: bool,
    /// LVM profile directory (lvm.conf's config/profile_dir).
    #[arg(long, default_value = "/etc/lvm/profile", requires = "lvm")]
    pub profile_dir: PathBuf,
    /// Adopt the existing thin-pool dm device DM_NAME.
    #[arg(long, value_name = "DM_NAME")]
    pub adopt: Option<String>,
    /// Adopt even a pool that seems to be in use by someone else.
    #[arg(long, requires = "adopt")]
    pub allow_foreign: bool,
}

fn block_size(s: Bytes) -> anyhow::Result<BlockSize> {
    Ok(BlockSize::from_bytes(s).map_err(engine::Error::from)?)
}

fn create(g: &Global, a: &CreateArgs) -> anyhow::Result<()> {
    let pools = engine_options(g).pools()?;
    let policy = AutoextendPolicy {
        threshold_percent: a.autoextend_threshold,
        extend_percent: a.autoextend_percent,
        ..AutoextendPolicy::default()
    };
    let opened = if let Some(dm_name) = &a.adopt {
        let name = a.name.clone().unwrap_or_else(|| dm_name.clone());
        pools.adopt(&name, dm_name, a.allow_foreign, &policy, a.free_space_floor)?
    } else {
        let name = a.name.clone().unwrap_or_default();
        if !a.lvm.is_empty() {
            let vg = a.vg.clone().unwrap_or_else(|| format!("{name}-vg"));
            let mut cfg = LvmConfig::new(a.lvm.clone(), vg, name.clone(), PathBuf::new());
            cfg.data_percent = a.data_percent;
            cfg.metadata_percent = a.metadata_percent;
            cfg.chunk_size = block_size(a.chunk_size)?;
            cfg.zero = a.zero;
            cfg.force = a.force;
            cfg.autoextend = policy;
            cfg.profile_dir = a.profile_dir.clone();
            let progress = Progress::new(!g.json);
            let _s = progress.spinner(format!("making lvm thin-pool {name}"));
            pools.create_lvm(&name, &cfg, a.free_space_floor)?
        } else {
            let dir = a.dir.clone().unwrap_or_else(|| pools.dir_of(&name));
            let mut cfg = LoopbackConfig::new(name.clone(), dir);
            cfg.data_size = a.data_size;
            cfg.metadata_size = a.metadata_size;
            cfg.block_size = block_size(a.block_size)?;
            cfg.low_water_mark = a.low_water_mark.map(DataBlocks::new);
            cfg.autoextend = Some(policy);
            cfg.features = PoolFeatures {
                skip_block_zeroing: a.skip_block_zeroing,
                ignore_discard: a.ignore_discard,
                no_discard_passdown: a.no_discard_passdown,
                read_only: false,
                error_if_no_space: !a.queue_if_no_space,
            };
            cfg.max_thins = a.max_thins;
            cfg.direct_io = !a.no_direct_io;
            let progress = Progress::new(!g.json);
            let _s = progress.spinner(format!("making loopback thin-pool {name}"));
            pools.create_loopback(&cfg, &policy, a.free_space_floor)?
        }
    };
    let name = opened.record.name.clone();
    drop(opened);
    let report = pools.status(&name)?;
    if g.json {
        print_json(&report)
    } else {
        println!("created {} pool {name}", report.kind);
        print_report(&report);
        Ok(())
    }
}

fn space(s: Option<engine::pools::Space>) -> String {
    match s {
        Some(s) => format!(
            "{}/{} ({}%)",
            human(s.used_bytes),
            human(s.total_bytes),
            s.used_percent
        ),
        None => "-".to_owned(),
    }
}

fn print_report(r: &PoolReport) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    println!("name:                 {}", r.name);
    println!("kind:                 {}", r.kind);
    println!("dm device:            {}", r.dm_name);
    println!("mode:                 {}", r.mode);
    println!("data:                 {}", space(r.data));
    println!("metadata:             {}", space(r.metadata));
    println!("block size:           {}", opt(r.block_size.map(human)));
    println!(
        "low-water mark:       {}",
        opt(r.low_water_mark.map(|b| format!("{b} blocks")))
    );
    println!(
        "needs check:          {}",
        if r.needs_check { "yes" } else { "no" }
    );
    println!("when full:            {}", opt(r.no_space_policy.clone()));
    println!(
        "autoextend:           at {}% used, by {}%",
        r.autoextend_threshold, r.autoextend_percent
    );
    println!("free-space floor:     {}%", r.free_space_floor);
}

fn status(g: &Global, name: Option<&str>) -> anyhow::Result<()> {
    let pools = engine_options(g).pools()?;
    match name {
        Some(n) => {
            let r = pools.status(n)?;
            if g.json {
                print_json(&r)
            } else {
                print_report(&r);
                Ok(())
            }
        }
        None => {
            let all = pools
                .names()?
                .iter()
                .map(|n| pools.status(n))
                .collect::<engine::Result<Vec<_>>>()?;
            if g.json {
                return print_json(&all);
            }
            println!(
                "{:<24} {:<9} {:<18} {:<22} {:<22}",
                "NAME", "KIND", "MODE", "DATA", "METADATA"
            );
            for r in &all {
                println!(
                    "{:<24} {:<9} {:<18} {:<22} {:<22}",
                    r.name,
                    r.kind.to_string(),
                    r.mode,
                    space(r.data),
                    space(r.metadata)
                );
            }
            Ok(())
        }
    }
}

/// Blocks SIGINT and SIGTERM and returns a flag a thread sets when one arrives.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use nix::sys::signal::{SigSet, Signal};
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    Ok(stop)
}

fn print_check(g: &Global, name: &str, once: bool, c: &MonitorCheck) {
    if c.grew() || once {
        if g.json {
            println!(
                "{}",
                serde_json::json!({
                    "pool": name,
                    "extended_data_to": c.extended_data_to,
                    "extended_metadata_to": c.extended_metadata_to,
                    "status": c.status,
                })
            );
        } else {
            if let Some(d) = c.extended_data_to {
                println!("pool {name}: grew data to {}", human(d));
            }
            if let Some(m) = c.extended_metadata_to {
                println!("pool {name}: grew metadata to {}", human(m));
            }
            println!(
                "pool {name}: {} data {} metadata {}",
                c.status.mode,
                space(c.status.data),
                space(c.status.metadata)
            );
        }
    }
    if c.needs_attention() {
        eprintln!(
            "thinbox: pool {name} is in mode {}{}: run `thinbox pool check {name}`",
            c.status.mode,
            if c.status.needs_check {
                " and needs a check"
            } else {
                ""
            }
        );
    }
}

fn monitor(g: &Global, name: &str, once: bool, interval: u64) -> anyhow::Result<()> {
    let pools = engine_options(g).pools()?;
    let stop = stop_on_signals()?;
    let rec = pools.record(name)?;
    if !g.json && rec.kind != PoolKind::Adopted {
        let policy = rec.policy();
        println!(
            "monitoring pool {name}: growing data and metadata by {}% at {}% used",
            policy.extend_percent, policy.threshold_percent
        );
    }
    pools.monitor(name, &stop, Duration::from_secs(interval), once, &mut |c| {
        print_check(g, name, once, &c)
    })?;
    Ok(())
}

/// Runs `thinbox pool ...`.
pub fn main(g: &Global, cmd: &PoolCommand) -> anyhow::Result<()> {
    match cmd {
        PoolCommand::Create(a) => create(g, a),
        PoolCommand::Status { name } => status(g, name.as_deref()),
        PoolCommand::Extend {
            name,
            data,
            metadata,
        } => {
            if data.is_none() && metadata.is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "nothing to extend: give --data SIZE and/or --metadata SIZE",
                )
                .into());
            }
            let pools = engine_options(g).pools()?;
            pools.extend(name, *data, *metadata)?;
            let r = pools.status(name)?;
            if g.json {
                print_json(&r)
            } else {
                println!("extended pool {name}");
                print_report(&r);
                Ok(())
            }
        }
        PoolCommand::Check { name } => {
            engine_options(g).pools()?.check(name)?;
            if g.json {
                print_json(&serde_json::json!({ "pool": name, "metadata": "ok" }))
            } else {
                println!("pool {name}: metadata ok");
                Ok(())
            }
        }
        PoolCommand::Destroy { name } => {
            engine_options(g).destroy_pool(name)?;
            if g.json {
                print_json(&serde_json::json!({ "pool": name, "destroyed": true }))
            } else {
                println!("destroyed pool {name}");
                Ok(())
            }
        }
        PoolCommand::Monitor {
            name,
            once,
            interval,
        } => monitor(g, name, *once, *interval),
    }
}
