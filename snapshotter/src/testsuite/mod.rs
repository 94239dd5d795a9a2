//! The conformance suite: containerd's snapshot testsuite
//! (core/snapshots/testsuite), ported once and run against every backend.
//!
//! A case fails by panicking. Differences between backends are read from
//! [`Capabilities`], never from a backend's name. Cases that mount need
//! root and the backend's kernel feature; [`run`] takes a factory that
//! opens the backend on a root directory.
use crate::core::Snapshotter;
use crate::error::ErrorKind;
use crate::filter::Filter;
use crate::mount::{MountGuard, MountSpec};
use crate::types::{Capabilities, Info, Key, Kind, Labels, Name, MAX_SIZE_LABEL};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

mod basic;
mod extended;
mod layers;

use basic::*;
use extended::*;
use layers::*;

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
    SizeBound => "size_bound", check_size_bound;
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
