//! `thinbox doctor [--fix]`: drift between the root's records and the
//! kernel, each finding with the command that fixes it (engine::doctor).

use clap::Args;

use super::{engine_options, print_json};
use crate::Global;

/// `thinbox doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Fix what is provably thinbox's (after printing the plan).
    #[arg(long)]
    pub fix: bool,
    /// containerd's socket, to compare the snapshots kept for it with its
    /// own list (through `thinbox serve`).
    #[arg(
        long,
        value_name = "SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_address: std::path::PathBuf,
    /// The name containerd's config gives thinbox's proxy plugin.
    #[arg(long, value_name = "NAME", default_value = "thinbox")]
    pub containerd_snapshotter: String,
}

/// Runs `thinbox doctor`.
pub fn doctor(g: &Global, a: &DoctorArgs) -> anyhow::Result<()> {
    let opts = engine_options(g);
    opts.state_root()?;
    let human = !g.json;
    let containerd = engine::doctor::Ctr {
        address: a.containerd_address.clone(),
        snapshotter: a.containerd_snapshotter.clone(),
    };
    let report = engine::doctor::run(&opts, a.fix, Some(&containerd), &mut |plan| {
        if human && !plan.is_empty() {
            println!("fixing {} of them:", plan.len());
            for f in plan {
                println!("  {}", f.fix);
            }
        }
    })?;
    if g.json {
        print_json(&report)?;
    } else {
        if report.findings.is_empty() {
            println!("no drift found");
        }
        for f in &report.findings {
            let kind = serde_json::to_value(f.kind)?;
            println!(
                "{}: {}\n  fix: {}{}",
                kind.as_str().unwrap_or_default(),
                f.detail,
                f.fix,
                if f.fixable && !a.fix {
                    " (doctor --fix does this)"
                } else {
                    ""
                }
            );
        }
        for f in &report.fixed {
            println!("fixed: {}", f.fix);
        }
        for (subject, why) in &report.failed {
            println!("not fixed: {subject}: {why}");
        }
        for note in &report.notes {
            println!("note: {note}");
        }
    }
    let left = report.findings.len() - report.fixed.len();
    if left > 0 {
        return Err(engine::Error::new(
            engine::ErrorKind::Failed,
            format!(
                "doctor: {left} finding(s) left: fix them as listed{}",
                if a.fix {
                    ""
                } else {
                    ", or run `thinbox doctor --fix` for those it can"
                }
            ),
        )
        .into());
    }
    Ok(())
}
