//! The crate's error type: a matchable [`ErrorKind`], the reference or
//! URL it concerns, and a message saying what to do.

use std::fmt;

/// What went wrong talking to a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The reference, a setting or an auth file is malformed.
    InvalidArgument,
    /// The registry has no such repository, tag, manifest or blob (404).
    NotFound,
    /// The registry wants credentials, or refused the ones given (401).
    Unauthorized,
    /// The credentials are valid but may not do this (403).
    Denied,
    /// The image has no manifest for the platform asked for.
    NoPlatform,
    /// A manifest or blob does not match its digest or size.
    DigestMismatch,
    /// The registry answered with something that is not the API.
    InvalidResponse,
    /// The registry did not answer in time.
    Timeout,
    /// The connection failed (refused, DNS, TLS).
    Transport,
    /// A local file (a blob being written, an auth file) failed.
    Io,
}

/// An error from the registry client.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    what: String,
    detail: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error of `kind` about `what` (a reference, a URL, a file).
    pub fn new(kind: ErrorKind, what: impl fmt::Display, detail: impl Into<String>) -> Error {
        Error {
            kind,
            what: what.to_string(),
            detail: detail.into(),
            source: None,
        }
    }

    /// Keeps the underlying error.
    pub fn source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(e));
        self
    }

    /// What went wrong, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn io(what: impl fmt::Display, e: std::io::Error) -> Error {
        let detail = e.to_string();
        Error::new(ErrorKind::Io, what, detail).source(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.detail)
    }
}
