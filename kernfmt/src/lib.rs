//! The kernel's text formats that more than one thinbox crate reads, each
//! as a type that parses ([`std::str::FromStr`]) and prints back
//! ([`std::fmt::Display`]) to the same text, tested once here:
//!
//! - [`Bytes`]: a size in bytes, printed in the largest exact binary unit
//!   and parsed as people write sizes (`20G`, `512MiB`, `4096`);
//! - [`DevNum`]: a device number, `MAJOR:MINOR` (dm tables, cgroup files,
//!   mountinfo);
//! - [`MountInfo`]: a line of `/proc/PID/mountinfo` (proc(5)), with the
//!   kernel's octal escapes undone by [`unescape_octal`] where a path is
//!   wanted;
//! - [`CgroupLayout`]: how the cgroup hierarchies are mounted (v1, v2,
//!   hybrid), named and parsed as thinbox's tests and runner name it, and
//!   read from the mount table.
//!
//! No kernel access beyond [`MountInfo::read_self`]; no root needed.

#![forbid(unsafe_code)]

mod bytes;
mod cgroup;
mod devnum;
mod mountinfo;

pub use bytes::Bytes;
pub use cgroup::{CgroupLayout, V1_CONTROLLERS};
pub use devnum::DevNum;
pub use mountinfo::{unescape_octal, MountInfo};

/// A kernel string that did not parse: what was expected, and the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not {what}")]
pub struct ParseError {
    /// What the text should have been (`a device number MAJOR:MINOR`).
    pub what: &'static str,
    /// The text.
    pub input: String,
}

impl ParseError {
    /// `input` is not `what`.
    pub fn new(what: &'static str, input: &str) -> ParseError {
        ParseError {
            what,
            input: input.to_owned(),
        }
    }
}

/// Reading a kernel file failed, or its text did not parse.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line did not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
}
