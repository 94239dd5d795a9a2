//! Kept blobs: what a pull fetched (manifest, config, layers), by digest
//! in `ROOT/content/blobs/sha256/`, so a push can send a pulled image byte
//! for byte, with its own digests, and mount its layers from the
//! repository it came from. Layers are kept twice (blob and snapshot), as
//! containerd keeps its content store; `image rm` sweeps blobs no image's
//! manifest names.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use snapshotter::image::{Digest, Image};

use crate::error::{Error, Result};

/// The kept blobs of one state root.
#[derive(Debug, Clone)]
pub struct Content {
    dir: PathBuf,
}

#[derive(Deserialize)]
struct ManifestDescriptors {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    config: BlobRef,
    layers: Vec<BlobRef>,
}

#[derive(Deserialize)]
struct BlobRef {
    digest: Digest,
    size: u64,
}

/// An image whose manifest, config and layer blobs are all kept.
#[derive(Debug, Clone)]
pub struct KeptImage {
    /// The manifest's bytes, as the registry served them.
    pub manifest: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// Config then layers: digest, size, file.
    pub blobs: Vec<(Digest, u64, PathBuf)>,
}

impl Content {
    /// The store under `root`.
    pub fn new(root: &Path) -> Content {
        Content {
            dir: root.join("content/blobs/sha256"),
        }
    }

    /// Where blob `d` is (or would be) kept.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Moves the verified blobs of a pull's staging layout (`dir/blobs/sha256/HEX`)
    /// into the store; a blob kept already stays as it is.
    pub fn adopt_layout(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("cannot make", &self.dir, e))?;
        let blobs = dir.join("blobs/sha256");
        let Ok(entries) = std::fs::read_dir(&blobs) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(hex) = name.to_str().filter(|n| n.len() == 64 && !n.contains('.')) else {
                continue;
            };
            let to = self.dir.join(hex);
            if !to.exists() {
                std::fs::rename(e.path(), &to).map_err(|err| Error::io("cannot keep", &to, err))?;
            }
        }
        Ok(())
    }

    /// `image`'s manifest and every blob it names, when all are kept.
    pub fn image(&self, image: &Image) -> Option<KeptImage> {
        let manifest = std::fs::read(self.path(&image.manifest)).ok()?;
        if Digest::sha256(&manifest) != image.manifest {
            return None;
        }
        let m: ManifestDescriptors = serde_json::from_slice(&manifest).ok()?;
        // The kept manifest must be the image's: its layers are the image's.
        if m.layers.len() != image.layers.len()
            || m.layers
                .iter()
                .zip(&image.layers)
                .any(|(a, b)| a.digest != b.digest)
        {
            return None;
        }
        let mut blobs = Vec::new();
        for b in std::iter::once(&m.config).chain(&m.layers) {
            let path = self.path(&b.digest);
            let len = std::fs::metadata(&path).ok()?.len();
            if len != b.size {
                return None;
            }
            blobs.push((b.digest, b.size, path));
        }
        Some(KeptImage {
            media_type: m
                .media_type
                .unwrap_or_else(|| registry::OCI_MANIFEST.to_owned()),
            manifest,
            blobs,
        })
    }

    /// Removes the kept blobs no image in `images` names (its manifest, and
    /// the config and layers that manifest names). Returns how many went.
    pub fn sweep(&self, images: &[Image]) -> usize {
        let mut keep: HashSet<Digest> = HashSet::new();
        for i in images {
            keep.insert(i.manifest);
            if let Some(m) = std::fs::read(self.path(&i.manifest))
                .ok()
                .and_then(|b| serde_json::from_slice::<ManifestDescriptors>(&b).ok())
            {
                keep.insert(m.config.digest);
                keep.extend(m.layers.iter().map(|l| l.digest));
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
            else {
                continue;
            };
            if !keep.contains(&d) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshotter::image::Layer;

    fn blob(dir: &Path, bytes: &[u8]) -> Digest {
        let d = Digest::sha256(bytes);
        std::fs::write(dir.join(d.hex()), bytes).unwrap();
        d
    }

    #[test]
    fn pulled_blobs_are_kept_found_whole_and_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = tmp.path().join("pull/blobs/sha256");
        std::fs::create_dir_all(&staging).unwrap();
        let config = blob(&staging, b"{}");
        let layer = blob(&staging, b"layer bytes");
        let manifest_json = serde_json::json!({
            "mediaType": registry::DOCKER_MANIFEST,
            "config": {"digest": config.to_string(), "size": 2},
            "layers": [{"digest": layer.to_string(), "size": 11}],
        })
        .to_string();
        let manifest = blob(&staging, manifest_json.as_bytes());
        std::fs::write(staging.join(format!("{}.partial", "e".repeat(64))), b"x").unwrap();
        let image = Image {
            name: "h:5000/a:1".into(),
            manifest,
            config: Default::default(),
            layers: vec![Layer {
                digest: layer,
                diff_id: layer,
                chain_id: layer,
                size: 11,
            }],
            created: std::time::SystemTime::UNIX_EPOCH,
        };
        let content = Content::new(tmp.path());
        assert!(content.image(&image).is_none(), "nothing kept yet");
        content.adopt_layout(&tmp.path().join("pull")).unwrap();
        let kept = content.image(&image).expect("kept whole");
        assert_eq!(kept.manifest, manifest_json.as_bytes());
        assert_eq!(kept.media_type, registry::DOCKER_MANIFEST);
        let digests: Vec<Digest> = kept.blobs.iter().map(|b| b.0).collect();
        assert_eq!(digests, [config, layer], "config, then layers");
        let kept_dir = tmp.path().join("content/blobs/sha256");
        assert_eq!(
            std::fs::read_dir(&kept_dir).unwrap().count(),
            3,
            "no partial blob"
        );

        // A missing layer blob: not whole, so a push exports instead.
        std::fs::remove_file(content.path(&layer)).unwrap();
        assert!(content.image(&image).is_none());
        // The sweep keeps what a listed image's manifest names.
        assert_eq!(content.sweep(std::slice::from_ref(&image)), 0);
        assert_eq!(content.sweep(&[]), 2, "manifest and config");
        assert_eq!(std::fs::read_dir(&kept_dir).unwrap().count(), 0);
    }
}
