//! Image references as docker and podman read them: `busybox` is
//! `docker.io/library/busybox:latest`; a first component with a `.` or a
//! `:`, or `localhost`, is a registry host; `@sha256:…` pins a manifest.

use std::fmt;
use std::str::FromStr;

use snapshotter::image::Digest;

use crate::error::{Error, ErrorKind, Result};

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API answers.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The registry host (and port): `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// The repository path: `library/busybox`.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    /// The manifest digest, when pinned.
    pub digest: Option<Digest>,
}

fn invalid(s: &str, detail: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        format!("image reference {s:?}"),
        detail,
    )
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ joined by one `.`, one or two `_`, or any number of `-`.
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'a'..=b'z' | b'0'..=b'9' => i += 1,
            b'.' => {
                if !b[i + 1].is_ascii_alphanumeric() {
                    return false;
                }
                i += 1;
            }
            b'_' => {
                let run = b[i..].iter().take_while(|&&x| x == b'_').count();
                if run > 2 {
                    return false;
                }
                i += run;
            }
            b'-' => i += b[i..].iter().take_while(|&&x| x == b'-').count(),
            _ => return false,
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

fn is_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Reference> {
        if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                s,
                "a reference is [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], without spaces",
            ));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let d: Digest = d.parse().map_err(|_| {
                    invalid(
                        s,
                        format!("{d:?} is not a sha256 digest (sha256: and 64 hex digits)"),
                    )
                })?;
                (r, Some(d))
            }
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if is_host(first) => (first.to_owned(), path),
            _ => (DOCKER_HUB.to_owned(), rest),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | DOCKER_HUB_API => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let (path, tag) = match path.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, Some(t)),
            _ => (path, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(invalid(s, format!("{t:?} is not a tag: up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`")));
            }
        }
        if path.is_empty() {
            return Err(invalid(s, "no repository name"));
        }
        if let Some(c) = path.split('/').find(|c| !valid_component(c)) {
            let hint = if c.chars().any(|ch| ch.is_ascii_uppercase()) {
                "repository names are lowercase"
            } else {
                "each part of a repository name is lowercase letters and digits, joined by `.`, `_`, `__` or `-`"
            };
            return Err(invalid(
                s,
                format!("{c:?} is not a repository name part: {hint}"),
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl Reference {
    /// What the manifest is asked for by: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The name as `docker images` shows it: `busybox:latest`,
    /// `myorg/app:1`, `127.0.0.1:5000/app:1`, `busybox@sha256:…`.
    pub fn familiar(&self) -> String {
        let repo = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .filter(|r| !r.contains('/'))
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        let mut out = repo;
        if let Some(t) = &self.tag {
            out.push(':');
            out.push_str(t);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(&d.to_string());
        }
        out
    }

    /// The same repository at a digest (what a tag resolved to).
    pub fn at(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

/// The full form: `docker.io/library/busybox:latest`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_short_names() {
        let b = r("busybox");
        assert_eq!(b.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(b.familiar(), "busybox:latest");
        assert_eq!(r("myorg/app:1.2").to_string(), "docker.io/myorg/app:1.2");
        assert_eq!(r("myorg/app:1.2").familiar(), "myorg/app:1.2");
        assert_eq!(
            r("index.docker.io/library/busybox").familiar(),
            "busybox:latest"
        );
        assert_eq!(r("docker.io/library/busybox:1").familiar(), "busybox:1");
    }

    #[test]
    fn hosts_ports_and_digests() {
        let x = r("127.0.0.1:5000/ns/app:v1");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str()),
            ("127.0.0.1:5000", "ns/app")
        );
        assert_eq!(x.tag.as_deref(), Some("v1"));
        assert_eq!(x.familiar(), "127.0.0.1:5000/ns/app:v1");
        let l = r("localhost/app");
        assert_eq!(
            (l.registry.as_str(), l.tag.as_deref()),
            ("localhost", Some("latest"))
        );
        let d = format!("sha256:{}", "ab".repeat(32));
        let p = r(&format!("quay.io/a/b@{d}"));
        assert_eq!(p.tag, None);
        assert_eq!(p.manifest_ref(), d);
        assert_eq!(p.to_string(), format!("quay.io/a/b@{d}"));
        let both = r(&format!("busybox:1@{d}"));
        assert_eq!(both.manifest_ref(), d, "the digest wins over the tag");
        // A port is not a tag.
        assert_eq!(r("host:5000/app").tag.as_deref(), Some("latest"));
    }

    #[test]
    fn round_trips() {
        for s in [
            "docker.io/library/busybox:latest",
            "127.0.0.1:5000/a/b/c:x_y.z-1",
            "quay.io/x/y:1",
        ] {
            assert_eq!(r(s).to_string(), s);
            assert_eq!(r(&r(s).familiar()), r(s));
        }
    }

    #[test]
    fn bad_references_say_why() {
        for (s, why) in [
            ("", "without spaces"),
            ("Busybox", "lowercase"),
            ("busybox:", "not a tag"),
            ("busybox:-x", "not a tag"),
            ("a//b", "repository name part"),
            ("busybox@sha256:12", "sha256 digest"),
            ("bus box", "without spaces"),
            ("a/b-/c", "repository name part"),
            ("a___b", "repository name part"),
        ] {
            let e = s.parse::<Reference>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
    }
}
