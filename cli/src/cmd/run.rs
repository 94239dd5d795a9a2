//! `thinbox run`, `thinbox ps`, `thinbox rm`.

use clap::Args;

/// `thinbox run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {}

/// `thinbox ps` arguments.
#[derive(Debug, Args)]
pub struct PsArgs {}

/// `thinbox rm` arguments.
#[derive(Debug, Args)]
pub struct RmArgs {}

/// Runs `thinbox run`.
pub fn run(_global: &crate::Global, _args: &RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("thinbox run is not built yet")
}

/// Runs `thinbox ps`.
pub fn ps(_global: &crate::Global, _args: &PsArgs) -> anyhow::Result<()> {
    anyhow::bail!("thinbox ps is not built yet")
}

/// Runs `thinbox rm`.
pub fn rm(_global: &crate::Global, _args: &RmArgs) -> anyhow::Result<()> {
    anyhow::bail!("thinbox rm is not built yet")
}
