//! Manifests: fetched by tag or digest (from a mirror first), checked
//! against the digest, and an image index or Docker manifest list
//! resolved to one platform's manifest.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use snapshotter::image::Digest;
use ureq::http::Method;

use crate::client::{read_small, status_error, Client, Endpoint};
use crate::error::{Error, ErrorKind, Result};
use crate::reference::Reference;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Largest manifest read.
const MAX_MANIFEST: u64 = 4 << 20;

/// `os/architecture[/variant]`, as `--platform` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v8`, `v7`, … when it matters.
    pub variant: Option<String>,
}

impl Platform {
    /// This host's.
    pub fn host() -> Platform {
        let (os, arch) = snapshotter::image::host_platform();
        Platform {
            os: os.to_owned(),
            architecture: arch.to_owned(),
            variant: None,
        }
    }

    fn matches(&self, p: &PlatformJson) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && self
                .variant
                .as_ref()
                .is_none_or(|v| p.variant.as_ref() == Some(v))
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("platform {s:?}"),
                "a platform is OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8",
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize, Debug, Clone)]
struct PlatformJson {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// A content descriptor (the parts a pull uses).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The blob's media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

#[derive(Deserialize)]
struct IndexEntry {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    platform: Option<PlatformJson>,
}

#[derive(Deserialize)]
struct IndexJson {
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct ManifestJson {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// One image's manifest, fetched and checked.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference, pinned to the manifest's digest.
    pub reference: Reference,
    /// Where it was found (a mirror or the registry).
    pub endpoint: Endpoint,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest as served (its sha256 is the digest).
    pub manifest: Vec<u8>,
    /// The config blob's descriptor.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// The platform chosen from an index (None: a single manifest).
    pub platform: Option<String>,
}

impl Resolved {
    /// The manifest's digest.
    pub fn digest(&self) -> Digest {
        Digest::sha256(&self.manifest)
    }
}

/// `repository:NAME:pull`.
pub(crate) fn pull_scope(r: &Reference) -> String {
    format!("repository:{}:pull", r.repository)
}

fn is_index(media_type: &str, body: &[u8]) -> bool {
    match media_type {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        // A registry that does not say (or says application/json): look.
        _ => serde_json::from_slice::<serde_json::Value>(body)
            .is_ok_and(|v| v.get("manifests").is_some()),
    }
}

impl Client {
    /// Fetches the manifest `at` (a tag or digest) of `r` from `ep`.
    fn fetch_manifest(&self, ep: &Endpoint, r: &Reference, at: &str) -> Result<(String, Vec<u8>)> {
        let path = format!("/v2/{}/manifests/{at}", r.repository);
        let resp = self.send(
            ep,
            Method::GET,
            &path,
            &[("Accept", ACCEPT)],
            &pull_scope(r),
            None,
        )?;
        let what = r.to_string();
        match resp.status().as_u16() {
            200 => {}
            404 => {
                return Err(status_error(
                    resp,
                    &what,
                    "check the name and tag (`skopeo list-tags docker://REPO` lists the tags)",
                ))
            }
            _ => {
                return Err(status_error(
                    resp,
                    &what,
                    "the registry refused the manifest",
                ))
            }
        }
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_default();
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let mut resp = resp;
        let body = read_small(&mut resp, &what, MAX_MANIFEST)?;
        let actual = Digest::sha256(&body);
        let expected = at.parse::<Digest>().ok().or(header_digest);
        if let Some(d) = expected {
            if d != actual {
                return Err(Error::new(
                    ErrorKind::DigestMismatch,
                    &what,
                    format!("the manifest should be {d}, its content is {actual}; the registry or a proxy changed it"),
                ));
            }
        }
        Ok((media_type, body))
    }

    /// Resolves `r` to one image manifest for `platform`: from the first
    /// of its mirrors that has it, else from the registry.
    pub fn resolve(&self, r: &Reference, platform: &Platform) -> Result<Resolved> {
        let mut first_err = None;
        for ep in self.endpoints(&r.registry)? {
            match self.resolve_at(&ep, r, platform) {
                Ok(res) => return Ok(res),
                Err(e) if ep.mirror => {
                    tracing::info!("mirror {} cannot serve {r}: {e}; trying the next", ep.base);
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_err.unwrap_or_else(|| Error::new(ErrorKind::NotFound, r, "no endpoint")))
    }

    fn resolve_at(&self, ep: &Endpoint, r: &Reference, platform: &Platform) -> Result<Resolved> {
        let (mut media_type, mut body) = self.fetch_manifest(ep, r, &r.manifest_ref())?;
        let mut chosen = None;
        if is_index(&media_type, &body) {
            let index: IndexJson = serde_json::from_slice(&body).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidResponse,
                    r,
                    format!("the image index is not valid: {e}"),
                )
            })?;
            let entry = index
                .manifests
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| platform.matches(p)))
                .ok_or_else(|| {
                    let has: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .filter(|p| p.os != "unknown")
                        .map(|p| match &p.variant {
                            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                            None => format!("{}/{}", p.os, p.architecture),
                        })
                        .collect();
                    Error::new(
                        ErrorKind::NoPlatform,
                        r,
                        format!(
                            "the image has no manifest for {platform}; it has {}; choose one with --platform",
                            if has.is_empty() { "none with a platform".to_owned() } else { has.join(", ") }
                        ),
                    )
                })?;
            let (mt, b) = self.fetch_manifest(ep, r, &entry.digest.to_string())?;
            if b.len() as u64 != entry.size {
                return Err(Error::new(
                    ErrorKind::DigestMismatch,
                    r,
                    format!(
                        "the index says the manifest has {} bytes, it has {}",
                        entry.size,
                        b.len()
                    ),
                ));
            }
            media_type = if mt.is_empty() {
                entry.media_type.clone()
            } else {
                mt
            };
            body = b;
            chosen = Some(platform.to_string());
        }
        if media_type.starts_with("application/vnd.docker.distribution.manifest.v1") {
            return Err(Error::new(
                ErrorKind::InvalidResponse,
                r,
                "the registry serves only a Docker schema 1 manifest, which is deprecated; push the image again with a current docker or skopeo",
            ));
        }
        let m: ManifestJson = serde_json::from_slice(&body).map_err(|e| {
            Error::new(
                ErrorKind::InvalidResponse,
                r,
                format!("the manifest is not valid: {e}"),
            )
        })?;
        if m.schema_version != 2 {
            return Err(Error::new(
                ErrorKind::InvalidResponse,
                r,
                format!(
                    "manifest schema version {} is not supported (only 2)",
                    m.schema_version
                ),
            ));
        }
        let digest = Digest::sha256(&body);
        Ok(Resolved {
            reference: r.at(digest),
            endpoint: ep.clone(),
            media_type: if media_type.is_empty() {
                OCI_MANIFEST.to_owned()
            } else {
                media_type
            },
            manifest: body,
            config: m.config,
            layers: m.layers,
            platform: chosen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_print() {
        for s in ["linux/amd64", "linux/arm64/v8", "windows/amd64"] {
            assert_eq!(s.parse::<Platform>().unwrap().to_string(), s);
        }
        for s in [
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux amd64",
        ] {
            let e = s.parse::<Platform>().unwrap_err();
            assert!(e.to_string().contains("OS/ARCH"), "{s}: {e}");
        }
        let p: Platform = "linux/arm/v7".parse().unwrap();
        let j = |v: Option<&str>| PlatformJson {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: v.map(str::to_owned),
        };
        assert!(p.matches(&j(Some("v7"))) && !p.matches(&j(Some("v6"))));
        assert!(
            Platform { variant: None, ..p }.matches(&j(Some("v6"))),
            "no variant asked: any"
        );
    }

    #[test]
    fn indexes_are_told_from_manifests() {
        assert!(is_index(OCI_INDEX, b"{}"));
        assert!(is_index(DOCKER_LIST, b"{}"));
        assert!(is_index("", br#"{"manifests":[]}"#));
        assert!(!is_index(OCI_MANIFEST, br#"{"manifests":[]}"#));
        assert!(!is_index("application/json", br#"{"layers":[]}"#));
    }
}
