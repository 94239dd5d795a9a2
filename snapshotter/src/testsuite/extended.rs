//! thinbox's own cases beyond containerd's: errors of every verb, exact
//! usage, the max-size label and size bounds, and diffs from the backend's
//! change list.

use super::*;

/// Bad input gets distinct error kinds (not in containerd's suite).
pub(super) fn check_errors(sn: &dyn Snapshotter, _work: &Path) {
    let l = Labels::new();
    assert_eq!(
        sn.stat(&k("missing")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        sn.remove(&k("missing")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        sn.mounts(&k("missing")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        sn.prepare(&k("x"), Some(&n("missing")), &l)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    sn.prepare(&k("active"), None, &l).expect("prepare");
    assert_eq!(
        sn.prepare(&k("child"), Some(&n("active")), &l)
            .unwrap_err()
            .kind(),
        ErrorKind::ParentNotCommitted
    );
    sn.view(&k("view"), None, &l).expect("view");
    assert_eq!(
        sn.commit(&n("c"), &k("view"), &l).unwrap_err().kind(),
        ErrorKind::CommitOfView
    );
    assert_eq!(
        sn.commit(&n("view"), &k("active"), &l).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    sn.commit(&n("c"), &k("active"), &l).expect("commit");
    assert_eq!(
        sn.commit(&n("d"), &k("c"), &l).unwrap_err().kind(),
        ErrorKind::NotActive
    );
    sn.prepare(&k("child"), Some(&n("c")), &l).expect("prepare");
    assert_eq!(
        sn.remove(&k("c")).unwrap_err().kind(),
        ErrorKind::HasChildren
    );
    let mut count = 0;
    sn.walk(&[], &mut |_| {
        count += 1;
        Ok(())
    })
    .expect("walk");
    assert_eq!(count, 3, "failed operations must leave nothing behind");
    sn.cleanup().expect("cleanup");
}

/// `usage` counts what a snapshot adds, not its parent's content.
pub(super) fn check_usage(sn: &dyn Snapshotter, work: &Path) {
    let caps = sn.capabilities();
    // Incompressible data, so filesystems that compress count it fully.
    let noise = |len: usize, seed: u64| -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let (base, g) = prepare_mount(sn, work, "base", None);
    fs::write(base.join("big"), noise(1 << 20, 1)).expect("write");
    g.unmount().expect("unmount");
    let u = sn.usage(&k(p(&base))).expect("usage");
    assert!(u.size.0 >= 1 << 20, "{u:?}");
    assert!(!caps.counts_inodes || u.inodes >= 1, "{u:?}");
    let parent = n(p(&work.join("parent")));
    sn.commit(&parent, &k(p(&base)), &gc_labels())
        .expect("commit");
    let (child, g) = prepare_mount(sn, work, "child", Some(&parent));
    fs::write(child.join("small"), noise(64 << 10, 2)).expect("write");
    g.unmount().expect("unmount");
    let u = sn.usage(&k(p(&child))).expect("usage");
    assert!(
        u.size.0 >= 64 << 10,
        "child usage {u:?} misses its own file"
    );
    assert!(u.size.0 < 1 << 20, "child usage {u:?} counts the parent");
    assert!(!caps.counts_inodes || u.inodes >= 1, "{u:?}");
}

/// Total size of the filesystem mounted at `path` (what `df` shows).
pub(super) fn fs_size(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks() * st.fragment_size()
}

/// The [`MAX_SIZE_LABEL`] label: with [`Capabilities::max_size_label`] it
/// grows a new snapshot's filesystem (and children inherit the size), a
/// size below the parent's and a view with the label are refused naming
/// the value, leaving nothing; without it the label is refused.
pub(super) fn check_max_size_label(sn: &dyn Snapshotter, work: &Path) {
    let caps = sn.capabilities();
    let (base, g) = prepare_mount(sn, work, "base", None);
    fs::write(base.join("foo"), "foo\n").expect("write");
    g.unmount().expect("unmount");
    let parent = n(p(&work.join("parent")));
    sn.commit(&parent, &k(p(&base)), &gc_labels())
        .expect("commit");
    let count = || {
        let mut c = 0;
        sn.walk(&[], &mut |_| {
            c += 1;
            Ok(())
        })
        .expect("walk");
        c
    };
    let before = count();
    let refused = |key: &str, parent: Option<&Name>, value: &str, view: bool| {
        let l = labels(&[(MAX_SIZE_LABEL, value)]);
        let r = if view {
            sn.view(&k(key), parent, &l)
        } else {
            sn.prepare(&k(key), parent, &l)
        };
        let e = r.expect_err("the max-size label must be refused here");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        let msg = e.to_string();
        assert!(msg.contains(MAX_SIZE_LABEL), "{msg}");
        assert_eq!(
            sn.stat(&k(key)).unwrap_err().kind(),
            ErrorKind::NotFound,
            "a refused {key} left a snapshot"
        );
        msg
    };
    // A malformed value is refused everywhere, naming it.
    let msg = refused("bad", Some(&parent), "12 parsecs", false);
    assert!(msg.contains("\"12 parsecs\""), "{msg}");
    if !caps.max_size_label {
        if !caps.bounds_size {
            refused("big", Some(&parent), "1G", false);
            assert_eq!(count(), before);
        }
        return;
    }
    let plain_size = {
        let (_, g) = prepare_mount(sn, work, "plain", Some(&parent));
        let size = fs_size(g.target());
        g.unmount().expect("unmount");
        size
    };
    // Twice what the parent's filesystem offers, in MiB.
    let want = format!("{}M", (plain_size * 2).div_ceil(1 << 20));
    let big = work.join("big");
    let m = sn
        .prepare(
            &k(p(&big)),
            Some(&parent),
            &labels(&[(MAX_SIZE_LABEL, &want)]),
        )
        .expect("prepare with max-size");
    let g = mount(&m, &big);
    let grown = fs_size(&big);
    assert!(
        grown > plain_size * 3 / 2,
        "{MAX_SIZE_LABEL}={want}: filesystem is {grown} bytes, the parent's {plain_size}"
    );
    assert_eq!(fs::read_to_string(big.join("foo")).expect("read"), "foo\n");
    fs::write(big.join("bar"), "bar\n").expect("write");
    g.unmount().expect("unmount");
    let big_parent = n(p(&work.join("big-parent")));
    sn.commit(&big_parent, &k(p(&big)), &gc_labels())
        .expect("commit");
    let (child, g) = prepare_mount(sn, work, "child", Some(&big_parent));
    let inherited = fs_size(&child);
    assert!(
        inherited > plain_size * 3 / 2,
        "a child of a grown snapshot has {inherited} bytes, not its parent's size"
    );
    assert_eq!(
        fs::read_to_string(child.join("bar")).expect("read"),
        "bar\n"
    );
    g.unmount().expect("unmount");
    let before = count();
    // Smaller than the parent: refused naming the value, nothing left.
    let msg = refused("small", Some(&big_parent), "1M", false);
    assert!(msg.contains("\"1M\""), "{msg}");
    assert!(msg.contains("smaller than the parent"), "{msg}");
    // Views are never written, so never grown.
    refused("big-view", Some(&parent), &want, true);
    assert_eq!(count(), before);
}

/// [`Capabilities::bounds_size`] without growing devices (btrfs with
/// quotas, zfs): a snapshot prepared with [`MAX_SIZE_LABEL`]`=16M` takes
/// no more than 16 MiB (writing fails with EDQUOT or ENOSPC) while its
/// sibling without the label writes past that, and a view with the label
/// is refused. Backends without the capability refuse the label, saying
/// why, and make nothing. (dm-thin's bound is its device, which
/// `max_size_label` shows; this case is not for it.)
pub(super) fn check_size_bound(sn: &dyn Snapshotter, work: &Path) {
    let caps = sn.capabilities();
    assert!(
        !caps.max_size_label,
        "a backend that grows devices is bounded by them: see max_size_label"
    );
    if !caps.bounds_size {
        let e = sn
            .prepare(&k("sized"), None, &labels(&[(MAX_SIZE_LABEL, "16M")]))
            .expect_err("a backend that cannot bound sizes must refuse the label");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains(MAX_SIZE_LABEL), "{e}");
        assert_eq!(
            sn.stat(&k("sized")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        return;
    }
    const BOUND: u64 = 16 << 20;
    let (base, g) = prepare_mount(sn, work, "base", None);
    fs::write(base.join("foo"), "foo\n").expect("write");
    g.unmount().expect("unmount");
    let parent = n(p(&work.join("parent")));
    sn.commit(&parent, &k(p(&base)), &gc_labels())
        .expect("commit");
    let sized = labels(&[(MAX_SIZE_LABEL, "16M")]);
    let e = sn
        .view(&k("sized-view"), Some(&parent), &sized)
        .expect_err("a view with a size must be refused");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");

    // Writes 1 MiB at a time, synced, until `cap` bytes or an error. The
    // bytes are pseudo-random: ZFS 2.2 and later compress by default, and a
    // repeated byte would fill no quota.
    let fill = |dir: &Path, cap: u64| -> (u64, Option<std::io::Error>) {
        use std::io::Write;
        let mut f = fs::File::create(dir.join("fill")).expect("create");
        let mut chunk = vec![0_u8; 1 << 20];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut written = 0;
        while written < cap {
            for word in chunk.chunks_exact_mut(8) {
                // xorshift64: cheap, and incompressible enough for lz4.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
                return (written, Some(e));
            }
            written += chunk.len() as u64;
        }
        (written, None)
    };
    let bounded = work.join("bounded");
    let m = sn
        .prepare(&k(p(&bounded)), Some(&parent), &sized)
        .expect("prepare with a size");
    let g = mount(&m, &bounded);
    let (written, err) = fill(&bounded, 4 * BOUND);
    let err = err.unwrap_or_else(|| panic!("{written} bytes written past a 16 MiB bound"));
    assert!(
        matches!(err.raw_os_error(), Some(libc::EDQUOT | libc::ENOSPC)),
        "writing past the bound failed with {err}, not EDQUOT or ENOSPC"
    );
    assert!(
        (BOUND / 2..=BOUND).contains(&written),
        "{written} bytes fit under a 16 MiB bound"
    );
    assert_eq!(
        fs::read_to_string(bounded.join("foo")).expect("read"),
        "foo\n"
    );
    g.unmount().expect("unmount");

    let (free, g) = prepare_mount(sn, work, "free", Some(&parent));
    let (written, err) = fill(&free, 2 * BOUND);
    assert!(
        err.is_none(),
        "an unbounded sibling failed after {written} bytes: {err:?}"
    );
    g.unmount().expect("unmount");
    sn.remove(&k(p(&bounded))).expect("remove");
    sn.remove(&k(p(&free))).expect("remove");
}

/// The tar entries of a layer, one line each, to show how two differ.
pub(super) fn layer_entries(layer: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(layer);
    let mut out = Vec::new();
    for e in a.entries().expect("read layer") {
        let e = e.expect("read layer entry");
        let h = e.header();
        out.push(format!(
            "{:?} {:?} mode {:o} size {}",
            e.path_bytes(),
            h.entry_type(),
            h.mode().unwrap_or(0),
            h.size().unwrap_or(0)
        ));
    }
    out
}

/// Diffs a snapshot holding changes that are easy to miss (content
/// rewritten with the same size and mtime, chmod, chown, an xattr, deleted
/// files and trees, renamed files and directories, a hard-linked file
/// changed through one of its names, new hard links and symlinks, a file
/// replaced by a directory and back, a directory deleted and recreated,
/// names with spaces and tabs), active and then committed. With
/// [`Capabilities::lists_changes`] the backend must list changed paths
/// (without it, it must not), and whenever the backend keeps no overlayfs
/// upper directory, [`crate::layer::diff_snapshot`] must write exactly the
/// bytes of [`crate::layer::diff_snapshot_by_tree_compare`]. The layer,
/// applied on the parent, must rebuild the snapshot.
pub(super) fn check_diff_changed_paths(sn: &dyn Snapshotter, work: &Path) {
    use crate::layer::{apply_to_snapshot, diff_snapshot, diff_snapshot_by_tree_compare};
    let caps = sn.capabilities();
    let w = |root: &Path, path: &str, data: &str| {
        let f = root.join(path);
        fs::write(&f, data).unwrap_or_else(|e| panic!("write {}: {e}", f.display()));
    };
    let (base, g) = prepare_mount(sn, work, "dcp-base", None);
    for d in [
        "tree/sub",
        "mvdir/inner",
        "dir-to-file",
        "opaque",
        "keep/deep",
    ] {
        fs::create_dir_all(base.join(d)).expect("mkdir");
    }
    for (f, data) in [
        ("same-size", "aaaa"),
        ("chmod-me", "c"),
        ("chown-me", "o"),
        ("xattr-me", "x"),
        ("touch-me", "t"),
        ("delete-me", "d"),
        ("tree/sub/x", "x"),
        ("tree/y", "y"),
        ("mv-file", "m"),
        ("mvdir/inner/f", "f"),
        ("link-src", "l"),
        ("pair-a", "pair"),
        ("file-to-dir", "f"),
        ("dir-to-file/child", "c"),
        ("opaque/old1", "1"),
        ("opaque/old2", "2"),
        ("keep/deep/unchanged", "u"),
        ("sp ace", "s"),
    ] {
        w(&base, f, data);
    }
    fs::hard_link(base.join("pair-a"), base.join("pair-b")).expect("link");
    g.unmount().expect("unmount");
    let parent = n(p(&work.join("dcp-parent")));
    sn.commit(&parent, &k(p(&base)), &gc_labels())
        .expect("commit");

    let (child, g) = prepare_mount(sn, work, "dcp-child", Some(&parent));
    let c = |f: &str| child.join(f);
    let md = fs::metadata(c("same-size")).expect("stat");
    w(&child, "same-size", "bbbb");
    crate::fsutil::set_times(&c("same-size"), &md).expect("restore times");
    assert_eq!(
        fs::metadata(c("same-size")).expect("stat").mtime(),
        md.mtime()
    );
    fs::set_permissions(c("chmod-me"), fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::lchown(c("chown-me"), Some(1000), Some(1000)).expect("chown");
    xattr::set(c("xattr-me"), "user.thinbox", b"v").expect("set xattr");
    fs::File::options()
        .write(true)
        .open(c("touch-me"))
        .expect("open")
        .set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .expect("touch");
    fs::remove_file(c("delete-me")).expect("rm");
    fs::remove_dir_all(c("tree")).expect("rm -r");
    fs::rename(c("mv-file"), c("moved-file")).expect("mv");
    match fs::rename(c("mvdir"), c("moved-dir")) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) && !caps.rename_lower_dirs => {
            copy_then_remove(&c("mvdir"), &c("moved-dir"))
        }
        Err(e) => panic!("mv dir: {e}"),
    }
    fs::hard_link(c("link-src"), c("link-new")).expect("link");
    fs::OpenOptions::new()
        .append(true)
        .open(c("pair-a"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"))
        .expect("append");
    std::os::unix::fs::symlink("keep/deep", c("new-symlink")).expect("symlink");
    fs::remove_file(c("file-to-dir")).expect("rm");
    fs::create_dir(c("file-to-dir")).expect("mkdir");
    w(&child, "file-to-dir/inside", "i");
    fs::remove_dir_all(c("dir-to-file")).expect("rm -r");
    w(&child, "dir-to-file", "now a file");
    fs::remove_dir_all(c("opaque")).expect("rm -r");
    fs::create_dir(c("opaque")).expect("mkdir");
    fs::set_permissions(c("opaque"), fs::Permissions::from_mode(0o700)).expect("chmod");
    w(&child, "opaque/new", "n");
    fs::create_dir_all(c("newdir/a/b")).expect("mkdir");
    w(&child, "newdir/a/b/f", "deep");
    w(&child, "sp ace", "S");
    w(&child, "new\ttab", "t");
    g.unmount().expect("unmount");

    let check = |key: &Key, label: &str| {
        let listed = if caps.lists_changes {
            // Asked while mounted, as a diff does.
            let guard = match sn.stat(key).expect("stat").kind {
                Kind::Active => Some(mount(
                    &sn.mounts(key).expect("mounts"),
                    &work.join(format!("dcp-mnt-{label}")),
                )),
                _ => None,
            };
            let l = sn.changed_paths(key).expect("changed paths");
            drop(guard);
            l
        } else {
            sn.changed_paths(key).expect("changed paths")
        };
        assert_eq!(
            listed.is_some(),
            caps.lists_changes,
            "{label}: changed paths {listed:?} disagree with the capability"
        );
        if let Some(l) = &listed {
            assert!(
                l.iter().any(|p| p == Path::new("same-size")),
                "{label}: the rewritten file is not listed: {l:?}"
            );
        }
        let mut fast = Vec::new();
        let st = diff_snapshot(sn, key, &work.join(format!("dcp-fast-{label}")), &mut fast)
            .unwrap_or_else(|e| panic!("{label}: diff: {e}"));
        assert_eq!(
            st.from_changed_paths, caps.lists_changes,
            "{label}: the diff did not use the backend's changed paths as its capability says"
        );
        let mut slow = Vec::new();
        diff_snapshot_by_tree_compare(sn, key, &work.join(format!("dcp-slow-{label}")), &mut slow)
            .unwrap_or_else(|e| panic!("{label}: diff by tree comparison: {e}"));
        if sn.upper_dir(key).expect("upper dir").is_none() {
            assert!(
                fast == slow,
                "{label}: the diff from changed paths differs from the tree comparison\n\
                 fast: {:#?}\nslow: {:#?}",
                layer_entries(&fast),
                layer_entries(&slow)
            );
        }
        // The layer rebuilds the snapshot on the parent.
        let applied = k(p(&work.join(format!("dcp-applied-{label}"))));
        let scratch = work.join(format!("dcp-scratch-{label}"));
        fs::create_dir_all(&scratch).expect("mkdir");
        apply_to_snapshot(
            sn,
            &applied,
            Some(&parent),
            &Labels::new(),
            &scratch,
            fast.as_slice(),
        )
        .unwrap_or_else(|e| panic!("{label}: apply: {e}"));
        let (a, b) = (
            work.join(format!("dcp-a-{label}")),
            work.join(format!("dcp-b-{label}")),
        );
        let ga = mount(&sn.mounts(&applied).expect("mounts"), &a);
        let orig = match sn.stat(key).expect("stat").kind {
            Kind::Committed => {
                let v = k(p(&work.join(format!("dcp-view-{label}"))));
                sn.view(&v, Some(&n(key.as_str())), &Labels::new())
                    .expect("view")
            }
            _ => sn.mounts(key).expect("mounts"),
        };
        let gb = mount(&orig, &b);
        assert_same_tree(&b, &a);
        // A link between two changed names survives (overlayfs copy-up
        // may have split it in the snapshot itself); a new name for an
        // unchanged file cannot, as the layer does not carry the file.
        let linked = |root: &Path| {
            fs::metadata(root.join("pair-a")).expect("stat").ino()
                == fs::metadata(root.join("pair-b")).expect("stat").ino()
        };
        assert_eq!(linked(&a), linked(&b), "{label}: hard link pair-a pair-b");
        gb.unmount().expect("unmount");
        ga.unmount().expect("unmount");
    };
    let active = k(p(&child));
    check(&active, "active");
    let committed = n(p(&work.join("dcp-committed")));
    sn.commit(&committed, &active, &gc_labels())
        .expect("commit");
    check(committed.as_key(), "committed");
}
