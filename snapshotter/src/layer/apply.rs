//! Applying a layer, with every path confined to the root.
//!
//! Entry names are normalised (`./` and empty components dropped) and
//! refused when absolute or containing `..`. Parent directories are
//! resolved as if the root were `/`, as containerd and Docker do: openat2(2)
//! with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` from a descriptor of the
//! root, so an absolute symlink from a lower layer (Debian's `var/run ->
//! /run`, usrmerge's `bin -> usr/bin`, `/etc/alternatives` chains) leads to
//! the same place inside the snapshot, and `..` stops at the root: nothing
//! a layer plants can reach outside. Where openat2 is missing (Linux before
//! 5.6, RHEL 8) the same walk is done in user space, one `O_NOFOLLOW`
//! component at a time ([`Root::resolve`]); missing directories behind a
//! symlink are made where it leads. The final component is never followed:
//! whatever is there is removed (unlinkat) and the new entry is created with
//! `O_EXCL | O_NOFOLLOW`, mkdirat, symlinkat, linkat (without
//! `AT_SYMLINK_FOLLOW`) or mknodat relative to the confined parent
//! descriptor. Hard-link targets are resolved the same way.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmodat, fstatat, mknodat, FchmodatFlags, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use crate::core::Snapshotter;
use crate::error::{Error, ErrorKind, Result};
use crate::mount::MountGuard;
use crate::types::{Key, Labels, Name};

use super::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// What an apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries read from the archive.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Whiteouts and opaque markers processed.
    pub whiteouts: u64,
}

/// Wraps `reader` in the decompressor its first bytes call for.
pub fn decompress<'a>(reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::new(reader);
    let head = buf
        .fill_buf()
        .map_err(|e| Error::new(ErrorKind::InvalidLayer, "apply").source(e))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buf))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(buf)
                .map_err(|e| Error::new(ErrorKind::InvalidLayer, "apply").source(e))?,
        )
    } else {
        Box::new(buf)
    })
}

fn unsafe_entry(entry: &str, detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::UnsafeLayerEntry, "apply")
        .key(entry)
        .detail(detail)
}

fn bad_layer(entry: &str, detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidLayer, "apply")
        .key(entry)
        .detail(detail)
}

/// Splits an archive path into safe components.
fn components(entry: &str, raw: &[u8]) -> Result<Vec<PathBuf>> {
    if raw.first() == Some(&b'/') {
        return Err(unsafe_entry(entry, "absolute path refused"));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_entry(entry, "`..` in path refused")),
            c => out.push(PathBuf::from(OsStr::from_bytes(c))),
        }
    }
    Ok(out)
}

/// How many symlinks one path may pass through (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// A confined root: paths are resolved as if it were `/`.
struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// Whether openat2(2) is there (Linux 5.6+); cleared on ENOSYS, after
    /// which [`Root::resolve`] walks the path itself.
    openat2: Cell<bool>,
}

fn how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

fn join(comps: &[PathBuf]) -> PathBuf {
    if comps.is_empty() {
        PathBuf::from(".")
    } else {
        comps.iter().collect()
    }
}

/// Opens directory `name` in `dir` without following a symlink there.
fn open_dir_nofollow(dir: &OwnedFd, name: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

impl Root {
    fn open(path: &Path) -> Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::sys("open root", path, e))?;
        Ok(Root {
            fd,
            path: path.to_owned(),
            openat2: Cell::new(true),
        })
    }

    fn dup(&self) -> Result<OwnedFd> {
        self.fd
            .try_clone()
            .map_err(|e| Error::io("open root", &self.path, e))
    }

    /// Opens directory `comps`, resolving symlinks and `..` as if the root
    /// were `/` (an absolute symlink from a lower layer, such as Debian's
    /// `var/run -> /run`, stays inside); `Ok(None)` if it is absent.
    fn open_dir(&self, entry: &str, comps: &[PathBuf]) -> Result<Option<OwnedFd>> {
        let rel = join(comps);
        if self.openat2.get() {
            match openat2(self.fd.as_fd(), &rel, how()) {
                Ok(fd) => return Ok(Some(fd)),
                Err(Errno::ENOSYS) => self.openat2.set(false),
                Err(e) => return self.open_error(entry, &rel, e).map(|()| None),
            }
        }
        let real = self.resolve(entry, comps)?;
        let mut cur = self.dup()?;
        for (i, c) in real.iter().enumerate() {
            cur = match open_dir_nofollow(&cur, c) {
                Ok(fd) => fd,
                Err(e) => return self.open_error(entry, &join(&real[..=i]), e).map(|()| None),
            };
        }
        Ok(Some(cur))
    }

    /// `Ok(())` for a missing directory, else the error `e` means.
    fn open_error(&self, entry: &str, rel: &Path, e: Errno) -> Result<()> {
        match e {
            Errno::ENOENT => Ok(()),
            Errno::ELOOP => Err(unsafe_entry(
                entry,
                format!(
                    "{} passes through more than {MAX_SYMLINKS} symlinks",
                    rel.display()
                ),
            )),
            Errno::EXDEV => Err(unsafe_entry(
                entry,
                format!("{} passes through a magic link", rel.display()),
            )),
            Errno::ENOTDIR => Err(bad_layer(
                entry,
                format!("{} is not a directory", rel.display()),
            )),
            e => Err(Error::sys("apply", self.path.join(rel), e).key(entry)),
        }
    }

    /// Where `comps` really is in the root: symlinks of existing components
    /// followed as if the root were `/`, `..` stopping at the root, and the
    /// components after the first missing one kept (lexically normalised).
    /// The walk openat2's `RESOLVE_IN_ROOT` does in the kernel, for making
    /// missing directories behind a symlink and for kernels without it.
    fn resolve(&self, entry: &str, comps: &[PathBuf]) -> Result<Vec<PathBuf>> {
        let mut todo: VecDeque<PathBuf> = comps.iter().cloned().collect();
        let mut real: Vec<PathBuf> = Vec::new();
        // The directory `real` names while it exists.
        let mut cur = Some(self.dup()?);
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_os_str().as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    real.pop();
                    cur = self.reopen(&real)?;
                    continue;
                }
                _ => {}
            }
            let Some(dir) = cur.as_ref() else {
                real.push(c);
                continue;
            };
            match lstat_at(dir, &c)? {
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return self
                            .open_error(entry, &join(comps), Errno::ELOOP)
                            .map(|()| real);
                    }
                    let target = nix::fcntl::readlinkat(dir.as_fd(), &c)
                        .map_err(|e| Error::sys("read link", self.path.join(join(&real)), e))?;
                    let target = target.as_bytes();
                    if target.first() == Some(&b'/') {
                        real.clear();
                    }
                    for t in target.split(|b| *b == b'/').rev() {
                        todo.push_front(PathBuf::from(OsStr::from_bytes(t)));
                    }
                    cur = self.reopen(&real)?;
                }
                Some(st) if is_dir(&st) => {
                    cur = Some(
                        open_dir_nofollow(dir, &c)
                            .map_err(|e| Error::sys("open", self.path.join(join(&real)), e))?,
                    );
                    real.push(c);
                }
                Some(_) if !todo.is_empty() => {
                    real.push(c);
                    return self
                        .open_error(entry, &join(&real), Errno::ENOTDIR)
                        .map(|()| real);
                }
                _ => {
                    cur = None;
                    real.push(c);
                }
            }
        }
        Ok(real)
    }

    /// The directory at real path `real` (no symlinks in it), if it exists.
    fn reopen(&self, real: &[PathBuf]) -> Result<Option<OwnedFd>> {
        let mut cur = self.dup()?;
        for c in real {
            cur = match open_dir_nofollow(&cur, c) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
                Err(e) => return Err(Error::sys("open", self.path.join(join(real)), e)),
            };
        }
        Ok(Some(cur))
    }

    /// Opens directory `comps`, creating missing components (mode 0755)
    /// where the path really leads, inside the root.
    fn make_dirs(&self, entry: &str, comps: &[PathBuf]) -> Result<OwnedFd> {
        if let Some(fd) = self.open_dir(entry, comps)? {
            return Ok(fd);
        }
        let real = self.resolve(entry, comps)?;
        let mut cur = self.dup()?;
        for (i, c) in real.iter().enumerate() {
            let here = || self.path.join(join(&real[..=i]));
            cur = match open_dir_nofollow(&cur, c) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    nix::sys::stat::mkdirat(cur.as_fd(), c, Mode::from_bits_truncate(0o755))
                        .map_err(|e| Error::sys("mkdir", here(), e).key(entry))?;
                    open_dir_nofollow(&cur, c)
                        .map_err(|e| Error::sys("open", here(), e).key(entry))?
                }
                Err(e) => {
                    self.open_error(entry, &join(&real[..=i]), e)?;
                    return Err(bad_layer(entry, "directory vanished"));
                }
            };
        }
        Ok(cur)
    }
}

fn lstat_at(dir: &OwnedFd, name: &Path) -> Result<Option<nix::sys::stat::FileStat>> {
    match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(Error::sys("stat", name, e)),
    }
}

fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Removes `name` in `dir` (recursively for directories), never following
/// symlinks.
fn remove_at(dir: &OwnedFd, name: &Path) -> Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let sub = nix::fcntl::openat(
            dir.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::sys("open", name, e))?;
        for child in list_at(&sub, name)? {
            remove_at(&sub, &child)?;
        }
        nix::unistd::unlinkat(dir.as_fd(), name, UnlinkatFlags::RemoveDir)
            .map_err(|e| Error::sys("rmdir", name, e))
    } else {
        nix::unistd::unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| Error::sys("unlink", name, e))
    }
}

/// The names in directory `dir`.
fn list_at(dir: &OwnedFd, what: &Path) -> Result<Vec<PathBuf>> {
    let dup = dir.try_clone().map_err(|e| Error::io("list", what, e))?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(|e| Error::sys("list", what, e))?;
    let mut out = Vec::new();
    for ent in d.iter() {
        let ent = ent.map_err(|e| Error::sys("list", what, e))?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(PathBuf::from(OsStr::from_bytes(n)));
        }
    }
    Ok(out)
}

fn proc_path(dir: &OwnedFd, name: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

struct Applier {
    root: Root,
    /// Paths this layer created, which opaque markers must not remove.
    created: HashSet<PathBuf>,
    /// Directory mtimes to set once their contents are in place.
    dir_times: Vec<(String, Vec<PathBuf>, TimeSpec)>,
    stats: ApplyStats,
}

/// Applies the layer read from `reader` (tar, tar+gzip or tar+zstd) to the
/// directory `root` (typically a mounted active snapshot).
pub fn apply(root: &Path, reader: impl Read) -> Result<ApplyStats> {
    let mut applier = Applier {
        root: Root::open(root)?,
        created: HashSet::new(),
        dir_times: Vec::new(),
        stats: ApplyStats::default(),
    };
    let mut archive = tar::Archive::new(decompress(reader)?);
    let entries = archive
        .entries()
        .map_err(|e| Error::new(ErrorKind::InvalidLayer, "apply").source(e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::new(ErrorKind::InvalidLayer, "apply").source(e))?;
        applier.entry(entry)?;
    }
    // Deepest first, so setting a child's time does not disturb its parent's.
    applier
        .dir_times
        .sort_by_key(|(_, c, _)| std::cmp::Reverse(c.len()));
    for (name, comps, mtime) in std::mem::take(&mut applier.dir_times) {
        if let Some(fd) = applier.root.open_dir(&name, &comps)? {
            let now = TimeSpec::UTIME_OMIT;
            nix::sys::stat::futimens(fd.as_fd(), &now, &mtime)
                .map_err(|e| Error::sys("set times", root.join(join(&comps)), e))?;
        }
    }
    Ok(applier.stats)
}

impl Applier {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        self.stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = components(&name, &raw)?;
        let Some((base, parent)) = comps.split_last() else {
            return Ok(()); // the root itself
        };
        let base_bytes = base.as_os_str().as_bytes();
        let header = entry.header().clone();
        let kind = header.entry_type();

        if base_bytes == OPAQUE_MARKER.as_bytes() {
            self.stats.whiteouts += 1;
            let Some(dir) = self.root.open_dir(&name, parent)? else {
                return Ok(());
            };
            let parent_path = join(parent);
            for child in list_at(&dir, &parent_path)? {
                if !self.created.contains(&parent_path.join(&child)) {
                    remove_at(&dir, &child)?;
                }
            }
            return Ok(());
        }
        if let Some(hidden) = base_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            self.stats.whiteouts += 1;
            if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
                return Err(unsafe_entry(&name, "malformed whiteout"));
            }
            if let Some(dir) = self.root.open_dir(&name, parent)? {
                remove_at(&dir, Path::new(OsStr::from_bytes(hidden)))?;
            }
            return Ok(());
        }

        let dir = self.root.make_dirs(&name, parent)?;
        let existing = lstat_at(&dir, base)?;
        let keep_dir = kind.is_dir() && existing.as_ref().is_some_and(is_dir);
        if existing.is_some() && !keep_dir {
            remove_at(&dir, base)?;
        }
        let full = self.root.path.join(join(&comps));
        let sys = |op: &'static str, e: Errno| Error::sys(op, &full, e).key(&name);
        let mode = Mode::from_bits_truncate(
            header.mode().map_err(|e| bad_layer(&name, e.to_string()))? & 0o7777,
        );

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = nix::fcntl::openat(
                    dir.as_fd(),
                    base,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| sys("create", e))?;
                let mut file = File::from(fd);
                let n = std::io::copy(&mut entry, &mut file)
                    .map_err(|e| Error::io("write", &full, e).key(&name))?;
                self.stats.bytes += n;
            }
            tar::EntryType::Directory => {
                if !keep_dir {
                    nix::sys::stat::mkdirat(dir.as_fd(), base, Mode::from_bits_truncate(0o700))
                        .map_err(|e| sys("mkdir", e))?;
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad_layer(&name, "symlink without a target"))?
                    .into_owned();
                nix::unistd::symlinkat(OsStr::from_bytes(&target), dir.as_fd(), base)
                    .map_err(|e| sys("symlink", e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad_layer(&name, "hard link without a target"))?
                    .into_owned();
                let tcomps = components(&name, &target)?;
                let Some((tbase, tparent)) = tcomps.split_last() else {
                    return Err(unsafe_entry(&name, "hard link to the root refused"));
                };
                let tdir = self
                    .root
                    .open_dir(&name, tparent)?
                    .ok_or_else(|| bad_layer(&name, "hard link target does not exist"))?;
                if lstat_at(&tdir, tbase)?.as_ref().is_some_and(is_dir) {
                    return Err(bad_layer(&name, "hard link to a directory"));
                }
                nix::unistd::linkat(tdir.as_fd(), tbase, dir.as_fd(), base, AtFlags::empty())
                    .map_err(|e| match e {
                        Errno::ENOENT => bad_layer(&name, "hard link target does not exist"),
                        e => sys("link", e),
                    })?;
                self.created.insert(join(&comps));
                return Ok(()); // a link shares its target's metadata
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    k => {
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let f = if k == tar::EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (f, nix::sys::stat::makedev(major.into(), minor.into()))
                    }
                };
                mknodat(
                    dir.as_fd(),
                    base,
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|e| sys("mknod", e))?;
            }
            other => {
                return Err(bad_layer(
                    &name,
                    format!("unsupported entry type {other:?}"),
                ))
            }
        }
        self.created.insert(join(&comps));

        // Ownership first (it clears set-id bits), then mode, xattrs, times.
        let uid = header.uid().map_err(|e| bad_layer(&name, e.to_string()))?;
        let gid = header.gid().map_err(|e| bad_layer(&name, e.to_string()))?;
        nix::unistd::fchownat(
            dir.as_fd(),
            base,
            Some(Uid::from_raw(
                u32::try_from(uid).map_err(|_| bad_layer(&name, "uid out of range"))?,
            )),
            Some(Gid::from_raw(
                u32::try_from(gid).map_err(|_| bad_layer(&name, "gid out of range"))?,
            )),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| sys("chown", e))?;
        if kind != tar::EntryType::Symlink {
            fchmodat(dir.as_fd(), base, mode, FchmodatFlags::NoFollowSymlink)
                .map_err(|e| sys("chmod", e))?;
        }
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| bad_layer(&name, e.to_string()))?
        {
            for ext in exts {
                let ext = ext.map_err(|e| bad_layer(&name, e.to_string()))?;
                if let Some(attr) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattr::set(
                        proc_path(&dir, base),
                        OsStr::from_bytes(attr),
                        ext.value_bytes(),
                    )
                    .map_err(|e| Error::io("set xattr", &full, e).key(&name))?;
                }
            }
        }
        let mtime = TimeSpec::new(i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(0), 0);
        if kind.is_dir() {
            self.dir_times.push((name.clone(), comps.clone(), mtime));
        } else {
            nix::sys::stat::utimensat(
                dir.as_fd(),
                base,
                &mtime,
                &mtime,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| sys("set times", e))?;
        }
        Ok(())
    }
}

/// Prepares active snapshot `key` on `parent`, mounts it under `scratch`,
/// applies the layer and unmounts. On any failure the snapshot is removed
/// again, so a failed apply leaves nothing behind. The caller commits.
pub fn apply_to_snapshot(
    sn: &dyn Snapshotter,
    key: &Key,
    parent: Option<&Name>,
    labels: &Labels,
    scratch: &Path,
    reader: impl Read,
) -> Result<ApplyStats> {
    let mounts = sn.prepare(key, parent, labels)?;
    let result = (|| {
        let guard = MountGuard::new(&mounts, scratch)?;
        let stats = apply(scratch, reader)?;
        guard.unmount()?;
        Ok(stats)
    })();
    if result.is_err() {
        if let Err(e) = sn.remove(key) {
            tracing::warn!("cannot remove {key} after a failed apply: {e}");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes() {
        assert_eq!(
            components("a", b"./a//b/./c").unwrap(),
            vec![PathBuf::from("a"), "b".into(), "c".into()]
        );
        assert_eq!(
            components("x", b"/etc/passwd").unwrap_err().kind(),
            ErrorKind::UnsafeLayerEntry
        );
        assert_eq!(
            components("x", b"a/../../b").unwrap_err().kind(),
            ErrorKind::UnsafeLayerEntry
        );
        assert!(components("x", b"./").unwrap().is_empty());
    }

    fn p(s: &str) -> Vec<PathBuf> {
        s.split('/').map(PathBuf::from).collect()
    }

    /// A root with usrmerge and Debian symlinks, escapes and a loop.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::fs::write(root.join("f"), b"").unwrap();
        for (link, target) in [
            ("bin", "usr/bin"),
            ("var/run", "/run"),
            ("up", "../../.."),
            ("abs", "/usr"),
            ("loop1", "loop2"),
            ("loop2", "loop1"),
        ] {
            std::os::unix::fs::symlink(target, root.join(link)).unwrap();
        }
        (dir, root)
    }

    fn inode(fd: &OwnedFd) -> u64 {
        nix::sys::stat::fstat(fd).unwrap().st_ino
    }

    #[test]
    fn paths_resolve_as_if_the_root_were_slash() {
        let (_dir, root) = tree();
        let r = Root::open(&root).unwrap();
        let cases = [
            ("bin/x", "usr/bin/x"),
            ("var/run/app.pid", "run/app.pid"),
            ("up/etc/passwd", "etc/passwd"),
            ("abs/bin", "usr/bin"),
            ("usr/../../../etc", "etc"),
        ];
        for (path, real) in cases {
            assert_eq!(r.resolve(path, &p(path)).unwrap(), p(real), "{path}");
        }
        let e = r.resolve("loop1/x", &p("loop1/x")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsafeLayerEntry, "{e}");
        assert!(e.to_string().contains("40 symlinks"), "{e}");
        let e = r.resolve("f/x", &p("f/x")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidLayer, "{e}");
    }

    /// openat2 and the user-space walk agree, and both make missing
    /// directories where a dangling in-root symlink leads.
    #[test]
    fn openat2_and_the_walk_agree() {
        for openat2 in [true, false] {
            let (_dir, root) = tree();
            let r = Root::open(&root).unwrap();
            r.openat2.set(openat2);
            let usr_bin = r.open_dir("x", &p("usr/bin")).unwrap().unwrap();
            for path in ["bin", "abs/bin", "up/usr/bin", "bin/../bin"] {
                let fd = r.open_dir(path, &p(path)).unwrap().unwrap();
                assert_eq!(inode(&fd), inode(&usr_bin), "{path} (openat2 {openat2})");
            }
            assert!(r.open_dir("var/run", &p("var/run")).unwrap().is_none());
            let e = r.open_dir("loop1", &p("loop1")).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnsafeLayerEntry, "{e}");

            let made = r.make_dirs("var/run/sub", &p("var/run/sub")).unwrap();
            assert!(root.join("run/sub").is_dir());
            assert!(root.join("var/run").is_symlink());
            let again = r
                .open_dir("var/run/sub", &p("var/run/sub"))
                .unwrap()
                .unwrap();
            assert_eq!(inode(&made), inode(&again));
            r.make_dirs("up/x", &p("up/x")).unwrap();
            assert!(root.join("x").is_dir(), "`..` stops at the root");
        }
    }
}
