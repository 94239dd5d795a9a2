//! `thinbox pool ...`

use clap::Subcommand;

/// `thinbox pool` subcommands.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {}

/// Runs `thinbox pool ...`.
pub fn main(_global: &crate::Global, cmd: &PoolCommand) -> anyhow::Result<()> {
    match *cmd {}
}
