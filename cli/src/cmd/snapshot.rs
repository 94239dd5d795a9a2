//! `thinbox snapshot ...`

use clap::Subcommand;

/// `thinbox snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {}

/// Runs `thinbox snapshot ...`.
pub fn main(_global: &crate::Global, cmd: &SnapshotCommand) -> anyhow::Result<()> {
    match *cmd {}
}
