//! `thinbox image ...`

use clap::Subcommand;

/// `thinbox image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {}

/// Runs `thinbox image ...`.
pub fn main(_global: &crate::Global, cmd: &ImageCommand) -> anyhow::Result<()> {
    match *cmd {}
}
