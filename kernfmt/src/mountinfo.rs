//! `/proc/PID/mountinfo` (proc(5)): one [`MountInfo`] per line.

use std::fmt;
use std::str::FromStr;

use crate::{DevNum, ParseError, ReadError};

/// One line of `/proc/self/mountinfo` (see proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Mount id.
    pub id: u32,
    /// Parent mount id.
    pub parent: u32,
    /// Device of the filesystem.
    pub device: DevNum,
    /// The root of the mount within its filesystem.
    pub root: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// Per-mount options.
    pub options: String,
    /// Optional fields (`shared:N`, `master:N`), possibly empty.
    pub optional: Vec<String>,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source.
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

impl MountInfo {
    /// The superblock options as a list (`rw,memory` -> `["rw", "memory"]`).
    pub fn super_option_list(&self) -> impl Iterator<Item = &str> {
        self.super_options.split(',')
    }

    /// Parses every line of a mountinfo file.
    pub fn parse_all(text: &str) -> Result<Vec<MountInfo>, ParseError> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::parse)
            .collect()
    }

    /// Reads and parses `/proc/self/mountinfo`.
    pub fn read_self() -> Result<Vec<MountInfo>, ReadError> {
        let path = "/proc/self/mountinfo";
        let text =
            std::fs::read_to_string(path).map_err(|source| ReadError::Io { path, source })?;
        Ok(MountInfo::parse_all(&text)?)
    }

    /// The mount point as a path, with the kernel's octal escapes
    /// (`\040` for a space) undone.
    pub fn mount_point_path(&self) -> std::path::PathBuf {
        unescape_octal(&self.mount_point)
    }

    /// The mount source, with the kernel's octal escapes undone.
    pub fn source_path(&self) -> std::path::PathBuf {
        unescape_octal(&self.source)
    }
}

/// Undoes the octal escapes (`\040`, `\011`, `\012`, `\134`) the kernel
/// writes in mountinfo and mounts fields; a backslash not followed by three
/// octal digits is kept.
pub fn unescape_octal(s: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let n = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok());
            if let Some(n) = n {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::ffi::OsString::from_vec(out).into()
}

impl fmt::Display for MountInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}",
            self.id, self.parent, self.device, self.root, self.mount_point, self.options
        )?;
        for o in &self.optional {
            write!(f, " {o}")?;
        }
        write!(
            f,
            " - {} {} {}",
            self.fstype, self.source, self.super_options
        )
    }
}

impl FromStr for MountInfo {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::new("a mountinfo line", s);
        let (left, right) = s.split_once(" - ").ok_or_else(bad)?;
        let mut l = left.split(' ');
        let id = l.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let parent = l.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let device = l.next().ok_or_else(bad)?.parse()?;
        let root = l.next().ok_or_else(bad)?.to_owned();
        let mount_point = l.next().ok_or_else(bad)?.to_owned();
        let options = l.next().ok_or_else(bad)?.to_owned();
        let optional = l.map(str::to_owned).collect();
        let mut r = right.split(' ');
        let fstype = r.next().ok_or_else(bad)?.to_owned();
        let source = r.next().ok_or_else(bad)?.to_owned();
        let super_options = r.next().unwrap_or_default().to_owned();
        Ok(MountInfo {
            id,
            parent,
            device,
            root,
            mount_point,
            options,
            optional,
            fstype,
            source,
            super_options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(s: &str) {
        let v: MountInfo = s.parse().unwrap();
        assert_eq!(v.to_string(), s);
        assert_eq!(v.to_string().parse::<MountInfo>().unwrap(), v);
    }

    #[test]
    fn lines_round_trip() {
        round_trip(
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw",
        );
        round_trip("32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu");
        round_trip("60 25 7:0 / /var/lib/thinbox/btrfs rw,relatime shared:33 master:1 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/");
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!("1 2 3 / /x rw".parse::<MountInfo>().is_err());
        assert!("x 2 8:0 / /x rw - ext4 /dev/sda rw"
            .parse::<MountInfo>()
            .is_err());
    }

    #[test]
    fn the_mount_table_of_this_process_parses() {
        let all = MountInfo::read_self().unwrap();
        assert!(all.iter().any(|m| m.mount_point == "/"), "{all:?}");
    }

    #[test]
    fn mountinfo_paths_unescape() {
        use std::path::Path;
        assert_eq!(unescape_octal(r"/a\040b"), Path::new("/a b"));
        assert_eq!(unescape_octal("/plain"), Path::new("/plain"));
        assert_eq!(unescape_octal("/x\\"), Path::new("/x\\"));
        assert_eq!(unescape_octal(r"/t\011ab\134"), Path::new("/t\tab\\"));
        let m: MountInfo = r"36 35 98:0 / /mnt/a\040b rw - ext4 /dev/x\040y rw"
            .parse()
            .unwrap();
        assert_eq!(m.mount_point_path(), Path::new("/mnt/a b"));
        assert_eq!(m.source_path(), Path::new("/dev/x y"));
        assert_eq!(
            m.to_string(),
            r"36 35 98:0 / /mnt/a\040b rw - ext4 /dev/x\040y rw"
        );
    }
}
