//! One module per top-level subcommand: clap arguments and the code that
//! calls the library and prints. Helpers shared by them live here.

pub mod docs;
pub mod doctor;
pub mod image;
pub mod metrics;
pub mod pool;
pub mod run;
pub mod serve;
pub mod snapshot;

use std::sync::Arc;

use engine::{Engine, EngineOptions};

pub use crate::print::{human, print_json};
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
