//! Reading a pool's metadata offline: per-thin usage (what `thin_ls` reports:
//! mapped, exclusive and shared blocks) and consistency checks (`thin_check`).
//!
//! A live pool's metadata is read through a *metadata snapshot*
//! (`reserve_metadata_snap` / `release_metadata_snap` messages, kernel 3.9+),
//! so the pool keeps running. The seam is [`MetadataTools`]; [`ThinTools`]
//! runs thin-provisioning-tools (`thin_ls`, `thin_check`) using their
//! column output and exit status only, never their English text.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use crate::dm::FakeDm;
use crate::error::{Error, ErrorKind, Result};
use crate::table::DevNum;
use crate::units::{DataBlocks, ThinId};

/// One thin device's usage, as `thin_ls -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThinUsage {
    /// The thin id.
    pub id: ThinId,
    /// Blocks mapped.
    pub mapped: DataBlocks,
    /// Blocks only this device maps.
    pub exclusive: DataBlocks,
    /// Blocks shared with other devices (snapshots).
    pub shared: DataBlocks,
}

impl fmt::Display for ThinUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.id, self.mapped, self.exclusive, self.shared
        )
    }
}

impl FromStr for ThinUsage {
    type Err = Error;
    fn from_str(s: &str) -> Result<ThinUsage> {
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() != 4 {
            return Err(Error::parse(
                "thin_ls line",
                s,
                "expected DEV MAPPED_BLOCKS EXCLUSIVE_BLOCKS SHARED_BLOCKS",
            ));
        }
        Ok(ThinUsage {
            id: f[0].parse()?,
            mapped: f[1].parse()?,
            exclusive: f[2].parse()?,
            shared: f[3].parse()?,
        })
    }
}

/// A pool's metadata device.
#[derive(Debug, Clone, Copy)]
pub struct MetaDev<'a> {
    /// Its node.
    pub path: &'a Path,
    /// Its number.
    pub devnum: DevNum,
}

/// Offline metadata tools.
pub trait MetadataTools: Send + Sync + fmt::Debug {
    /// Per-thin usage. With `snapshot`, reads the held metadata snapshot of a
    /// live pool (the caller reserves and releases it).
    fn list(&self, meta: MetaDev<'_>, snapshot: bool) -> Result<Vec<ThinUsage>>;
    /// Checks the metadata of an inactive pool.
    fn check(&self, meta: MetaDev<'_>) -> Result<()>;
    /// Checks the held metadata snapshot of a live pool (`thin_check -m`;
    /// the caller reserves and releases it).
    fn check_snapshot(&self, meta: MetaDev<'_>) -> Result<()>;
    /// Writes what can be read of the (inactive) metadata `from` into the
    /// empty device `to` (`thin_repair -i FROM -o TO`).
    fn repair(&self, from: MetaDev<'_>, to: MetaDev<'_>) -> Result<()>;
}

impl<T: MetadataTools + ?Sized> MetadataTools for std::sync::Arc<T> {
    fn list(&self, meta: MetaDev<'_>, snapshot: bool) -> Result<Vec<ThinUsage>> {
        (**self).list(meta, snapshot)
    }
    fn check(&self, meta: MetaDev<'_>) -> Result<()> {
        (**self).check(meta)
    }
    fn check_snapshot(&self, meta: MetaDev<'_>) -> Result<()> {
        (**self).check_snapshot(meta)
    }
    fn repair(&self, from: MetaDev<'_>, to: MetaDev<'_>) -> Result<()> {
        (**self).repair(from, to)
    }
}

/// thin-provisioning-tools.
#[derive(Debug, Default)]
pub struct ThinTools;

fn tool_err(tool: &str, e: std::io::Error, path: &Path) -> Error {
    let kind = if e.kind() == std::io::ErrorKind::NotFound {
        ErrorKind::ToolMissing {
            tool: tool.to_owned(),
        }
    } else {
        ErrorKind::Io
    };
    Error::new(kind).path(path).with_source(e)
}

impl MetadataTools for ThinTools {
    fn list(&self, meta: MetaDev<'_>, snapshot: bool) -> Result<Vec<ThinUsage>> {
        let mut cmd = Command::new("thin_ls");
        cmd.args([
            "--no-headers",
            "-o",
            "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS",
        ]);
        if snapshot {
            cmd.arg("--metadata-snap");
        }
        let out = cmd
            .arg(meta.path)
            .output()
            .map_err(|e| tool_err("thin_ls", e, meta.path))?;
        if !out.status.success() {
            return Err(Error::new(ErrorKind::ToolFailed {
                tool: "thin_ls".to_owned(),
                status: out.status.code(),
            })
            .path(meta.path)
            .op("list thin devices in metadata"));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut v: Vec<ThinUsage> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_>>()?;
        v.sort_by_key(|u| u.id);
        Ok(v)
    }

    fn check(&self, meta: MetaDev<'_>) -> Result<()> {
        thin_check(meta, &[])
    }

    fn check_snapshot(&self, meta: MetaDev<'_>) -> Result<()> {
        thin_check(meta, &["-m"])
    }

    fn repair(&self, from: MetaDev<'_>, to: MetaDev<'_>) -> Result<()> {
        let out = Command::new("thin_repair")
            .arg("-i")
            .arg(from.path)
            .arg("-o")
            .arg(to.path)
            .output()
            .map_err(|e| tool_err("thin_repair", e, from.path))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            return Err(Error::new(ErrorKind::ToolFailed {
                tool: "thin_repair".to_owned(),
                status: out.status.code(),
            })
            .path(from.path)
            .op("repair metadata")
            .with_source(std::io::Error::other(said.trim().to_owned())));
        }
        Ok(())
    }
}

fn thin_check(meta: MetaDev<'_>, args: &[&str]) -> Result<()> {
    // Captured: its complaints go into thinbox's error, not onto its stdout.
    let out = Command::new("thin_check")
        .arg("-q")
        .args(args)
        .arg(meta.path)
        .output()
        .map_err(|e| tool_err("thin_check", e, meta.path))?;
    if !out.status.success() {
        return Err(Error::new(ErrorKind::MetadataCheckFailed {
            device: meta.path.display().to_string(),
        })
        .path(meta.path));
    }
    Ok(())
}

/// Metadata tools reading a [`FakeDm`]'s simulated metadata.
#[derive(Debug, Clone)]
pub struct FakeTools {
    dm: FakeDm,
    corrupt: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeTools {
    /// Tools over `dm`'s metadata.
    pub fn new(dm: &FakeDm) -> FakeTools {
        FakeTools {
            dm: dm.clone(),
            corrupt: Default::default(),
        }
    }

    /// Makes `check` fail from now on.
    pub fn set_corrupt(&self, corrupt: bool) {
        self.corrupt
            .store(corrupt, std::sync::atomic::Ordering::SeqCst);
    }
}

impl MetadataTools for FakeTools {
    fn list(&self, meta: MetaDev<'_>, _snapshot: bool) -> Result<Vec<ThinUsage>> {
        self.dm
            .thin_usage(&meta.devnum.to_string())
            .into_iter()
            .map(|(id, mapped)| {
                Ok(ThinUsage {
                    id: ThinId::new(u64::from(id))?,
                    mapped: DataBlocks::new(mapped),
                    exclusive: DataBlocks::new(mapped),
                    shared: DataBlocks::ZERO,
                })
            })
            .collect()
    }

    fn check(&self, meta: MetaDev<'_>) -> Result<()> {
        if self.corrupt.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::MetadataCheckFailed {
                device: meta.path.display().to_string(),
            }));
        }
        Ok(())
    }

    fn check_snapshot(&self, meta: MetaDev<'_>) -> Result<()> {
        self.check(meta)
    }

    fn repair(&self, from: MetaDev<'_>, to: MetaDev<'_>) -> Result<()> {
        self.dm
            .copy_metadata(&from.devnum.to_string(), &to.devnum.to_string());
        self.set_corrupt(false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_thin_ls_line() {
        let u: ThinUsage = "3  1024  1000  24".parse().unwrap();
        assert_eq!(u.id, ThinId::new(3).unwrap());
        assert_eq!(u.shared, DataBlocks::new(24));
        assert!("3 1 2".parse::<ThinUsage>().is_err());
    }

    proptest! {
        #[test]
        fn usage_roundtrip(id in 0u64..1 << 24, m: u64, e: u64, s: u64) {
            let u = ThinUsage {
                id: ThinId::new(id).unwrap(),
                mapped: DataBlocks::new(m),
                exclusive: DataBlocks::new(e),
                shared: DataBlocks::new(s),
            };
            prop_assert_eq!(u.to_string().parse::<ThinUsage>().unwrap(), u);
        }
    }
}
