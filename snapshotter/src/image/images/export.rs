//! Exporting an image as the blobs a push sends: each layer regenerated
//! as the diff of its committed snapshot against its parent (a gzip tar),
//! with a config and an OCI manifest describing exactly those blobs.
//!
//! The store keeps layers as snapshots, not as the blobs they came in, so
//! a pushed image has the same files, config and layers but its own
//! digests (a pulled image pushed elsewhere is not byte-identical to its
//! source). The diff and gzip are deterministic: the same image exports
//! to the same blobs, so a second push sends nothing and a layer shared
//! by two images is one blob.

use std::io::{BufWriter, Write};

use flate2::write::GzEncoder;

use super::*;
use crate::image::write::{config_json_own_platform, gzip_manifest_json};
use crate::image::MEDIA_MANIFEST;

/// One layer as a blob file.
#[derive(Debug, Clone)]
pub struct ExportedLayer {
    /// The gzip blob's digest.
    pub digest: Digest,
    /// The uncompressed tar's digest.
    pub diff_id: Digest,
    /// The blob's size.
    pub size: u64,
    /// The blob file (`DIR/blobs/HEX`).
    pub path: PathBuf,
}

/// An image as the blobs and manifest a push sends.
#[derive(Debug, Clone)]
pub struct ExportedImage {
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// Its media type (OCI image manifest).
    pub media_type: &'static str,
    /// The config's bytes.
    pub config: Vec<u8>,
    /// Its digest.
    pub config_digest: Digest,
    /// The layers, bottom first.
    pub layers: Vec<ExportedLayer>,
}

impl Images {
    /// Writes image `name`'s layers into `dir/blobs/` as gzip blobs and
    /// returns them with their config and manifest. `progress(i, n)` is
    /// called before layer `i` of `n`. The store is held (as a write) for
    /// the diffs' temporary views, so no removal runs under them; views a
    /// killed export leaves are swept like a killed commit's.
    pub fn export_blobs(
        &self,
        sn: &dyn Snapshotter,
        name: &str,
        dir: &Path,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<ExportedImage> {
        let _op = self.writer("export")?;
        let image = self.get(name)?;
        let blobs = dir.join("blobs");
        fs::create_dir_all(&blobs).map_err(|e| Error::io("export", &blobs, e))?;
        let scratch = dir.join("scratch");
        fs::create_dir_all(&scratch).map_err(|e| Error::io("export", &scratch, e))?;
        let mut layers = Vec::new();
        for (i, layer) in image.layers.iter().enumerate() {
            progress(i, image.layers.len());
            let key = Key::new(layer.chain_id.to_string())?;
            let tmp = dir.join(format!("layer-{i}.tmp"));
            let file = File::create(&tmp).map_err(|e| Error::io("export", &tmp, e))?;
            let compressed = HashingWriter::new(BufWriter::new(file));
            let mut tar =
                HashingWriter::new(GzEncoder::new(compressed, flate2::Compression::default()));
            layer::diff_snapshot(sn, &key, &scratch, &mut tar)?;
            let (diff_id, _, gz) = tar.finish();
            let io_err = |e: io::Error| Error::io("export", &tmp, e);
            let (digest, size, buffered) = gz.finish().map_err(io_err)?.finish();
            let mut file = buffered.into_inner().map_err(|e| io_err(e.into_error()))?;
            file.flush().map_err(io_err)?;
            let path = blobs.join(digest.hex());
            fs::rename(&tmp, &path).map_err(|e| Error::io("export", &path, e))?;
            layers.push(ExportedLayer {
                digest,
                diff_id,
                size,
                path,
            });
        }
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id).collect();
        let config = config_json_own_platform(&image.config, &diff_ids);
        let sizes: Vec<(Digest, u64)> = layers.iter().map(|l| (l.digest, l.size)).collect();
        Ok(ExportedImage {
            manifest: gzip_manifest_json(&config, &sizes),
            media_type: MEDIA_MANIFEST,
            config_digest: Digest::sha256(&config),
            config,
            layers,
        })
    }
}
