//! Layer apply/diff round trips and hostile layers, on real mounts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use integration::fixtures::temp_dir;
use snapshotter::layer::{
    self, apply, apply_to_snapshot, diff_snapshot, diff_snapshot_by_tree_compare, DiffStats,
};
use snapshotter::testsuite::assert_same_tree;
use snapshotter::{ErrorKind, Key, Labels, MountGuard, Name, Snapshotter};

/// Diffs `key` the fastest way the backend allows and, unless the backend
/// keeps an overlayfs upper directory (whose layers legitimately differ:
/// opaque markers instead of whiteouts), checks that comparing the whole
/// trees writes the very same bytes.
fn diff_checked(
    sn: &dyn Snapshotter,
    key: &Key,
    scratch: &std::path::Path,
    out: &mut Vec<u8>,
) -> snapshotter::Result<DiffStats> {
    let st = diff_snapshot(sn, key, &scratch.join("fast"), &mut *out)?;
    let has_parent = sn.stat(key)?.parent.is_some();
    assert_eq!(
        st.from_changed_paths,
        has_parent && sn.capabilities().lists_changes,
        "{key}: the backend's changed paths were (not) used against its capability"
    );
    if sn.upper_dir(key)?.is_none() {
        let mut slow = Vec::new();
        diff_snapshot_by_tree_compare(sn, key, &scratch.join("slow"), &mut slow)?;
        assert!(
            slow == *out,
            "{key}: the diff from the backend's changed paths differs from the tree comparison"
        );
    }
    Ok(st)
}

/// Builds layer tars with raw (unchecked) names, as a hostile producer could.
pub struct LayerBuilder {
    b: tar::Builder<Vec<u8>>,
    pending_xattrs: Vec<(String, Vec<u8>)>,
}

fn set_raw(field: &mut [u8], value: &[u8]) {
    assert!(
        value.len() < field.len(),
        "raw name too long for the header field"
    );
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            b: tar::Builder::new(Vec::new()),
            pending_xattrs: vec![],
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h
    }

    fn push(
        &mut self,
        mut h: tar::Header,
        name: &str,
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        if !self.pending_xattrs.is_empty() {
            let mut rec = Vec::new();
            for (k, v) in self.pending_xattrs.drain(..) {
                let key = format!("SCHILY.xattr.{k}");
                let body = key.len() + v.len() + 3;
                let mut len = body + 1;
                while len != body + len.to_string().len() {
                    len = body + len.to_string().len();
                }
                rec.extend(format!("{len} {key}=").into_bytes());
                rec.extend(&v);
                rec.push(b'\n');
            }
            let mut ph = tar::Header::new_ustar();
            ph.set_entry_type(tar::EntryType::XHeader);
            ph.set_size(rec.len() as u64);
            ph.set_path("PaxHeaders/x").unwrap();
            ph.set_cksum();
            self.b.append(&ph, rec.as_slice()).unwrap();
        }
        h.set_size(data.len() as u64);
        if name.len() < 100 && link.is_none_or(|l| l.len() < 100) {
            set_raw(&mut h.as_old_mut().name, name.as_bytes());
            if let Some(l) = link {
                set_raw(&mut h.as_old_mut().linkname, l.as_bytes());
            }
            h.set_cksum();
            self.b.append(&h, data).unwrap();
        } else if let Some(l) = link {
            self.b.append_link(&mut h, name, l).unwrap();
        } else {
            self.b.append_data(&mut h, name, data).unwrap();
        }
        self
    }

    pub fn xattr(&mut self, k: &str, v: &[u8]) -> &mut Self {
        self.pending_xattrs.push((k.into(), v.into()));
        self
    }
    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.push(
            Self::header(tar::EntryType::Directory, mode, 0, 0),
            name,
            None,
            b"",
        )
    }
    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.push(
            Self::header(tar::EntryType::Regular, mode, 0, 0),
            name,
            None,
            data,
        )
    }
    pub fn owned_file(
        &mut self,
        name: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        self.push(
            Self::header(tar::EntryType::Regular, mode, uid, gid),
            name,
            None,
            data,
        )
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.push(
            Self::header(tar::EntryType::Symlink, 0o777, 0, 0),
            name,
            Some(target),
            b"",
        )
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.push(
            Self::header(tar::EntryType::Link, 0o644, 0, 0),
            name,
            Some(target),
            b"",
        )
    }
    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, name, None, b"")
    }
    pub fn fifo(&mut self, name: &str) -> &mut Self {
        self.push(
            Self::header(tar::EntryType::Fifo, 0o600, 0, 0),
            name,
            None,
            b"",
        )
    }
    pub fn tar(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn k(s: &str) -> Key {
    Key::new(s).unwrap()
}
fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn long_name() -> String {
    format!("deep/{}/file-with-a-long-name", "d".repeat(120))
}

/// Layer 1: every entry type, ownership, modes, xattrs, long names.
fn layer1() -> Vec<u8> {
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .owned_file("etc/shadow", b"root:*:\n", 0o640, 0, 42)
        .dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755)
        .hardlink("bin/tool-alias", "bin/tool")
        .symlink("bin/sh", "tool")
        .symlink("abs-link", "/etc/hosts")
        .dir("dev", 0o755)
        .chardev("dev/null", 1, 3)
        .fifo("dev/pipe")
        .xattr("user.thinbox", b"layer one")
        .file("etc/tagged", b"has an xattr", 0o600)
        .dir("opaque", 0o750)
        .file("opaque/old-a", b"a", 0o644)
        .file("opaque/old-b", b"b", 0o644)
        .dir("replace-me", 0o755)
        .file("replace-me/inner", b"inner", 0o644)
        .dir("recreated", 0o755)
        .file("recreated/old", b"old", 0o644)
        .dir("deep", 0o755)
        .dir(&format!("deep/{}", "d".repeat(120)), 0o700)
        .file(&long_name(), b"long", 0o644);
    gzip(&b.tar())
}

/// Layer 2: whiteouts, an opaque directory, replacements and new links.
fn layer2() -> Vec<u8> {
    let mut b = LayerBuilder::new();
    b.file("etc/.wh.shadow", b"", 0o644)
        .file("etc/hosts", b"10.0.0.1 thinbox\n", 0o600)
        .dir("opaque", 0o700)
        .file("opaque/.wh..wh..opq", b"", 0o644)
        .file("opaque/new", b"new", 0o644)
        .file("replace-me", b"now a file", 0o644)
        .file(".wh.recreated", b"", 0o644)
        .dir("recreated", 0o711)
        .file("recreated/fresh", b"fresh", 0o644)
        .hardlink("etc/hosts-link", "etc/hosts")
        .owned_file("bin/owned", b"x", 0o755, 1000, 1000);
    zstd(&b.tar())
}

/// Applies layer 1 and 2 to new snapshots, checks the result, then diffs
/// each snapshot against its parent, applies the diffs to fresh snapshots
/// and checks the trees are equal.
pub fn round_trip(sn: &dyn Snapshotter) {
    let dir = temp_dir();
    let scratch = dir.path().join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let l = Labels::new();

    let s1 = apply_to_snapshot(sn, &k("l1-a"), None, &l, &scratch, layer1().as_slice())
        .expect("apply layer 1");
    assert!(s1.entries >= 20, "{s1:?}");
    sn.commit(&n("l1"), &k("l1-a"), &l).unwrap();
    let s2 = apply_to_snapshot(
        sn,
        &k("l2-a"),
        Some(&n("l1")),
        &l,
        &scratch,
        layer2().as_slice(),
    )
    .expect("apply layer 2");
    assert_eq!(s2.whiteouts, 3);

    // What layer 2 must have done, seen through the snapshot.
    let m = sn.mounts(&k("l2-a")).unwrap();
    let g = MountGuard::new(&m, &scratch).unwrap();
    let r = &scratch;
    assert!(!r.join("etc/shadow").exists(), "whiteout ignored");
    assert_eq!(
        fs::read(r.join("etc/hosts")).unwrap(),
        b"10.0.0.1 thinbox\n"
    );
    let mut opaque: Vec<_> = fs::read_dir(r.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    opaque.sort();
    assert_eq!(
        opaque,
        vec![std::ffi::OsString::from("new")],
        "opaque dir kept lower entries"
    );
    assert!(fs::symlink_metadata(r.join("replace-me"))
        .unwrap()
        .is_file());
    assert_eq!(
        fs::metadata(r.join("etc/hosts")).unwrap().ino(),
        fs::metadata(r.join("etc/hosts-link")).unwrap().ino()
    );
    let tool = fs::metadata(r.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(
        tool.ino(),
        fs::metadata(r.join("bin/tool-alias")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(r.join("abs-link")).unwrap(),
        Path::new("/etc/hosts")
    );
    let null = fs::symlink_metadata(r.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert!(fs::symlink_metadata(r.join("dev/pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        xattr::get(r.join("etc/tagged"), "user.thinbox")
            .unwrap()
            .as_deref(),
        Some(&b"layer one"[..])
    );
    let owned = fs::metadata(r.join("bin/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
    assert_eq!(fs::read(r.join(long_name())).unwrap(), b"long");
    assert_eq!(
        fs::metadata(r.join("etc/hosts")).unwrap().mtime(),
        1_600_000_000
    );
    g.unmount().unwrap();
    sn.commit(&n("l2"), &k("l2-a"), &l).unwrap();

    // Diff each layer and apply the diffs to fresh snapshots.
    let mut d1 = Vec::new();
    diff_checked(sn, &k("l1"), &dir.path().join("d1"), &mut d1).expect("diff l1");
    let mut d2 = Vec::new();
    let st = diff_checked(sn, &k("l2"), &dir.path().join("d2"), &mut d2).expect("diff l2");
    assert!(
        st.whiteouts >= 3,
        "expected whiteouts for shadow and the opaque dir's entries: {st:?}"
    );
    apply_to_snapshot(sn, &k("r1-a"), None, &l, &scratch, d1.as_slice()).expect("apply diff 1");
    sn.commit(&n("r1"), &k("r1-a"), &l).unwrap();
    apply_to_snapshot(sn, &k("r2-a"), Some(&n("r1")), &l, &scratch, d2.as_slice())
        .expect("apply diff 2");
    sn.commit(&n("r2"), &k("r2-a"), &l).unwrap();

    for (orig, copy) in [("l1", "r1"), ("l2", "r2")] {
        let (a, b) = (
            dir.path().join(format!("view-{orig}")),
            dir.path().join(format!("view-{copy}")),
        );
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let ma = sn
            .view(&k(&format!("v-{orig}")), Some(&n(orig)), &l)
            .unwrap();
        let mb = sn
            .view(&k(&format!("v-{copy}")), Some(&n(copy)), &l)
            .unwrap();
        let ga = MountGuard::new(&ma, &a).unwrap();
        let gb = MountGuard::new(&mb, &b).unwrap();
        assert_same_tree(&a, &b);
        assert_eq!(
            fs::metadata(b.join("bin/tool")).unwrap().ino(),
            fs::metadata(b.join("bin/tool-alias")).unwrap().ino(),
            "hard link lost in the round trip"
        );
        gb.unmount().unwrap();
        ga.unmount().unwrap();
    }

    // A diff of an unchanged child is empty.
    sn.prepare(&k("same"), Some(&n("l2")), &l).unwrap();
    let mut d = Vec::new();
    let st = diff_checked(sn, &k("same"), &dir.path().join("d3"), &mut d).unwrap();
    assert_eq!(st.entries, 0, "unchanged snapshot produced entries");
}

/// Outside the root: a directory with a sentinel file that no layer may touch.
struct Sandbox {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = temp_dir();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("sentinel"), b"untouched").unwrap();
        Sandbox {
            _dir: dir,
            root,
            outside,
        }
    }

    fn assert_outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("sentinel")],
            "something was created outside the root"
        );
        assert_eq!(
            fs::read(self.outside.join("sentinel")).unwrap(),
            b"untouched"
        );
        let md = fs::metadata(self.outside.join("sentinel")).unwrap();
        assert_eq!(md.nlink(), 1, "the sentinel was hard-linked into the root");
        assert_eq!(md.mode() & 0o7777, 0o644);
    }
}

/// Entries whose names or hard-link targets leave the root are refused;
/// symlinks planted to escape are resolved inside the root (as if it were
/// `/`, like containerd and Docker), so what they point at is written
/// there. Either way nothing outside changes.
pub fn hostile_layers() {
    type Build = fn(&mut LayerBuilder, &str);
    let refused: &[(&str, &str, Build)] = &[
        ("dot-dot path", "../outside/evil", |b, _| {
            b.file("../outside/evil", b"x", 0o644);
        }),
        ("dot-dot inside path", "a/../../outside/evil", |b, _| {
            b.file("a/../../outside/evil", b"x", 0o644);
        }),
        ("absolute path", "/abs", |b, out| {
            b.file(&format!("{out}/evil"), b"x", 0o644);
        }),
        ("hard link outside by dot-dot", "hl", |b, _| {
            b.hardlink("hl", "../outside/sentinel");
        }),
        ("hard link to absolute path", "hl", |b, out| {
            b.hardlink("hl", &format!("{out}/sentinel"));
        }),
        (
            "whiteout with dot-dot",
            "../outside/.wh.sentinel",
            |b, _| {
                b.file("../outside/.wh.sentinel", b"", 0o644);
            },
        ),
        ("symlink loop", "l/evil", |b, _| {
            b.symlink("l", "m")
                .symlink("m", "l")
                .file("l/evil", b"x", 0o644);
        }),
    ];
    for (what, entry, build) in refused {
        let sb = Sandbox::new();
        let mut b = LayerBuilder::new();
        build(&mut b, sb.outside.to_str().unwrap());
        match apply(&sb.root, b.tar().as_slice()) {
            Err(e) if e.kind() == ErrorKind::UnsafeLayerEntry => {
                let shown = if entry.starts_with('/') {
                    "evil"
                } else {
                    entry
                };
                assert!(
                    e.to_string().contains(shown),
                    "{what}: error does not name the entry: {e}"
                );
            }
            other => panic!("{what}: expected an unsafe-entry error, got {other:?}"),
        }
        sb.assert_outside_untouched();
    }

    // (what, build, where it lands inside the root or None, what it holds)
    type Confined = (&'static str, Build, Option<&'static str>, &'static [u8]);
    let confined: &[Confined] = &[
        (
            "relative symlink escape",
            |b, _| {
                b.symlink("link", "../outside")
                    .file("link/evil", b"x", 0o644);
            },
            Some("outside/evil"),
            b"x",
        ),
        (
            "absolute symlink escape",
            |b, out| {
                b.symlink("abs", out).file("abs/evil", b"x", 0o644);
            },
            Some("OUT/evil"),
            b"x",
        ),
        (
            "symlink escape to overwrite",
            |b, _| {
                b.symlink("link", "../outside")
                    .file("link/sentinel", b"pwned", 0o644);
            },
            Some("outside/sentinel"),
            b"pwned",
        ),
        (
            "deep dot-dot symlink",
            |b, _| {
                b.dir("a", 0o755).symlink("a/up", "../../../../..").file(
                    "a/up/outside/evil",
                    b"x",
                    0o644,
                );
            },
            Some("outside/evil"),
            b"x",
        ),
        (
            "whiteout through escaping symlink",
            |b, _| {
                b.symlink("l", "../outside")
                    .file("l/.wh.sentinel", b"", 0o644);
            },
            None,
            b"",
        ),
        (
            "opaque marker through escaping symlink",
            |b, _| {
                b.symlink("l", "../outside")
                    .file("l/.wh..wh..opq", b"", 0o644);
            },
            None,
            b"",
        ),
        (
            "directory through escaping symlink",
            |b, _| {
                b.symlink("l", "../outside").dir("l/sub", 0o755);
            },
            Some("outside/sub"),
            b"",
        ),
    ];
    for (what, build, lands, holds) in confined {
        let sb = Sandbox::new();
        let out = sb
            .outside
            .to_str()
            .unwrap()
            .trim_start_matches('/')
            .to_owned();
        let mut b = LayerBuilder::new();
        build(&mut b, sb.outside.to_str().unwrap());
        apply(&sb.root, b.tar().as_slice())
            .unwrap_or_else(|e| panic!("{what}: resolving inside the root failed: {e}"));
        sb.assert_outside_untouched();
        if let Some(lands) = lands {
            let at = sb.root.join(lands.replace("OUT", &out));
            let md = fs::symlink_metadata(&at)
                .unwrap_or_else(|e| panic!("{what}: nothing at {}: {e}", at.display()));
            if md.is_file() {
                assert_eq!(fs::read(&at).unwrap(), *holds, "{what}");
            } else {
                assert!(
                    md.is_dir(),
                    "{what}: {} is neither file nor directory",
                    at.display()
                );
            }
        }
    }

    // A hard link through an escaping symlink finds no target inside.
    let sb = Sandbox::new();
    let mut b = LayerBuilder::new();
    b.symlink("l", "../outside").hardlink("hl", "l/sentinel");
    let e = apply(&sb.root, b.tar().as_slice()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidLayer, "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    sb.assert_outside_untouched();

    // A directory entry replaces a symlink parent: chmod stays inside.
    let sb = Sandbox::new();
    let mut b = LayerBuilder::new();
    b.symlink("l", "../outside")
        .dir("l", 0o777)
        .file("l/sentinel", b"x", 0o777);
    apply(&sb.root, b.tar().as_slice()).expect("a directory replacing a symlink is safe");
    assert!(fs::symlink_metadata(sb.root.join("l")).unwrap().is_dir());
    sb.assert_outside_untouched();

    // Replacing a symlink that points outside with a file writes inside.
    let sb = Sandbox::new();
    let mut b = LayerBuilder::new();
    b.symlink("f", "../outside/sentinel")
        .file("f", b"inside", 0o644);
    apply(&sb.root, b.tar().as_slice()).expect("replacing a symlink is safe");
    assert!(fs::symlink_metadata(sb.root.join("f")).unwrap().is_file());
    assert_eq!(fs::read(sb.root.join("f")).unwrap(), b"inside");
    sb.assert_outside_untouched();

    // Symlinks that stay inside the root are followed for parents.
    let sb = Sandbox::new();
    let mut b = LayerBuilder::new();
    b.dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .symlink("lib", "usr/lib")
        .file("lib/libc.so", b"elf", 0o755);
    apply(&sb.root, b.tar().as_slice()).expect("inside symlinks are fine");
    assert_eq!(fs::read(sb.root.join("usr/lib/libc.so")).unwrap(), b"elf");
    sb.assert_outside_untouched();

    // Garbage is an invalid layer, not a panic.
    let sb = Sandbox::new();
    let e = apply(
        &sb.root,
        gzip(b"this is not a tar archive at all, just text").as_slice(),
    )
    .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidLayer), "{e}");
    let _ = layer::WHITEOUT_PREFIX;
}

/// A hostile layer applied through the snapshotter leaves no snapshot.
pub fn failed_apply_leaves_nothing(sn: &dyn Snapshotter) {
    let dir = temp_dir();
    let scratch = dir.path().join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let mut b = LayerBuilder::new();
    b.file("ok", b"fine", 0o644)
        .symlink("l", "m")
        .symlink("m", "l")
        .file("l/evil", b"x", 0o644);
    let e = apply_to_snapshot(
        sn,
        &k("bad"),
        None,
        &Labels::new(),
        &scratch,
        b.tar().as_slice(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsafeLayerEntry, "{e}");
    assert_eq!(sn.stat(&k("bad")).unwrap_err().kind(), ErrorKind::NotFound);
    let mut count = 0;
    sn.walk(&[], &mut |_| {
        count += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(count, 0);
}

/// Real-world content written by GNU tar (not by this crate): the host's
/// zoneinfo database plus a hard link, a relative symlink chain and an
/// xattr, as layer 1 (tar+gzip); a second layer with an OCI whiteout, an
/// opaque directory and changes (plain GNU tar, zstd-compressed here).
/// Both are applied, checked byte for byte against the source trees,
/// diffed, re-applied from the diffs and checked again.
pub fn real_tree_round_trip(sn: &dyn Snapshotter) {
    use integration::fixtures::run;
    let dir = temp_dir();
    let d = dir.path();
    // The source trees live in a snapshot of the backend under test: the
    // temporary directory may be a tmpfs without user xattrs (Linux < 6.6).
    let work = d.join("work");
    fs::create_dir_all(&work).unwrap();
    let wm = sn
        .prepare(&k("real-tree-work"), None, &Labels::new())
        .unwrap();
    let work_guard = MountGuard::new(&wm, &work).unwrap();
    let (src, src2, exp) = (work.join("src"), work.join("src2"), work.join("expected"));
    for p in [&src, &src2, &exp] {
        fs::create_dir_all(p.join("usr/share")).unwrap();
    }
    fs::create_dir_all(src.join("usr/lib")).unwrap();
    fs::create_dir_all(src.join("etc")).unwrap();
    run(
        "cp",
        &[
            "-a",
            "/usr/share/zoneinfo",
            src.join("usr/share/").to_str().unwrap(),
        ],
    );
    run(
        "cp",
        &[
            "-a",
            "/usr/lib/os-release",
            src.join("usr/lib/").to_str().unwrap(),
        ],
    );
    std::os::unix::fs::symlink("../usr/lib/os-release", src.join("etc/os-release")).unwrap();
    fs::hard_link(
        src.join("usr/share/zoneinfo/UTC"),
        src.join("usr/share/zoneinfo/UTC-hard"),
    )
    .unwrap();
    xattr::set(src.join("usr/lib/os-release"), "user.origin", b"debian").unwrap();
    let l1 = d.join("l1.tar.gz");
    run(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=user.*",
            "--numeric-owner",
            "-C",
            src.to_str().unwrap(),
            "-czf",
            l1.to_str().unwrap(),
            ".",
        ],
    );

    // Layer 2 and the tree it should produce.
    let z2 = src2.join("usr/share/zoneinfo");
    fs::create_dir_all(z2.join("America")).unwrap();
    fs::write(z2.join(".wh.Europe"), b"").unwrap();
    fs::write(z2.join("America/.wh..wh..opq"), b"").unwrap();
    fs::write(z2.join("America/only-this"), b"the only entry left").unwrap();
    fs::write(z2.join("UTC"), b"not a zone file any more").unwrap();
    fs::create_dir_all(src2.join("opt/new")).unwrap();
    fs::write(src2.join("opt/new/file"), b"new in layer 2").unwrap();
    for p in [src.join("usr/share/zoneinfo/America"), z2.join("America")] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let l2_plain = d.join("l2.tar");
    run(
        "tar",
        &[
            "--numeric-owner",
            "-C",
            src2.to_str().unwrap(),
            "-cf",
            l2_plain.to_str().unwrap(),
            ".",
        ],
    );
    let l2 = zstd(&fs::read(&l2_plain).unwrap());
    run(
        "cp",
        &["-a", &format!("{}/.", src.display()), exp.to_str().unwrap()],
    );
    let ze = exp.join("usr/share/zoneinfo");
    fs::remove_dir_all(ze.join("Europe")).unwrap();
    fs::remove_dir_all(ze.join("America")).unwrap();
    fs::create_dir(ze.join("America")).unwrap();
    fs::set_permissions(ze.join("America"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(ze.join("America/only-this"), b"the only entry left").unwrap();
    // Layer 2 replaces UTC (breaking its hard link with UTC-hard).
    fs::remove_file(ze.join("UTC")).unwrap();
    fs::write(ze.join("UTC"), b"not a zone file any more").unwrap();
    fs::create_dir_all(exp.join("opt/new")).unwrap();
    fs::write(exp.join("opt/new/file"), b"new in layer 2").unwrap();
    // Directory entries in layer 2 carry src2's modes.
    for rel in ["opt", "opt/new"] {
        let m = fs::metadata(src2.join(rel)).unwrap().permissions();
        fs::set_permissions(exp.join(rel), m).unwrap();
    }
    for f in [
        ze.join("America/only-this"),
        ze.join("UTC"),
        exp.join("opt/new/file"),
    ] {
        let rel = f.strip_prefix(&exp).unwrap();
        fs::set_permissions(&f, fs::metadata(src2.join(rel)).unwrap().permissions()).unwrap();
    }

    let scratch = d.join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let l = Labels::new();
    let check = |key: &str, want: &Path| {
        let m = sn.mounts(&k(key)).unwrap();
        let g = MountGuard::new(&m, &scratch).unwrap();
        assert_same_tree(want, &scratch);
        g.unmount().unwrap();
    };
    apply_to_snapshot(
        sn,
        &k("z1-a"),
        None,
        &l,
        &scratch,
        fs::File::open(&l1).unwrap(),
    )
    .expect("apply GNU tar layer 1");
    check("z1-a", &src);
    {
        let m = sn.mounts(&k("z1-a")).unwrap();
        let g = MountGuard::new(&m, &scratch).unwrap();
        let z = scratch.join("usr/share/zoneinfo");
        assert_eq!(
            fs::metadata(z.join("UTC")).unwrap().ino(),
            fs::metadata(z.join("UTC-hard")).unwrap().ino()
        );
        g.unmount().unwrap();
    }
    sn.commit(&n("z1"), &k("z1-a"), &l).unwrap();
    apply_to_snapshot(sn, &k("z2-a"), Some(&n("z1")), &l, &scratch, l2.as_slice())
        .expect("apply GNU tar layer 2");
    check("z2-a", &exp);
    sn.commit(&n("z2"), &k("z2-a"), &l).unwrap();

    let (mut d1, mut d2) = (Vec::new(), Vec::new());
    diff_checked(sn, &k("z1"), &d.join("d1"), &mut d1).unwrap();
    diff_checked(sn, &k("z2"), &d.join("d2"), &mut d2).unwrap();
    apply_to_snapshot(sn, &k("y1-a"), None, &l, &scratch, d1.as_slice()).expect("apply diff 1");
    check("y1-a", &src);
    sn.commit(&n("y1"), &k("y1-a"), &l).unwrap();
    apply_to_snapshot(sn, &k("y2-a"), Some(&n("y1")), &l, &scratch, d2.as_slice())
        .expect("apply diff 2");
    check("y2-a", &exp);
    work_guard.unmount().unwrap();
    sn.remove(&k("real-tree-work")).unwrap();
}
