//! The crate's error type: a matchable [`ErrorKind`] that maps to the
//! binary's exit code, and a message naming what is wrong and the fix.
//!
//! Errors of the libraries underneath (thinpool, snapshotter, runner) keep
//! their own message and are classified into an [`ErrorKind`] by
//! [`ErrorKind::of_thinpool`], [`ErrorKind::of_snapshotter`] and
//! [`ErrorKind::of_runner`], so the binary can pick an exit code for any
//! error without parsing text.

use std::fmt;
use std::path::Path;

/// What went wrong, in terms a caller can match on and an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input (a flag, a size, a name, a file, the configuration) is wrong.
    InvalidArgument,
    /// The thing named (pool, snapshot, image, container) does not exist.
    NotFound,
    /// A name is already taken.
    AlreadyExists,
    /// The thing is in use (open, mounted, locked by another thinbox, has children).
    InUse,
    /// The caller is not root.
    NotRoot,
    /// The kernel or a tool lacks what the backend needs.
    BackendUnavailable,
    /// A file-system, kernel or tool operation failed.
    Io,
    /// A pool is out of space or below its free-space floor.
    NoSpace,
    /// Stored state (a record, a pool's metadata) is damaged or inconsistent.
    Corrupt,
    /// A registry wants other credentials, or refused these.
    Unauthorized,
    /// A registry could not be reached or did not answer in time.
    Unreachable,
    /// Anything else (a container failed to start, ...).
    Failed,
}

impl ErrorKind {
    /// Classifies a thinpool error.
    pub fn of_thinpool(k: &thinpool::ErrorKind) -> ErrorKind {
        use thinpool::ErrorKind as T;
        match k {
            T::InvalidBlockSize { .. }
            | T::NotBlockMultiple { .. }
            | T::SizeTooSmall { .. }
            | T::ThinIdOutOfRange { .. }
            | T::InvalidName { .. }
            | T::MetadataTooSmall { .. }
            | T::Overflow { .. }
            | T::NotAThinPool { .. }
            | T::CannotShrink { .. }
            | T::Unsupported { .. } => ErrorKind::InvalidArgument,
            T::NameTaken { .. } => ErrorKind::AlreadyExists,
            T::NotFound { .. } => ErrorKind::NotFound,
            T::Busy { .. }
            | T::OwnedElsewhere { .. }
            | T::DeviceHasSignature { .. }
            | T::Lent { .. }
            | T::HasThins { .. } => ErrorKind::InUse,
            T::DeviceUnusable { found, .. } => match found {
                thinpool::lvm::DeviceUse::Missing => ErrorKind::NotFound,
                thinpool::lvm::DeviceUse::NotBlock { .. } => ErrorKind::InvalidArgument,
                _ => ErrorKind::InUse,
            },
            T::NotRoot => ErrorKind::NotRoot,
            T::DmThinUnsupported | T::DmUnavailable | T::ToolMissing { .. } => {
                ErrorKind::BackendUnavailable
            }
            T::OutOfDataSpace { .. }
            | T::BelowFreeSpaceFloor { .. }
            | T::OutOfMetadataSpace { .. }
            | T::NoRoom { .. }
            | T::VgTooSmall { .. }
            | T::ThinIdsExhausted => ErrorKind::NoSpace,
            T::MetadataCheckFailed { .. }
            | T::TransactionMismatch { .. }
            | T::TableMismatch { .. }
            | T::PoolNotWritable { .. }
            | T::Parse { .. } => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        }
    }

    /// Classifies a snapshotter error.
    pub fn of_snapshotter(k: snapshotter::ErrorKind) -> ErrorKind {
        use snapshotter::ErrorKind as S;
        match k {
            S::NotFound => ErrorKind::NotFound,
            S::AlreadyExists => ErrorKind::AlreadyExists,
            S::ParentNotCommitted
            | S::CommitOfView
            | S::NotActive
            | S::InvalidArgument
            | S::UnsafeLayerEntry
            | S::InvalidLayer
            | S::InvalidImage
            | S::DigestMismatch => ErrorKind::InvalidArgument,
            S::HasChildren | S::Busy | S::InUse => ErrorKind::InUse,
            S::BackendUnavailable => ErrorKind::BackendUnavailable,
            S::Store => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        }
    }

    /// Classifies a runner error.
    pub fn of_runner(k: runner::ErrorKind) -> ErrorKind {
        use runner::ErrorKind as R;
        match k {
            R::InvalidConfig | R::ExecutableNotFound => ErrorKind::InvalidArgument,
            R::Unsupported | R::NoCgroups => ErrorKind::BackendUnavailable,
            R::Rootfs | R::Io | R::Cgroup => ErrorKind::Io,
            _ => ErrorKind::Failed,
        }
    }

    /// Classifies an i/o error by its errno.
    pub fn of_io(e: &std::io::Error) -> ErrorKind {
        match e.raw_os_error() {
            // Root is refused too by an immutable or read-only place: then
            // "run as root" would be no answer.
            Some(libc::EPERM) | Some(libc::EACCES) if nix::unistd::geteuid().is_root() => {
                ErrorKind::Io
            }
            Some(libc::EPERM) | Some(libc::EACCES) => ErrorKind::NotRoot,
            Some(libc::ENOENT) => ErrorKind::NotFound,
            Some(libc::EEXIST) => ErrorKind::AlreadyExists,
            Some(libc::EBUSY) => ErrorKind::InUse,
            Some(libc::ENOSPC) => ErrorKind::NoSpace,
            _ => ErrorKind::Io,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::InUse => "in use",
            ErrorKind::NotRoot => "not root",
            ErrorKind::BackendUnavailable => "backend unavailable",
            ErrorKind::Io => "i/o error",
            ErrorKind::NoSpace => "out of space",
            ErrorKind::Corrupt => "damaged state",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Failed => "failed",
        })
    }
}

/// The crate's error: a kind and a message that names the value and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What is wrong and how to fix it.
    pub message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause (shown with `--debug`).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }

    /// An i/o error doing `what` on `path`, classified by errno.
    pub fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
        let kind = ErrorKind::of_io(&e);
        let fix = match (kind, e.raw_os_error()) {
            (ErrorKind::NotRoot, _) => ": run as root",
            (_, Some(libc::EPERM) | Some(libc::EACCES)) => {
                ": refused even to root; is it immutable (lsattr) or on a read-only filesystem?"
            }
            _ => "",
        };
        Error::new(kind, format!("{what} {}: {e}{fix}", path.display())).with_source(e)
    }

    /// The "run as root" error for `what`.
    pub fn not_root(what: &str) -> Error {
        Error::new(
            ErrorKind::NotRoot,
            format!("{what} needs root (device-mapper, loop devices, mounts): run as root"),
        )
    }
}

impl From<thinpool::Error> for Error {
    fn from(e: thinpool::Error) -> Error {
        Error::new(ErrorKind::of_thinpool(e.kind()), e.to_string()).with_source(e)
    }
}

impl From<snapshotter::Error> for Error {
    fn from(e: snapshotter::Error) -> Error {
        Error::new(ErrorKind::of_snapshotter(e.kind()), e.to_string()).with_source(e)
    }
}

impl From<runner::Error> for Error {
    fn from(e: runner::Error) -> Error {
        Error::new(ErrorKind::of_runner(e.kind()), e.to_string()).with_source(e)
    }
}

/// The kind of any error in a chain: the first thinbox, thinpool,
/// snapshotter or runner error found (outermost first), else from an
/// `io::Error`, else [`ErrorKind::Failed`].
pub fn classify(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = cur {
        if let Some(e) = e.downcast_ref::<Error>() {
            return e.kind;
        }
        if let Some(e) = e.downcast_ref::<thinpool::Error>() {
            return ErrorKind::of_thinpool(e.kind());
        }
        if let Some(e) = e.downcast_ref::<snapshotter::Error>() {
            return ErrorKind::of_snapshotter(e.kind());
        }
        if let Some(e) = e.downcast_ref::<runner::Error>() {
            return ErrorKind::of_runner(e.kind());
        }
        if let Some(e) = e.downcast_ref::<std::io::Error>() {
            return ErrorKind::of_io(e);
        }
        cur = e.source();
    }
    ErrorKind::Failed
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_map_to_kinds() {
        let e: Error =
            thinpool::Error::new(thinpool::ErrorKind::InvalidBlockSize { bytes: 4096 }).into();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("4096"), "{}", e.message);

        let e: Error = thinpool::Error::new(thinpool::ErrorKind::NotRoot).into();
        assert_eq!(e.kind, ErrorKind::NotRoot);
        let e: Error = thinpool::Error::new(thinpool::ErrorKind::DmThinUnsupported).into();
        assert_eq!(e.kind, ErrorKind::BackendUnavailable);
        let e: Error =
            thinpool::Error::new(thinpool::ErrorKind::NameTaken { name: "p".into() }).into();
        assert_eq!(e.kind, ErrorKind::AlreadyExists);

        let e: Error = snapshotter::Error::new(snapshotter::ErrorKind::NotFound, "stat").into();
        assert_eq!(e.kind, ErrorKind::NotFound);
        let e: Error =
            snapshotter::Error::new(snapshotter::ErrorKind::HasChildren, "remove").into();
        assert_eq!(e.kind, ErrorKind::InUse);
        let e: Error =
            snapshotter::Error::new(snapshotter::ErrorKind::ParentNotCommitted, "prepare").into();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
    }

    #[test]
    fn classify_walks_the_chain() {
        let inner = snapshotter::Error::new(snapshotter::ErrorKind::AlreadyExists, "prepare");
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] snapshotter::Error);
        assert_eq!(classify(&Outer(inner)), ErrorKind::AlreadyExists);
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        // "Permission denied" means "run as root" only to a non-root user.
        let want = if nix::unistd::geteuid().is_root() {
            ErrorKind::Io
        } else {
            ErrorKind::NotRoot
        };
        assert_eq!(classify(&io), want);
        let e = Error::io("cannot create", Path::new("/x"), io);
        assert_eq!(
            e.message.contains("run as root"),
            want == ErrorKind::NotRoot,
            "{}",
            e.message
        );
        assert_eq!(
            classify(&Error::new(ErrorKind::NotFound, "x")),
            ErrorKind::NotFound
        );
    }
}
