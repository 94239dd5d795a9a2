//! `thinbox metrics`: the root's state metrics (what `thinbox serve` adds
//! to its own on `/metrics`) in Prometheus' text format, on stdout or into
//! a file for node-exporter's textfile collector.

use std::path::PathBuf;

use clap::Args;

use super::engine_options;
use crate::Global;

/// `thinbox metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Write into this file (whole, by rename: node-exporter's textfile
    /// collector reads `*.prom` in its directory), not stdout.
    #[arg(long, value_name = "FILE")]
    pub textfile: Option<PathBuf>,
}

/// Runs `thinbox metrics`.
pub fn metrics(g: &Global, a: &MetricsArgs) -> anyhow::Result<()> {
    let opts = engine_options(g);
    // Refused early (not root, a bad config), as every command is.
    opts.state_root()?;
    let registry = engine::metrics::registry(engine::metrics::StateCollector::new(opts))?;
    let text = engine::metrics::encode(&registry)?;
    match &a.textfile {
        Some(path) => {
            if path.extension().and_then(|e| e.to_str()) != Some("prom") {
                return Err(engine::Error::new(
                    engine::ErrorKind::InvalidArgument,
                    format!(
                        "--textfile {}: node-exporter reads only files ending in .prom: name it NAME.prom",
                        path.display()
                    ),
                )
                .into());
            }
            engine::metrics::write_textfile(path, &text)?;
        }
        None => print!("{text}"),
    }
    Ok(())
}
