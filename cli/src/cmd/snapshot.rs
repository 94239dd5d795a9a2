//! `thinbox snapshot ...`: the snapshotter API from the shell, on the
//! engine's backend. Keys name active snapshots and views, names committed
//! snapshots; parents must be committed.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Subcommand;
use serde_json::{json, Value};
use snapshotter::{Filter, Info, Key, Labels, MountSpec, Name};

use engine::clients::Client;
use engine::snapshots::DiffTarget;

use super::{open_engine, print_json};
use crate::progress::Progress;
use crate::Global;

/// `thinbox snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Lists snapshots (all, or those matching any --filter).
    Ls {
        /// containerd filter, e.g. `kind==committed`, `parent==base`,
        /// `labels."a"==b`; repeat for "or".
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Shows one snapshot.
    Inspect {
        /// Key or name.
        key: String,
    },
    /// Makes an active (writable) snapshot KEY on committed PARENT.
    Prepare {
        /// The new key.
        key: String,
        /// The committed parent.
        parent: Option<String>,
        /// Mount it on DIR (else print its mounts).
        #[arg(long, value_name = "DIR")]
        mount: Option<PathBuf>,
        /// A label, `NAME=VALUE`; repeatable.
        #[arg(long, value_name = "NAME=VALUE")]
        label: Vec<String>,
    },
    /// Makes a read-only view KEY of committed PARENT.
    View {
        /// The new key.
        key: String,
        /// The committed parent.
        parent: String,
        /// Mount it on DIR (else print its mounts).
        #[arg(long, value_name = "DIR")]
        mount: Option<PathBuf>,
        /// A label, `NAME=VALUE`; repeatable.
        #[arg(long, value_name = "NAME=VALUE")]
        label: Vec<String>,
    },
    /// Prints the mounts of an active snapshot or view (or mounts them on DIR).
    Mounts {
        /// The key.
        key: String,
        /// Mount on DIR.
        #[arg(long, value_name = "DIR")]
        mount: Option<PathBuf>,
    },
    /// Commits active KEY (unmounted) as NAME. A container's root is
    /// refused (never while it runs) unless --force.
    Commit {
        /// The committed snapshot's name.
        name: String,
        /// The active snapshot.
        key: String,
        /// A label, `NAME=VALUE`; repeatable.
        #[arg(long, value_name = "NAME=VALUE")]
        label: Vec<String>,
        /// Commit a stopped container's root all the same.
        #[arg(long)]
        force: bool,
    },
    /// Removes a snapshot without children. An image's layer or a
    /// container's root is refused (a running container's always) unless
    /// --force.
    Rm {
        /// Key or name.
        key: String,
        /// Remove an image's layer or a stopped container's root all the
        /// same (the image or container is then broken).
        #[arg(long)]
        force: bool,
    },
    /// Space the snapshot uses itself (excluding its parents).
    Usage {
        /// Key or name.
        key: String,
    },
    /// Writes the changes of KEY against its parent as an OCI layer tar.
    Diff {
        /// Key or name (active or committed).
        key: String,
        /// Output file (`-` for stdout).
        out: PathBuf,
    },
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn info_json(i: &Info) -> Value {
    json!({
        "name": i.name,
        "parent": i.parent,
        "kind": i.kind.to_string(),
        "labels": i.labels,
        "created": secs(i.created),
        "updated": secs(i.updated),
        "made_by": Client::of(&i.name).as_str(),
    })
}

fn mounts_json(m: &[MountSpec]) -> Value {
    Value::Array(
        m.iter()
            .map(|m| json!({ "type": m.fstype, "source": m.source, "options": m.options }))
            .collect(),
    )
}

/// A snapshotter error with the fix for the common cases appended.
fn sn_err(e: snapshotter::Error) -> engine::Error {
    engine::snapshots::with_fix(e)
}

fn labels(v: &[String]) -> anyhow::Result<Labels> {
    let mut l = Labels::new();
    for s in v {
        let (k, val) = s.split_once('=').ok_or_else(|| {
            engine::Error::new(
                engine::ErrorKind::InvalidArgument,
                format!("label {s:?} has no `=`: write NAME=VALUE"),
            )
        })?;
        l.insert(k.to_owned(), val.to_owned());
    }
    Ok(l)
}

fn key(s: &str) -> anyhow::Result<Key> {
    Ok(Key::new(s).map_err(sn_err)?)
}

/// A key for a snapshot the CLI makes: not one kept for containerd's.
fn new_key(s: &str) -> anyhow::Result<Key> {
    engine::clients::check_cli_key(s)?;
    key(s)
}

fn name(s: &str) -> anyhow::Result<Name> {
    Ok(Name::new(s).map_err(sn_err)?)
}

/// Mounts `m` on `dir` (or prints the mounts) and reports.
fn show_mounts(g: &Global, k: &str, m: &[MountSpec], dir: Option<&Path>) -> anyhow::Result<()> {
    if let Some(d) = dir {
        engine::snapshots::mount_on(m, d)?;
    }
    if g.json {
        return print_json(&json!({
            "key": k,
            "mounts": mounts_json(m),
            "mounted_at": dir,
        }));
    }
    match dir {
        Some(d) => println!("{k} mounted at {}", d.display()),
        None => {
            for spec in m {
                println!("mount {spec} TARGET");
            }
        }
    }
    Ok(())
}

/// `snapshot ls` and `inspect` through a [`snapshotter::Reader`].
fn read(g: &Global, cmd: &SnapshotCommand, sn: &snapshotter::Reader) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Ls { filter } => {
            let filters = filter
                .iter()
                .map(|f| f.parse::<Filter>().map_err(sn_err))
                .collect::<Result<Vec<_>, _>>()?;
            let mut all = Vec::new();
            sn.walk(&filters, &mut |i| {
                all.push(i.clone());
                Ok(())
            })
            .map_err(sn_err)?;
            all.sort_by(|a, b| a.name.cmp(&b.name));
            if g.json {
                return print_json(&Value::Array(all.iter().map(info_json).collect()));
            }
            println!("{:<40} {:<40} {:<10} MADE BY", "KEY", "PARENT", "KIND");
            for i in &all {
                println!(
                    "{:<40} {:<40} {:<10} {}",
                    i.name,
                    i.parent.as_deref().unwrap_or("-"),
                    i.kind,
                    Client::of(&i.name).as_str()
                );
            }
            Ok(())
        }
        SnapshotCommand::Inspect { key: k } => {
            let i = sn.stat(&key(k)?).map_err(sn_err)?;
            if g.json {
                return print_json(&info_json(&i));
            }
            println!("name:    {}", i.name);
            println!("parent:  {}", i.parent.as_deref().unwrap_or("-"));
            println!("kind:    {}", i.kind);
            println!("created: {}", secs(i.created));
            println!("updated: {}", secs(i.updated));
            for (k, v) in &i.labels {
                println!("label:   {k}={v}");
            }
            Ok(())
        }
        _ => unreachable!("only ls and inspect read"),
    }
}

/// Runs `thinbox snapshot ...`.
pub fn main(g: &Global, cmd: &SnapshotCommand) -> anyhow::Result<()> {
    // Listing reads the metadata beside a writer (an import) instead of
    // waiting for it; a root without metadata yet opens (makes) the engine
    // first, once.
    if matches!(
        cmd,
        SnapshotCommand::Ls { .. } | SnapshotCommand::Inspect { .. }
    ) {
        let opts = super::engine_options(g);
        if opts.read_snapshots()?.is_none() {
            open_engine(g)?.close()?;
        }
        let reader = opts
            .read_snapshots()?
            .ok_or_else(|| anyhow::anyhow!("the snapshot metadata of this root cannot be read"))?;
        return read(g, cmd, &reader);
    }
    let engine = open_engine(g)?;
    let sn = engine.snapshotter();
    let r = (|| -> anyhow::Result<()> {
        match cmd {
            SnapshotCommand::Ls { .. } | SnapshotCommand::Inspect { .. } => {
                unreachable!("read through a snapshotter::Reader above")
            }
            SnapshotCommand::Prepare {
                key: k,
                parent,
                mount,
                label,
            } => {
                let parent = parent.as_deref().map(name).transpose()?;
                let m = sn
                    .prepare(&new_key(k)?, parent.as_ref(), &labels(label)?)
                    .map_err(sn_err)?;
                show_mounts(g, k, &m, mount.as_deref())
            }
            SnapshotCommand::View {
                key: k,
                parent,
                mount,
                label,
            } => {
                let m = sn
                    .view(&new_key(k)?, Some(&name(parent)?), &labels(label)?)
                    .map_err(sn_err)?;
                show_mounts(g, k, &m, mount.as_deref())
            }
            SnapshotCommand::Mounts { key: k, mount } => {
                let m = sn.mounts(&key(k)?).map_err(sn_err)?;
                show_mounts(g, k, &m, mount.as_deref())
            }
            SnapshotCommand::Commit {
                name: n,
                key: k,
                label,
                force,
            } => {
                engine::clients::check_cli_key(n)?;
                engine.commit_snapshot(&name(n)?, &key(k)?, &labels(label)?, *force)?;
                if g.json {
                    return print_json(&info_json(&sn.stat(&key(n)?).map_err(sn_err)?));
                }
                println!("committed {k} as {n}");
                Ok(())
            }
            SnapshotCommand::Rm { key: k, force } => {
                engine.remove_snapshot(&key(k)?, *force)?;
                if g.json {
                    return print_json(&json!({ "removed": k }));
                }
                println!("removed {k}");
                Ok(())
            }
            SnapshotCommand::Usage { key: k } => {
                let u = sn.usage(&key(k)?).map_err(sn_err)?;
                if g.json {
                    return print_json(&json!({ "key": k, "size": u.size.0, "inodes": u.inodes }));
                }
                println!("{k}: {} bytes, {} inodes", u.size.0, u.inodes);
                Ok(())
            }
            SnapshotCommand::Diff { key: k, out } => diff(g, &engine, k, out),
        }
    })();
    let closed = engine.close();
    r?;
    Ok(closed?)
}

fn diff(g: &Global, engine: &engine::Engine, k: &str, out: &Path) -> anyhow::Result<()> {
    let key = key(k)?;
    let progress = Progress::new(!g.json);
    let spinner = progress.spinner(format!("diffing {k}"));
    let stats = if out == Path::new("-") {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        engine.diff_snapshot(&key, DiffTarget::Stream(&mut lock))?
    } else {
        engine.diff_snapshot(&key, DiffTarget::File(out))?
    };
    drop(spinner);
    if out != Path::new("-") {
        if g.json {
            print_json(&json!({
                "key": k,
                "out": out,
                "entries": stats.entries,
                "whiteouts": stats.whiteouts,
            }))?;
        } else {
            println!(
                "wrote {} ({} entries, {} whiteouts)",
                out.display(),
                stats.entries,
                stats.whiteouts
            );
        }
    }
    Ok(())
}
