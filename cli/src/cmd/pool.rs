//! `thinbox pool ...`: named thin-pools under `ROOT/pools` (see `engine::pools`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use engine::config::Bytes;
use engine::pools::{
    EngineSettings, HandOver, LentTo, MonitorCheck, PoolKind, PoolReport, SizeChange,
};
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
    /// Grows a pool's data and/or metadata to SIZE or by +SIZE: a loopback
    /// pool's files, or a direct-lvm pool's LVs with lvextend in its VG.
    Extend {
        /// The pool.
        name: String,
        /// New data size, or +SIZE to grow by (loopback: a multiple of the block size).
        #[arg(long, value_name = "SIZE|+SIZE", allow_hyphen_values = true)]
        data: Option<SizeChange>,
        /// New metadata size, or +SIZE to grow by.
        #[arg(long, value_name = "SIZE|+SIZE", allow_hyphen_values = true)]
        metadata: Option<SizeChange>,
    },
    /// Lends a pool to containerd's devmapper snapshotter or Docker's
    /// devicemapper driver (they make its thin devices; thinbox keeps the
    /// pool), or takes it back with --to thinbox; prints (with --write,
    /// merges) the engine's configuration.
    HandOver(HandOverArgs),
    /// Checks the pool's metadata with thin_check, on a metadata snapshot
    /// so the pool keeps working.
    Check {
        /// The pool.
        name: String,
    },
    /// Repairs damaged metadata (loopback pools): thin_repair into fresh
    /// space, swapped in with the pool offline; the damaged copy is kept.
    Repair {
        /// The pool.
        name: String,
    },
    /// Removes the pool, its thin devices, loop devices and files (an
    /// adopted pool is only forgotten).
    Destroy {
        /// The pool.
        name: String,
        /// Destroy a pool lent to another engine, with its thin devices.
        #[arg(long)]
        force: bool,
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
        /// Log lines (warnings, lvm2's failures) as text or JSON.
        #[arg(long, value_enum, default_value_t)]
        log_format: crate::logs::LogFormat,
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
    /// Lend the new pool to this engine (see `thinbox pool hand-over`);
    /// writes then queue when the pool is full unless --error-if-no-space,
    /// giving `thinbox pool monitor` time to grow it. With --json, prints
    /// {"status": ..., "hand_over": ...}.
    #[arg(long = "for", value_name = "ENGINE", value_parser = ["containerd", "docker"])]
    pub for_engine: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `thinbox pool hand-over` arguments.
#[derive(Debug, Args)]
pub struct HandOverArgs {
    /// The pool.
    pub name: String,
    /// The engine that gets the pool, or thinbox to take it back.
    #[arg(long, value_parser = ["containerd", "docker", "thinbox"])]
    pub to: String,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// How the engine a pool is lent to is configured.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Merge the settings into the engine's config file (a copy of the
    /// file as it was is kept beside it).
    #[arg(long)]
    pub write: bool,
    /// The engine's config file (default /etc/containerd/config.toml or
    /// /etc/docker/daemon.json).
    #[arg(long, value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// containerd: every snapshot's size (base_image_size).
    #[arg(long, default_value = "10G", value_name = "SIZE")]
    pub base_size: Bytes,
    /// containerd: the snapshots' filesystem (fs_type).
    #[arg(long, default_value = "ext4", value_parser = ["ext4", "xfs"])]
    pub fs: String,
    /// containerd: the snapshotter's metadata directory (root_path).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/containerd/io.containerd.snapshotter.v1.devmapper"
    )]
    pub root_path: PathBuf,
    /// containerd: keep removed snapshots' blocks allocated (discard_blocks = false).
    #[arg(long)]
    pub no_discard_blocks: bool,
    /// containerd: remove devices in the snapshotter's cleanup (async_remove).
    #[arg(long)]
    pub async_remove: bool,
}

impl EngineArgs {
    fn settings(&self) -> EngineSettings {
        EngineSettings {
            root_path: self.root_path.clone(),
            base_size: self.base_size,
            fs: self.fs.clone(),
            discard_blocks: !self.no_discard_blocks,
            async_remove: self.async_remove,
            config_file: self.config_file.clone(),
            write: self.write,
        }
    }
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
    let lend: Option<LentTo> = a.for_engine.as_deref().map(str::parse).transpose()?;
    // For another engine, writes queue while the monitor grows the pool.
    let error_when_full = if a.queue_if_no_space {
        false
    } else {
        a.error_if_no_space || lend.is_none()
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
            cfg.error_when_full = error_when_full;
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
                error_if_no_space: error_when_full,
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
    let handed = match lend {
        Some(to) => {
            Some(engine_options(g).hand_over_pool(&name, Some(to), &a.engine.settings())?)
        }
        None => None,
    };
    let report = pools.status(&name)?;
    if g.json {
        return match handed {
            Some(h) => print_json(&serde_json::json!({ "status": report, "hand_over": h })),
            None => print_json(&report),
        };
    }
    println!("created {} pool {name}", report.kind);
    print_report(&report);
    if let Some(h) = handed {
        print_hand_over(&h);
    }
    Ok(())
}

fn print_hand_over(h: &HandOver) {
    let name = &h.pool;
    let Some(to) = h.lent_to else {
        println!("pool {name} is thinbox's again");
        return;
    };
    println!(
        "pool {name} is lent to {to}: it makes the thin devices, thinbox keeps the pool (run `thinbox pool monitor {name}`, or enable thinbox-monitor@{name}.service)"
    );
    let file = h
        .config_file
        .as_deref()
        .map_or_else(String::new, |f| f.display().to_string());
    if h.written {
        match &h.backup {
            Some(b) => println!("merged into {file} (the file as it was: {})", b.display()),
            None => println!("wrote {file}"),
        }
    } else if let Some(c) = &h.config {
        println!(
            "{to}'s settings for the pool (merge them into {file}, or run again with --write):"
        );
        print!("{c}");
    }
    match to {
        LentTo::Containerd => println!(
            "restart containerd to use it (`--snapshotter devmapper`); on a host without udev, run containerd with DM_DISABLE_UDEV=1"
        ),
        LentTo::Docker => println!("restart dockerd to use it"),
    }
}

fn hand_over(g: &Global, a: &HandOverArgs) -> anyhow::Result<()> {
    let to = match a.to.as_str() {
        "thinbox" => None,
        t => Some(t.parse::<LentTo>()?),
    };
    let h = engine_options(g).hand_over_pool(&a.name, to, &a.engine.settings())?;
    if g.json {
        print_json(&h)
    } else {
        print_hand_over(&h);
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
    println!(
        "free-space floor:     {}%{}",
        r.free_space_floor,
        if r.below_floor { " (less is free)" } else { "" }
    );
    if let Some(to) = r.lent_to {
        println!("lent to:              {to}");
    }
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
    if c.status.below_floor {
        eprintln!(
            "thinbox: pool {name} has less than its {}% free-space floor free: extend it (`thinbox pool extend {name} --data +SIZE`) or free space",
            c.status.free_space_floor
        );
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

fn monitor(
    g: &Global,
    name: &str,
    once: bool,
    interval: u64,
    log_format: crate::logs::LogFormat,
) -> anyhow::Result<()> {
    crate::logs::init(log_format, g.debug);
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
            let x = pools.extend(name, *data, *metadata)?;
            let r = pools.status(name)?;
            if g.json {
                // The status, as before, with what grew beside it.
                let mut v = serde_json::to_value(&r)?;
                v["extension"] = serde_json::to_value(&x)?;
                print_json(&v)
            } else {
                println!(
                    "extended pool {name}: data {} -> {}, metadata {} -> {}",
                    human(x.data_before),
                    human(x.data_after),
                    human(x.metadata_before),
                    human(x.metadata_after)
                );
                print_report(&r);
                Ok(())
            }
        }
        PoolCommand::Check { name } => {
            let r = engine_options(g).pools()?.check(name)?;
            if g.json {
                return print_json(&serde_json::json!({
                    "pool": name,
                    "metadata": "ok",
                    "unknown_ids": r.unknown_ids,
                    "missing": r.missing,
                }));
            }
            println!("pool {name}: metadata ok");
            if !r.unknown_ids.is_empty() {
                println!(
                    "pool {name}: thin ids no record explains (another tool's?): {:?}",
                    r.unknown_ids
                );
            }
            if !r.missing.is_empty() {
                println!(
                    "pool {name}: recorded thin devices the pool lacks: {}",
                    r.missing.join(", ")
                );
            }
            Ok(())
        }
        PoolCommand::Repair { name } => {
            let r = engine_options(g).pools()?.repair(name)?;
            if g.json {
                return print_json(&r);
            }
            println!(
                "pool {name}: metadata repaired ({} thin devices); the damaged copy is {}",
                r.thin_devices,
                r.damaged_metadata.display()
            );
            if !r.missing.is_empty() {
                println!(
                    "pool {name}: thin devices the repair could not recover: {}",
                    r.missing.join(", ")
                );
            }
            Ok(())
        }
        PoolCommand::HandOver(a) => hand_over(g, a),
        PoolCommand::Destroy { name, force } => {
            engine_options(g).destroy_pool(name, *force)?;
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
            log_format,
        } => monitor(g, name, *once, *interval, *log_format),
    }
}
