//! Importing images: every blob checked against its digest, layers
//! already stored reused, names already holding the manifest left as they
//! are and taken names moved, all under one intent rolled back on failure.

use std::io::Read;

use super::*;

/// A reader of layer blob `digest` while it is still arriving (a pull
/// writing it), or None when the source holds it whole.
pub type Arriving<'a> = dyn Fn(&Digest) -> Result<Option<Box<dyn Read + 'a>>> + Sync + 'a;

/// What an import reports to and reads arriving blobs from.
pub(super) struct Hooks<'h, 'r> {
    progress: &'h mut dyn FnMut(ImportProgress<'_>),
    arriving: &'h Arriving<'r>,
}

impl Images {
    /// Imports every image in `source` (an OCI layout directory or tar, or
    /// a docker-save tar), named `name` (only when the source holds one
    /// image) or by the names the source records. Returns each name with
    /// what became of it: a name that has the same manifest already is
    /// left as it is; a name another image has moves to the new one (the
    /// old keeps its layers under its manifest digest as its name). On any
    /// error nothing of this import remains.
    pub fn import(
        &self,
        sn: &dyn Snapshotter,
        source: &Path,
        name: Option<&str>,
        progress: &mut dyn FnMut(ImportProgress<'_>),
    ) -> Result<Vec<Imported>> {
        self.import_gated(sn, source, name, progress, &|_| Ok(None))
    }

    /// [`Images::import`] of a source whose layer blobs may still be
    /// arriving (a pull): a layer is read from `arriving(digest)` when it
    /// gives a reader (which returns the blob's bytes as they come, and
    /// its end once it is whole), so a layer is decompressed and applied
    /// while it downloads. A layer already stored needs no blob in
    /// `source`: its descriptor's digest and size are recorded.
    pub fn import_gated(
        &self,
        sn: &dyn Snapshotter,
        source: &Path,
        name: Option<&str>,
        progress: &mut dyn FnMut(ImportProgress<'_>),
        arriving: &Arriving<'_>,
    ) -> Result<Vec<Imported>> {
        let _op = self.writer("import")?;
        let archive = Archive::open(source)?;
        let mut found = source::read(&archive)?;
        match name {
            Some(n) => {
                validate_name(n)?;
                let manifests: BTreeSet<Digest> = found.iter().map(|f| f.manifest).collect();
                if manifests.len() > 1 {
                    return Err(Error::new(ErrorKind::InvalidArgument, "import")
                        .path(source)
                        .detail(format!(
                            "the source holds {} images; --name names one, import without it",
                            manifests.len()
                        )));
                }
                found.truncate(1);
                found[0].names = vec![n.to_owned()];
            }
            None => {
                if found.iter().any(|f| f.names.is_empty()) {
                    return Err(Error::new(ErrorKind::InvalidArgument, "import")
                        .path(source)
                        .detail("the image has no name in the source; give one with --name NAME"));
                }
            }
        }
        let mut seen = HashSet::new();
        let mut present = Vec::new();
        let mut moved = Vec::new();
        for f in &mut found {
            f.names.retain(|n| seen.insert(n.clone()));
            let mut keep = Vec::new();
            for n in std::mem::take(&mut f.names) {
                validate_name(&n)?;
                if !self.name_used(&n)? {
                    keep.push(n);
                    continue;
                }
                // Taken by an image being removed: not ours to move.
                let old = self.load(&n).map_err(|_| name_taken(&n).path(source))?;
                if old.manifest == f.manifest {
                    present.push(Imported {
                        image: old,
                        outcome: ImportOutcome::AlreadyPresent,
                    });
                } else {
                    moved.push((n.clone(), old.manifest));
                    keep.push(n);
                }
            }
            f.names = keep;
        }
        found.retain(|f| !f.names.is_empty());
        if found.is_empty() {
            return Ok(present);
        }

        let intent = self.new_intent("import", None)?;
        let hooks = Hooks { progress, arriving };
        let result = self.import_found(sn, &archive, &found, intent, &moved, hooks);
        match result {
            Ok(images) => {
                let mut out: Vec<Imported> = images
                    .into_iter()
                    .map(|image| {
                        let outcome = match moved.iter().find(|(n, _)| *n == image.name) {
                            Some((_, from)) => ImportOutcome::NameMoved {
                                from: *from,
                                now_named: from.to_string(),
                            },
                            None => ImportOutcome::New,
                        };
                        Imported { image, outcome }
                    })
                    .collect();
                out.extend(present);
                Ok(out)
            }
            Err(e) => {
                if let Err(re) = self.rollback(sn, intent) {
                    tracing::warn!("cannot roll back import {intent}: {re}; reopening retries");
                }
                Err(e)
            }
        }
    }

    pub(super) fn import_found(
        &self,
        sn: &dyn Snapshotter,
        archive: &Archive,
        found: &[Found],
        intent: i64,
        moved: &[(String, Digest)],
        hooks: Hooks<'_, '_>,
    ) -> Result<Vec<Image>> {
        let Hooks { progress, arriving } = hooks;
        let scratch = self.scratch(intent);
        let mut seq = 0usize;
        let mut images = Vec::new();
        for f in found {
            let chains = chain_ids(&f.diff_ids);
            let mut layers = Vec::new();
            for (i, lr) in f.layers.iter().enumerate() {
                let shown = lr.digest.unwrap_or(f.diff_ids[i]);
                let size = match lr.size {
                    Some(s) => s,
                    None => archive.open_file(&lr.path)?.1,
                };
                progress(ImportProgress::Layer {
                    index: i,
                    count: f.layers.len(),
                    digest: &shown,
                    size,
                });
                let what = format!("layer {} of {}", i + 1, f.layers.len());
                let chain = chains[i];
                let chain_name = Name::new(chain.to_string())?;
                let reused = match exists(sn, chain_name.as_str())? {
                    Some(Kind::Committed) => true,
                    Some(_) => {
                        return Err(Error::new(ErrorKind::AlreadyExists, "import")
                            .key(&chain_name)
                            .detail("a snapshot that is not committed has this layer's chain id; remove it (thinbox snapshot rm)"))
                    }
                    None => false,
                };
                let (digest, len) = if reused {
                    // A stored layer a pull did not fetch is known by its
                    // descriptor; one in the source is checked.
                    match (lr.digest, lr.size) {
                        (Some(d), Some(n)) if !archive.has(&lr.path) => (d, n),
                        _ => {
                            let blob = open_blob(archive, &lr.path, lr.digest.as_ref(), arriving)?;
                            finish_blob(archive, lr, &what, HashingReader::new(blob))?
                        }
                    }
                } else {
                    let key = Key::new(format!("thinbox-import-{intent}-{seq}"))?;
                    self.record_snapshot(intent, seq, key.as_str(), chain_name.as_str())?;
                    seq += 1;
                    let parent = i
                        .checked_sub(1)
                        .map(|p| Name::new(chains[p].to_string()))
                        .transpose()?;
                    let mnt = scratch.join("mnt");
                    fs::create_dir_all(&mnt).map_err(|e| Error::io("import", &mnt, e))?;
                    // One pass: the blob is hashed as it is decompressed and
                    // applied, and checked before the layer is committed (a
                    // failed check leaves an active snapshot the intent's
                    // rollback removes).
                    let blob = open_blob(archive, &lr.path, lr.digest.as_ref(), arriving)?;
                    let mut compressed = HashingReader::new(blob);
                    let applied = apply_blob(sn, &key, parent.as_ref(), &mnt, &mut compressed)
                        .map_err(|e| layer_error(archive, &what, &shown, e));
                    // A wrong blob is the cause of whatever its apply said.
                    let (digest, len) = finish_blob(archive, lr, &what, compressed)?;
                    let diff_id = match applied? {
                        Applied::Whole(diff_id) => diff_id,
                        Applied::Broken { read, apply } => {
                            // The stream broke (truncated gzip, short tar), not the snapshot.
                            return Err(Error::new(ErrorKind::InvalidImage, "import")
                                .path(archive_top(archive))
                                .detail(format!(
                                    "{what} ({digest}) is truncated or corrupt: {read}; the image is damaged, fetch it again"
                                ))
                                .source(io::Error::other(apply.to_string())));
                        }
                    };
                    if diff_id != f.diff_ids[i] {
                        return Err(Error::new(ErrorKind::DigestMismatch, "import")
                            .path(archive_top(archive))
                            .detail(format!(
                                "{what} ({digest}) uncompressed: expected diff id {}, content has {diff_id}; the image is corrupt, fetch it again",
                                f.diff_ids[i]
                            )));
                    }
                    sn.commit(&chain_name, &key, &Labels::new())?;
                    self.fault(FaultPoint::LayerCommitted(seq - 1))?;
                    (digest, len)
                };
                progress(ImportProgress::LayerDone { index: i, reused });
                layers.push(Layer {
                    digest,
                    diff_id: f.diff_ids[i],
                    chain_id: chain,
                    size: len,
                });
            }
            for n in &f.names {
                images.push(Image {
                    name: n.clone(),
                    manifest: f.manifest,
                    config: f.config.clone(),
                    layers: layers.clone(),
                    created: now_secs(),
                });
            }
        }
        clear_scratch(&scratch);
        self.fault(FaultPoint::BeforeRecord)?;
        let mut db = self.db();
        let tx = db.transaction().map_err(store_err("record image"))?;
        for (name, from) in moved {
            // The old image keeps its layers under its manifest digest.
            move_image(&tx, name, &from.to_string())?;
        }
        for img in &images {
            insert_image(&tx, img).map_err(|e| {
                if e.kind() == ErrorKind::AlreadyExists {
                    name_taken(&img.name)
                } else {
                    e
                }
            })?;
        }
        tx.execute("DELETE FROM image_intents WHERE id = ?1", [intent])
            .map_err(store_err("record image"))?;
        tx.commit().map_err(store_err("record image"))?;
        Ok(images)
    }
}

/// Reads the rest of a layer blob (a decompressor may stop before its
/// last bytes) and checks its digest and size against the descriptor's.
fn finish_blob(
    archive: &Archive,
    lr: &source::LayerRef,
    what: &str,
    blob: HashingReader<impl Read>,
) -> Result<(Digest, u64)> {
    let (digest, len) = blob
        .drain()
        .map_err(|e| Error::io("import", archive_top(archive).join(&lr.path), e))?;
    if let Some(expected) = &lr.digest {
        check_size_digest(archive_top(archive), what, expected, lr.size, len, digest)?;
    }
    Ok((digest, len))
}

/// A layer blob: what `arriving` gives for it while a pull writes it,
/// else the source's file.
fn open_blob<'x, 'r: 'x>(
    archive: &'x Archive,
    path: &str,
    digest: Option<&Digest>,
    arriving: &Arriving<'r>,
) -> Result<Box<dyn Read + 'x>> {
    if let Some(d) = digest {
        if let Some(reader) = arriving(d)? {
            return Ok(reader);
        }
    }
    Ok(archive.open_file(path)?.0)
}

/// How applying a layer stream went.
enum Applied {
    /// Applied; the diff id of the uncompressed stream.
    Whole(Digest),
    /// The stream broke (`read`), so the apply failed (`apply`).
    Broken { read: io::Error, apply: Error },
}

/// Decompresses `blob` into a new snapshot `key` on `parent`.
fn apply_blob(
    sn: &dyn Snapshotter,
    key: &Key,
    parent: Option<&Name>,
    mnt: &Path,
    blob: &mut dyn Read,
) -> Result<Applied> {
    let decompressed = layer::decompress(blob)?;
    let mut hr = Watched {
        inner: HashingReader::new(decompressed),
        failed: None,
    };
    let applied = layer::apply_to_snapshot(sn, key, parent, &Labels::new(), mnt, &mut hr);
    match (applied, hr.failed.take()) {
        (Err(apply), Some(read)) => Ok(Applied::Broken { read, apply }),
        (Err(e), None) => Err(e),
        (Ok(_), _) => {
            let (diff_id, _) = hr
                .inner
                .drain()
                .map_err(|e| Error::new(ErrorKind::InvalidLayer, "import").source(e))?;
            Ok(Applied::Whole(diff_id))
        }
    }
}
