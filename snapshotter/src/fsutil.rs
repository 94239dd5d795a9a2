//! Tree helpers shared by the file-level backends and the differ: a copy
//! that preserves everything a layer can carry (ownership, modes, times,
//! xattrs, hard links, symlinks, device nodes), and usage by walking.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::error::{Error, Result};
use crate::types::{Bytes, Usage};

/// Sets owner, mode (not on symlinks), xattrs and times of `path` from `md`
/// and the xattrs of `src`.
fn copy_meta(src: &Path, dst: &Path, md: &fs::Metadata) -> Result<()> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        dst,
        Some(Uid::from_raw(md.uid())),
        Some(Gid::from_raw(md.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| Error::sys("chown", dst, e))?;
    if !md.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(|e| Error::io("chmod", dst, e))?;
    }
    copy_xattrs(src, dst)?;
    set_times(dst, md)
}

/// Copies extended attributes (without following symlinks); filesystems
/// without xattr support are skipped.
pub fn copy_xattrs(src: &Path, dst: &Path) -> Result<()> {
    let names = match xattr::list(src) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(Error::io("list xattrs", src, e)),
    };
    for name in names {
        if let Some(v) = xattr::get(src, &name).map_err(|e| Error::io("get xattr", src, e))? {
            xattr::set(dst, &name, &v).map_err(|e| Error::io("set xattr", dst, e))?;
        }
    }
    Ok(())
}

/// Sets atime and mtime of `path` (not following symlinks) from `md`.
pub fn set_times(path: &Path, md: &fs::Metadata) -> Result<()> {
    let at = TimeSpec::new(md.atime(), md.atime_nsec());
    let mt = TimeSpec::new(md.mtime(), md.mtime_nsec());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &at,
        &mt,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| Error::sys("set times", path, e))
}

/// Copies the contents of directory `src` into existing directory `dst`,
/// preserving metadata and hard links, then copies `src`'s own metadata onto
/// `dst`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut links: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
    copy_dir(src, dst, &mut links)?;
    let md = fs::symlink_metadata(src).map_err(|e| Error::io("stat", src, e))?;
    copy_meta(src, dst, &md)
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> Result<()> {
    for entry in fs::read_dir(src).map_err(|e| Error::io("read dir", src, e))? {
        let entry = entry.map_err(|e| Error::io("read dir", src, e))?;
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let md = fs::symlink_metadata(&s).map_err(|e| Error::io("stat", &s, e))?;
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                fs::hard_link(first, &d).map_err(|e| Error::io("link", &d, e))?;
                continue;
            }
            links.insert((md.dev(), md.ino()), d.clone());
        }
        if ft.is_dir() {
            fs::create_dir(&d).map_err(|e| Error::io("mkdir", &d, e))?;
            copy_dir(&s, &d, links)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&s).map_err(|e| Error::io("readlink", &s, e))?;
            std::os::unix::fs::symlink(&target, &d).map_err(|e| Error::io("symlink", &d, e))?;
        } else if ft.is_file() {
            fs::copy(&s, &d).map_err(|e| Error::io("copy", &d, e))?;
        } else {
            let kind = SFlag::from_bits_truncate(md.mode() & libc::S_IFMT);
            nix::sys::stat::mknod(
                &d,
                kind,
                Mode::from_bits_truncate(md.mode() & 0o7777),
                md.rdev(),
            )
            .map_err(|e| Error::sys("mknod", &d, e))?;
        }
        copy_meta(&s, &d, &md)?;
    }
    Ok(())
}

fn entry_size(md: &fs::Metadata) -> u64 {
    md.blocks().saturating_mul(512)
}

/// Space used by every inode under `root` (each hard-linked inode once),
/// `root` itself excluded.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    usage_against(root, None)
}

/// Space used by entries under `upper` that differ from the entry at the
/// same path under `lower` (type, size, mode, owner, mtime or inode
/// change time differ, or `lower` lacks the path): an estimate of what a
/// snapshot holds on its own when its parent's tree is `lower`.
pub fn usage_against(upper: &Path, lower: Option<&Path>) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    for entry in walkdir::WalkDir::new(upper).min_depth(1) {
        let entry = entry.map_err(|e| {
            let path = e.path().map(Path::to_path_buf).unwrap_or_default();
            Error::io("walk", path, e.into())
        })?;
        let md = entry
            .metadata()
            .map_err(|e| Error::io("stat", entry.path(), e.into()))?;
        if !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        if let Some(lower) = lower {
            let rel = entry.path().strip_prefix(upper).unwrap_or(entry.path());
            if let Ok(lmd) = fs::symlink_metadata(lower.join(rel)) {
                if same_meta(&md, &lmd) {
                    continue;
                }
            }
        }
        usage.inodes += 1;
        usage.size = usage.size.saturating_add(Bytes(entry_size(&md)));
    }
    Ok(usage)
}

/// Whether two entries look identical by their metadata.
pub fn same_meta(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.mode() == b.mode()
        && a.uid() == b.uid()
        && a.gid() == b.gid()
        && a.size() == b.size()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
        && a.rdev() == b.rdev()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_preserves_links_modes_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/f"), b"hello").unwrap();
        fs::set_permissions(src.join("d/f"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(src.join("d/f"), src.join("h")).unwrap();
        std::os::unix::fs::symlink("d/f", src.join("s")).unwrap();
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(fs::read(dst.join("d/f")).unwrap(), b"hello");
        let a = fs::metadata(dst.join("d/f")).unwrap();
        let b = fs::metadata(dst.join("h")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.mode() & 0o777, 0o640);
        assert_eq!(fs::read_link(dst.join("s")).unwrap(), Path::new("d/f"));
        assert!(same_meta(&fs::metadata(src.join("d/f")).unwrap(), &a));
        // Nothing differs, so nothing is counted against the source.
        assert_eq!(usage_against(&dst, Some(&src)).unwrap().inodes, 0);
        fs::write(dst.join("new"), vec![1u8; 10000]).unwrap();
        let u = usage_against(&dst, Some(&src)).unwrap();
        assert_eq!(u.inodes, 1);
        assert!(u.size.0 >= 10000);
    }
}
