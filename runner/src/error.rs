//! The one error type of the crate: a matchable [`ErrorKind`], the context
//! (operation, path, value) and the underlying cause.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong, for callers that react differently to each case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A kernel string (cgroup file, mountinfo line, config value) did not parse.
    Parse,
    /// The configuration asks for something invalid or unsupported.
    InvalidConfig,
    /// The host cannot apply a requested limit (CPU missing, device gone, file absent).
    Unsupported,
    /// No cgroup hierarchy (or no usable controller) was found.
    NoCgroups,
    /// A cgroupfs read or write failed.
    Cgroup,
    /// The rootfs or bundle is missing or unusable.
    Rootfs,
    /// The executable does not exist in the container.
    ExecutableNotFound,
    /// A system call while starting the container failed.
    Start,
    /// Waiting for or signalling the container failed.
    Wait,
    /// Plain I/O outside the kernel interfaces above.
    Io,
}

/// The crate's error: kind, what was being done, and why it failed.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    path: Option<PathBuf>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` whose message is `context`.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Error {
        Error {
            kind,
            context: context.into(),
            path: None,
            source: None,
        }
    }

    /// Attaches the path the operation was about.
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Error {
        self.path = Some(path.as_ref().to_owned());
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The path the failed operation was about, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The OS error number of the cause, if it was a system call.
    pub fn errno(&self) -> Option<i32> {
        let source = self.source.as_deref()?;
        if let Some(e) = source.downcast_ref::<std::io::Error>() {
            return e.raw_os_error();
        }
        source.downcast_ref::<nix::Error>().map(|e| *e as i32)
    }

    /// The message without the cause, for reports.
    pub fn context(&self) -> &str {
        &self.context
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(path) = &self.path {
            write!(f, " ({})", path.display())?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Shorthand: an I/O failure of `op` on `path`.
pub(crate) fn io_error(kind: ErrorKind, op: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(kind, op.to_owned())
        .with_path(path)
        .with_source(e)
}

impl From<kernfmt::ParseError> for Error {
    fn from(e: kernfmt::ParseError) -> Error {
        Error::new(ErrorKind::Parse, e.to_string()).with_source(e)
    }
}

impl From<kernfmt::ReadError> for Error {
    fn from(e: kernfmt::ReadError) -> Error {
        let kind = match e {
            kernfmt::ReadError::Io { .. } => ErrorKind::Io,
            _ => ErrorKind::Parse,
        };
        Error::new(kind, e.to_string()).with_source(e)
    }
}

/// Shorthand: a parse failure of `what` in `text`.
pub(crate) fn parse_error(what: &str, text: &str) -> Error {
    Error::new(
        ErrorKind::Parse,
        format!("cannot parse {what} from {text:?}"),
    )
}
