//! The crate's one error type: a matchable [`ErrorKind`], the context it
//! happened in (operation, snapshot key, path) and the underlying source.

use std::fmt;
use std::path::PathBuf;

/// What went wrong, for callers to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No snapshot with this key or name.
    NotFound,
    /// A snapshot with this key or name already exists.
    AlreadyExists,
    /// The parent given to `prepare`/`view` is not a committed snapshot.
    ParentNotCommitted,
    /// The snapshot still has children; remove them first.
    HasChildren,
    /// `commit` was called on a view; only active snapshots can be committed.
    CommitOfView,
    /// `commit` was called on a committed snapshot.
    NotActive,
    /// A key, name, label, filter or update field path is malformed or immutable.
    InvalidArgument,
    /// The backend's kernel support or tool is missing, or its root is on the
    /// wrong filesystem (for example "btrfs: root is not on btrfs").
    BackendUnavailable,
    /// Another process holds the snapshotter root.
    Busy,
    /// The snapshotter was closed.
    Closed,
    /// The metadata store failed.
    Store,
    /// A filesystem or kernel operation failed.
    Io,
    /// Mounting or unmounting a mount spec failed.
    Mount,
    /// A layer entry would resolve outside the snapshot root (`..`, an
    /// absolute path, a symlink or hard-link escape).
    UnsafeLayerEntry,
    /// A layer archive is malformed or uses an unsupported feature.
    InvalidLayer,
    /// An image source is not an image, is truncated or is malformed.
    InvalidImage,
    /// A blob's content does not match its digest.
    DigestMismatch,
    /// An image is in use (a container's root sits on its layers).
    InUse,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::ParentNotCommitted => "parent is not committed",
            ErrorKind::HasChildren => "snapshot has children",
            ErrorKind::CommitOfView => "cannot commit a view",
            ErrorKind::NotActive => "snapshot is not active",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::BackendUnavailable => "backend unavailable",
            ErrorKind::Busy => "busy",
            ErrorKind::Closed => "snapshotter is closed",
            ErrorKind::Store => "metadata store error",
            ErrorKind::Io => "i/o error",
            ErrorKind::Mount => "mount error",
            ErrorKind::UnsafeLayerEntry => "unsafe layer entry",
            ErrorKind::InvalidLayer => "invalid layer",
            ErrorKind::InvalidImage => "invalid image",
            ErrorKind::DigestMismatch => "digest mismatch",
            ErrorKind::InUse => "in use",
        })
    }
}

/// The error of every fallible function in this crate.
#[derive(Debug, thiserror::Error)]
#[error("{op}{}{}: {kind}{}", key_part(.key), path_part(.path), detail_part(.detail))]
pub struct Error {
    kind: ErrorKind,
    op: &'static str,
    key: Option<String>,
    path: Option<PathBuf>,
    detail: Option<String>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

fn key_part(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!(" {k:?}")).unwrap_or_default()
}

fn path_part(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" at {}", p.display()))
        .unwrap_or_default()
}

fn detail_part(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

impl Error {
    /// A new error of `kind` during `op` ("prepare", "remove", "apply", ...).
    pub fn new(kind: ErrorKind, op: &'static str) -> Error {
        Error {
            kind,
            op,
            key: None,
            path: None,
            detail: None,
            source: None,
        }
    }

    /// The snapshot key or name involved.
    pub fn key(mut self, key: impl fmt::Display) -> Error {
        self.key = Some(key.to_string());
        self
    }

    /// The filesystem path involved.
    pub fn path(mut self, path: impl Into<PathBuf>) -> Error {
        self.path = Some(path.into());
        self
    }

    /// A short lowercase explanation, ideally saying what to do.
    pub fn detail(mut self, detail: impl Into<String>) -> Error {
        self.detail = Some(detail.into());
        self
    }

    /// The underlying cause.
    pub fn source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The OS error number underneath, if any.
    pub fn errno(&self) -> Option<i32> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = self
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static));
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return io.raw_os_error();
            }
            if let Some(n) = e.downcast_ref::<nix::errno::Errno>() {
                return Some(*n as i32);
            }
            cur = e.source();
        }
        None
    }

    /// An I/O error during `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, e: std::io::Error) -> Error {
        Error::new(ErrorKind::Io, op).path(path).source(e)
    }

    /// A syscall error during `op` on `path`.
    pub fn sys(op: &'static str, path: impl Into<PathBuf>, e: nix::errno::Errno) -> Error {
        Error::new(ErrorKind::Io, op).path(path).source(e)
    }

    /// A metadata store error during `op`.
    pub fn store(op: &'static str, e: rusqlite::Error) -> Error {
        Error::new(ErrorKind::Store, op).source(e)
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_op_key_and_kind() {
        let e = Error::new(ErrorKind::HasChildren, "remove")
            .key("base")
            .detail("remove its children first");
        assert_eq!(
            e.to_string(),
            "remove \"base\": snapshot has children: remove its children first"
        );
        assert_eq!(e.kind(), ErrorKind::HasChildren);
    }

    #[test]
    fn errno_found_through_source() {
        let e = Error::sys("mkdir", "/x", nix::errno::Errno::EEXIST);
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }
}
