//! How a front end opens the engine: [`EngineOptions`] (the state root,
//! the configuration file, the kernel seams and the observer).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, DEFAULT_CONFIG, DEFAULT_ROOT};
use crate::deps::Deps;
use crate::observer::{Observer, Silent};

/// How to open the engine: where, with which configuration, through which
/// kernel seams, and who hears about long work.
#[derive(Clone)]
pub struct EngineOptions {
    /// `--root`: overrides `root` in the configuration.
    pub root: Option<PathBuf>,
    /// The configuration file (`--config`).
    pub config: PathBuf,
    /// The kernel seams.
    pub deps: Deps,
    /// Receives progress events (pool and filesystem making, lock waits,
    /// layers applied).
    pub observer: Arc<dyn Observer>,
}

impl fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineOptions")
            .field("root", &self.root)
            .field("config", &self.config)
            .field("deps", &self.deps)
            .finish_non_exhaustive()
    }
}

impl EngineOptions {
    /// Options for `root` and `config` on the real kernel, reporting to nobody.
    pub fn new(root: Option<PathBuf>, config: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions {
            root,
            config: config.into(),
            deps: Deps::real(),
            observer: Arc::new(Silent),
        }
    }

    /// The same options reporting to `observer`.
    pub fn observed_by(mut self, observer: Arc<dyn Observer>) -> EngineOptions {
        self.observer = observer;
        self
    }

    /// The same options through other kernel seams.
    pub fn with_deps(mut self, deps: Deps) -> EngineOptions {
        self.deps = deps;
        self
    }

    /// The state root these options name: `--root`, else `root` in the
    /// configuration, else `/var/lib/thinbox`.
    pub fn root_in(&self, config: &Config) -> PathBuf {
        self.root
            .clone()
            .or_else(|| config.root.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions::new(None, DEFAULT_CONFIG)
    }
}
