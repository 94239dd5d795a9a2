//! `thinbox image import|pull|push|ls|inspect|rm`: images as committed snapshots on
//! the engine's backend, recorded in `ROOT/images/images.db` by
//! [`snapshotter::image::Images`], opened by [`engine::Engine::images`].

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;
use snapshotter::image::{Image, ImportOutcome, Imported};

use super::{engine_options, human, open_engine, print_json};
use crate::Global;

/// `thinbox image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Imports an OCI image layout (directory or tar, as `skopeo copy ...
    /// oci:DIR` writes) or a `docker save` tar. Every blob is checked
    /// against its digest; layers already present are reused. Atomic: on
    /// any error nothing of the import remains.
    Import {
        /// The image directory or tar file.
        source: PathBuf,
        /// The image's name (default: the name the source records).
        #[arg(long)]
        name: Option<String>,
    },
    /// Pulls an image from a registry: `busybox`, `HOST[:PORT]/NAME:TAG`,
    /// `NAME@sha256:…`. Layers already stored are not fetched; the rest
    /// download in parallel and are applied as each arrives. Credentials
    /// come from podman's and docker's auth files; `[registry]` in the
    /// config sets mirrors, insecure hosts and CA directories. Atomic; a
    /// killed pull is resumed by the next.
    Pull {
        /// The image reference.
        reference: String,
        /// The platform to pick from a multi-platform image
        /// (`OS/ARCH[/VARIANT]`, default this host's).
        #[arg(long)]
        platform: Option<String>,
        /// Layers downloaded at once (default `[registry] parallel`, 3).
        #[arg(long)]
        parallel: Option<usize>,
    },
    /// Pushes an image (imported, pulled or made by `run --commit`) to a
    /// registry as `HOST[:PORT]/NAME:TAG`. Its layers are regenerated from
    /// their snapshots as gzip blobs (deterministically: a second push
    /// sends nothing); blobs the repository has are skipped, blobs pushed
    /// before to another repository of the registry are mounted from it.
    /// The manifest goes last.
    Push {
        /// Name, or manifest digest (or a unique prefix of it).
        image: String,
        /// Where to: `HOST[:PORT]/NAME:TAG`.
        reference: String,
        /// Blobs larger than this go in PATCH chunks of this many bytes
        /// (default `[registry] push_chunk_size`, 16 MiB).
        #[arg(long)]
        chunk_size: Option<u64>,
    },
    /// Lists images.
    Ls,
    /// Shows an image: config and layers.
    Inspect {
        /// Name, or manifest digest (or a unique prefix of it).
        name: String,
    },
    /// Removes an image and the layers no other image uses (refused while
    /// a container's root sits on it).
    Rm {
        /// Name, or manifest digest (or a unique prefix of it).
        name: String,
    },
}

/// `1970-01-01T00:00:00Z` from unix seconds (UTC).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn short(d: &snapshotter::image::Digest) -> String {
    d.hex()[..12].to_owned()
}

/// An image as JSON: the library's form plus `size` and `created_at`.
fn image_json(i: &Image) -> serde_json::Value {
    let mut v = serde_json::to_value(i).unwrap_or_default();
    v["size"] = json!(i.size());
    v["created_at"] = json!(rfc3339(i.created_unix()));
    v["top_snapshot"] = json!(i.top_snapshot().map(|n| n.to_string()));
    v
}

fn print_image(i: &Image) {
    println!("name:        {}", i.name);
    println!("manifest:    {}", i.manifest);
    println!("created:     {}", rfc3339(i.created_unix()));
    println!("size:        {}", human(i.size()));
    let c = &i.config;
    println!("entrypoint:  {:?}", c.entrypoint);
    println!("cmd:         {:?}", c.cmd);
    println!(
        "working dir: {}",
        if c.working_dir.is_empty() {
            "/"
        } else {
            &c.working_dir
        }
    );
    println!(
        "user:        {}",
        if c.user.is_empty() { "root" } else { &c.user }
    );
    for e in &c.env {
        println!("env:         {e}");
    }
    for (n, l) in i.layers.iter().enumerate() {
        println!(
            "layer {n}:     {} {} (diff {}, chain {})",
            l.digest,
            human(l.size),
            short(&l.diff_id),
            short(&l.chain_id)
        );
    }
}

/// `thinbox image ls` and `inspect`: read beside a writer (an import in
/// progress), never waiting for it.
fn read(global: &Global, cmd: &ImageCommand) -> anyhow::Result<()> {
    let images = engine_options(global).read_images()?;
    let all = match &images {
        Some(images) => images.list()?,
        None => Vec::new(),
    };
    match cmd {
        ImageCommand::Inspect { name } => {
            let i = match &images {
                Some(images) => images.get(name)?,
                None => {
                    return Err(
                        snapshotter::Error::new(snapshotter::ErrorKind::NotFound, "image")
                            .key(name)
                            .detail("no such image; `thinbox image ls` lists them")
                            .into(),
                    )
                }
            };
            if global.json {
                return print_json(&image_json(&i));
            }
            print_image(&i);
        }
        _ => {
            if global.json {
                return print_json(&all.iter().map(image_json).collect::<Vec<_>>());
            }
            println!(
                "{:<32} {:<12} {:>6} {:>8}  CREATED",
                "NAME", "MANIFEST", "LAYERS", "SIZE"
            );
            for i in &all {
                println!(
                    "{:<32} {:<12} {:>6} {:>8}  {}",
                    i.name,
                    short(&i.manifest),
                    i.layers.len(),
                    human(i.size()),
                    rfc3339(i.created_unix())
                );
            }
        }
    }
    Ok(())
}

fn pull_options(platform: &Option<String>, parallel: &Option<usize>) -> engine::pull::PullOptions {
    engine::pull::PullOptions {
        platform: platform.clone(),
        parallel: *parallel,
    }
}

fn push_options(chunk_size: &Option<u64>) -> engine::push::PushOptions {
    engine::push::PushOptions {
        chunk_size: *chunk_size,
    }
}

/// Runs `thinbox image ...`.
pub fn main(global: &Global, cmd: &ImageCommand) -> anyhow::Result<()> {
    if matches!(cmd, ImageCommand::Ls | ImageCommand::Inspect { .. }) {
        return read(global, cmd);
    }
    if let ImageCommand::Pull {
        reference,
        platform,
        parallel,
    } = cmd
    {
        pull_options(platform, parallel).check(reference)?;
    }
    if let ImageCommand::Push {
        reference,
        chunk_size,
        ..
    } = cmd
    {
        push_options(chunk_size).check(reference)?;
    }
    let engine = open_engine(global)?;
    let images = engine.images()?;
    match cmd {
        ImageCommand::Import { source, name } => {
            let imported = engine.import_image(&images, source, name.as_deref())?;
            if global.json {
                let all: Vec<serde_json::Value> = imported
                    .iter()
                    .map(|i| {
                        let mut v = image_json(&i.image);
                        if let (Some(m), Ok(serde_json::Value::Object(o))) =
                            (v.as_object_mut(), serde_json::to_value(&i.outcome))
                        {
                            m.extend(o);
                        }
                        v
                    })
                    .collect();
                return print_json(&all);
            }
            for Imported { image: i, outcome } in &imported {
                let what = format!(
                    "{} ({} layer{}, {}, manifest {})",
                    i.name,
                    i.layers.len(),
                    if i.layers.len() == 1 { "" } else { "s" },
                    human(i.size()),
                    i.manifest
                );
                match outcome {
                    ImportOutcome::AlreadyPresent => {
                        println!("{what}: already present, nothing to do")
                    }
                    ImportOutcome::NameMoved { now_named, .. } => {
                        println!("imported {what}; the image that had the name is now {now_named}")
                    }
                    _ => println!("imported {what}"),
                }
            }
            Ok(())
        }
        ImageCommand::Pull {
            reference,
            platform,
            parallel,
        } => {
            let p = engine.pull_image(&images, reference, &pull_options(platform, parallel))?;
            if global.json {
                let mut v = image_json(&p.imported.image);
                if let (Some(m), Ok(serde_json::Value::Object(o))) =
                    (v.as_object_mut(), serde_json::to_value(&p))
                {
                    for (k, val) in o {
                        m.entry(k).or_insert(val);
                    }
                }
                return print_json(&v);
            }
            let i = &p.imported.image;
            match p.imported.outcome {
                ImportOutcome::AlreadyPresent => {
                    println!("{}: up to date (manifest {})", i.name, i.manifest)
                }
                _ => println!(
                    "pulled {} ({} layer{}, {}, manifest {}) from {}: {} fetched ({}), {} already stored",
                    i.name,
                    i.layers.len(),
                    if i.layers.len() == 1 { "" } else { "s" },
                    human(i.size()),
                    i.manifest,
                    p.endpoint,
                    p.layers_fetched,
                    human(p.bytes_fetched),
                    p.layers_reused
                ),
            }
            Ok(())
        }
        ImageCommand::Push {
            image,
            reference,
            chunk_size,
        } => {
            let p = engine.push_image(&images, image, reference, &push_options(chunk_size))?;
            if global.json {
                return print_json(&p);
            }
            println!(
                "pushed {} to {}: {} blob{} uploaded ({}), {} mounted, {} already there",
                p.image,
                p.reference,
                p.blobs_monolithic + p.blobs_chunked,
                if p.blobs_monolithic + p.blobs_chunked == 1 {
                    ""
                } else {
                    "s"
                },
                human(p.bytes_uploaded),
                p.blobs_mounted,
                p.blobs_present
            );
            Ok(())
        }
        ImageCommand::Ls | ImageCommand::Inspect { .. } => read(global, cmd),
        ImageCommand::Rm { name } => {
            let i = engine.remove_image(&images, name)?;
            if global.json {
                return print_json(&json!({ "removed": i.name, "manifest": i.manifest }));
            }
            println!("removed {}", i.name);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
