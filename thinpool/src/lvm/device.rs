//! Whether a device may become a PV of a new pool, asked before lvm2 or
//! wipefs touch it, so each refusal is one line naming the device and what
//! to do rather than the exit code of the first tool that tripped on it.
//!
//! The kernel's views are read, not guessed: `stat` for the node,
//! `/proc/self/mountinfo` ([`kernfmt::MountInfo`], by device number, so any path to it counts) for
//! mounts of the device or its partitions, `/sys/dev/block/M:m/holders`
//! for dm devices (or md, bcache) stacked on it, and `pvs` for its VG.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lvm::PvInfo;

/// What a device is being used for, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceUse {
    /// A block device nothing uses (signatures are checked separately).
    Free,
    /// No such path.
    Missing,
    /// The path is not a block device ("a regular file", "a directory").
    NotBlock {
        /// What it is instead.
        kind: &'static str,
    },
    /// It, or one of its partitions, is mounted.
    Mounted {
        /// The mounted device node (the device or a partition).
        device: String,
        /// Where.
        at: PathBuf,
    },
    /// It is a PV of a volume group.
    PvOf {
        /// The VG.
        vg: String,
    },
    /// Other block devices are stacked on it (dm, md), or on a partition.
    HeldBy {
        /// Their names (`dm` names where there are).
        holders: Vec<String>,
    },
}

impl DeviceUse {
    /// What is wrong and what to do, after "DEVICE ": None when free.
    pub fn refusal(&self) -> Option<String> {
        Some(match self {
            DeviceUse::Free => return None,
            DeviceUse::Missing => {
                "does not exist: name a block device that is there (lsblk lists them)".to_owned()
            }
            DeviceUse::NotBlock { kind } => format!(
                "is {kind}, not a block device: name a disk or partition (for a pool in files, create a loopback pool without --lvm)"
            ),
            DeviceUse::Mounted { device, at } => format!(
                "is in use: {device} is mounted on {}; unmount it (and remove it from /etc/fstab) or pick another device",
                at.display()
            ),
            DeviceUse::PvOf { vg } => format!(
                "is a physical volume of volume group {vg}: pick another device, or free it with `vgreduce {vg} DEVICE` (or `vgremove {vg}`) first"
            ),
            DeviceUse::HeldBy { holders } => format!(
                "is held by {}: remove them (`dmsetup remove NAME` for a dm device) or pick another device",
                holders.join(", ")
            ),
        })
    }
}

/// `dev`'s use, from the live system; `pvs` is lvm2's PV list.
pub fn probe(dev: &Path, pvs: &[PvInfo]) -> Result<DeviceUse> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::metadata(dev) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DeviceUse::Missing),
        Err(e) => return Err(Error::io(e, dev)),
    };
    let ft = meta.file_type();
    if !ft.is_block_device() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_file() {
            "a regular file"
        } else if ft.is_char_device() {
            "a character device"
        } else {
            "not a device"
        };
        return Ok(DeviceUse::NotBlock { kind });
    }
    let canonical = std::fs::canonicalize(dev).unwrap_or_else(|_| dev.to_owned());
    if let Some(pv) = pvs
        .iter()
        .find(|p| p.device == dev || std::fs::canonicalize(&p.device).is_ok_and(|c| c == canonical))
    {
        if let Some(vg) = &pv.vg {
            return Ok(DeviceUse::PvOf { vg: vg.clone() });
        }
    }
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    let num = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", num.0, num.1));
    // The device and its partitions, as (name, "M:m", sysfs dir).
    let mut parts = vec![(
        canonical.display().to_string(),
        format!("{}:{}", num.0, num.1),
        sys.clone(),
    )];
    if let Ok(rd) = std::fs::read_dir(&sys) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Ok(n) = std::fs::read_to_string(p.join("dev")) {
                    let name = format!("/dev/{}", e.file_name().to_string_lossy());
                    parts.push((name, n.trim().to_owned(), p));
                }
            }
        }
    }
    let mounts = kernfmt::MountInfo::read_self()
        .map_err(|e| Error::parse("mount table", "/proc/self/mountinfo", e.to_string()))?;
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    for (name, devnum, dir) in &parts {
        if let Some(m) = mounts.iter().find(|m| m.device.to_string() == *devnum) {
            return Ok(DeviceUse::Mounted {
                device: name.clone(),
                at: m.mount_point_path(),
            });
        }
        if swaps.lines().skip(1).any(|l| {
            l.split_whitespace().next().is_some_and(|s| {
                s == name
                    || std::fs::canonicalize(s).is_ok_and(|c| c.display().to_string() == *name)
            })
        }) {
            return Ok(DeviceUse::Mounted {
                device: name.clone(),
                at: PathBuf::from("swap"),
            });
        }
        let holders = holders_of(dir);
        if !holders.is_empty() {
            return Ok(DeviceUse::HeldBy { holders });
        }
    }
    Ok(DeviceUse::Free)
}

fn holders_of(sysdir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(sysdir.join("holders")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .map(|e| {
            let k = e.file_name().to_string_lossy().into_owned();
            std::fs::read_to_string(e.path().join("dm/name"))
                .map(|n| format!("dm device {}", n.trim()))
                .unwrap_or(k)
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_use_says_what_to_do() {
        assert_eq!(DeviceUse::Free.refusal(), None);
        let m = DeviceUse::Missing.refusal().unwrap();
        assert!(m.contains("does not exist"), "{m}");
        let f = DeviceUse::NotBlock {
            kind: "a regular file",
        }
        .refusal()
        .unwrap();
        assert!(f.contains("regular file") && f.contains("loopback"), "{f}");
        let p = DeviceUse::PvOf { vg: "data".into() }.refusal().unwrap();
        assert!(
            p.contains("volume group data") && p.contains("vgreduce"),
            "{p}"
        );
        let h = DeviceUse::HeldBy {
            holders: vec!["dm device x".into()],
        }
        .refusal()
        .unwrap();
        assert!(
            h.contains("dm device x") && h.contains("dmsetup remove"),
            "{h}"
        );
        let mnt = DeviceUse::Mounted {
            device: "/dev/vdb1".into(),
            at: "/srv".into(),
        }
        .refusal()
        .unwrap();
        assert!(mnt.contains("/dev/vdb1 is mounted on /srv"), "{mnt}");
    }

    #[test]
    fn probes_paths_that_are_not_block_devices() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            probe(&d.path().join("none"), &[]).unwrap(),
            DeviceUse::Missing
        );
        assert_eq!(
            probe(d.path(), &[]).unwrap(),
            DeviceUse::NotBlock {
                kind: "a directory"
            }
        );
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert_eq!(
            probe(&f, &[]).unwrap(),
            DeviceUse::NotBlock {
                kind: "a regular file"
            }
        );
        assert_eq!(
            probe(Path::new("/dev/null"), &[]).unwrap(),
            DeviceUse::NotBlock {
                kind: "a character device"
            }
        );
    }
}
