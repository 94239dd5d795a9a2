//! Diffing a tree against its parent's tree into an OCI layer.
//!
//! Both trees are walked side by side (sorted, so output is deterministic).
//! An entry is emitted when the lower tree lacks it or it differs in type,
//! mode, owner, size, mtime, device number, symlink target, extended
//! attributes or content (content is compared when everything else
//! matches); a directory is also emitted when anything below it is, so the
//! layer names every parent before its children. A path the lower tree has
//! and the upper lacks becomes a `.wh.NAME` whiteout. Hard links within the
//! emitted set become tar hard links. Extended attributes travel as PAX
//! `SCHILY.xattr.*` records.
//!
//! When the backend keeps the snapshot's own changes in an overlayfs upper
//! directory ([`Snapshotter::upper_dir`]), [`diff_snapshot`] lists that
//! directory instead of comparing trees: 0:0 character devices become
//! whiteouts, `trusted.overlay.opaque=y` directories get an opaque marker,
//! and entries are read through the snapshot's mount.
//!
//! When the backend can list what changed more cheaply
//! ([`Snapshotter::changed_paths`], [`crate::Capabilities::lists_changes`]:
//! btrfs from `btrfs send --no-data -p`, zfs from `zfs diff`), the tree
//! comparison only visits those paths, their ancestors and everything
//! below a directory the lower tree lacks; everything else is known to be
//! equal, so the layer is byte-for-byte what the full comparison writes
//! ([`diff_snapshot_by_tree_compare`] forces the full comparison).

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::core::Snapshotter;
use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::same_meta;
use crate::mount::MountGuard;
use crate::types::{Key, Kind, Labels, Name};

use super::WHITEOUT_PREFIX;

/// What a diff wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries written (whiteouts included).
    pub entries: u64,
    /// Whiteouts written.
    pub whiteouts: u64,
    /// The tree comparison visited only the paths the backend listed as
    /// changed ([`Snapshotter::changed_paths`]).
    pub from_changed_paths: bool,
}

enum Item {
    Whiteout(PathBuf),
    Opaque(PathBuf),
    Entry(PathBuf),
}

fn names(dir: &Path) -> Result<BTreeSet<std::ffi::OsString>> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io("diff", dir, e))? {
        out.insert(e.map_err(|e| Error::io("diff", dir, e))?.file_name());
    }
    Ok(out)
}

fn lstat(p: &Path) -> Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("diff", p, e)),
    }
}

fn xattrs(p: &Path) -> Result<Vec<(std::ffi::OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    let list = match xattr::list(p) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(Error::io("list xattrs", p, e)),
    };
    for name in list {
        // overlayfs bookkeeping never belongs in a layer.
        if name.as_bytes().starts_with(b"trusted.overlay.") {
            continue;
        }
        if let Some(v) = xattr::get(p, &name).map_err(|e| Error::io("get xattr", p, e))? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = File::open(a).map_err(|e| Error::io("diff", a, e))?;
    let mut fb = File::open(b).map_err(|e| Error::io("diff", b, e))?;
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(|e| Error::io("diff", a, e))?;
        let m = read_full(&mut fb, &mut bb).map_err(|e| Error::io("diff", b, e))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

struct Walker<'a> {
    upper: &'a Path,
    lower: Option<&'a Path>,
    /// When set, only these paths (changed ones and their ancestors) can
    /// differ; the rest is skipped.
    only: Option<&'a BTreeSet<PathBuf>>,
    items: Vec<Item>,
}

/// The changed paths plus all their ancestors (the root excluded).
fn with_ancestors(paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut set = BTreeSet::new();
    for p in paths {
        let mut cur = p.as_path();
        while !cur.as_os_str().is_empty() && set.insert(cur.to_owned()) {
            cur = cur.parent().unwrap_or(Path::new(""));
        }
    }
    set
}

impl Walker<'_> {
    fn wanted(&self, rel: &Path) -> bool {
        self.only.is_none_or(|s| s.contains(rel))
    }

    fn changed(
        &self,
        up: &Path,
        lo: &Path,
        umd: &fs::Metadata,
        lmd: &fs::Metadata,
    ) -> Result<bool> {
        if umd.file_type() != lmd.file_type() || !same_meta(umd, lmd) {
            return Ok(true);
        }
        if xattrs(up)? != xattrs(lo)? {
            return Ok(true);
        }
        let ft = umd.file_type();
        if ft.is_symlink() {
            let a = fs::read_link(up).map_err(|e| Error::io("diff", up, e))?;
            let b = fs::read_link(lo).map_err(|e| Error::io("diff", lo, e))?;
            return Ok(a != b);
        }
        if ft.is_file() {
            return Ok(!same_content(up, lo)?);
        }
        Ok(false)
    }

    /// Walks directory `rel`; `lower_dir` says whether the lower tree has a
    /// real directory there. Returns whether anything was emitted.
    fn walk(&mut self, rel: &Path, lower_dir: bool) -> Result<bool> {
        let up_dir = self.upper.join(rel);
        let start = self.items.len();
        let upper_names = names(&up_dir)?;
        let lower_root = self.lower.filter(|_| lower_dir);
        if let Some(lower) = lower_root {
            for name in names(&lower.join(rel))? {
                if !upper_names.contains(&name) && self.wanted(&rel.join(&name)) {
                    self.items.push(Item::Whiteout(rel.join(&name)));
                }
            }
        }
        for name in upper_names {
            let r = rel.join(&name);
            // Below a directory the lower tree lacks, everything is new and
            // emitted: a list of changed paths need not name it all.
            if lower_root.is_some() && !self.wanted(&r) {
                continue;
            }
            let up = self.upper.join(&r);
            let umd = lstat(&up)?.ok_or_else(|| {
                Error::new(ErrorKind::Io, "diff")
                    .path(&up)
                    .detail("vanished during diff")
            })?;
            let lo = lower_root.map(|l| l.join(&r));
            let lmd = match &lo {
                Some(lo) => lstat(lo)?,
                None => None,
            };
            if umd.is_dir() {
                let lower_is_dir = lmd.as_ref().is_some_and(|m| m.is_dir());
                let meta_changed = match (&lmd, &lo) {
                    (Some(l), Some(lo)) if l.is_dir() => {
                        umd.mode() != l.mode()
                            || umd.uid() != l.uid()
                            || umd.gid() != l.gid()
                            || xattrs(&up)? != xattrs(lo)?
                    }
                    _ => true,
                };
                let idx = self.items.len();
                self.items.push(Item::Entry(r.clone()));
                let below = self.walk(&r, lower_is_dir)?;
                if !meta_changed && !below {
                    self.items.truncate(idx);
                }
            } else {
                let changed = match (&lmd, &lo) {
                    (Some(l), Some(lo)) => self.changed(&up, lo, &umd, l)?,
                    _ => true,
                };
                if changed {
                    self.items.push(Item::Entry(r));
                }
            }
        }
        Ok(self.items.len() > start)
    }
}

fn tar_err(path: &Path, e: std::io::Error) -> Error {
    Error::io("write layer", path, e)
}

fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    // "LEN KEY=VALUE\n", where LEN counts its own digits.
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// Writes the differences of tree `upper` against tree `lower` (None: an
/// empty tree) as an uncompressed OCI layer tar to `out`.
pub fn diff(lower: Option<&Path>, upper: &Path, out: impl Write) -> Result<DiffStats> {
    diff_only(lower, upper, None, out)
}

/// [`diff`], visiting only `only` (changed paths and their ancestors) when
/// given.
fn diff_only(
    lower: Option<&Path>,
    upper: &Path,
    only: Option<&BTreeSet<PathBuf>>,
    out: impl Write,
) -> Result<DiffStats> {
    let mut w = Walker {
        upper,
        lower,
        only,
        items: Vec::new(),
    };
    w.walk(Path::new(""), lower.is_some())?;
    write_layer(&w.items, upper, out)
}

/// Collects the changes recorded in an overlayfs upper directory.
fn walk_upper(upper: &Path, rel: &Path, items: &mut Vec<Item>) -> Result<()> {
    for name in names(&upper.join(rel))? {
        let r = rel.join(&name);
        let p = upper.join(&r);
        let md = fs::symlink_metadata(&p).map_err(|e| Error::io("diff", &p, e))?;
        if md.file_type().is_char_device() && md.rdev() == 0 {
            items.push(Item::Whiteout(r));
        } else if md.is_dir() {
            items.push(Item::Entry(r.clone()));
            let opaque = xattr::get(&p, "trusted.overlay.opaque")
                .map_err(|e| Error::io("get xattr", &p, e))?;
            if opaque.as_deref() == Some(b"y") {
                items.push(Item::Opaque(r.clone()));
            }
            walk_upper(upper, &r, items)?;
        } else {
            items.push(Item::Entry(r));
        }
    }
    Ok(())
}

/// Writes `items` as a layer, reading entries from tree `source`.
fn write_layer(items: &[Item], source: &Path, out: impl Write) -> Result<DiffStats> {
    let upper = source;
    let mut stats = DiffStats::default();
    let mut builder = tar::Builder::new(out);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for item in items {
        stats.entries += 1;
        match item {
            Item::Opaque(dir) => {
                stats.whiteouts += 1;
                let path = dir.join(super::OPAQUE_MARKER);
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(0);
                h.set_mode(0o644);
                builder
                    .append_data(&mut h, &path, std::io::empty())
                    .map_err(|e| tar_err(&path, e))?;
            }
            Item::Whiteout(rel) => {
                stats.whiteouts += 1;
                let mut name = std::ffi::OsString::from(WHITEOUT_PREFIX);
                name.push(rel.file_name().unwrap_or_default());
                let path = rel.with_file_name(name);
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(0);
                h.set_mode(0o644);
                builder
                    .append_data(&mut h, &path, std::io::empty())
                    .map_err(|e| tar_err(&path, e))?;
            }
            Item::Entry(rel) => {
                let full = upper.join(rel);
                let md = fs::symlink_metadata(&full).map_err(|e| Error::io("diff", &full, e))?;
                let ft = md.file_type();
                let mut h = tar::Header::new_gnu();
                h.set_mode(md.mode() & 0o7777);
                h.set_uid(md.uid().into());
                h.set_gid(md.gid().into());
                h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
                h.set_size(0);
                if !ft.is_dir() && md.nlink() > 1 {
                    if let Some(first) = links.get(&(md.dev(), md.ino())) {
                        h.set_entry_type(tar::EntryType::Link);
                        builder
                            .append_link(&mut h, rel, first)
                            .map_err(|e| tar_err(rel, e))?;
                        continue;
                    }
                    links.insert((md.dev(), md.ino()), rel.clone());
                }
                let attrs = xattrs(&full)?;
                if !attrs.is_empty() {
                    let mut data = Vec::new();
                    for (k, v) in &attrs {
                        let mut key = b"SCHILY.xattr.".to_vec();
                        key.extend_from_slice(k.as_bytes());
                        data.extend(pax_record(&key, v));
                    }
                    let mut ph = tar::Header::new_ustar();
                    ph.set_entry_type(tar::EntryType::XHeader);
                    ph.set_size(data.len() as u64);
                    ph.set_mode(0o644);
                    ph.set_path("PaxHeaders/xattrs")
                        .map_err(|e| tar_err(rel, e))?;
                    ph.set_cksum();
                    builder
                        .append(&ph, data.as_slice())
                        .map_err(|e| tar_err(rel, e))?;
                }
                if ft.is_dir() {
                    h.set_entry_type(tar::EntryType::Directory);
                    builder
                        .append_data(&mut h, rel, std::io::empty())
                        .map_err(|e| tar_err(rel, e))?;
                } else if ft.is_file() {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(md.len());
                    let f = File::open(&full).map_err(|e| Error::io("diff", &full, e))?;
                    builder
                        .append_data(&mut h, rel, f)
                        .map_err(|e| tar_err(rel, e))?;
                } else if ft.is_symlink() {
                    h.set_entry_type(tar::EntryType::Symlink);
                    let target = fs::read_link(&full).map_err(|e| Error::io("diff", &full, e))?;
                    builder
                        .append_link(&mut h, rel, target)
                        .map_err(|e| tar_err(rel, e))?;
                } else {
                    let t = if ft.is_char_device() {
                        tar::EntryType::Char
                    } else if ft.is_block_device() {
                        tar::EntryType::Block
                    } else if ft.is_fifo() {
                        tar::EntryType::Fifo
                    } else {
                        // Sockets cannot be carried by a layer.
                        stats.entries -= 1;
                        continue;
                    };
                    h.set_entry_type(t);
                    let rdev = md.rdev();
                    h.set_device_major(libc::major(rdev))
                        .map_err(|e| tar_err(rel, e))?;
                    h.set_device_minor(libc::minor(rdev))
                        .map_err(|e| tar_err(rel, e))?;
                    builder
                        .append_data(&mut h, rel, std::io::empty())
                        .map_err(|e| tar_err(rel, e))?;
                }
            }
        }
    }
    builder.finish().map_err(|e| tar_err(upper, e))?;
    Ok(stats)
}

/// Diffs snapshot `key` (active or committed) against its parent: mounts
/// it (and, unless the backend keeps an overlayfs-style upper directory
/// with the changes, its parent) read-only under `scratch` through
/// temporary views, removed again, and writes the layer to `out`. Uses the
/// backend's upper directory or list of changed paths where it has them.
pub fn diff_snapshot(
    sn: &dyn Snapshotter,
    key: &Key,
    scratch: &Path,
    out: impl Write,
) -> Result<DiffStats> {
    diff_snapshot_with(sn, key, scratch, out, true)
}

/// [`diff_snapshot`] by comparing the whole trees, ignoring what the
/// backend could tell (the reference the faster paths are tested against).
pub fn diff_snapshot_by_tree_compare(
    sn: &dyn Snapshotter,
    key: &Key,
    scratch: &Path,
    out: impl Write,
) -> Result<DiffStats> {
    diff_snapshot_with(sn, key, scratch, out, false)
}

/// The key prefix of the temporary views a diff makes:
/// `thinbox-diff-PID-{upper,lower}-KEY`.
pub const DIFF_VIEW_PREFIX: &str = "thinbox-diff-";

/// Removes the views a diff left when its process died (SIGKILL during
/// `run --commit`, say): `thinbox-diff-PID-…` views whose PID `alive` says
/// is gone. A live process's views are its diff in progress. They would
/// otherwise hold their parent layers, so `image rm` was refused for ever.
/// Returns the keys removed.
pub fn remove_stale_diff_views(
    sn: &dyn Snapshotter,
    alive: impl Fn(u32) -> bool,
) -> Result<Vec<String>> {
    let mut stale = Vec::new();
    sn.walk(&[], &mut |i| {
        let pid = i
            .name
            .strip_prefix(DIFF_VIEW_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let (Kind::View, Some(pid)) = (i.kind, pid) {
            if !alive(pid) {
                stale.push(i.name.clone());
            }
        }
        Ok(())
    })?;
    for k in &stale {
        match sn.remove(&Key::new(k.clone())?) {
            Ok(()) => tracing::info!("removed view {k} a killed diff left"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(stale)
}

fn diff_snapshot_with(
    sn: &dyn Snapshotter,
    key: &Key,
    scratch: &Path,
    out: impl Write,
    hints: bool,
) -> Result<DiffStats> {
    let info = sn.stat(key)?;
    let upper_changes = if hints { sn.upper_dir(key)? } else { None };
    let tag = format!("{DIFF_VIEW_PREFIX}{}", std::process::id());
    let mut views = Vec::new();
    let result = (|| {
        let upper_dir = scratch.join("upper");
        fs::create_dir_all(&upper_dir).map_err(|e| Error::io("diff", &upper_dir, e))?;
        let upper_mounts = match info.kind {
            Kind::Committed => {
                let v = Key::new(format!("{tag}-upper-{key}"))?;
                let m = sn.view(&v, Some(&Name::new(key.as_str())?), &Labels::new())?;
                views.push(v);
                m
            }
            _ => sn.mounts(key)?,
        };
        let _upper = MountGuard::new(&upper_mounts, &upper_dir)?;
        if let Some(changes) = upper_changes {
            let mut items = Vec::new();
            walk_upper(&changes, Path::new(""), &mut items)?;
            return write_layer(&items, &upper_dir, out);
        }
        // Asked while the snapshot is mounted (zfs diff needs that).
        let only = match (hints, &info.parent) {
            (true, Some(_)) => sn.changed_paths(key)?.map(|p| with_ancestors(&p)),
            _ => None,
        };
        let _lower;
        let lower_dir = scratch.join("lower");
        let lower = match &info.parent {
            Some(parent) => {
                fs::create_dir_all(&lower_dir).map_err(|e| Error::io("diff", &lower_dir, e))?;
                let v = Key::new(format!("{tag}-lower-{key}"))?;
                let m = sn.view(&v, Some(&Name::new(parent.as_str())?), &Labels::new())?;
                views.push(v);
                _lower = MountGuard::new(&m, &lower_dir)?;
                Some(lower_dir.as_path())
            }
            None => None,
        };
        let listed = only.is_some();
        let mut stats = diff_only(lower, &upper_dir, only.as_ref(), out)?;
        stats.from_changed_paths = listed;
        Ok(stats)
    })();
    for v in views {
        if let Err(e) = sn.remove(&v) {
            tracing::warn!("cannot remove temporary view {v}: {e}");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_are_kept_and_the_root_is_not() {
        let set = with_ancestors(&[PathBuf::from("a/b/c"), PathBuf::from("d"), PathBuf::new()]);
        let got: Vec<&str> = set.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(got, vec!["a", "a/b", "a/b/c", "d"]);
    }

    /// Restricting the walk to the changed paths writes the same bytes.
    #[test]
    fn restricted_walk_writes_the_same_layer() {
        let dir = tempfile::tempdir().unwrap();
        let (lo, up) = (dir.path().join("lo"), dir.path().join("up"));
        for root in [&lo, &up] {
            fs::create_dir_all(root.join("a/b")).unwrap();
            fs::create_dir_all(root.join("same/deep")).unwrap();
            fs::write(root.join("same/deep/f"), "same").unwrap();
            fs::write(root.join("a/b/f"), "old").unwrap();
            fs::write(root.join("gone"), "x").unwrap();
        }
        fs::write(up.join("a/b/f"), "new").unwrap();
        fs::remove_file(up.join("gone")).unwrap();
        fs::write(up.join("added"), "+").unwrap();
        // Equal timestamps for what is meant to be unchanged.
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for root in [&lo, &up] {
            for p in ["same/deep/f", "same/deep", "same", "a/b", "a", ""] {
                File::open(root.join(p)).unwrap().set_modified(t).unwrap();
            }
        }
        let mut full = Vec::new();
        diff(Some(&lo), &up, &mut full).unwrap();
        let only = with_ancestors(&[
            PathBuf::from("a/b/f"),
            PathBuf::from("gone"),
            PathBuf::from("added"),
        ]);
        let mut fast = Vec::new();
        let st = diff_only(Some(&lo), &up, Some(&only), &mut fast).unwrap();
        assert_eq!(st.whiteouts, 1);
        assert_eq!(full, fast);
        // A new directory's contents need not be listed.
        fs::create_dir_all(up.join("new/deep")).unwrap();
        fs::write(up.join("new/deep/f"), "n").unwrap();
        let mut full = Vec::new();
        diff(Some(&lo), &up, &mut full).unwrap();
        let only = with_ancestors(&[
            PathBuf::from("a/b/f"),
            PathBuf::from("gone"),
            PathBuf::from("added"),
            PathBuf::from("new"),
        ]);
        let mut fast = Vec::new();
        let st = diff_only(Some(&lo), &up, Some(&only), &mut fast).unwrap();
        assert_eq!(st.entries, 8, "{st:?}");
        assert_eq!(full, fast);
        // A list missing a change would lose it: the list is trusted.
        let mut partial = Vec::new();
        let only = with_ancestors(&[PathBuf::from("added")]);
        diff_only(Some(&lo), &up, Some(&only), &mut partial).unwrap();
        assert_ne!(full, partial);
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record(b"SCHILY.xattr.user.a", b"1");
        let s = String::from_utf8(r.clone()).unwrap();
        let (len, _) = s.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), r.len());
        let r = pax_record(&[b'k'; 90], b"v");
        let s = String::from_utf8(r.clone()).unwrap();
        assert_eq!(
            s.split_once(' ').unwrap().0.parse::<usize>().unwrap(),
            r.len()
        );
    }
}
