//! Writing images: an OCI image layout (directory or tar) or a `docker
//! save` archive from layer tars and an [`ImageConfig`], for tests and
//! tools that need an image without a registry.
//!
//! ```no_run
//! use snapshotter::image::write::{self, Entry, ImageSpec};
//! use snapshotter::image::ImageConfig;
//! # fn main() -> snapshotter::Result<()> {
//! let base = write::layer_tar(&[Entry::dir("bin"), Entry::file("bin/hello", b"hi\n", 0o755)])?;
//! let spec = ImageSpec::new(ImageConfig::default(), vec![base]).name("hello:1");
//! write::oci_dir(&spec, std::path::Path::new("/tmp/hello-oci"))?;
//! # Ok(()) }
//! ```

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::error::{Error, ErrorKind, Result};

use super::digest::Digest;
use super::{host_platform, ImageConfig, MEDIA_CONFIG, MEDIA_INDEX, MEDIA_MANIFEST, REF_NAME};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (the usual `tar+gzip` layer).
    #[default]
    Gzip,
    /// zstd (`tar+zstd`).
    Zstd,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    fn compress(self, tar: &[u8]) -> Result<Vec<u8>> {
        let io = |e| Error::new(ErrorKind::Io, "write image").source(e);
        Ok(match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(tar).map_err(io)?;
                enc.finish().map_err(io)?
            }
            Compression::Zstd => zstd::stream::encode_all(tar, 3).map_err(io)?,
        })
    }
}

/// One layer to write: an uncompressed tar and how to compress it.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// The uncompressed layer tar (its sha256 is the diff id).
    pub tar: Vec<u8>,
    /// How the blob is compressed.
    pub compression: Compression,
}

/// An image to write.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The name recorded in the layout (`org.opencontainers.image.ref.name`
    /// in index.json, `RepoTags` in a docker archive); None records none.
    pub name: Option<String>,
    /// The runtime configuration.
    pub config: ImageConfig,
    /// The layers, bottom first.
    pub layers: Vec<LayerSpec>,
    /// `os/architecture` recorded in the config (default: the host's).
    pub platform: (String, String),
}

impl ImageSpec {
    /// An unnamed image of gzip-compressed `layers` (uncompressed tars).
    pub fn new(config: ImageConfig, layers: Vec<Vec<u8>>) -> ImageSpec {
        let (os, arch) = host_platform();
        ImageSpec {
            name: None,
            config,
            layers: layers
                .into_iter()
                .map(|tar| LayerSpec {
                    tar,
                    compression: Compression::Gzip,
                })
                .collect(),
            platform: (os.to_owned(), arch.to_owned()),
        }
    }

    /// Sets the recorded name.
    pub fn name(mut self, name: &str) -> ImageSpec {
        self.name = Some(name.to_owned());
        self
    }

    /// Sets every layer's compression.
    pub fn compression(mut self, c: Compression) -> ImageSpec {
        for l in &mut self.layers {
            l.compression = c;
        }
        self
    }
}

/// A written layer's digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenLayer {
    /// Digest of the blob as written (compressed).
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the blob.
    pub size: u64,
}

impl WrittenLayer {
    /// The blob's path in an OCI layout (`blobs/sha256/<hex>`).
    pub fn digest_path(&self) -> String {
        format!("blobs/sha256/{}", self.digest.hex())
    }
}

/// What was written, to find and corrupt blobs in tests.
#[derive(Debug, Clone)]
pub struct Written {
    /// The manifest's digest (OCI) or of the manifest.json entry (docker).
    pub manifest: Digest,
    /// The config blob's digest.
    pub config: Digest,
    /// The layers, bottom first.
    pub layers: Vec<WrittenLayer>,
    /// Each file written, as (path relative to the layout, contents).
    pub files: Vec<(String, Vec<u8>)>,
}

struct Blob {
    digest: Digest,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: Digest::sha256(&bytes),
            bytes,
        }
    }
    fn path(&self) -> String {
        format!("blobs/sha256/{}", self.digest.hex())
    }
    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        json!({"mediaType": media_type, "digest": self.digest.to_string(), "size": self.bytes.len()})
    }
}

/// The OCI config JSON of an image.
pub(crate) fn config_json(
    config: &ImageConfig,
    diff_ids: &[Digest],
    platform: (&str, &str),
) -> Vec<u8> {
    let diff_ids: Vec<String> = diff_ids.iter().map(Digest::to_string).collect();
    let c = config;
    let v = json!({
        "architecture": platform.1,
        "os": platform.0,
        "config": {
            "Env": c.env, "Entrypoint": c.entrypoint, "Cmd": c.cmd,
            "WorkingDir": c.working_dir, "User": c.user,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    to_json(&v)
}

/// [`config_json`] for the platform `config` records (`os/arch[/variant]`),
/// this host's when it records none.
pub(crate) fn config_json_own_platform(config: &ImageConfig, diff_ids: &[Digest]) -> Vec<u8> {
    let mut parts = config.platform.splitn(3, '/');
    let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
    let (Some(os), Some(arch)) = (os.filter(|o| !o.is_empty()), arch) else {
        return config_json(config, diff_ids, host_platform());
    };
    let bytes = config_json(config, diff_ids, (os, arch));
    match variant {
        Some(v) => {
            let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            value["variant"] = json!(v);
            to_json(&value)
        }
        None => bytes,
    }
}

fn spec_config(spec: &ImageSpec) -> Vec<u8> {
    let diff_ids: Vec<Digest> = spec.layers.iter().map(|l| Digest::sha256(&l.tar)).collect();
    config_json(
        &spec.config,
        &diff_ids,
        (&spec.platform.0, &spec.platform.1),
    )
}

fn manifest_json(config: &Blob, layers: &[(Digest, u64, &str)]) -> Vec<u8> {
    to_json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(MEDIA_CONFIG),
        "layers": layers
            .iter()
            .map(|(d, size, m)| json!({"mediaType": m, "digest": d.to_string(), "size": size}))
            .collect::<Vec<_>>(),
    }))
}

/// The OCI manifest of `config` (its bytes) and gzip layers `(digest, size)`.
pub(crate) fn gzip_manifest_json(config: &[u8], layers: &[(Digest, u64)]) -> Vec<u8> {
    let layers: Vec<(Digest, u64, &str)> = layers
        .iter()
        .map(|(d, size)| (*d, *size, Compression::Gzip.media_type()))
        .collect();
    manifest_json(&Blob::new(config.to_vec()), &layers)
}

/// The digest of the OCI manifest an image with `config` and uncompressed
/// layers `(diff id, size)` has, as an export of it would write.
pub(crate) fn uncompressed_manifest_digest(
    config: &ImageConfig,
    layers: &[(Digest, u64)],
) -> Digest {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.0).collect();
    let config = Blob::new(config_json(config, &diff_ids, host_platform()));
    let layers: Vec<(Digest, u64, &str)> = layers
        .iter()
        .map(|(d, s)| (*d, *s, Compression::None.media_type()))
        .collect();
    Digest::sha256(&manifest_json(&config, &layers))
}

fn to_json(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The files of an OCI image layout for `spec`.
fn oci_files(spec: &ImageSpec) -> Result<Written> {
    let config = Blob::new(spec_config(spec));
    let mut layers = Vec::new();
    let mut layer_blobs = Vec::new();
    for l in &spec.layers {
        let blob = Blob::new(l.compression.compress(&l.tar)?);
        layers.push(WrittenLayer {
            digest: blob.digest,
            diff_id: Digest::sha256(&l.tar),
            size: blob.bytes.len() as u64,
        });
        layer_blobs.push((blob, l.compression.media_type()));
    }
    let descs: Vec<(Digest, u64, &str)> = layer_blobs
        .iter()
        .map(|(b, m)| (b.digest, b.bytes.len() as u64, *m))
        .collect();
    let manifest = Blob::new(manifest_json(&config, &descs));
    let mut desc = manifest.descriptor(MEDIA_MANIFEST);
    if let Some(name) = &spec.name {
        desc["annotations"] = json!({ REF_NAME: name });
    }
    let index =
        to_json(&json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [desc]}));
    let mut files = vec![
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_owned(), index),
        (manifest.path(), manifest.bytes.clone()),
        (config.path(), config.bytes.clone()),
    ];
    for (b, _) in layer_blobs {
        if !files.iter().any(|(p, _)| *p == b.path()) {
            files.push((b.path(), b.bytes));
        }
    }
    Ok(Written {
        manifest: manifest.digest,
        config: config.digest,
        layers,
        files,
    })
}

/// The files of a `docker save` archive for `spec`: `manifest.json`,
/// `repositories`, `<config hex>.json` and `<diff id hex>/layer.tar`.
fn docker_files(spec: &ImageSpec) -> Result<Written> {
    let config = Blob::new(spec_config(spec));
    let mut files = Vec::new();
    let mut layers = Vec::new();
    let mut paths = Vec::new();
    for l in &spec.layers {
        let bytes = l.compression.compress(&l.tar)?;
        let diff_id = Digest::sha256(&l.tar);
        let path = format!("{}/layer.tar", diff_id.hex());
        layers.push(WrittenLayer {
            digest: Digest::sha256(&bytes),
            diff_id,
            size: bytes.len() as u64,
        });
        if !paths.contains(&path) {
            files.push((path.clone(), bytes));
        }
        paths.push(path);
    }
    let config_path = format!("{}.json", config.digest.hex());
    let tags: Vec<&String> = spec.name.iter().collect();
    let entry = json!({"Config": config_path, "RepoTags": tags, "Layers": paths});
    let manifest = Digest::sha256(&to_json(&entry));
    files.push(("manifest.json".to_owned(), to_json(&json!([entry]))));
    if let (Some(name), Some(top)) = (&spec.name, layers.last()) {
        let (repo, tag) = name.rsplit_once(':').unwrap_or((name.as_str(), "latest"));
        files.push((
            "repositories".to_owned(),
            to_json(&json!({ repo: { tag: top.diff_id.hex() } })),
        ));
    }
    files.push((config_path, config.bytes));
    Ok(Written {
        manifest,
        config: config.digest,
        layers,
        files,
    })
}

fn write_dir(files: &[(String, Vec<u8>)], dir: &Path) -> Result<()> {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("write image", parent, e))?;
        }
        fs::write(&path, bytes).map_err(|e| Error::io("write image", &path, e))?;
    }
    Ok(())
}

fn write_tar(files: &[(String, Vec<u8>)], path: &Path) -> Result<()> {
    let file = fs::File::create(path).map_err(|e| Error::io("write image", path, e))?;
    let mut b = tar::Builder::new(file);
    let mut dirs: Vec<String> = Vec::new();
    for (rel, bytes) in files {
        // Parent directories first, as tar(1) writes them.
        let mut prefix = String::new();
        for comp in rel
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            prefix.push_str(comp);
            prefix.push('/');
            if !dirs.contains(&prefix) {
                dirs.push(prefix.clone());
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, &prefix, std::io::empty())
                    .map_err(|e| Error::io("write image", path, e))?;
            }
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        b.append_data(&mut h, rel, &bytes[..])
            .map_err(|e| Error::io("write image", path, e))?;
    }
    b.into_inner()
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("write image", path, e))
}

/// Writes `spec` as an OCI image layout in directory `dir` (created if
/// missing), as `skopeo copy ... oci:DIR` would.
pub fn oci_dir(spec: &ImageSpec, dir: &Path) -> Result<Written> {
    let w = oci_files(spec)?;
    write_dir(&w.files, dir)?;
    Ok(w)
}

/// Writes `spec` as an OCI image layout in a tar file at `path`.
pub fn oci_tar(spec: &ImageSpec, path: &Path) -> Result<Written> {
    let w = oci_files(spec)?;
    write_tar(&w.files, path)?;
    Ok(w)
}

/// Writes `spec` as a (pre-OCI) `docker save` tar at `path`.
pub fn docker_tar(spec: &ImageSpec, path: &Path) -> Result<Written> {
    let w = docker_files(spec)?;
    write_tar(&w.files, path)?;
    Ok(w)
}

/// One entry of a layer tar built by [`layer_tar`].
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory (mode 0755).
    Dir(String),
    /// A regular file with contents and mode.
    File(String, Vec<u8>, u32),
    /// A symbolic link to a target.
    Symlink(String, String),
    /// A whiteout deleting this path from lower layers.
    Whiteout(String),
}

impl Entry {
    /// A directory.
    pub fn dir(path: &str) -> Entry {
        Entry::Dir(path.to_owned())
    }
    /// A regular file.
    pub fn file(path: &str, data: &[u8], mode: u32) -> Entry {
        Entry::File(path.to_owned(), data.to_vec(), mode)
    }
    /// A symbolic link.
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink(path.to_owned(), target.to_owned())
    }
    /// A whiteout for `path`.
    pub fn whiteout(path: &str) -> Entry {
        Entry::Whiteout(path.to_owned())
    }
}

/// An uncompressed layer tar holding `entries` in order (owner 0:0,
/// mtime 1600000000), deterministic for equal input. Fails on a path tar
/// cannot hold (absolute, `..`, too long).
pub fn layer_tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        h
    };
    for e in entries {
        let r = match e {
            Entry::Dir(p) => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                b.append_data(&mut h, p, std::io::empty())
            }
            Entry::File(p, data, mode) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                b.append_data(&mut h, p, &data[..])
            }
            Entry::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, target)
            }
            Entry::Whiteout(p) => {
                let path = Path::new(p);
                let base = path.file_name().map(|s| s.to_string_lossy().into_owned());
                let wh = path
                    .with_file_name(format!(".wh.{}", base.unwrap_or_default()))
                    .to_string_lossy()
                    .into_owned();
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, wh, std::io::empty())
            }
        };
        r.map_err(|err| {
            Error::new(ErrorKind::InvalidArgument, "layer tar")
                .key(format!("{e:?}"))
                .source(err)
        })?;
    }
    b.into_inner()
        .map_err(|e| Error::new(ErrorKind::Io, "layer tar").source(e))
}
