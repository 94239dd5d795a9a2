//! Reading `zfs diff -H -F FROM TO` into the set of paths that may differ.
//!
//! Each line is `CHANGE\tTYPE\tPATH` (`CHANGE` one of `-` removed, `+`
//! added, `M` modified, `R` renamed, the last followed by `\tNEWPATH`),
//! paths absolute under a mountpoint of TO's dataset, with every byte that
//! is not printable ASCII, a space or a backslash written as `\0NNN`
//! (octal, OpenZFS `stream_bytes`); a modified file whose link count
//! changed has a fourth field, `(+N)` or `(-N)`. Extended attributes kept in hidden
//! directories (`xattr=on`) show up as `FILE/<xattrdir>/NAME`; those count
//! as a change of `FILE`. Anything else unexpected is a [`Surprise`]: the
//! caller then compares whole trees.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use kernfmt::MountInfo;

pub use crate::backend::Surprise;

/// Undoes `stream_bytes` (`\0NNN`); None on a malformed escape.
pub fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let d = s.get(i + 1..i + 5)?;
        if !d.iter().all(|b| (b'0'..=b'7').contains(b)) {
            return None;
        }
        let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
        out.push(u8::try_from(v).ok()?);
        i += 5;
    }
    Some(out)
}

/// The targets where `dataset` is mounted, from the mount table.
pub fn mount_targets(mounts: &[MountInfo], dataset: &str) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.fstype == "zfs" && m.source_path() == Path::new(dataset))
        .map(MountInfo::mount_point_path)
        .collect()
}

/// The directory prefix of the temporary mounts a diff makes:
/// `TMP/thinbox-zfs-diff-PID-ID/{from,to}`.
pub const DIFF_MOUNT_PREFIX: &str = "thinbox-zfs-diff-";

/// Diff mounts a dead process left: zfs mounts of a dataset under
/// `dataset` on `tmp/thinbox-zfs-diff-PID-ID/{from,to}` whose PID is not
/// `alive`, from the mount table. A live PID's mounts are its
/// own diff in progress and are left alone.
pub fn stale_diff_mounts(
    mounts: &[MountInfo],
    dataset: &str,
    tmp: &Path,
    alive: impl Fn(u32) -> bool,
) -> Vec<PathBuf> {
    let under = format!("{dataset}/");
    mounts
        .iter()
        .filter_map(|m| {
            let source = m.source_path();
            if m.fstype != "zfs" || !source.as_os_str().as_bytes().starts_with(under.as_bytes()) {
                return None;
            }
            let target = m.mount_point_path();
            let scratch = target.parent()?;
            if scratch.parent()? != tmp
                || !matches!(target.file_name()?.as_bytes(), b"from" | b"to")
            {
                return None;
            }
            let rest = scratch
                .file_name()?
                .as_bytes()
                .strip_prefix(DIFF_MOUNT_PREFIX.as_bytes())?;
            let pid = std::str::from_utf8(rest)
                .ok()?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            (!alive(pid)).then_some(target)
        })
        .collect()
}

fn is_link_delta(s: &[u8]) -> bool {
    match s.strip_prefix(b"(").and_then(|s| s.strip_suffix(b")")) {
        Some([b'+' | b'-', digits @ ..]) => {
            !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// Reads `zfs diff -H -F` output whose paths lie under one of
/// `mountpoints` (several when the dataset is mounted more than once: a
/// path is then kept relative to each mountpoint it is under, extras being
/// harmless).
pub fn parse(out: &[u8], mountpoints: &[PathBuf]) -> Result<BTreeSet<PathBuf>, Surprise> {
    let mut paths = BTreeSet::new();
    let body = out.strip_suffix(b"\n").unwrap_or(out);
    if body.is_empty() {
        return Ok(paths);
    }
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let surprise = |what| Surprise {
            tool: "zfs diff",
            line: i + 1,
            what,
        };
        let f: Vec<&[u8]> = line.split(|&b| b == b'\t').collect();
        let names = match (f.first().copied(), f.len()) {
            (Some(b"-" | b"+" | b"M"), 3) => &f[2..],
            // A changed link count: `(+1)`, `(-2)`.
            (Some(b"M"), 4) if is_link_delta(f[3]) => &f[2..3],
            (Some(b"R"), 4) => &f[2..],
            _ => return Err(surprise("not a change line")),
        };
        if f[1].len() != 1 {
            return Err(surprise("not a file type"));
        }
        for name in names {
            let raw = unescape(name).ok_or_else(|| surprise("bad escape"))?;
            let mut found = false;
            for mp in mountpoints {
                let mp = mp.as_os_str().as_bytes();
                let mp = mp.strip_suffix(b"/").unwrap_or(mp);
                let rel = match raw.strip_prefix(mp) {
                    Some(b"" | b"/") => {
                        found = true;
                        continue;
                    }
                    Some(r) if r.starts_with(b"/") => &r[1..],
                    _ => continue,
                };
                found = true;
                let mut kept = PathBuf::new();
                for c in Path::new(OsStr::from_bytes(rel)).components() {
                    match c {
                        Component::Normal(n) if n.as_bytes() == b"<xattrdir>" => break,
                        Component::Normal(n) => kept.push(n),
                        _ => return Err(surprise("a path that is not plainly relative")),
                    }
                }
                if !kept.as_os_str().is_empty() {
                    paths.insert(kept);
                }
            }
            if !found {
                return Err(surprise("a path outside the dataset's mountpoints"));
            }
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_diff_mounts_are_dead_pids_diff_mounts_of_our_datasets() {
        let mounts = MountInfo::parse_all(
            "90 25 0:50 / /tmp/thinbox-zfs-diff-100-7/to rw - zfs tank/s/7 rw
91 25 0:51 / /tmp/thinbox-zfs-diff-100-7/from ro - zfs tank/s/3 ro
92 25 0:51 / /tmp/thinbox-zfs-diff-200-9/from ro - zfs tank/s/3 ro
93 25 0:52 / /tmp/thinbox-zfs-diff-100-7/from ro - zfs tank/other/3 ro
94 25 0:51 / /mnt/thinbox-zfs-diff-100-7/from ro - zfs tank/s/3 ro
95 25 0:51 / /tmp/thinbox-zfs-diff-100-7/elsewhere ro - zfs tank/s/3 ro
96 25 0:51 / /tmp/other-100-7/from ro - zfs tank/s/3 ro
97 25 0:51 / /tmp/thinbox-zfs-diff-x-7/from ro - zfs tank/s/3 ro
98 25 7:0 / /tmp/thinbox-zfs-diff-100-7/from ro - ext4 /dev/loop0 ro
",
        )
        .unwrap();
        let got = stale_diff_mounts(&mounts, "tank/s", Path::new("/tmp"), |pid| pid == 200);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/tmp/thinbox-zfs-diff-100-7/to"),
                PathBuf::from("/tmp/thinbox-zfs-diff-100-7/from"),
            ]
        );
    }

    /// Captured with OpenZFS on Debian 12's 6.1 kernel: `zfs diff -H -F
    /// tzp/s/1@committed tzp/s/2@committed`, tzp/s/2 a clone mounted on
    /// /tmp/m2 (xattr=on).
    const SAMPLE: &str = "R\t/\t/tmp/m2/d\t/tmp/m2/d\\0040d
-\t/\t/tmp/m2/opaque
+\t/\t/tmp/m2/xattr-me/<xattrdir>
+\tF\t/tmp/m2/xattr-me/<xattrdir>/user.t
+\tF\t/tmp/m2/opaque/new
+\tF\t/tmp/m2/new\\0011tab
M\t/\t/tmp/m2/
M\tF\t/tmp/m2/f
M\tF\t/tmp/m2/pair-a
M\tF\t/tmp/m2/xattr-me
M\tF\t/tmp/m2/chmod-me
-\tF\t/tmp/m2/opaque/old
M\tF\t/tmp/m2/same
M\tF\t/tmp/m2/link-src\t(+1)
R\tF\t/tmp/m2/mv-file\t/tmp/m2/moved
+\t/\t/tmp/m2/opaque
+\t@\t/tmp/m2/sym
";

    fn set(paths: &[&str]) -> BTreeSet<PathBuf> {
        paths.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn captured_diff() {
        let got = parse(SAMPLE.as_bytes(), &[PathBuf::from("/tmp/m2")]).unwrap();
        assert_eq!(
            got,
            set(&[
                "d",
                "d d",
                "opaque",
                "xattr-me",
                "opaque/new",
                "new\ttab",
                "f",
                "pair-a",
                "chmod-me",
                "opaque/old",
                "same",
                "link-src",
                "mv-file",
                "moved",
                "sym",
            ])
        );
    }

    #[test]
    fn several_mountpoints() {
        let out = b"M\tF\t/mnt/a b/x\n+\tF\t/mnt/a b/sub/y\n";
        let got = parse(
            out,
            &[PathBuf::from("/mnt/a b"), PathBuf::from("/mnt/a b/sub/")],
        )
        .unwrap();
        assert_eq!(got, set(&["x", "sub/y", "y"]));
    }

    #[test]
    fn surprises() {
        let mp = [PathBuf::from("/m")];
        for (out, what) in [
            (&b"M\tF\t/elsewhere/x\n"[..], "outside"),
            (b"M\tF\t/m/x\\0q\n", "escape"),
            (b"R\tF\t/m/x\n", "change line"),
            (b"Q\tF\t/m/x\n", "change line"),
            (b"M\tFF\t/m/x\n", "file type"),
            (b"M\tF\t/m/x\t(+)\n", "change line"),
            (b"M\tF\t/m/x\t/m/y\n", "change line"),
            (b"M\tF\t/m/../x\n", "plainly"),
            (b"M /m/x\n", "change line"),
        ] {
            let e = parse(out, &mp).unwrap_err();
            assert!(e.what.contains(what), "{out:?}: {e}");
        }
        assert_eq!(parse(b"", &mp).unwrap(), BTreeSet::new());
    }

    #[test]
    fn escapes_and_mounts() {
        assert_eq!(unescape(b"a\\0040b\\0134\\0377").unwrap(), b"a b\\\xff");
        assert_eq!(unescape(b"\\0400"), None);
        assert_eq!(unescape(b"\\004"), None);
        let mounts = MountInfo::parse_all(
            "80 25 0:40 / /tmp/m\\0402 rw - zfs tank/s/2 rw,xattr
81 25 0:40 / /other ro - zfs tank/s/2 ro
82 25 0:41 / /no rw - zfs tank/s/22 rw
83 1 8:1 / / rw - ext4 /dev/sda1 rw
",
        )
        .unwrap();
        assert_eq!(
            mount_targets(&mounts, "tank/s/2"),
            vec![PathBuf::from("/tmp/m 2"), PathBuf::from("/other")]
        );
    }
}
