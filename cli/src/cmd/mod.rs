//! One module per top-level subcommand: clap arguments and the code that
//! calls the library and prints. Helpers shared by them live here.

pub mod image;
pub mod pool;
pub mod run;
pub mod snapshot;

use std::sync::Arc;

use engine::{Engine, EngineOptions};

use crate::progress::Progress;
use crate::Global;

/// Engine options from the global flags, on the real kernel: progress
/// bars only without `--json`.
pub fn engine_options(g: &Global) -> EngineOptions {
    EngineOptions::new(g.root.clone(), g.config.clone())
        .observed_by(Arc::new(Progress::new(!g.json)))
}

/// Opens the engine (state root and snapshotter) from the global flags.
pub fn open_engine(g: &Global) -> anyhow::Result<Engine> {
    Ok(Engine::open(&engine_options(g))?)
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A byte count for people: `1.5G`, `64K`, `512`.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];
    for (u, shift) in UNITS {
        if bytes >= 1 << shift {
            let v = bytes as f64 / (1u64 << shift) as f64;
            return if bytes % (1 << shift) == 0 {
                format!("{}{u}", bytes >> shift)
            } else {
                format!("{v:.1}{u}")
            };
        }
    }
    bytes.to_string()
}
