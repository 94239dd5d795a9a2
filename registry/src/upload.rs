//! Pushing: blobs (skipped when the repository has them, mounted from
//! another repository of the same registry when one is known to, else
//! uploaded in one PUT or in PATCH chunks) and then the manifest.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use snapshotter::image::Digest;
use ureq::http::Method;

use crate::client::{status_error, Client, Endpoint};
use crate::error::{Error, ErrorKind, Result};
use crate::reference::Reference;

/// How one blob reached the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// The repository had it already.
    Present,
    /// Mounted from another repository of the registry (no bytes sent).
    Mounted,
    /// Sent in one PUT.
    Monolithic,
    /// Sent in this many PATCH chunks.
    Chunked(u32),
}

/// `repository:NAME:pull,push`.
fn push_scope(r: &Reference) -> String {
    format!("repository:{}:pull,push", r.repository)
}

/// The path and query of a `Location` header: the registry's own URL (or
/// a path on it) and nothing else.
fn location_path(ep: &Endpoint, loc: &str, what: &str) -> Result<String> {
    if loc.starts_with('/') {
        return Ok(loc.to_owned());
    }
    loc.strip_prefix(&ep.base)
        .filter(|rest| rest.starts_with('/'))
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidResponse,
                what,
                format!(
                    "the registry sent the upload elsewhere ({loc}), which thinbox does not follow"
                ),
            )
        })
}

fn with_query(path: &str, key: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{key}={value}")
}

fn location(resp: &ureq::http::Response<ureq::Body>, ep: &Endpoint, what: &str) -> Result<String> {
    let loc = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidResponse,
                what,
                "the registry started an upload without a Location",
            )
        })?;
    location_path(ep, loc, what)
}

impl Client {
    /// Whether `r`'s repository at `ep` has blob `digest`.
    pub fn has_blob(&self, ep: &Endpoint, r: &Reference, digest: &Digest) -> Result<bool> {
        let what = format!("{r}: blob {digest}");
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let resp = self.send(ep, Method::HEAD, &path, &[], &push_scope(r), None)?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(status_error(
                resp,
                &what,
                "the registry cannot say whether it has the blob",
            )),
        }
    }

    /// Puts blob `digest` (the file `path`, `size` bytes) into `r`'s
    /// repository: nothing when it is there, a mount from `from` (another
    /// repository of the same registry said to have it), else an upload
    /// in one PUT when it fits in `chunk` bytes, in PATCH chunks of
    /// `chunk` bytes otherwise. `progress` gets the bytes sent.
    #[allow(clippy::too_many_arguments)]
    pub fn push_blob(
        &self,
        ep: &Endpoint,
        r: &Reference,
        digest: &Digest,
        path: &Path,
        size: u64,
        from: Option<&str>,
        chunk: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Uploaded> {
        let what = format!("{r}: blob {digest}");
        if self.has_blob(ep, r, digest)? {
            return Ok(Uploaded::Present);
        }
        let scope = push_scope(r);
        let uploads = format!("/v2/{}/blobs/uploads/", r.repository);
        let start = match from.filter(|f| *f != r.repository) {
            Some(from) => with_query(
                &with_query(&uploads, "mount", &digest.to_string()),
                "from",
                from,
            ),
            None => uploads,
        };
        let resp = self.send(
            ep,
            Method::POST,
            &start,
            &[("Content-Length", "0")],
            &scope,
            Some(&[]),
        )?;
        let mut loc = match resp.status().as_u16() {
            201 => return Ok(Uploaded::Mounted),
            202 => location(&resp, ep, &what)?,
            _ => return Err(status_error(resp, &what, "the registry refused the upload; check that the repository exists and you may push to it")),
        };
        let mut file = File::open(path).map_err(|e| Error::io(path.display(), e))?;
        let chunk = chunk.max(1);
        let mut read_chunk = |n: u64| -> Result<Vec<u8>> {
            let mut buf = Vec::with_capacity(n as usize);
            (&mut file)
                .take(n)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(path.display(), e))?;
            if buf.len() as u64 != n {
                return Err(Error::new(
                    ErrorKind::Io,
                    path.display(),
                    format!("the blob file is shorter than its {size} bytes"),
                ));
            }
            Ok(buf)
        };
        let digest_query = digest.to_string();
        if size <= chunk {
            let body = read_chunk(size)?;
            let len = body.len().to_string();
            let put = with_query(&loc, "digest", &digest_query);
            let headers = [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", len.as_str()),
            ];
            let resp = self.send(ep, Method::PUT, &put, &headers, &scope, Some(&body))?;
            if resp.status().as_u16() != 201 {
                return Err(status_error(resp, &what, "the registry refused the blob"));
            }
            progress(size);
            return Ok(Uploaded::Monolithic);
        }
        let mut sent = 0u64;
        let mut chunks = 0u32;
        while sent < size {
            let n = chunk.min(size - sent);
            let body = read_chunk(n)?;
            let range = format!("{sent}-{}", sent + n - 1);
            let len = n.to_string();
            let headers = [
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", range.as_str()),
                ("Content-Length", len.as_str()),
            ];
            let resp = self.send(ep, Method::PATCH, &loc, &headers, &scope, Some(&body))?;
            if resp.status().as_u16() != 202 {
                return Err(status_error(
                    resp,
                    &what,
                    "the registry refused a chunk of the blob",
                ));
            }
            loc = location(&resp, ep, &what)?;
            sent += n;
            chunks += 1;
            progress(n);
        }
        let put = with_query(&loc, "digest", &digest_query);
        let resp = self.send(
            ep,
            Method::PUT,
            &put,
            &[("Content-Length", "0")],
            &scope,
            Some(&[]),
        )?;
        if resp.status().as_u16() != 201 {
            return Err(status_error(
                resp,
                &what,
                "the registry refused the finished blob",
            ));
        }
        Ok(Uploaded::Chunked(chunks))
    }

    /// Puts `manifest` (of `media_type`) as `r`'s tag, or under its
    /// digest when `r` has none. Returns the digest the registry gives it.
    pub fn push_manifest(
        &self,
        ep: &Endpoint,
        r: &Reference,
        media_type: &str,
        manifest: &[u8],
    ) -> Result<Digest> {
        let digest = Digest::sha256(manifest);
        let at = r.tag.clone().unwrap_or_else(|| digest.to_string());
        let what = format!("{r}: manifest");
        let path = format!("/v2/{}/manifests/{at}", r.repository);
        let len = manifest.len().to_string();
        let headers = [
            ("Content-Type", media_type),
            ("Content-Length", len.as_str()),
        ];
        let resp = self.send(
            ep,
            Method::PUT,
            &path,
            &headers,
            &push_scope(r),
            Some(manifest),
        )?;
        if resp.status().as_u16() != 201 {
            return Err(status_error(
                resp,
                &what,
                "the registry refused the manifest",
            ));
        }
        let said = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        match said {
            Some(d) if d != digest => Err(Error::new(
                ErrorKind::DigestMismatch,
                &what,
                format!("the registry stored it as {d}, not {digest}"),
            )),
            _ => Ok(digest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_stay_on_the_registry() {
        let ep = Endpoint {
            base: "http://127.0.0.1:5000".into(),
            host: "127.0.0.1:5000".into(),
            mirror: false,
        };
        assert_eq!(
            location_path(&ep, "/v2/a/blobs/uploads/u?_state=x", "w").unwrap(),
            "/v2/a/blobs/uploads/u?_state=x"
        );
        assert_eq!(
            location_path(&ep, "http://127.0.0.1:5000/v2/a/blobs/uploads/u", "w").unwrap(),
            "/v2/a/blobs/uploads/u"
        );
        let e = location_path(&ep, "http://elsewhere/v2/a", "w").unwrap_err();
        assert!(e.to_string().contains("elsewhere"), "{e}");
        assert_eq!(
            with_query("/p?_state=x", "digest", "sha256:ab"),
            "/p?_state=x&digest=sha256:ab"
        );
        assert_eq!(with_query("/p", "mount", "d"), "/p?mount=d");
    }
}
