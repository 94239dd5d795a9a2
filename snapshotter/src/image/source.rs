//! Reading an image source: an OCI image layout (directory or tar) or a
//! `docker save` archive (tar, or its unpacked directory), into the list of
//! images it holds, with every manifest and config blob checked against
//! its digest. Layer blobs are only located here; [`super::Images`]
//! checks them while importing.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};

use super::digest::Digest;
use super::{host_platform, ImageConfig, CONTAINERD_NAME, REF_NAME};

/// Largest manifest, index or config blob read into memory.
const MAX_JSON: u64 = 16 << 20;

/// What a source must look like, for error messages.
pub(crate) const EXPECTED: &str = "expected an OCI image layout (a directory or tar with \
oci-layout, index.json and blobs/sha256/) or a docker save tar (manifest.json)";

fn invalid(source: &Path, detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidImage, "import")
        .path(source)
        .detail(detail)
}

pub(crate) enum TarEntry {
    File { offset: u64, size: u64 },
    Link(String),
}

/// Random access to the files of a source, by path relative to its top.
pub(crate) enum Archive {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        len: u64,
        entries: HashMap<String, TarEntry>,
    },
}

/// `a/./b//c/` → `a/b/c`; None when it escapes (`..`, absolute).
fn normalize(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for comp in Path::new(p).components() {
        match comp {
            Component::Normal(s) => out.push(s.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.join("/"))
}

impl Archive {
    pub(crate) fn open(source: &Path) -> Result<Archive> {
        let meta = std::fs::metadata(source).map_err(|e| {
            Error::new(ErrorKind::NotFound, "import")
                .path(source)
                .detail("no such file or directory")
                .source(e)
        })?;
        if meta.is_dir() {
            return Ok(Archive::Dir(source.to_owned()));
        }
        let mut file = File::open(source).map_err(|e| Error::io("import", source, e))?;
        let mut magic = [0u8; 4];
        let n = file
            .read(&mut magic)
            .map_err(|e| Error::io("import", source, e))?;
        if n >= 2 && magic[..2] == [0x1f, 0x8b] || n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(invalid(
                source,
                "this is a compressed file; decompress it first (gunzip or unzstd)",
            ));
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("import", source, e))?;
        let mut entries = HashMap::new();
        let mut ar = tar::Archive::new(file);
        let not_tar = |e: std::io::Error| {
            invalid(source, format!("the archive is truncated or damaged: {e}"))
        };
        let not_image = || {
            invalid(
                source,
                format!("not a directory or tar archive; {EXPECTED}"),
            )
        };
        for (i, entry) in ar.entries().map_err(|_| not_image())?.enumerate() {
            let entry = entry.map_err(|e| if i == 0 { not_image() } else { not_tar(e) })?;
            let raw = entry
                .path()
                .map_err(not_tar)?
                .to_string_lossy()
                .into_owned();
            let Some(name) = normalize(&raw) else {
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_file() || kind == tar::EntryType::Continuous {
                entries.insert(
                    name,
                    TarEntry::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                );
            } else if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry.link_name().map_err(not_tar)? else {
                    continue;
                };
                let target = target.to_string_lossy().into_owned();
                let resolved = if kind.is_symlink() {
                    let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                    normalize(&dir.join(&target).to_string_lossy())
                } else {
                    normalize(&target)
                };
                if let Some(t) = resolved {
                    entries.insert(name, TarEntry::Link(t));
                }
            }
        }
        Ok(Archive::Tar {
            path: source.to_owned(),
            len: meta.len(),
            entries,
        })
    }

    fn top(&self) -> &Path {
        match self {
            Archive::Dir(p) => p,
            Archive::Tar { path, .. } => path,
        }
    }

    fn find(&self, rel: &str) -> Option<(u64, u64)> {
        let Archive::Tar { entries, .. } = self else {
            return None;
        };
        let mut name = normalize(rel)?;
        for _ in 0..16 {
            match entries.get(&name)? {
                TarEntry::File { offset, size } => return Some((*offset, *size)),
                TarEntry::Link(t) => name = t.clone(),
            }
        }
        None
    }

    pub(crate) fn has(&self, rel: &str) -> bool {
        match self {
            Archive::Dir(d) => normalize(rel).is_some_and(|r| d.join(r).is_file()),
            Archive::Tar { .. } => self.find(rel).is_some(),
        }
    }

    /// Opens file `rel`: a reader and its length. A file the archive lists
    /// but does not hold in full is reported as truncated.
    pub(crate) fn open_file(&self, rel: &str) -> Result<(Box<dyn Read + '_>, u64)> {
        let missing = || invalid(self.top(), format!("{rel} is missing from the image"));
        match self {
            Archive::Dir(d) => {
                let rel_n = normalize(rel).ok_or_else(missing)?;
                let path = d.join(rel_n);
                let canon = path.canonicalize().map_err(|_| missing())?;
                let top = d.canonicalize().map_err(|e| Error::io("import", d, e))?;
                if !canon.starts_with(&top) {
                    return Err(invalid(d, format!("{rel} points outside the image")));
                }
                let f = File::open(&canon).map_err(|e| Error::io("import", &path, e))?;
                let len = f
                    .metadata()
                    .map_err(|e| Error::io("import", &path, e))?
                    .len();
                Ok((Box::new(f), len))
            }
            Archive::Tar { path, len, .. } => {
                let (offset, size) = self.find(rel).ok_or_else(missing)?;
                if offset.saturating_add(size) > *len {
                    return Err(invalid(
                        path,
                        format!(
                            "the archive is truncated: {rel} needs {size} bytes, {} remain",
                            len.saturating_sub(offset)
                        ),
                    ));
                }
                let mut f = File::open(path).map_err(|e| Error::io("import", path, e))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::io("import", path, e))?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    /// Reads a small file (JSON) whole.
    fn read_json_file(&self, rel: &str) -> Result<Vec<u8>> {
        let (mut r, len) = self.open_file(rel)?;
        if len > MAX_JSON {
            return Err(invalid(
                self.top(),
                format!("{rel} is too large ({len} bytes)"),
            ));
        }
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)
            .map_err(|e| Error::io("import", self.top().join(rel), e))?;
        Ok(buf)
    }

    /// Reads blob `digest` (expected `size` bytes) and checks both.
    fn read_blob(&self, what: &str, digest: &Digest, size: Option<u64>) -> Result<Vec<u8>> {
        let rel = blob_path(digest);
        let buf = self.read_json_file(&rel)?;
        check_blob(self.top(), what, digest, size, &buf, Digest::sha256(&buf))?;
        Ok(buf)
    }
}

/// `blobs/sha256/<hex>`.
pub(crate) fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Checks a blob's length against its descriptor, then its digest.
pub(crate) fn check_size_digest(
    top: &Path,
    what: &str,
    expected: &Digest,
    size: Option<u64>,
    actual_len: u64,
    actual: Digest,
) -> Result<()> {
    if let Some(size) = size {
        if actual_len < size {
            return Err(invalid(
                top,
                format!("{what} {expected} is truncated: {actual_len} of {size} bytes"),
            ));
        }
    }
    if actual != *expected {
        return Err(Error::new(ErrorKind::DigestMismatch, "import")
            .path(top)
            .detail(format!(
                "{what}: expected {expected}, content has {actual}; the image is corrupt, \
                 fetch it again"
            )));
    }
    if let Some(size) = size {
        if actual_len != size {
            return Err(invalid(
                top,
                format!("{what} {expected} is {actual_len} bytes, its descriptor says {size}"),
            ));
        }
    }
    Ok(())
}

fn check_blob(
    top: &Path,
    what: &str,
    expected: &Digest,
    size: Option<u64>,
    buf: &[u8],
    actual: Digest,
) -> Result<()> {
    check_size_digest(top, what, expected, size, buf.len() as u64, actual)
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RuntimeConfig {
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RuntimeConfig>,
    rootfs: RootFs,
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A layer blob to import.
#[derive(Debug, Clone)]
pub(crate) struct LayerRef {
    /// Path in the archive.
    pub path: String,
    /// Declared digest of the blob (docker-save `<id>/layer.tar` has none).
    pub digest: Option<Digest>,
    /// Declared size.
    pub size: Option<u64>,
}

/// One image found in a source.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub names: Vec<String>,
    pub manifest: Digest,
    pub config: ImageConfig,
    pub diff_ids: Vec<Digest>,
    pub layers: Vec<LayerRef>,
}

fn parse_json<'a, T: Deserialize<'a>>(top: &Path, what: &str, buf: &'a [u8]) -> Result<T> {
    serde_json::from_slice(buf)
        .map_err(|e| invalid(top, format!("{what} is not valid: {e}")).source(e))
}

fn parse_digest(top: &Path, what: &str, s: &str) -> Result<Digest> {
    s.parse().map_err(|e: Error| {
        invalid(
            top,
            format!("{what} has an unsupported digest {s:?} (only sha256)"),
        )
        .source(e)
    })
}

fn image_config(top: &Path, buf: &[u8]) -> Result<(ImageConfig, Vec<Digest>)> {
    let c: ConfigFile = parse_json(top, "image config", buf)?;
    let r = c.config.unwrap_or_default();
    let diff_ids = c
        .rootfs
        .diff_ids
        .iter()
        .map(|d| parse_digest(top, "image config diff_ids", d))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        ImageConfig {
            env: r.env.unwrap_or_default(),
            entrypoint: r.entrypoint.unwrap_or_default(),
            cmd: r.cmd.unwrap_or_default(),
            working_dir: r.working_dir.unwrap_or_default(),
            user: r.user.unwrap_or_default(),
            platform: match (c.os.as_str(), c.architecture.as_str(), c.variant.as_str()) {
                ("", _, _) | (_, "", _) => String::new(),
                (os, arch, "") => format!("{os}/{arch}"),
                (os, arch, v) => format!("{os}/{arch}/{v}"),
            },
        },
        diff_ids,
    ))
}

fn is_index(d: &Descriptor, buf: &[u8]) -> bool {
    d.media_type.contains("image.index")
        || d.media_type.contains("manifest.list")
        || serde_json::from_slice::<serde_json::Value>(buf)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some())
}

fn platform_ok(d: &Descriptor) -> bool {
    let (os, arch) = host_platform();
    d.platform
        .as_ref()
        .is_none_or(|p| p.os == os && p.architecture == arch)
}

/// Resolves a nested index to the manifest for this host.
fn pick_platform<'a>(top: &Path, ds: &'a [Descriptor]) -> Result<&'a Descriptor> {
    let (os, arch) = host_platform();
    let matching: Vec<&Descriptor> = ds
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
        .collect();
    match (matching.first(), ds) {
        (Some(d), _) => Ok(d),
        (None, [only]) => Ok(only),
        _ => Err(invalid(
            top,
            format!("the image index has no manifest for {os}/{arch}"),
        )),
    }
}

fn oci_manifest(
    a: &Archive,
    top: &Path,
    names: Vec<String>,
    d: &Descriptor,
    buf: &[u8],
) -> Result<Found> {
    let manifest_digest = parse_digest(top, "manifest descriptor", &d.digest)?;
    let m: Manifest = parse_json(top, "manifest", buf)?;
    let cd = parse_digest(top, "config descriptor", &m.config.digest)?;
    let cbuf = a.read_blob("config", &cd, Some(m.config.size))?;
    let (config, diff_ids) = image_config(top, &cbuf)?;
    if diff_ids.len() != m.layers.len() {
        return Err(invalid(
            top,
            format!(
                "the manifest lists {} layers, the config {} diff_ids",
                m.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let layers = m
        .layers
        .iter()
        .map(|l| {
            let digest = parse_digest(top, "layer descriptor", &l.digest)?;
            Ok(LayerRef {
                path: blob_path(&digest),
                digest: Some(digest),
                size: Some(l.size),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Found {
        names,
        manifest: manifest_digest,
        config,
        diff_ids,
        layers,
    })
}

/// Docker's familiar form of a full reference: `docker.io/library/x:1` →
/// `x:1`, `docker.io/u/x:1` → `u/x:1`; other registries are kept.
pub(crate) fn familiar(name: &str) -> String {
    let n = name.strip_prefix("docker.io/").unwrap_or(name);
    n.strip_prefix("library/").unwrap_or(n).to_owned()
}

fn oci(a: &Archive) -> Result<Vec<Found>> {
    let top = a.top();
    if !a.has("oci-layout") {
        return Err(invalid(
            top,
            format!("index.json without oci-layout; {EXPECTED}"),
        ));
    }
    let ibuf = a.read_json_file("index.json")?;
    let index: Index = parse_json(top, "index.json", &ibuf)?;
    let mut out: Vec<Found> = Vec::new();
    let mut candidates: Vec<(Vec<String>, &Descriptor)> = Vec::new();
    for d in &index.manifests {
        let ann = d.annotations.clone().unwrap_or_default();
        let names: Vec<String> = ann
            .get(CONTAINERD_NAME)
            .map(|n| familiar(n))
            .or_else(|| ann.get(REF_NAME).cloned())
            .into_iter()
            .collect();
        candidates.push((names, d));
    }
    // Entries for other platforms are skipped when some entry fits the host.
    if candidates.iter().any(|(_, d)| platform_ok(d)) {
        candidates.retain(|(_, d)| platform_ok(d));
    }
    for (names, d) in candidates {
        let digest = parse_digest(top, "index.json", &d.digest)?;
        let buf = a.read_blob("manifest", &digest, Some(d.size))?;
        if is_index(d, &buf) {
            let nested: Index = parse_json(top, "image index", &buf)?;
            let m = pick_platform(top, &nested.manifests)?;
            let md = parse_digest(top, "image index", &m.digest)?;
            let mbuf = a.read_blob("manifest", &md, Some(m.size))?;
            out.push(oci_manifest(a, top, names, m, &mbuf)?);
        } else {
            out.push(oci_manifest(a, top, names, d, &buf)?);
        }
    }
    if out.is_empty() {
        return Err(invalid(top, "index.json lists no manifest"));
    }
    Ok(out)
}

fn docker(a: &Archive) -> Result<Vec<Found>> {
    let top = a.top();
    let buf = a.read_json_file("manifest.json")?;
    let entries: Vec<serde_json::Value> = parse_json(top, "manifest.json", &buf)?;
    let mut out = Vec::new();
    for v in entries {
        let e: DockerEntry = serde_json::from_value(v.clone())
            .map_err(|err| invalid(top, format!("manifest.json entry is not valid: {err}")))?;
        let cbuf = a.read_json_file(&e.config)?;
        // The config file is named after its digest (the image id), in
        // `<hex>.json` or `blobs/sha256/<hex>`.
        let stem = Path::new(&e.config)
            .file_name()
            .map(|s| s.to_string_lossy().trim_end_matches(".json").to_owned())
            .unwrap_or_default();
        if let Ok(expected) = format!("sha256:{stem}").parse::<Digest>() {
            check_blob(top, "config", &expected, None, &cbuf, Digest::sha256(&cbuf))?;
        }
        let (config, diff_ids) = image_config(top, &cbuf)?;
        if diff_ids.len() != e.layers.len() {
            return Err(invalid(
                top,
                format!(
                    "manifest.json lists {} layers, the config {} diff_ids",
                    e.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let layers = e
            .layers
            .iter()
            .map(|p| LayerRef {
                path: p.clone(),
                digest: p
                    .strip_prefix("blobs/sha256/")
                    .and_then(|h| format!("sha256:{h}").parse().ok()),
                size: None,
            })
            .collect();
        out.push(Found {
            names: e.repo_tags.unwrap_or_default(),
            manifest: Digest::sha256(&serde_json::to_vec(&v).unwrap_or_default()),
            config,
            diff_ids,
            layers,
        });
    }
    if out.is_empty() {
        return Err(invalid(top, "manifest.json lists no image"));
    }
    Ok(out)
}

/// The images in `a`, format detected from the files present.
/// The most layers an image may have. Docker takes at most 128 on
/// overlay2 (overlayfs mounts one lower directory per layer, and the mount
/// options must fit in one page); thinbox takes the same on every backend,
/// so an image that imports here runs on all of them (the conformance
/// suite mounts 128 layers on each), and a manifest of thousands of layers
/// is refused before any is read.
pub const MAX_LAYERS: usize = 128;

pub(crate) fn read(a: &Archive) -> Result<Vec<Found>> {
    let found = if a.has("index.json") {
        oci(a)?
    } else if a.has("manifest.json") {
        docker(a)?
    } else {
        return Err(invalid(a.top(), EXPECTED));
    };
    if let Some(f) = found.iter().find(|f| f.layers.len() > MAX_LAYERS) {
        return Err(invalid(
            a.top(),
            format!(
                "image {} has {} layers; thinbox takes at most {MAX_LAYERS} (as Docker on overlay2): \
                 squash it (e.g. rebuild it with fewer RUN steps)",
                f.names.first().map_or_else(|| f.manifest.to_string(), Clone::clone),
                f.layers.len()
            ),
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::super::digest::HashingReader;
    use super::super::write::{self, Compression, Entry, ImageSpec};
    use super::*;

    fn hash_file(a: &Archive, rel: &str) -> Digest {
        HashingReader::new(a.open_file(rel).unwrap().0)
            .drain()
            .unwrap()
            .0
    }

    fn spec(name: &str) -> ImageSpec {
        let l1 = write::layer_tar(&[Entry::file("a", b"a", 0o644)]).unwrap();
        let l2 = write::layer_tar(&[Entry::file("b", b"b", 0o644)]).unwrap();
        let config = ImageConfig {
            cmd: vec!["/bin/sh".into()],
            env: vec!["A=1".into()],
            ..ImageConfig::default()
        };
        ImageSpec::new(config, vec![l1, l2]).name(name)
    }

    fn check(found: &[Found], w: &write::Written, name: &str) {
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!(f.names, [name]);
        assert_eq!(f.manifest, w.manifest);
        assert_eq!(f.config.cmd, ["/bin/sh"]);
        let diff_ids: Vec<Digest> = w.layers.iter().map(|l| l.diff_id).collect();
        assert_eq!(f.diff_ids, diff_ids);
        assert_eq!(f.layers.len(), 2);
    }

    #[test]
    fn more_layers_than_the_limit_are_refused_before_any_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let layers = |n: usize| -> Vec<Vec<u8>> {
            (0..n)
                .map(|i| write::layer_tar(&[Entry::file(&format!("f{i}"), b"x", 0o644)]).unwrap())
                .collect()
        };
        let at_limit = dir.path().join("128");
        write::oci_dir(
            &ImageSpec::new(ImageConfig::default(), layers(MAX_LAYERS)).name("ok"),
            &at_limit,
        )
        .unwrap();
        assert_eq!(
            read(&Archive::open(&at_limit).unwrap()).unwrap()[0]
                .layers
                .len(),
            128
        );
        let over = dir.path().join("129");
        write::oci_dir(
            &ImageSpec::new(ImageConfig::default(), layers(MAX_LAYERS + 1)).name("deep"),
            &over,
        )
        .unwrap();
        let e = read(&Archive::open(&over).unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidImage, "{e}");
        assert!(
            e.to_string().contains("deep has 129 layers") && e.to_string().contains("at most 128"),
            "{e}"
        );
    }

    #[test]
    fn the_config_platform_is_read_and_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut arm = spec("arm");
        arm.platform = ("linux".into(), "arm64".into());
        write::oci_dir(&arm, &dir.path().join("oci")).unwrap();
        let a = Archive::open(&dir.path().join("oci")).unwrap();
        let found = read(&a).unwrap();
        assert_eq!(found[0].config.platform, "linux/arm64");
        let back = |platform: &str| -> serde_json::Value {
            let c = ImageConfig {
                platform: platform.into(),
                ..found[0].config.clone()
            };
            serde_json::from_slice(&write::config_json_own_platform(&c, &found[0].diff_ids))
                .unwrap()
        };
        let v = back("linux/arm/v7");
        assert_eq!(
            (
                v["os"].as_str(),
                v["architecture"].as_str(),
                v["variant"].as_str()
            ),
            (Some("linux"), Some("arm"), Some("v7"))
        );
        let v = back("linux/arm64");
        assert_eq!(v["architecture"], "arm64");
        assert!(v.get("variant").is_none());
        // Not said: this host's.
        let v = back("");
        assert_eq!(v["architecture"], super::super::host_platform().1);
    }

    #[test]
    fn reads_every_format_written() {
        let dir = tempfile::tempdir().unwrap();
        let w = write::oci_dir(&spec("d"), &dir.path().join("oci")).unwrap();
        let a = Archive::open(&dir.path().join("oci")).unwrap();
        check(&read(&a).unwrap(), &w, "d");
        assert_eq!(
            hash_file(&a, &w.layers[0].digest_path()),
            w.layers[0].digest
        );

        let tar = dir.path().join("oci.tar");
        let w = write::oci_tar(&spec("t").compression(Compression::Zstd), &tar).unwrap();
        let a = Archive::open(&tar).unwrap();
        check(&read(&a).unwrap(), &w, "t");
        assert_eq!(
            hash_file(&a, &w.layers[1].digest_path()),
            w.layers[1].digest
        );

        let tar = dir.path().join("docker.tar");
        let w = write::docker_tar(&spec("k:1"), &tar).unwrap();
        let found = read(&Archive::open(&tar).unwrap()).unwrap();
        check(&found, &w, "k:1");
        assert_eq!(
            found[0].layers[0].digest, None,
            "<id>/layer.tar has no blob digest"
        );
    }

    /// A multi-platform index (as `skopeo copy --all` writes): the host's
    /// manifest is picked, other platforms' blobs are never read.
    #[test]
    fn nested_index_picks_the_host_platform() {
        let dir = tempfile::tempdir().unwrap();
        let oci = dir.path().join("oci");
        let w = write::oci_dir(&spec("multi"), &oci).unwrap();
        let (os, arch) = host_platform();
        let other = Digest::sha256(b"a manifest that is not there");
        let manifest_size = std::fs::metadata(oci.join(blob_path(&w.manifest)))
            .unwrap()
            .len();
        let nested = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": super::super::MEDIA_INDEX,
            "manifests": [
                {"mediaType": super::super::MEDIA_MANIFEST, "digest": other.to_string(), "size": 10,
                 "platform": {"os": "linux", "architecture": "s390x"}},
                {"mediaType": super::super::MEDIA_MANIFEST, "digest": w.manifest.to_string(),
                 "size": manifest_size, "platform": {"os": os, "architecture": arch}},
            ]
        });
        let bytes = serde_json::to_vec(&nested).unwrap();
        let nd = Digest::sha256(&bytes);
        std::fs::write(oci.join(blob_path(&nd)), &bytes).unwrap();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": super::super::MEDIA_INDEX, "digest": nd.to_string(),
                           "size": bytes.len(), "annotations": {REF_NAME: "multi"}}]
        });
        std::fs::write(oci.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        check(&read(&Archive::open(&oci).unwrap()).unwrap(), &w, "multi");
    }

    #[test]
    fn corrupt_config_is_a_digest_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let oci = dir.path().join("oci");
        let w = write::oci_dir(&spec("c"), &oci).unwrap();
        let p = oci.join(blob_path(&w.config));
        let mut b = std::fs::read(&p).unwrap();
        b[0] = b' ';
        std::fs::write(&p, b).unwrap();
        let e = read(&Archive::open(&oci).unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
        assert!(e.to_string().contains(&w.config.to_string()), "{e}");
    }

    /// A docker-save directory whose manifest points outside it, by `..`
    /// or by a symlink, is refused before anything is read.
    #[test]
    fn paths_outside_the_source_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::create_dir_all(img.join("l")).unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink("../../secret", img.join("l/layer.tar")).unwrap();
        let a = Archive::open(&img).unwrap();
        for rel in ["../secret", "l/layer.tar", "/etc/passwd"] {
            let e = a.open_file(rel).map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidImage, "{rel}: {e}");
        }
    }

    #[test]
    fn familiar_names() {
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("docker.io/me/tool:1"), "me/tool:1");
        assert_eq!(familiar("quay.io/x/y:2"), "quay.io/x/y:2");
    }

    #[test]
    fn normalize_drops_dots_and_refuses_escapes() {
        assert_eq!(normalize("./a//b/./c/").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("../b"), None);
        assert_eq!(normalize("/etc/passwd"), None);
    }
}
