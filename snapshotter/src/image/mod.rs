//! Images: OCI / Docker image import into committed snapshots, and the
//! image records kept beside the snapshotter.
//!
//! An image is a name, its manifest digest, its runtime config (Env,
//! Entrypoint, Cmd, WorkingDir, User) and a stack of layers. Each layer is
//! a committed snapshot named by the layer's **chain id** (OCI image spec:
//! the digest of the stack up to and including it), so a layer two images
//! share is stored once and found again by name.
//!
//! [`Images::import`] reads an OCI image layout (a directory or tar, as
//! `skopeo copy ... oci:DIR` writes; nested indexes resolved to this
//! host's platform) or a `docker save` tar, checks every blob against its
//! digest (and every uncompressed layer against its diff id), and applies
//! each missing layer onto its parent through the [`crate::Snapshotter`]. Import is
//! atomic: before each snapshot is created the import's intent records it
//! in `images.db`; a failure removes what the import created (never a
//! snapshot that existed before) and a crash is rolled back by the next
//! [`Images::open`].
//!
//! [`Images::commit_container`] turns a container's active snapshot into a
//! new layer and image; [`Images::remove`] drops an image and the layers no
//! other image uses, refusing while a container's root sits on them.
//! [`mod@write`] writes images (OCI directory, OCI tar, docker-save tar) for
//! tests and tools.
//!
//! Kernel: only what the snapshotter's backend and [`crate::layer::apply`]
//! need (mounts, openat2 on Linux 5.6+).

mod digest;
mod images;
mod source;
pub mod write;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::types::Name;

pub use digest::{chain_id, chain_ids, Digest, Hasher, HashingReader, HashingWriter};
pub use images::{validate_name, Arriving, ExportedImage, ExportedLayer, FaultPoint, Images};
pub use source::MAX_LAYERS;

/// The index.json annotation naming an image (`skopeo copy ... oci:DIR:NAME`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation with the full image name (docker save 25+ writes it).
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
pub(crate) const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// This host's platform as OCI spells it: (`linux`, `amd64` / `arm64` / ...).
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

/// The runtime configuration an image carries (the OCI config's `config`
/// object, the fields a runtime uses).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `NAME=value` environment entries.
    pub env: Vec<String>,
    /// The program and its first arguments.
    pub entrypoint: Vec<String>,
    /// Arguments after the entrypoint (the program itself without one).
    pub cmd: Vec<String>,
    /// The working directory (empty: `/`).
    pub working_dir: String,
    /// `user[:group]`, names or ids (empty: root).
    pub user: String,
    /// `os/architecture[/variant]` from the config (empty: not said,
    /// taken as this host's); a push writes it back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub platform: String,
}

/// One layer of an image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob as shipped (compressed, usually).
    pub digest: Digest,
    /// Digest of the uncompressed layer tar.
    pub diff_id: Digest,
    /// Chain id: the committed snapshot holding this layer and those below.
    pub chain_id: Digest,
    /// Size in bytes of the blob as shipped.
    pub size: u64,
}

mod unix_seconds {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = <u64 as serde::Deserialize>::deserialize(d)?;
        Ok(UNIX_EPOCH + Duration::from_secs(secs))
    }
}

/// What an import did with one name.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ImportOutcome {
    /// A new image under this name.
    New,
    /// This name already had this manifest: nothing was done (as `ctr
    /// images import` and `docker load` succeed).
    AlreadyPresent,
    /// The name belonged to another image, manifest `from`, which keeps
    /// its layers under the name `now_named` (its manifest digest), as
    /// `docker load` leaves the old image dangling.
    NameMoved {
        /// The manifest the name had.
        from: Digest,
        /// The name the old image has now.
        now_named: String,
    },
}

/// One name of an import: the image now under it and what happened.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The image.
    #[serde(flatten)]
    pub image: Image,
    /// What the import did.
    #[serde(flatten)]
    pub outcome: ImportOutcome,
}

/// An image: a name, its manifest digest, config and layers (bottom first).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The image's name (`busybox:latest`).
    pub name: String,
    /// The manifest digest (for a docker-save archive without manifests:
    /// the digest of its manifest.json entry; for a committed container:
    /// the digest of the OCI manifest of its uncompressed layers).
    pub manifest: Digest,
    /// Runtime configuration.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// When the image was imported or committed (unix seconds in JSON).
    #[serde(with = "unix_seconds")]
    pub created: SystemTime,
}

impl Image {
    /// The committed snapshot of the top layer (its chain id), on which a
    /// container's root is prepared; None for an image without layers.
    pub fn top_snapshot(&self) -> Option<Name> {
        self.layers
            .last()
            .and_then(|l| Name::new(l.chain_id.to_string()).ok())
    }

    /// Total size of the layer blobs.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Seconds since the epoch of `created`.
    pub fn created_unix(&self) -> u64 {
        self.created
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// What [`Images::import`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum ImportProgress<'a> {
    /// Layer `index` (0-based) of `count` starts; `size` is its blob size.
    Layer {
        /// 0-based layer index.
        index: usize,
        /// Number of layers of the image.
        count: usize,
        /// The layer's blob digest.
        digest: &'a Digest,
        /// Blob size in bytes.
        size: u64,
    },
    /// Layer `index` is done; `reused` when its snapshot already existed.
    LayerDone {
        /// 0-based layer index.
        index: usize,
        /// The chain id's snapshot existed (shared with another image).
        reused: bool,
    },
}
