//! Blobs: streamed to a file while their digest is computed, resumed with
//! an HTTP Range after a broken transfer (or a killed process), and named
//! by their digest only once it matches.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use snapshotter::image::{Digest, Hasher};
use ureq::http::Method;

use crate::client::{status_error, Client, Endpoint};
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::pull_scope;
use crate::reference::Reference;

/// Where a blob being fetched is kept until its digest matches.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Reads what a partial file holds into `hash`; its length.
fn hash_existing(path: &Path, hash: &mut Hasher) -> io::Result<u64> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        hash.update(&buf[..k]);
        n += k as u64;
    }
}

/// What a broken transfer left: retry from here.
enum Broken {
    At(Error),
}

/// A blob to fetch: where, of which repository, and what it must be.
#[derive(Debug, Clone, Copy)]
pub struct Blob<'a> {
    /// Where the manifest was found (a mirror or the registry).
    pub endpoint: &'a Endpoint,
    /// The image it belongs to (its repository; named in errors).
    pub reference: &'a Reference,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

impl Client {
    /// Fetches blob `digest` (`size` bytes) of `r`'s repository from `ep`
    /// into `dest`, verified. Bytes a killed or broken fetch left in
    /// `dest.partial` are kept and the rest asked for with a Range; a
    /// registry that ignores the Range starts it over. `progress` gets the
    /// bytes added; `cancel` stops it between reads.
    pub fn fetch_blob(
        &self,
        blob: &Blob<'_>,
        dest: &Path,
        progress: &mut dyn FnMut(u64),
        cancel: &AtomicBool,
    ) -> Result<()> {
        let what = format!("{}: blob {}", blob.reference, blob.digest);
        let partial = partial_path(dest);
        let mut breaks = 0;
        loop {
            match self.fetch_once(blob, &partial, progress, cancel, &what) {
                Ok(()) => break,
                Err(Broken::At(e))
                    if breaks < self.settings().retries
                        && e.kind() != ErrorKind::DigestMismatch
                        && e.kind() != ErrorKind::NotFound
                        && !cancel.load(Ordering::Relaxed) =>
                {
                    breaks += 1;
                    tracing::info!("{what}: {e}; resuming (try {breaks})");
                }
                Err(Broken::At(e)) => return Err(e),
            }
        }
        std::fs::rename(&partial, dest).map_err(|e| Error::io(dest.display(), e))
    }

    fn fetch_once(
        &self,
        blob: &Blob<'_>,
        partial: &Path,
        progress: &mut dyn FnMut(u64),
        cancel: &AtomicBool,
        what: &str,
    ) -> std::result::Result<(), Broken> {
        let fail = |e: Error| Broken::At(e);
        let (ep, r, digest, size) = (blob.endpoint, blob.reference, &blob.digest, blob.size);
        let mut hash = Hasher::default();
        let mut have =
            hash_existing(partial, &mut hash).map_err(|e| fail(Error::io(partial.display(), e)))?;
        if have > size {
            // Not this blob's bytes; start over.
            have = 0;
            hash = Hasher::default();
        }
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let range = format!("bytes={have}-");
        let headers: Vec<(&str, &str)> = if have > 0 && have < size {
            vec![("Range", range.as_str())]
        } else {
            vec![]
        };
        let mut file;
        if have == size && size > 0 {
            file = None;
        } else {
            let resp = self
                .send(ep, Method::GET, &path, &headers, &pull_scope(r), None)
                .map_err(fail)?;
            let status = resp.status().as_u16();
            let append = match status {
                206 if have > 0 => true,
                200 => false,
                416 if have == size => true,
                _ => {
                    return Err(fail(status_error(
                        resp,
                        what,
                        "the registry cannot serve this layer; push the image again",
                    )))
                }
            };
            if !append {
                have = 0;
                hash = Hasher::default();
            }
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(partial)
                .map_err(|e| fail(Error::io(partial.display(), e)))?;
            if status != 416 {
                let mut body = resp.into_body().into_reader();
                let mut buf = vec![0u8; 1 << 17];
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(fail(Error::new(ErrorKind::Io, what, "cancelled")));
                    }
                    let k = match body.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => k,
                        Err(e) => {
                            let _ = f.flush();
                            let kind = if e.kind() == io::ErrorKind::TimedOut {
                                ErrorKind::Timeout
                            } else {
                                ErrorKind::Transport
                            };
                            return Err(fail(Error::new(
                                kind,
                                what,
                                format!("the transfer broke after {have} of {size} bytes: {e}"),
                            )));
                        }
                    };
                    if have + k as u64 > size {
                        let _ = std::fs::remove_file(partial);
                        return Err(fail(Error::new(
                            ErrorKind::DigestMismatch,
                            what,
                            format!(
                                "the registry sent more than the {size} bytes the manifest says"
                            ),
                        )));
                    }
                    f.write_all(&buf[..k])
                        .map_err(|e| fail(Error::io(partial.display(), e)))?;
                    hash.update(&buf[..k]);
                    have += k as u64;
                    progress(k as u64);
                }
            }
            file = Some(f);
        }
        if have < size {
            return Err(fail(Error::new(
                ErrorKind::Transport,
                what,
                format!("the transfer ended after {have} of {size} bytes"),
            )));
        }
        let (actual, _) = hash.finish();
        if actual != *digest {
            let _ = std::fs::remove_file(partial);
            return Err(fail(Error::new(
                ErrorKind::DigestMismatch,
                what,
                format!("its content is {actual}; the registry serves a damaged blob, push the image again"),
            )));
        }
        if let Some(f) = file.take() {
            // Durable before it is named by its digest and trusted.
            f.sync_all()
                .map_err(|e| fail(Error::io(partial.display(), e)))?;
        }
        Ok(())
    }
}
