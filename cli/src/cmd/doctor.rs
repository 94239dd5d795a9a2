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
}

/// Runs `thinbox doctor`.
pub fn doctor(g: &Global, a: &DoctorArgs) -> anyhow::Result<()> {
    let opts = engine_options(g);
    opts.state_root()?;
    let human = !g.json;
    let report = engine::doctor::run(&opts, a.fix, &mut |plan| {
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
