//! Filesystems on thin devices: made once per base device (snapshots inherit
//! them), with options chosen for thin provisioning, grown after a resize.
//!
//! - ext4: `-E nodiscard` (discarding a fresh thin device only wastes time),
//!   `lazy_itable_init=0,lazy_journal_init=0` (initialise now, so snapshots
//!   do not each allocate the same blocks later); grown online with `resize2fs`.
//! - xfs: `-K` (no discard at mkfs); snapshots share the origin's UUID, so
//!   they mount with `nouuid`; grown with `xfs_growfs` on the mount point.
//!
//! The tools are judged by exit status only.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};

/// A filesystem thinbox makes on thin devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filesystem {
    /// ext4.
    Ext4,
    /// xfs.
    Xfs,
}

impl fmt::Display for Filesystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        })
    }
}

impl FromStr for Filesystem {
    type Err = Error;
    fn from_str(s: &str) -> Result<Filesystem> {
        match s {
            "ext4" => Ok(Filesystem::Ext4),
            "xfs" => Ok(Filesystem::Xfs),
            _ => Err(Error::parse("filesystem", s, "use ext4 or xfs")),
        }
    }
}

/// Runs `tool` with its output captured: what it prints must not reach
/// thinbox's own stdout (a `--json` report) or stderr; on failure its
/// stderr is the error's source.
fn run(tool: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new(tool).args(args).output().map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::ToolMissing {
                tool: tool.to_owned(),
            }
        } else {
            ErrorKind::Io
        };
        Error::new(kind).with_source(e)
    })?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(Error::new(ErrorKind::ToolFailed {
            tool: tool.to_owned(),
            status: out.status.code(),
        })
        .with_source(std::io::Error::other(said)));
    }
    Ok(())
}

impl Filesystem {
    /// The mkfs command line for `dev`.
    pub fn mkfs_args(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Filesystem::Ext4 => (
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-E",
                    "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                ],
            ),
            Filesystem::Xfs => ("mkfs.xfs", &["-q", "-f", "-K"]),
        }
    }

    /// Makes the filesystem on `dev`.
    pub fn mkfs(self, dev: &Path) -> Result<()> {
        let (tool, args) = self.mkfs_args();
        let mut a: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        a.push(dev.as_os_str());
        run(tool, &a).map_err(|e| e.op("make filesystem").path(dev))
    }

    /// Mount options for a device: xfs snapshots need `nouuid`.
    pub fn mount_options(self, snapshot: bool) -> &'static str {
        match (self, snapshot) {
            (Filesystem::Xfs, true) => "nouuid",
            _ => "",
        }
    }

    /// Grows the filesystem to fill its (grown) device. ext4 grows through
    /// the device, mounted or not; xfs needs its mount point.
    pub fn grow(self, dev: &Path, mountpoint: Option<&Path>) -> Result<()> {
        match self {
            Filesystem::Ext4 => run("resize2fs", &[dev.as_os_str()]),
            Filesystem::Xfs => {
                let m = mountpoint.ok_or_else(|| {
                    Error::new(ErrorKind::NotFound {
                        name: format!(
                            "mount point of {} (xfs grows only when mounted)",
                            dev.display()
                        ),
                    })
                })?;
                run("xfs_growfs", &[m.as_os_str()])
            }
        }
        .map_err(|e| e.op("grow filesystem").path(dev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_options() {
        for f in [Filesystem::Ext4, Filesystem::Xfs] {
            assert_eq!(f.to_string().parse::<Filesystem>().unwrap(), f);
        }
        assert!("btrfs".parse::<Filesystem>().is_err());
        assert_eq!(Filesystem::Xfs.mount_options(true), "nouuid");
        assert_eq!(Filesystem::Xfs.mount_options(false), "");
        assert!(Filesystem::Ext4
            .mkfs_args()
            .1
            .iter()
            .any(|a| a.contains("nodiscard")));
        assert!(Filesystem::Xfs.mkfs_args().1.contains(&"-K"));
        assert!(Filesystem::Xfs.grow(Path::new("/dev/null"), None).is_err());
    }
}
