//! `image push`: an image from the store to a registry.
//!
//! A pulled image whose manifest, config and layers are all kept
//! ([`crate::content`]) goes byte for byte. Any other image is exported
//! into `ROOT/pushes/MANIFEST/` (its layers regenerated from their
//! snapshots as gzip blobs, a config and an OCI manifest:
//! [`snapshotter::image::Images::export_blobs`]). Then each blob goes up
//! unless the repository has it: mounted from another repository of the
//! same registry that thinbox pushed it to before (or, for a kept image,
//! the repository it was pulled from), else in one PUT
//! or in `[registry] push_chunk_size` PATCH chunks; the config; the
//! manifest last, so the tag names a whole image or nothing new.
//!
//! Where each blob was pushed is kept in `ROOT/pushes/pushed.json`
//! (`{"HOST": {"sha256:…": "REPOSITORY"}}`), written whole and renamed, so
//! a later push of the same layer to another repository mounts it. A
//! killed push leaves blobs in the registry and the staging directory; the
//! next push redoes the export and skips the blobs the registry has.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use registry::{Reference, Uploaded};
use serde::Serialize;
use snapshotter::image::{Digest, Images};

use crate::content::Content;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};

/// What `image push` is asked for beyond the image and reference.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// PATCH chunk size (default `[registry] push_chunk_size`).
    pub chunk_size: Option<u64>,
}

impl PushOptions {
    /// Checks `reference` before anything is opened: a tag to push to.
    pub fn check(&self, reference: &str) -> Result<Reference> {
        let r: Reference = reference.parse()?;
        if r.digest.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{reference}: a push names a tag (HOST/NAME:TAG), not a digest; the registry gives the digest"),
            ));
        }
        if self.chunk_size == Some(0) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "--chunk-size 0: give a size in bytes, e.g. 16777216",
            ));
        }
        Ok(r)
    }
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    /// The image pushed (its name in the store).
    pub image: String,
    /// Where it went, pinned to the manifest (`HOST/NAME:TAG@sha256:…`).
    pub reference: String,
    /// The registry's URL.
    pub endpoint: String,
    /// The manifest's digest.
    pub manifest: Digest,
    /// Blobs (layers and config) the repository had already.
    pub blobs_present: usize,
    /// Blobs mounted from another repository.
    pub blobs_mounted: usize,
    /// Blobs uploaded in one PUT.
    pub blobs_monolithic: usize,
    /// Blobs uploaded in chunks.
    pub blobs_chunked: usize,
    /// Bytes sent for blobs.
    pub bytes_uploaded: u64,
}

/// Where thinbox pushed each blob: host → digest → repository.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct PushRecords(BTreeMap<String, BTreeMap<String, String>>);

impl PushRecords {
    fn load(path: &Path) -> PushRecords {
        // A damaged record only costs mounts.
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn source(&self, host: &str, digest: &Digest, repository: &str) -> Option<&str> {
        self.0
            .get(host)
            .and_then(|m| m.get(&digest.to_string()))
            .map(String::as_str)
            .filter(|r| *r != repository)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        std::fs::write(&tmp, bytes).map_err(|e| Error::io("cannot write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot rename", path, e))
    }
}

impl Engine {
    /// Pushes image `name` (a name or manifest digest in the store) to
    /// `reference` (`HOST[:PORT]/NAME:TAG`).
    pub fn push_image(
        &self,
        images: &Images,
        name: &str,
        reference: &str,
        opts: &PushOptions,
    ) -> Result<Pushed> {
        let r = opts.check(reference)?;
        let image = images.get(name)?;
        let chunk = opts
            .chunk_size
            .unwrap_or(self.config().registry.push_chunk_size.0)
            .max(1);
        let client = self.registry();
        let ep = client.endpoint(&r.registry)?;

        let pushes = self.root().join("pushes");
        std::fs::create_dir_all(&pushes).map_err(|e| Error::io("cannot make", &pushes, e))?;
        let hex = image.manifest.hex();
        let _lock = crate::state::lock_file(&pushes.join(format!("{hex}.lock")), self.observer())?;
        let dir: PathBuf = pushes.join(&hex);
        // What a killed push left is redone: the export is deterministic.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("cannot remove", &dir, e))?;
        }
        // A pulled image whose blobs are kept goes byte for byte; any
        // other is exported from its snapshots.
        let (manifest, media_type, blobs) = match Content::new(self.root()).image(&image) {
            Some(kept) => (kept.manifest, kept.media_type, kept.blobs),
            None => {
                let e =
                    images.export_blobs(self.snapshotter(), &image.name, &dir, &mut |_, _| {})?;
                let config_path = dir.join("config.json");
                std::fs::write(&config_path, &e.config)
                    .map_err(|err| Error::io("cannot write", &config_path, err))?;
                let mut blobs: Vec<(Digest, u64, PathBuf)> =
                    vec![(e.config_digest, e.config.len() as u64, config_path)];
                blobs.extend(e.layers.iter().map(|l| (l.digest, l.size, l.path.clone())));
                (e.manifest, e.media_type.to_owned(), blobs)
            }
        };
        crate::state::crash_point("push-exported");
        // The repository a pulled image came from has its kept blobs.
        let origin = image
            .name
            .parse::<Reference>()
            .ok()
            .filter(|o| o.registry == r.registry && o.repository != r.repository)
            .map(|o| o.repository);

        let records_path = pushes.join("pushed.json");
        let mut pushed = Pushed {
            image: image.name.clone(),
            reference: String::new(),
            endpoint: ep.base.clone(),
            manifest: Digest::sha256(&manifest),
            blobs_present: 0,
            blobs_mounted: 0,
            blobs_monolithic: 0,
            blobs_chunked: 0,
            bytes_uploaded: 0,
        };
        for (i, (digest, size, path)) in blobs.iter().enumerate() {
            let records = PushRecords::load(&records_path);
            let from = records
                .source(&ep.host, digest, &r.repository)
                .or(origin.as_deref());
            let mut sent = 0u64;
            let how = client.push_blob(&ep, &r, digest, path, *size, from, chunk, &mut |n| {
                sent += n
            })?;
            pushed.bytes_uploaded += sent;
            match how {
                Uploaded::Present => pushed.blobs_present += 1,
                Uploaded::Mounted => pushed.blobs_mounted += 1,
                Uploaded::Monolithic => pushed.blobs_monolithic += 1,
                Uploaded::Chunked(_) => pushed.blobs_chunked += 1,
            }
            {
                let _records_lock =
                    crate::state::lock_file(&pushes.join("pushed.lock"), self.observer())?;
                let mut records = PushRecords::load(&records_path);
                records
                    .0
                    .entry(ep.host.clone())
                    .or_default()
                    .insert(digest.to_string(), r.repository.clone());
                records.save(&records_path)?;
            }
            if i == 0 {
                crate::state::crash_point("push-blob-sent");
            }
        }
        let manifest = client.push_manifest(&ep, &r, &media_type, &manifest)?;
        pushed.manifest = manifest;
        pushed.reference = format!("{r}@{manifest}");
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(
                "cannot remove the push's staging directory {}: {e}",
                dir.display()
            );
        }
        let _ = std::fs::remove_file(pushes.join(format!("{hex}.lock")));
        Ok(pushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_references_are_tags_and_chunks_are_sizes() {
        let o = PushOptions::default();
        assert!(o.check("127.0.0.1:5000/team/app:1").is_ok());
        let e = o
            .check(&format!("127.0.0.1:5000/app@sha256:{}", "a".repeat(64)))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("not a digest"), "{e}");
        assert!(o.check("Bad Reference").is_err());
        let e = PushOptions {
            chunk_size: Some(0),
        }
        .check("h:5000/a:1")
        .unwrap_err();
        assert!(e.to_string().contains("--chunk-size"), "{e}");
    }

    #[test]
    fn records_name_another_repository_to_mount_from() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pushed.json");
        let d: Digest = format!("sha256:{}", "c".repeat(64)).parse().unwrap();
        assert!(PushRecords::load(&path).source("h:1", &d, "a").is_none());
        let mut r = PushRecords::default();
        r.0.entry("h:1".into())
            .or_default()
            .insert(d.to_string(), "a".into());
        r.save(&path).unwrap();
        let r = PushRecords::load(&path);
        assert_eq!(r.source("h:1", &d, "b"), Some("a"));
        assert_eq!(r.source("h:1", &d, "a"), None, "not from itself");
        assert_eq!(r.source("h:2", &d, "b"), None, "not from another registry");
        std::fs::write(&path, b"not json").unwrap();
        assert!(PushRecords::load(&path).0.is_empty());
    }
}
