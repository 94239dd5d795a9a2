//! `image pull`: an image from a registry into the image store.
//!
//! The manifest is resolved first (mirrors, platform), then the config;
//! its diff ids say which layers are stored already (by chain id), and
//! only the others are fetched, `[registry] parallel` at a time, bottom
//! first, into `ROOT/pulls/MANIFEST/` (an OCI layout). The import reads
//! each layer from its blob's file as the fetch writes it (a [`Follower`]),
//! so a layer is decompressed and applied while it downloads and the ones
//! above it arrive too; its digest is checked before it is committed, and
//! the image is recorded atomically
//! ([`snapshotter::image::Images::import_gated`]).
//!
//! Crash safety: blobs are named by their digest only once they match it
//! (until then `HEX.partial`), so a killed pull leaves only verified
//! blobs and a partial one; the import's own intent rolls its snapshots
//! back on the next open, and the next pull of the image fetches only
//! what is missing, resuming the partial blob with a Range. The staging
//! directory goes when the image is recorded.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use registry::{Client, Reference, Resolved, Settings};
use serde::Serialize;
use snapshotter::image::{chain_ids, Digest, Images, ImportOutcome, Imported};
use snapshotter::{Key, Snapshotter};

use crate::config::RegistrySection;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::observer::Event;

/// What `image pull` is asked for beyond the reference.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `os/arch[/variant]` (default: this host's).
    pub platform: Option<String>,
    /// Layers fetched at once (default `[registry] parallel`).
    pub parallel: Option<usize>,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct Pulled {
    /// The image as recorded (or as it was, when already present).
    #[serde(flatten)]
    pub imported: Imported,
    /// The full reference pinned to the manifest
    /// (`docker.io/library/busybox:latest@sha256:…`).
    pub reference: String,
    /// Where it came from (`https://host:port`, a mirror's URL).
    pub endpoint: String,
    /// The platform picked from an index (None: the image had one manifest).
    pub platform: Option<String>,
    /// Layer blobs fetched (whole or resumed) in this pull.
    pub layers_fetched: usize,
    /// Layers already stored, not fetched.
    pub layers_reused: usize,
    /// Bytes received for layer and config blobs.
    pub bytes_fetched: u64,
}

impl PullOptions {
    /// Checks `reference` and the platform, before anything is opened.
    pub fn check(&self, reference: &str) -> Result<()> {
        reference.parse::<Reference>()?;
        if let Some(p) = &self.platform {
            p.parse::<registry::Platform>()?;
        }
        Ok(())
    }
}

impl From<registry::Error> for Error {
    fn from(e: registry::Error) -> Error {
        use registry::ErrorKind as R;
        let kind = match e.kind() {
            R::InvalidArgument | R::NoPlatform => ErrorKind::InvalidArgument,
            R::NotFound => ErrorKind::NotFound,
            R::Unauthorized | R::Denied => ErrorKind::Unauthorized,
            R::Timeout | R::Transport => ErrorKind::Unreachable,
            R::DigestMismatch | R::InvalidResponse => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        };
        Error::new(kind, e.to_string()).with_source(e)
    }
}

impl RegistrySection {
    /// The registry client's settings from this section.
    pub fn settings(&self) -> Settings {
        let d = Settings::default();
        let mut auth_files = self.auth_files.clone();
        auth_files.extend(d.auth_files.iter().cloned());
        Settings {
            insecure: self.insecure.clone(),
            mirrors: self.mirrors.clone(),
            auth_files,
            certs_dirs: self.certs_dirs.clone().unwrap_or(d.certs_dirs),
            ca_bundle: d.ca_bundle,
            connect_timeout: d.connect_timeout,
            read_timeout: std::time::Duration::from_secs(self.timeout.max(1)),
            retries: self.retries,
        }
    }
}

/// Blobs being fetched, for the import to wait on.
#[derive(Default)]
struct Gate {
    slots: Mutex<HashMap<Digest, Slot>>,
    changed: Condvar,
}

enum Slot {
    Fetching,
    Whole,
    Failed(registry::Error),
}

impl Gate {
    fn set(&self, d: Digest, s: Slot) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(d, s);
        self.changed.notify_all();
    }

    /// Wakes readers waiting for more of a blob.
    fn grew(&self) {
        self.changed.notify_all();
    }

    /// Where the fetch of `d` stands: None when it is not being fetched
    /// (whole already), else whether it is still running.
    fn peek(&self, d: &Digest) -> Peek {
        match self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(d) {
            None | Some(Slot::Whole) => Peek::Whole,
            Some(Slot::Fetching) => Peek::Fetching,
            Some(Slot::Failed(e)) => Peek::Failed(e.to_string()),
        }
    }

    /// Waits for the next change or write, at most a moment (a write's
    /// wake-up can come between a read and this wait).
    fn wait(&self) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.changed.wait_timeout(slots, Duration::from_millis(20));
    }

    /// A reader of blob `d` (written to `path`) while it is being
    /// fetched; None once it is whole in the layout.
    fn follow(&self, d: &Digest, path: PathBuf) -> snapshotter::Result<Option<Box<dyn Read + '_>>> {
        match self.peek(d) {
            Peek::Whole => Ok(None),
            Peek::Failed(e) => Err(fetch_failed(d, &e)),
            Peek::Fetching => Ok(Some(Box::new(Follower {
                gate: self,
                digest: *d,
                partial: registry::partial_path(&path),
                whole: path,
                file: None,
            }))),
        }
    }

    /// The first failure of a fetch, taken out.
    fn failure(&self) -> Option<registry::Error> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let d = slots
            .iter()
            .find(|(_, s)| matches!(s, Slot::Failed(_)))
            .map(|(d, _)| *d)?;
        match slots.remove(&d) {
            Some(Slot::Failed(e)) => Some(e),
            _ => None,
        }
    }
}

enum Peek {
    Fetching,
    Whole,
    Failed(String),
}

fn fetch_failed(d: &Digest, e: &str) -> snapshotter::Error {
    snapshotter::Error::new(snapshotter::ErrorKind::InvalidImage, "pull")
        .detail(format!("cannot fetch layer {d}: {e}"))
}

/// Reads a blob while its fetch writes it: `HEX.partial` as it grows (or
/// `HEX` once whole and renamed: an open file reads on), waiting at its
/// end until the fetch writes more, finishes or fails. The fetch appends
/// and, when a registry ignores a Range, rewrites the same bytes, so what
/// was read stays true; the import checks the digest of all of it.
struct Follower<'g> {
    gate: &'g Gate,
    digest: Digest,
    partial: PathBuf,
    whole: PathBuf,
    file: Option<File>,
}

impl Read for Follower<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Looked at before reading: a fetch seen whole has written
            // every byte, so an empty read after it is the end.
            let state = self.gate.peek(&self.digest);
            if self.file.is_none() {
                self.file = File::open(&self.partial)
                    .or_else(|_| File::open(&self.whole))
                    .ok();
            }
            if let Some(f) = &mut self.file {
                let n = f.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
            }
            match state {
                Peek::Whole if self.file.is_some() => return Ok(0),
                Peek::Whole => self.file = Some(File::open(&self.whole)?),
                Peek::Failed(e) => return Err(io::Error::other(fetch_failed(&self.digest, &e))),
                Peek::Fetching => self.gate.wait(),
            }
        }
    }
}

/// `rootfs.diff_ids` of an image config.
fn diff_ids(config: &[u8], what: &str) -> Result<Vec<Digest>> {
    let v: serde_json::Value = serde_json::from_slice(config).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("{what}: the image config is not JSON: {e}"),
        )
    })?;
    v["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Corrupt,
                format!("{what}: the image config has no rootfs.diff_ids"),
            )
        })?
        .iter()
        .map(|d| {
            d.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("{what}: the image config has a diff id that is not sha256: {d}"),
                )
            })
        })
        .collect()
}

fn committed(sn: &dyn Snapshotter, chain: &Digest) -> bool {
    Key::new(chain.to_string())
        .ok()
        .and_then(|k| sn.stat(&k).ok())
        .is_some_and(|i| i.kind == snapshotter::Kind::Committed)
}

/// Writes `oci-layout`, `index.json` (naming the image) and the manifest.
fn write_layout(dir: &Path, res: &Resolved, name: &str) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io("cannot make", &blobs, e))?;
    let digest = res.digest();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": res.media_type,
            "digest": digest.to_string(),
            "size": res.manifest.len(),
            "annotations": { snapshotter::image::REF_NAME: name },
        }],
    });
    for (path, bytes) in [
        (
            dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (blobs.join(digest.hex()), res.manifest.clone()),
        (dir.join("index.json"), index.to_string().into_bytes()),
    ] {
        std::fs::write(&path, bytes).map_err(|e| Error::io("cannot write", &path, e))?;
    }
    Ok(())
}

impl Engine {
    /// The registry client for this root's `[registry]` settings.
    pub fn registry(&self) -> Client {
        Client::new(self.config().registry.settings())
    }

    /// Pulls `reference` into `images` under its familiar name
    /// (`busybox:latest`, `host:5000/app:1`). Already stored layers are
    /// not fetched; a name that already has the manifest is left as it
    /// is. Atomic like an import; a killed pull is resumed by the next.
    pub fn pull_image(
        &self,
        images: &Images,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<Pulled> {
        let r: Reference = reference.parse()?;
        let platform = match &opts.platform {
            Some(p) => p.parse()?,
            None => registry::Platform::host(),
        };
        let parallel = opts
            .parallel
            .unwrap_or(self.config().registry.parallel)
            .clamp(1, 16);
        let client = self.registry();
        let res = client.resolve(&r, &platform)?;
        let digest = res.digest();
        let name = r.familiar();
        let base = Pulled {
            imported: Imported {
                image: snapshotter::image::Image {
                    name: name.clone(),
                    manifest: digest,
                    config: Default::default(),
                    layers: Vec::new(),
                    created: std::time::SystemTime::UNIX_EPOCH,
                },
                outcome: ImportOutcome::AlreadyPresent,
            },
            reference: res.reference.to_string(),
            endpoint: res.endpoint.base.clone(),
            platform: res.platform.clone(),
            layers_fetched: 0,
            layers_reused: res.layers.len(),
            bytes_fetched: 0,
        };
        if let Ok(old) = images.get(&name) {
            if old.name == name && old.manifest == digest {
                return Ok(Pulled {
                    imported: Imported {
                        image: old,
                        outcome: ImportOutcome::AlreadyPresent,
                    },
                    ..base
                });
            }
        }

        let pulls = self.root().join("pulls");
        std::fs::create_dir_all(&pulls).map_err(|e| Error::io("cannot make", &pulls, e))?;
        let _lock = crate::state::lock_file(
            &pulls.join(format!("{}.lock", digest.hex())),
            self.observer(),
        )?;
        let dir = pulls.join(digest.hex());
        write_layout(&dir, &res, &name)?;
        let blob = |d: &Digest| -> PathBuf { dir.join("blobs/sha256").join(d.hex()) };
        let cancel = AtomicBool::new(false);
        let fetched = AtomicU64::new(0);

        let config_path = blob(&res.config.digest);
        if !config_path.exists() {
            client.fetch_blob(
                &registry::Blob {
                    endpoint: &res.endpoint,
                    reference: &res.reference,
                    digest: res.config.digest,
                    size: res.config.size,
                },
                &config_path,
                &mut |n| {
                    fetched.fetch_add(n, Ordering::Relaxed);
                },
                &cancel,
            )?;
        }
        let config =
            std::fs::read(&config_path).map_err(|e| Error::io("cannot read", &config_path, e))?;
        let diffs = diff_ids(&config, &res.reference.to_string())?;
        if diffs.len() != res.layers.len() {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{}: the manifest has {} layers, its config {} diff ids; the image is damaged, push it again", res.reference, res.layers.len(), diffs.len()),
            ));
        }
        let chains = chain_ids(&diffs);
        let sn = self.snapshotter();
        let gate = Gate::default();
        let mut queue = VecDeque::new();
        for (layer, chain) in res.layers.iter().zip(&chains) {
            if !committed(sn, chain) && !blob(&layer.digest).exists() {
                gate.set(layer.digest, Slot::Fetching);
                queue.push_back(layer.clone());
            }
        }
        let layers_fetched = queue.len();
        let layers_reused = res
            .layers
            .iter()
            .zip(&chains)
            .filter(|(_, c)| committed(sn, c))
            .count();
        let queue = Mutex::new(queue);
        let observer = self.observer();

        let imported = std::thread::scope(|s| {
            for _ in 0..parallel.min(layers_fetched) {
                s.spawn(|| loop {
                    let Some(layer) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
                    else {
                        return;
                    };
                    let d = layer.digest;
                    if cancel.load(Ordering::Relaxed) {
                        gate.set(
                            d,
                            Slot::Failed(registry::Error::new(
                                registry::ErrorKind::Io,
                                d,
                                "cancelled",
                            )),
                        );
                        continue;
                    }
                    observer.event(&Event::Download {
                        digest: d.to_string(),
                        size: layer.size,
                    });
                    let mut got = 0u64;
                    let r = client.fetch_blob(
                        &registry::Blob {
                            endpoint: &res.endpoint,
                            reference: &res.reference,
                            digest: d,
                            size: layer.size,
                        },
                        &blob(&d),
                        &mut |n| {
                            if got < layer.size / 2 && got + n >= layer.size / 2 {
                                crate::state::crash_point("pull-blob-half");
                            }
                            got += n;
                            fetched.fetch_add(n, Ordering::Relaxed);
                            gate.grew();
                            observer.event(&Event::Downloading {
                                digest: d.to_string(),
                                bytes: got,
                            });
                        },
                        &cancel,
                    );
                    observer.event(&Event::DownloadDone {
                        digest: d.to_string(),
                        ok: r.is_ok(),
                    });
                    gate.set(
                        d,
                        match r {
                            Ok(()) => Slot::Whole,
                            Err(e) => Slot::Failed(e),
                        },
                    );
                });
            }
            let r = images.import_gated(
                sn,
                &dir,
                Some(&name),
                &mut |p| observer.event(&crate::engine::import_event(p)),
                &|d| gate.follow(d, blob(d)),
            );
            if r.is_err() {
                cancel.store(true, Ordering::Relaxed);
            }
            r
        });
        let imported = match imported {
            Ok(mut v) if !v.is_empty() => v.remove(0),
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::Failed,
                    format!("{reference}: the import recorded nothing"),
                ))
            }
            Err(e) => {
                return Err(match gate.failure() {
                    Some(fetch) => Error::from(fetch),
                    None => e.into(),
                })
            }
        };
        // Kept for pushes; a blob not kept is regenerated by a push.
        if let Err(e) = crate::content::Content::new(self.root()).adopt_layout(&dir) {
            tracing::warn!("cannot keep the pulled blobs: {e}");
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(
                "cannot remove the pull's staging directory {}: {e}",
                dir.display()
            );
        }
        let _ = std::fs::remove_file(pulls.join(format!("{}.lock", digest.hex())));
        Ok(Pulled {
            imported,
            layers_fetched,
            layers_reused,
            bytes_fetched: fetched.load(Ordering::Relaxed),
            ..base
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_ids_are_read_and_checked() {
        let d = format!("sha256:{}", "a".repeat(64));
        let ok = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#);
        assert_eq!(
            diff_ids(ok.as_bytes(), "x").unwrap(),
            vec![d.parse().unwrap()]
        );
        for (bad, why) in [
            ("nope", "not JSON"),
            ("{}", "no rootfs"),
            (r#"{"rootfs":{"diff_ids":["md5:1"]}}"#, "not sha256"),
        ] {
            let e = diff_ids(bad.as_bytes(), "x").unwrap_err();
            assert_eq!(e.kind, ErrorKind::Corrupt);
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn followers_read_blobs_as_they_are_written_and_report_failures() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let gate = Gate::default();
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let b: Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        let (pa, pb) = (tmp.path().join("a"), tmp.path().join("b"));
        assert!(
            gate.follow(&a, pa.clone()).unwrap().is_none(),
            "not fetched: whole"
        );
        gate.set(a, Slot::Fetching);
        gate.set(b, Slot::Fetching);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let first_read = AtomicBool::new(false);
        std::thread::scope(|s| {
            // The reader starts before the file exists, reads what the
            // fetch has written while it is still running, and gets every
            // byte once the fetch renames it and says whole.
            let read = s.spawn(|| {
                let mut reader = gate.follow(&a, pa.clone()).unwrap().expect("a reader");
                let mut got = Vec::new();
                let mut buf = vec![0u8; 8192];
                loop {
                    match reader.read(&mut buf).unwrap() {
                        0 => return got,
                        n => got.extend_from_slice(&buf[..n]),
                    }
                    if got.len() >= 70_000 {
                        first_read.store(true, Ordering::SeqCst);
                    }
                }
            });
            let partial = registry::partial_path(&pa);
            std::thread::sleep(Duration::from_millis(30));
            let mut f = File::create(&partial).unwrap();
            for (i, chunk) in data.chunks(70_000).enumerate() {
                f.write_all(chunk).unwrap();
                gate.grew();
                if i == 0 {
                    let waited = std::time::Instant::now();
                    while !first_read.load(Ordering::SeqCst) {
                        assert!(
                            waited.elapsed() < Duration::from_secs(10),
                            "the reader waited for the whole blob"
                        );
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            std::fs::rename(&partial, &pa).unwrap();
            gate.set(a, Slot::Whole);
            assert!(read.join().unwrap() == data, "every byte, in order");
        });
        // What was written is read; a failed fetch is the reader's error.
        std::fs::write(registry::partial_path(&pb), &data[..1000]).unwrap();
        let mut reader = gate.follow(&b, pb.clone()).unwrap().expect("a reader");
        let mut head = vec![0u8; 1000];
        reader.read_exact(&mut head).unwrap();
        assert!(head == data[..1000]);
        gate.set(
            b,
            Slot::Failed(registry::Error::new(
                registry::ErrorKind::NotFound,
                "r",
                "gone",
            )),
        );
        let e = reader.read(&mut head).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
        drop(reader);
        let e = gate.follow(&b, pb).err().expect("a failed fetch");
        assert!(e.to_string().contains("gone"), "{e}");
        let e = gate.failure().unwrap();
        assert_eq!(e.kind(), registry::ErrorKind::NotFound);
        assert!(gate.failure().is_none(), "taken out");
    }
}
