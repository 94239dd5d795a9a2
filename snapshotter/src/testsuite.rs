//! The conformance suite: containerd's snapshot testsuite
//! (core/snapshots/testsuite), ported once and run against every backend.
//!
//! A case fails by panicking. Differences between backends are read from
//! [`Capabilities`], never from a backend's name. Cases that mount need
//! root and the backend's kernel feature; [`run`] takes a factory that
//! opens the backend on a root directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::core::Snapshotter;
use crate::error::ErrorKind;
use crate::filter::Filter;
use crate::mount::{MountGuard, MountSpec};
use crate::types::{Capabilities, Info, Key, Kind, Labels, Name, MAX_SIZE_LABEL};

/// Opens a snapshotter on a root directory.
pub type Factory<'a> = &'a dyn Fn(&Path) -> Box<dyn Snapshotter>;

macro_rules! cases {
    ($($variant:ident => $name:literal, $fn:ident;)*) => {
        /// One conformance case.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Case { $(#[doc = $name] $variant,)* }

        impl Case {
            /// Every case, in containerd's order.
            pub const ALL: &'static [Case] = &[$(Case::$variant,)*];

            /// The case's name (snake case).
            pub fn name(self) -> &'static str {
                match self { $(Case::$variant => $name,)* }
            }

            fn body(self) -> fn(&dyn Snapshotter, &Path) {
                match self { $(Case::$variant => $fn,)* }
            }
        }
    };
}

cases! {
    Basic => "basic", check_basic;
    StatActive => "stat_active", check_stat_active;
    StatCommitted => "stat_committed", check_stat_committed;
    Transitivity => "transitivity", check_transitivity;
    PrepareViewFailing => "prepare_view_failing", check_prepare_view;
    Update => "update", check_update;
    Remove => "remove", check_remove;
    Walk => "walk", check_walk;
    LayerFileUpdate => "layer_file_update", check_layer_file_update;
    RemoveDirectoryInLowerLayer => "remove_directory_in_lower_layer", check_remove_dir_in_lower;
    Chown => "chown", check_chown;
    DirectoryPermissionOnCommit => "directory_permission_on_commit", check_dir_permission_on_commit;
    RemoveIntermediateSnapshot => "remove_intermediate_snapshot", check_remove_intermediate;
    DeletedFilesInChildSnapshot => "deleted_files_in_child_snapshot", check_deleted_files_in_child;
    MoveFileFromLowerLayer => "move_file_from_lower_layer", check_move_file_from_lower;
    ViewReadonly => "view_readonly", check_view_readonly;
    StatInWalk => "stat_in_walk", check_stat_in_walk;
    CloseTwice => "close_twice", check_close_twice;
    RootPermission => "root_permission", check_root_permission;
    Rename => "rename", check_rename;
    Layers128Mount => "layers_128_mount", check_128_layers;
    Errors => "errors", check_errors;
    UsageExcludesParent => "usage_excludes_parent", check_usage;
    MaxSizeLabel => "max_size_label", check_max_size_label;
    DiffChangedPaths => "diff_changed_paths", check_diff_changed_paths;
}

/// Runs `case` with a fresh root (`base/root`) and work area (`base/work`).
pub fn run(case: Case, base: &Path, factory: Factory<'_>) {
    let root = base.join("root");
    let work = base.join("work");
    fs::create_dir_all(&root).expect("create root");
    fs::create_dir_all(&work).expect("create work");
    let sn = factory(&root);
    (case.body())(&*sn, &work);
    sn.close().expect("close");
}

fn gc_labels() -> Labels {
    let mut l = Labels::new();
    l.insert("containerd.io/gc.root".into(), "conformance".into());
    l
}

fn k(s: impl AsRef<str>) -> Key {
    Key::new(s.as_ref()).expect("valid key")
}

fn n(s: impl AsRef<str>) -> Name {
    Name::new(s.as_ref()).expect("valid name")
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn mount(specs: &[MountSpec], target: &Path) -> MountGuard {
    fs::create_dir_all(target).expect("create mount point");
    assert!(!specs.is_empty(), "expected mounts to have entries");
    MountGuard::new(specs, target).unwrap_or_else(|e| panic!("mount on {}: {e}", target.display()))
}

// ---------------------------------------------------------------- appliers

/// One change to a tree, as containerd's fstest appliers.
#[derive(Debug, Clone)]
pub enum Change {
    /// Write a file with content and mode.
    File(&'static str, Vec<u8>, u32),
    /// Create a directory (or set the mode of an existing one).
    Dir(&'static str, u32),
    /// Remove a path recursively (absent is fine).
    RemoveAll(&'static str),
    /// Change owner.
    Chown(&'static str, u32, u32),
    /// Hard link (old, new).
    Link(&'static str, &'static str),
    /// Symlink (target, path).
    Symlink(&'static str, &'static str),
    /// Rename (old, new).
    Rename(&'static str, &'static str),
}

fn rel(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn copy_then_remove(from: &Path, to: &Path) {
    let md = fs::symlink_metadata(from).expect("stat rename source");
    if md.is_dir() {
        fs::create_dir(to).expect("mkdir rename target");
        crate::fsutil::copy_tree(from, to).expect("copy for rename");
        fs::remove_dir_all(from).expect("remove rename source");
    } else {
        fs::copy(from, to).expect("copy for rename");
        fs::remove_file(from).expect("remove rename source");
    }
}

/// Applies `changes` under `root`. `caps` is the snapshotter's capabilities
/// when `root` is a mounted snapshot (None for the reference tree): a
/// rename that the backend declares unsupported must fail with EXDEV and is
/// then done by copying, as `mv` does.
pub fn apply(changes: &[Change], root: &Path, caps: Option<Capabilities>) {
    for c in changes {
        match c {
            Change::File(path, data, mode) => {
                let f = rel(root, path);
                fs::write(&f, data).unwrap_or_else(|e| panic!("write {}: {e}", f.display()));
                fs::set_permissions(&f, fs::Permissions::from_mode(*mode)).expect("chmod");
            }
            Change::Dir(path, mode) => {
                let d = rel(root, path);
                if !d.is_dir() {
                    fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
                }
                fs::set_permissions(&d, fs::Permissions::from_mode(*mode)).expect("chmod");
            }
            Change::RemoveAll(path) => {
                let f = rel(root, path);
                match fs::symlink_metadata(&f) {
                    Ok(md) if md.is_dir() => fs::remove_dir_all(&f).expect("remove dir"),
                    Ok(_) => fs::remove_file(&f).expect("remove file"),
                    Err(_) => {}
                }
            }
            Change::Chown(path, uid, gid) => {
                std::os::unix::fs::lchown(rel(root, path), Some(*uid), Some(*gid)).expect("chown")
            }
            Change::Link(old, new) => fs::hard_link(rel(root, old), rel(root, new)).expect("link"),
            Change::Symlink(target, path) => {
                std::os::unix::fs::symlink(target, rel(root, path)).expect("symlink")
            }
            Change::Rename(old, new) => {
                let (from, to) = (rel(root, old), rel(root, new));
                match fs::rename(&from, &to) {
                    Ok(()) => {}
                    Err(e)
                        if e.raw_os_error() == Some(libc::EXDEV)
                            && caps.is_some_and(|c| !c.rename_lower_dirs) =>
                    {
                        copy_then_remove(&from, &to)
                    }
                    Err(e) => panic!("rename {} to {}: {e}", from.display(), to.display()),
                }
            }
        }
    }
}

/// What a tree looks like, path by path (times excluded).
pub fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.expect("walk");
        let md = entry.metadata().expect("stat");
        let relp = entry
            .path()
            .strip_prefix(root)
            .expect("under root")
            .to_owned();
        let what = if md.is_file() {
            format!(
                "file {:?}",
                String::from_utf8_lossy(&fs::read(entry.path()).expect("read"))
            )
        } else if md.file_type().is_symlink() {
            format!(
                "symlink {:?}",
                fs::read_link(entry.path()).expect("readlink")
            )
        } else if md.is_dir() {
            "dir".to_owned()
        } else {
            format!("special rdev {}", md.rdev())
        };
        let mode = if md.file_type().is_symlink() {
            0
        } else {
            md.mode() & 0o7777
        };
        let mut attrs: Vec<String> = xattr::list(entry.path())
            .map(|l| {
                l.filter(|n| !n.to_string_lossy().starts_with("trusted.overlay."))
                    .map(|n| {
                        let v = xattr::get(entry.path(), &n)
                            .ok()
                            .flatten()
                            .unwrap_or_default();
                        format!("{}={:?}", n.to_string_lossy(), String::from_utf8_lossy(&v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        attrs.sort();
        out.insert(
            relp,
            format!(
                "{what} mode {mode:o} owner {}:{} xattrs {attrs:?}",
                md.uid(),
                md.gid()
            ),
        );
    }
    out
}

/// Panics with the differences when two trees differ.
#[track_caller]
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let (a, b) = (tree(expected), tree(actual));
    if a != b {
        let mut diff = String::new();
        for (k, v) in &a {
            match b.get(k) {
                None => diff.push_str(&format!("  missing {}: {v}\n", k.display())),
                Some(w) if w != v => {
                    diff.push_str(&format!("  {}: want {v}, got {w}\n", k.display()))
                }
                _ => {}
            }
        }
        for (k, v) in &b {
            if !a.contains_key(k) {
                diff.push_str(&format!("  extra {}: {v}\n", k.display()));
            }
        }
        panic!(
            "{} differs from {}:\n{diff}",
            actual.display(),
            expected.display()
        );
    }
}

/// containerd's checkSnapshots: applies each layer both to a flat directory
/// and to a new active snapshot on the previous one, compares, commits, and
/// finally compares a view of the top with the flat directory.
fn check_snapshots(sn: &dyn Snapshotter, work: &Path, layers: &[Vec<Change>]) {
    let caps = sn.capabilities();
    let flat = work.join("flat");
    fs::create_dir_all(&flat).expect("flat");
    let mut parent: Option<Name> = None;
    for (i, layer) in layers.iter().enumerate() {
        let preparing = work.join(format!("prepare-layer-{i}"));
        let m = sn
            .prepare(&k(p(&preparing)), parent.as_ref(), &gc_labels())
            .unwrap_or_else(|e| panic!("[layer {i}] prepare: {e}"));
        let g = mount(&m, &preparing);
        assert_same_tree(&flat, &preparing);
        apply(layer, &flat, None);
        apply(layer, &preparing, Some(caps));
        assert_same_tree(&flat, &preparing);
        g.unmount().expect("unmount");
        let name = n(p(&work.join(format!("committed-{i}"))));
        sn.commit(&name, &k(p(&preparing)), &gc_labels())
            .unwrap_or_else(|e| panic!("[layer {i}] commit: {e}"));
        parent = Some(name);
    }
    let view = work.join("fullview");
    let m = sn
        .view(&k(p(&view)), parent.as_ref(), &gc_labels())
        .expect("view");
    let g = mount(&m, &view);
    assert_same_tree(&flat, &view);
    g.unmount().expect("unmount");
}

// ------------------------------------------------------------------- cases

fn check_basic(sn: &dyn Snapshotter, work: &Path) {
    let initial = vec![
        Change::File("/foo", b"foo\n".to_vec(), 0o777),
        Change::Dir("/a", 0o755),
        Change::Dir("/a/b", 0o755),
        Change::Dir("/a/b/c", 0o755),
    ];
    let diff = vec![
        Change::File("/bar", b"bar\n".to_vec(), 0o777),
        Change::File("/foo", b"bar\n".to_vec(), 0o777),
        Change::RemoveAll("/a/b"),
    ];
    let caps = sn.capabilities();
    let preparing = work.join("preparing");
    let m = sn
        .prepare(&k(p(&preparing)), None, &gc_labels())
        .expect("prepare");
    let g = mount(&m, &preparing);
    apply(&initial, &preparing, Some(caps));
    g.unmount().expect("unmount");

    let committed = n(p(&work.join("committed")));
    sn.commit(&committed, &k(p(&preparing)), &gc_labels())
        .expect("commit");
    let si = sn.stat(committed.as_key()).expect("stat committed");
    assert_eq!(si.parent, None);
    assert_eq!(si.kind, Kind::Committed);
    assert!(
        sn.stat(&k(p(&preparing))).is_err(),
        "active key still there after commit"
    );

    let expected_initial = work.join("expected-initial");
    fs::create_dir_all(&expected_initial).expect("mkdir");
    apply(&initial, &expected_initial, None);

    let next = work.join("nextlayer");
    let m = sn
        .prepare(&k(p(&next)), Some(&committed), &gc_labels())
        .expect("prepare next");
    let g = mount(&m, &next);
    assert_same_tree(&expected_initial, &next);
    apply(&diff, &next, Some(caps));
    g.unmount().expect("unmount");
    let ni = sn.stat(&k(p(&next))).expect("stat next");
    assert_eq!(ni.parent.as_deref(), Some(committed.as_str()));
    assert_eq!(ni.kind, Kind::Active);

    let next_committed = n(p(&work.join("committed-next")));
    sn.commit(&next_committed, &k(p(&next)), &gc_labels())
        .expect("commit next");
    let si2 = sn.stat(next_committed.as_key()).expect("stat");
    assert_eq!(si2.parent.as_deref(), Some(committed.as_str()));
    assert_eq!(si2.kind, Kind::Committed);
    assert!(sn.stat(&k(p(&next))).is_err());

    let mut walked = BTreeMap::new();
    sn.walk(&[], &mut |i| {
        walked.insert(i.name.clone(), i.clone());
        Ok(())
    })
    .expect("walk");
    assert_eq!(walked.get(si.name.as_str()), Some(&si));
    assert_eq!(walked.get(si2.name.as_str()), Some(&si2));

    let nextnext = work.join("nextnextlayer");
    let m = sn
        .view(&k(p(&nextnext)), Some(&next_committed), &gc_labels())
        .expect("view");
    let g = mount(&m, &nextnext);
    apply(&diff, &expected_initial, None);
    assert_same_tree(&expected_initial, &nextnext);
    g.unmount().expect("unmount");
    sn.remove(&k(p(&nextnext))).expect("remove view");
    let e = sn
        .remove(committed.as_key())
        .expect_err("removing a parent must fail");
    assert_eq!(e.kind(), ErrorKind::HasChildren);
    assert!(e.to_string().contains("remove"), "{e}");
    sn.remove(next_committed.as_key()).expect("remove");
    sn.remove(committed.as_key()).expect("remove");
}

fn prepare_write_foo(sn: &dyn Snapshotter, work: &Path) -> (PathBuf, MountGuard) {
    let preparing = work.join("preparing");
    let m = sn
        .prepare(&k(p(&preparing)), None, &gc_labels())
        .expect("prepare");
    let g = mount(&m, &preparing);
    fs::write(preparing.join("foo"), "foo\n").expect("write");
    (preparing, g)
}

fn check_stat_active(sn: &dyn Snapshotter, work: &Path) {
    let (preparing, g) = prepare_write_foo(sn, work);
    let si = sn.stat(&k(p(&preparing))).expect("stat");
    assert_eq!(si.name, p(&preparing));
    assert_eq!(si.kind, Kind::Active);
    assert_eq!(si.parent, None);
    g.unmount().expect("unmount");
}

fn check_stat_committed(sn: &dyn Snapshotter, work: &Path) {
    let (preparing, g) = prepare_write_foo(sn, work);
    g.unmount().expect("unmount");
    let committed = n(p(&work.join("committed")));
    sn.commit(&committed, &k(p(&preparing)), &gc_labels())
        .expect("commit");
    let si = sn.stat(committed.as_key()).expect("stat");
    assert_eq!(si.name, committed.as_str());
    assert_eq!(si.kind, Kind::Committed);
    assert_eq!(si.parent, None);
}

fn prepare_mount(
    sn: &dyn Snapshotter,
    work: &Path,
    name: &str,
    parent: Option<&Name>,
) -> (PathBuf, MountGuard) {
    let path = work.join(name);
    let m = sn
        .prepare(&k(p(&path)), parent, &gc_labels())
        .expect("prepare");
    let g = mount(&m, &path);
    (path, g)
}

fn check_transitivity(sn: &dyn Snapshotter, work: &Path) {
    let (preparing, g) = prepare_mount(sn, work, "preparing", None);
    fs::write(preparing.join("foo"), "foo\n").expect("write");
    g.unmount().expect("unmount");
    let snap_a = n(p(&work.join("snapA")));
    sn.commit(&snap_a, &k(p(&preparing)), &gc_labels())
        .expect("commit");
    let (next, g) = prepare_mount(sn, work, "next", Some(&snap_a));
    fs::write(next.join("foo"), "foo bar\n").expect("write");
    g.unmount().expect("unmount");
    let snap_b = n(p(&work.join("snapB")));
    sn.commit(&snap_b, &k(p(&next)), &gc_labels())
        .expect("commit");
    let si_a = sn.stat(snap_a.as_key()).expect("stat");
    let si_b = sn.stat(snap_b.as_key()).expect("stat");
    let si_parent_b = sn
        .stat(&k(si_b.parent.clone().expect("B has a parent")))
        .expect("stat");
    assert_eq!(si_a.parent, None);
    assert_eq!(si_b.parent.as_deref(), Some(snap_a.as_str()));
    assert_eq!(si_parent_b.parent, None);
}

fn check_prepare_view(sn: &dyn Snapshotter, work: &Path) {
    let (preparing, g) = prepare_mount(sn, work, "preparing", None);
    g.unmount().expect("unmount");
    let snap_a = n(p(&work.join("snapA")));
    sn.commit(&snap_a, &k(p(&preparing)), &gc_labels())
        .expect("commit");
    let new_layer = k(p(&work.join("newlayer")));
    sn.prepare(&new_layer, Some(&snap_a), &gc_labels())
        .expect("prepare");
    let e = sn
        .view(&new_layer, Some(&snap_a), &gc_labels())
        .expect_err("view with an active key");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let prep = k(p(&work.join("prepLayer")));
    sn.prepare(&prep, Some(&snap_a), &gc_labels())
        .expect("prepare");
    let e = sn
        .prepare(&prep, Some(&snap_a), &gc_labels())
        .expect_err("prepare twice");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let view = k(p(&work.join("viewLayer")));
    sn.view(&view, Some(&snap_a), &gc_labels()).expect("view");
    let e = sn
        .view(&view, Some(&snap_a), &gc_labels())
        .expect_err("view twice");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
}

/// c1 <- c2 <- a1; a2; c2 <- v1; v2.
fn base_test_snapshots(sn: &dyn Snapshotter) {
    let l = gc_labels();
    sn.prepare(&k("c1-a"), None, &l).expect("prepare");
    sn.commit(&n("c1"), &k("c1-a"), &l).expect("commit");
    sn.prepare(&k("c2-a"), Some(&n("c1")), &l).expect("prepare");
    sn.commit(&n("c2"), &k("c2-a"), &l).expect("commit");
    sn.prepare(&k("a1"), Some(&n("c2")), &l).expect("prepare");
    sn.prepare(&k("a2"), None, &l).expect("prepare");
    sn.view(&k("v1"), Some(&n("c2")), &l).expect("view");
    sn.view(&k("v2"), None, &l).expect("view");
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn check_update(sn: &dyn Snapshotter, _work: &Path) {
    let t1 = SystemTime::now();
    base_test_snapshots(sn);
    let t2 = SystemTime::now();
    let cases: [(&str, Kind, Option<&str>); 6] = [
        ("c1", Kind::Committed, None),
        ("c2", Kind::Committed, Some("c1")),
        ("a1", Kind::Active, Some("c2")),
        ("a2", Kind::Active, None),
        ("v1", Kind::View, Some("c2")),
        ("v2", Kind::View, None),
    ];
    for (name, kind, parent) in cases {
        let st = sn.stat(&k(name)).expect("stat");
        assert!(
            st.created >= t1 && st.created <= t2,
            "{name}: created time out of range"
        );
        assert_eq!(st.created, st.updated, "{name}");
        assert_eq!(st.kind, kind, "{name}");
        assert_eq!(st.parent.as_deref(), parent, "{name}");
        assert_eq!(st.name, name);
        let created = st.created;

        let expected = labels(&[
            ("l1", "v1"),
            ("l2", "v2"),
            ("l3", "v3"),
            ("containerd.io/gc.root", "root"),
        ]);
        let mut info = Info {
            parent: Some("doesnotexist".into()),
            labels: expected.clone(),
            ..st
        };
        let u1 = SystemTime::now();
        let st = sn.update(&info, &[]).expect("update");
        let u2 = SystemTime::now();
        assert_eq!(st.created, created, "{name}");
        assert!(
            st.updated >= u1 && st.updated <= u2,
            "{name}: updated time out of range"
        );
        assert_eq!(st.kind, kind);
        assert_eq!(
            st.parent.as_deref(),
            parent,
            "{name}: parent must not change"
        );
        assert_eq!(st.labels, expected);

        info.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let st = sn
            .update(&info, &["labels.l1", "labels.l2"])
            .expect("update");
        assert_eq!(
            st.labels,
            labels(&[
                ("l1", "updated"),
                ("l3", "v3"),
                ("containerd.io/gc.root", "root")
            ])
        );

        info.labels = labels(&[("l4", "v4"), ("containerd.io/gc.root", "root")]);
        let st = sn.update(&info, &["labels"]).expect("update");
        assert_eq!(st.labels, info.labels);

        let e = sn
            .update(&info, &["parent"])
            .expect_err("parent is immutable");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}

fn check_remove(sn: &dyn Snapshotter, _work: &Path) {
    let l = gc_labels();
    sn.prepare(&k("committed-a"), None, &l).expect("prepare");
    sn.commit(&n("committed-1"), &k("committed-a"), &l)
        .expect("commit");
    sn.prepare(&k("reuse-1"), Some(&n("committed-1")), &l)
        .expect("prepare");
    sn.remove(&k("reuse-1")).expect("remove");
    sn.view(&k("reuse-1"), Some(&n("committed-1")), &l)
        .expect("view");
    sn.remove(&k("reuse-1")).expect("remove");
    sn.prepare(&k("reuse-1"), None, &l).expect("prepare");
    sn.remove(&k("committed-1")).expect("remove");
    sn.commit(&n("committed-1"), &k("reuse-1"), &l)
        .expect("commit");
}

fn check_walk(sn: &dyn Snapshotter, _work: &Path) {
    let root = labels(&[("containerd.io/gc.root", "check-walk")]);
    let with = |l: &str| labels(&[("l", l), ("containerd.io/gc.root", "check-walk")]);
    sn.prepare(&k("a-np"), None, &root).expect("prepare");
    sn.prepare(&k("p-tmp"), None, &root).expect("prepare");
    sn.commit(&n("p"), &k("p-tmp"), &root).expect("commit");
    sn.prepare(&k("a"), Some(&n("p")), &root).expect("prepare");
    sn.view(&k("v"), Some(&n("p")), &root).expect("view");
    sn.prepare(&k("p-wl-tmp"), None, &root).expect("prepare");
    sn.commit(&n("p-wl"), &k("p-wl-tmp"), &with("1"))
        .expect("commit");
    sn.prepare(&k("a-wl"), Some(&n("p-wl")), &with("2"))
        .expect("prepare");
    sn.view(&k("v-wl"), Some(&n("p-wl")), &with("3"))
        .expect("view");
    sn.prepare(&k("a-np-wl"), None, &with("2"))
        .expect("prepare");

    let table: &[(&[&str], &[&str])] = &[
        (
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
            &["labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (
            &["a-np", "a", "a-wl", "a-np-wl"],
            &["kind==active,labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (
            &["v", "v-wl"],
            &["kind==view,labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (
            &["p", "p-wl"],
            &["kind==committed,labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (&["p", "a-np-wl"], &["name==p", "name==a-np-wl"]),
        (&["a-wl"], &["name==a-wl,labels.l"]),
        (&["a", "v"], &["parent==p"]),
        (
            &["a", "v", "a-wl", "v-wl"],
            &["parent!=\"\",labels.\"containerd.io/gc.root\"==check-walk"],
        ),
        (&["p-wl", "a-wl", "v-wl", "a-np-wl"], &["labels.l"]),
        (&["a-wl", "a-np-wl"], &["labels.l==2"]),
    ];
    for (i, (want, filters)) in table.iter().enumerate() {
        let filters: Vec<Filter> = filters.iter().map(|f| f.parse().expect("filter")).collect();
        let mut got = Vec::new();
        sn.walk(&filters, &mut |info| {
            got.push(info.name.clone());
            Ok(())
        })
        .expect("walk");
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "[{i}] filters {filters:?}");
    }
}

fn check_layer_file_update(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::File("/foo", b"foo\n".to_vec(), 0o777),
        Change::Dir("/a", 0o755),
        Change::File("/a/bar", b"bar\n".to_vec(), 0o644),
    ];
    let l2 = vec![
        Change::File("/foo", b"foo, updated\n".to_vec(), 0o700),
        Change::File(
            "/a/bar",
            b"bar, updated in a larger file than before\n".to_vec(),
            0o600,
        ),
    ];
    let l3 = vec![Change::File("/foo", b"f\n".to_vec(), 0o644)];
    check_snapshots(sn, work, &[l1, l2, l3]);
}

fn check_remove_dir_in_lower(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::Dir("/lib", 0o700),
        Change::File("/lib/hidden", b"hidden".to_vec(), 0o644),
        Change::Dir("/lib/sub", 0o755),
        Change::File("/lib/sub/deeper", b"deeper".to_vec(), 0o644),
    ];
    let l2 = vec![
        Change::RemoveAll("/lib"),
        Change::Dir("/lib", 0o755),
        Change::File("/lib/not-hidden", b"not hidden".to_vec(), 0o644),
    ];
    let l3 = vec![Change::File("/lib/newfile", b"new".to_vec(), 0o644)];
    check_snapshots(sn, work, &[l1, l2, l3]);
}

fn check_chown(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::Dir("/opt", 0o700),
        Change::Dir("/opt/a", 0o700),
        Change::Dir("/opt/a/b", 0o700),
        Change::File("/opt/a/b/file.txt", b"hello".to_vec(), 0o644),
    ];
    let l2 = vec![
        Change::Chown("/opt", 1, 1),
        Change::Chown("/opt/a", 1, 1),
        Change::Chown("/opt/a/b", 1, 1),
        Change::Chown("/opt/a/b/file.txt", 1, 1),
    ];
    let l3 = vec![Change::Chown("/opt/a/b/file.txt", 2, 2)];
    check_snapshots(sn, work, &[l1, l2, l3]);
}

fn check_dir_permission_on_commit(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::Dir("/dir1", 0o700),
        Change::Dir("/dir2", 0o700),
        Change::Dir("/dir3", 0o700),
        Change::Chown("/dir1", 1, 1),
        Change::Chown("/dir2", 1, 1),
        Change::Chown("/dir3", 1, 1),
    ];
    let l2 = vec![
        Change::Dir("/dir4", 0o700),
        Change::Chown("/dir4", 1, 1),
        Change::File("/dir1/file", b"hello".to_vec(), 0o644),
        Change::Chown("/dir1/file", 1, 1),
    ];
    let l3 = vec![
        Change::Dir("/dir5", 0o700),
        Change::Chown("/dir5", 1, 1),
        Change::File("/dir2/file", b"hello".to_vec(), 0o644),
        Change::Chown("/dir2/file", 1, 1),
    ];
    check_snapshots(sn, work, &[l1, l2, l3]);
}

fn check_remove_intermediate(sn: &dyn Snapshotter, work: &Path) {
    let (base, g) = prepare_mount(sn, work, "base", None);
    g.unmount().expect("unmount");
    let committed_base = n(p(&work.join("committed-base")));
    sn.commit(&committed_base, &k(p(&base)), &gc_labels())
        .expect("commit");
    let intermediate = k(p(&work.join("intermediate")));
    sn.prepare(&intermediate, Some(&committed_base), &gc_labels())
        .expect("prepare");
    let committed_inter = n(p(&work.join("committed-inter")));
    sn.commit(&committed_inter, &intermediate, &gc_labels())
        .expect("commit");
    let top = k(p(&work.join("toplayer")));
    sn.prepare(&top, Some(&committed_inter), &gc_labels())
        .expect("prepare");
    let e = sn
        .remove(committed_inter.as_key())
        .expect_err("intermediate removal should fail");
    assert_eq!(e.kind(), ErrorKind::HasChildren);
    sn.remove(&top).expect("remove top");
    sn.remove(committed_inter.as_key())
        .expect("remove intermediate");
    sn.remove(committed_base.as_key()).expect("remove base");
}

fn check_deleted_files_in_child(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::File("/foo", b"foo\n".to_vec(), 0o777),
        Change::File("/foobar", b"foobar\n".to_vec(), 0o777),
    ];
    let l2 = vec![Change::RemoveAll("/foobar")];
    check_snapshots(sn, work, &[l1, l2, vec![]]);
}

fn check_move_file_from_lower(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::Dir("/dir1", 0o700),
        Change::File("/dir1/f1", b"Hello".to_vec(), 0o644),
        Change::Dir("/dir2", 0o700),
        Change::File("/dir2/f2", b"...".to_vec(), 0o644),
    ];
    let l2 = vec![
        Change::Dir("/dir3", 0o700),
        Change::File("/dir3/f1", b"Hello".to_vec(), 0o644),
        Change::RemoveAll("/dir1"),
        Change::Link("/dir2/f2", "/dir3/f2"),
        Change::RemoveAll("/dir2/f2"),
    ];
    check_snapshots(sn, work, &[l1, l2]);
}

fn check_view_readonly(sn: &dyn Snapshotter, work: &Path) {
    let preparing = k(p(&work.join("preparing")));
    sn.prepare(&preparing, None, &gc_labels()).expect("prepare");
    let committed = n(p(&work.join("committed")));
    sn.commit(&committed, &preparing, &gc_labels())
        .expect("commit");
    let view = k(p(&work.join("view")));
    let m = sn
        .view(&view, Some(&committed), &gc_labels())
        .expect("view");
    let target = work.join("view-mount");
    let g = mount(&m, &target);
    let res = fs::write(target.join("testfile"), "testcontent");
    g.unmount().expect("unmount");
    assert!(res.is_err(), "write to a view must fail (EROFS)");
    sn.remove(&view).expect("remove view");
    sn.remove(committed.as_key()).expect("remove");
}

fn check_stat_in_walk(sn: &dyn Snapshotter, _work: &Path) {
    let l = gc_labels();
    sn.prepare(&k("a"), None, &l).expect("prepare");
    sn.commit(&n("b"), &k("a"), &l).expect("commit");
    sn.prepare(&k("c"), Some(&n("b")), &l).expect("prepare");
    sn.view(&k("d"), Some(&n("b")), &l).expect("view");
    let mut count = 0;
    sn.walk(&[], &mut |info| {
        let st = sn.stat(&Key::new(info.name.clone())?)?;
        assert_eq!(&st, info);
        count += 1;
        Ok(())
    })
    .expect("walk");
    assert_eq!(count, 3);
}

fn check_close_twice(sn: &dyn Snapshotter, _work: &Path) {
    let l = gc_labels();
    sn.prepare(&k("closeTwice-prepare"), None, &l)
        .expect("prepare");
    sn.commit(&n("closeTwice"), &k("closeTwice-prepare"), &l)
        .expect("commit");
    sn.remove(&k("closeTwice")).expect("remove");
    sn.close().expect("first close");
    sn.close().expect("second close");
    let e = sn.stat(&k("anything")).expect_err("closed");
    assert_eq!(e.kind(), ErrorKind::Closed);
}

fn check_root_permission(sn: &dyn Snapshotter, work: &Path) {
    let (preparing, g) = prepare_mount(sn, work, "preparing", None);
    let mode = fs::metadata(&preparing).expect("stat").mode() & 0o777;
    g.unmount().expect("unmount");
    assert_eq!(mode, 0o755, "expected 0755, got {mode:o}");
}

fn check_rename(sn: &dyn Snapshotter, work: &Path) {
    let l1 = vec![
        Change::Dir("/dir1", 0o700),
        Change::Dir("/somefiles", 0o700),
        Change::File("/somefiles/f1", b"was here".to_vec(), 0o644),
        Change::File("/somefiles/f2", b"nothing interesting".to_vec(), 0o644),
    ];
    let l2 = vec![
        Change::Rename("/dir1", "/dir2"),
        Change::File("/somefiles/f1-overwrite", b"new content 1".to_vec(), 0o644),
        Change::Rename("/somefiles/f1-overwrite", "/somefiles/f1"),
        Change::Rename("/somefiles/f2", "/somefiles/f3"),
    ];
    check_snapshots(sn, work, &[l1, l2]);
}

fn check_128_layers(sn: &dyn Snapshotter, work: &Path) {
    let mut layers = vec![vec![
        Change::File("/bottom", b"way at the bottom\n".to_vec(), 0o777),
        Change::File("/overwriteme", b"FIRST!\n".to_vec(), 0o777),
        Change::Dir("/addhere", 0o755),
        Change::Dir("/onlyme", 0o755),
        Change::File("/onlyme/bottom", b"bye!\n".to_vec(), 0o777),
    ]];
    for i in 1..=127 {
        // Changes name paths with &'static str (like containerd's literal
        // appliers); the 254 generated names of this one case are leaked,
        // which is fine in a short-lived test process.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        layers.push(vec![
            Change::File(
                "/overwriteme",
                format!("{i} WAS HERE!\n").into_bytes(),
                0o777,
            ),
            Change::File(
                leak(format!("/addhere/file-{i}")),
                b"same\n".to_vec(),
                0o755,
            ),
            Change::RemoveAll("/onlyme"),
            Change::Dir("/onlyme", 0o755),
            Change::File(
                leak(format!("/onlyme/file-{i}")),
                b"only me!\n".to_vec(),
                0o777,
            ),
        ]);
    }
    check_snapshots(sn, work, &layers);
}

/// Bad input gets distinct error kinds (not in containerd's suite).
fn check_errors(sn: &dyn Snapshotter, _work: &Path) {
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
fn check_usage(sn: &dyn Snapshotter, work: &Path) {
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
fn fs_size(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks() * st.fragment_size()
}

/// The [`MAX_SIZE_LABEL`] label: with [`Capabilities::max_size_label`] it
/// grows a new snapshot's filesystem (and children inherit the size), a
/// size below the parent's and a view with the label are refused naming
/// the value, leaving nothing; without it the label is refused.
fn check_max_size_label(sn: &dyn Snapshotter, work: &Path) {
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
        refused("big", Some(&parent), "1G", false);
        assert_eq!(count(), before);
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

/// The tar entries of a layer, one line each, to show how two differ.
fn layer_entries(layer: &[u8]) -> Vec<String> {
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
fn check_diff_changed_paths(sn: &dyn Snapshotter, work: &Path) {
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
