//! Unit tests of the btrfs backend over a fake [`BtrfsOps`] whose
//! subvolumes are directories (a snapshot is a copy): the layout, commit
//! idempotence after a crash, leftovers, and the fallbacks, without btrfs.
//! The same backend over [`SystemBtrfs`] runs the conformance suite on a
//! real btrfs in `tests/kernel.rs`.

use std::sync::{Arc, Mutex};

use super::*;
use crate::core::Snapshotter;
use crate::types::{Key, Name};

#[derive(Debug, Default)]
struct State {
    root: PathBuf,
    subvolumes: BTreeSet<PathBuf>,
    read_only: BTreeSet<PathBuf>,
    log: Vec<String>,
    not_btrfs: bool,
    quotas: bool,
    limits: std::collections::BTreeMap<PathBuf, u64>,
}

/// Subvolumes as directories; clones share state.
#[derive(Debug, Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn new(root: &Path) -> Fake {
        let f = Fake::default();
        f.0.lock().unwrap().root = root.to_owned();
        f
    }

    fn log(&self) -> Vec<String> {
        self.0.lock().unwrap().log.clone()
    }

    fn rel(st: &State, p: &Path) -> String {
        p.strip_prefix(&st.root).unwrap_or(p).display().to_string()
    }

    fn is_read_only(&self, p: &Path) -> bool {
        self.0.lock().unwrap().read_only.contains(p)
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

fn not_a_subvolume(op: &'static str, p: &Path) -> Error {
    Error::new(ErrorKind::NotFound, op)
        .path(p)
        .detail("not a subvolume (fake)")
}

impl BtrfsOps for Fake {
    fn on_btrfs(&self, _: &Path) -> Result<bool> {
        Ok(!self.0.lock().unwrap().not_btrfs)
    }

    fn create_subvolume(&self, path: &Path) -> Result<()> {
        let mut st = self.0.lock().unwrap();
        fs::create_dir(path).map_err(|e| Error::io("create subvolume", path, e))?;
        st.subvolumes.insert(path.to_owned());
        let line = format!("create {}", Fake::rel(&st, path));
        st.log.push(line);
        Ok(())
    }

    fn snapshot(&self, src: &Path, dst: &Path, read_only: bool) -> Result<()> {
        let mut st = self.0.lock().unwrap();
        if !st.subvolumes.contains(src) {
            return Err(not_a_subvolume("snapshot", src));
        }
        copy_tree(src, dst);
        st.subvolumes.insert(dst.to_owned());
        if read_only {
            st.read_only.insert(dst.to_owned());
        }
        let line = format!(
            "snapshot {} -> {}{}",
            Fake::rel(&st, src),
            Fake::rel(&st, dst),
            if read_only { " ro" } else { "" }
        );
        st.log.push(line);
        Ok(())
    }

    fn set_read_only(&self, path: &Path) -> Result<()> {
        let mut st = self.0.lock().unwrap();
        st.read_only.insert(path.to_owned());
        let line = format!("read-only {}", Fake::rel(&st, path));
        st.log.push(line);
        Ok(())
    }

    fn delete_subvolume(&self, path: &Path) -> Result<()> {
        let mut st = self.0.lock().unwrap();
        if !st.subvolumes.remove(path) {
            return Err(not_a_subvolume("delete subvolume", path));
        }
        st.read_only.remove(path);
        fs::remove_dir_all(path).map_err(|e| Error::io("delete subvolume", path, e))?;
        let line = format!("delete {}", Fake::rel(&st, path));
        st.log.push(line);
        Ok(())
    }

    fn is_subvolume(&self, path: &Path) -> bool {
        self.0.lock().unwrap().subvolumes.contains(path)
    }

    fn subvolume_id(&self, _: &Path) -> Result<u64> {
        Ok(256)
    }

    fn sync(&self, _: &Path) -> Result<()> {
        Ok(())
    }

    fn quotas_enabled(&self, _: &Path) -> Result<bool> {
        Ok(self.0.lock().unwrap().quotas)
    }

    fn qgroup(&self, path: &Path, _: u64) -> Result<Option<Qgroup>> {
        let st = self.0.lock().unwrap();
        Ok(st.quotas.then(|| Qgroup {
            referenced: 8192,
            exclusive: 4096,
            max_referenced: st.limits.get(path).copied(),
        }))
    }

    fn qgroup_limit(&self, path: &Path, bytes: u64) -> Result<()> {
        let mut st = self.0.lock().unwrap();
        st.limits.insert(path.to_owned(), bytes);
        let line = format!("limit {} {bytes}", Fake::rel(&st, path));
        st.log.push(line);
        Ok(())
    }

    fn send_dump(&self, parent: &Path, source: &Path) -> Result<Option<BTreeSet<PathBuf>>> {
        let mut st = self.0.lock().unwrap();
        let line = format!(
            "send {} -> {}",
            Fake::rel(&st, parent),
            Fake::rel(&st, source)
        );
        st.log.push(line);
        Ok(None)
    }

    fn inode_paths(&self, _: &Path, _: u64) -> Result<Option<Vec<Vec<u8>>>> {
        Ok(None)
    }
}

fn open(dir: &Path) -> (Snapshots<Btrfs<Fake>>, Fake) {
    let fake = Fake::new(dir);
    let sn = Snapshots::open(dir, Btrfs::with_ops(dir, fake.clone()).unwrap()).unwrap();
    (sn, fake)
}

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// The directory a snapshot's bind mount would show.
fn source(m: &[MountSpec]) -> PathBuf {
    PathBuf::from(&m[0].source)
}

#[test]
fn a_root_not_on_btrfs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.0.lock().unwrap().not_btrfs = true;
    let e = Btrfs::with_ops(dir.path(), fake).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BackendUnavailable);
    assert!(
        e.to_string().contains("mount a btrfs filesystem there"),
        "{e}"
    );
}

#[test]
fn snapshots_are_subvolumes_and_commits_read_only_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (sn, fake) = open(dir.path());
    let labels = Labels::new();
    let a = source(&sn.prepare(&key("a"), None, &labels).unwrap());
    assert_eq!(a, dir.path().join("active/1"));
    fs::write(a.join("f"), "in a").unwrap();
    sn.commit(&name("c"), &key("a"), &labels).unwrap();
    let b = source(&sn.prepare(&key("b"), Some(&name("c")), &labels).unwrap());
    assert_eq!(fs::read_to_string(b.join("f")).unwrap(), "in a");
    let v = source(&sn.view(&key("v"), Some(&name("c")), &labels).unwrap());
    let empty = source(&sn.view(&key("e"), None, &labels).unwrap());
    assert!(fake.is_read_only(&v) && fake.is_read_only(&empty));
    assert!(fake.is_read_only(&dir.path().join("snapshots/1")));
    assert!(!fake.is_read_only(&b));
    assert_eq!(
        fake.log(),
        [
            "create active/1",
            "snapshot active/1 -> snapshots/1 ro",
            "delete active/1",
            "snapshot snapshots/1 -> active/2",
            "snapshot snapshots/1 -> view/3 ro",
            "create view/4",
            "read-only view/4",
        ]
    );
    sn.remove(&key("v")).unwrap();
    assert!(!v.exists());
    assert_eq!(fake.log().last().unwrap(), "delete view/3");
}

#[test]
fn a_commit_interrupted_after_its_snapshot_finishes_without_a_second_one() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = Btrfs::with_ops(dir.path(), fake.clone()).unwrap();
    let obj = Object {
        id: SnapshotId(7),
        kind: Kind::Active,
        parents: &[],
    };
    b.create(&obj, &Labels::new()).unwrap();
    // A crash after the read-only snapshot, before the active one went.
    let (active, committed) = (dir.path().join("active/7"), dir.path().join("snapshots/7"));
    fake.snapshot(&active, &committed, true).unwrap();
    b.commit(&obj).unwrap();
    b.commit(&obj).unwrap();
    assert_eq!(
        fake.log(),
        [
            "create active/7",
            "snapshot active/7 -> snapshots/7 ro",
            "delete active/7",
        ],
        "one snapshot, one delete: commit is idempotent"
    );
    assert!(committed.exists() && !active.exists());
}

#[test]
fn a_diff_leftover_is_listed_and_removed_with_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = Btrfs::with_ops(dir.path(), fake.clone()).unwrap();
    let obj = Object {
        id: SnapshotId(5),
        kind: Kind::Active,
        parents: &[],
    };
    b.create(&obj, &Labels::new()).unwrap();
    // A crash during a diff left its read-only snapshot in diff/.
    fake.snapshot(
        &dir.path().join("active/5"),
        &b.diff_path(SnapshotId(5)),
        true,
    )
    .unwrap();
    b.remove(SnapshotId(5)).unwrap();
    assert_eq!(b.list().unwrap(), []);
    fake.create_subvolume(&b.diff_path(SnapshotId(9))).unwrap();
    assert_eq!(b.list().unwrap(), [SnapshotId(9)], "cleanup sees it");
    b.remove(SnapshotId(9)).unwrap();
    assert!(!b.diff_path(SnapshotId(9)).exists());
}

#[test]
fn changes_of_an_active_snapshot_are_sent_from_a_temporary_snapshot_then_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    let b = Btrfs::with_ops(dir.path(), fake.clone()).unwrap();
    let parent = Object {
        id: SnapshotId(1),
        kind: Kind::Active,
        parents: &[],
    };
    b.create(&parent, &Labels::new()).unwrap();
    b.commit(&parent).unwrap();
    let parents = [SnapshotId(1)];
    let child = Object {
        id: SnapshotId(2),
        kind: Kind::Active,
        parents: &parents,
    };
    b.create(&child, &Labels::new()).unwrap();
    assert_eq!(
        b.changed_paths(&child).unwrap(),
        None,
        "send gave nothing: compare trees"
    );
    let log = fake.log();
    assert_eq!(
        log[log.len() - 3..],
        [
            "snapshot active/2 -> diff/2 ro",
            "send snapshots/1 -> diff/2",
            "delete diff/2",
        ]
    );
    // A parent that is not a subvolume is not sent at all.
    fake.delete_subvolume(&dir.path().join("snapshots/1"))
        .unwrap();
    let before = fake.log().len();
    assert_eq!(b.changed_paths(&child).unwrap(), None);
    assert_eq!(fake.log().len(), before, "nothing sent");
}

#[test]
fn the_size_label_sets_a_qgroup_limit_when_quotas_are_on() {
    let sized = |v: &str| {
        let mut l = Labels::new();
        l.insert(crate::types::MAX_SIZE_LABEL.into(), v.into());
        l
    };
    // Quotas off: refused before anything is made, saying how to turn them on.
    let dir = tempfile::tempdir().unwrap();
    let (sn, fake) = open(dir.path());
    assert!(!sn.capabilities().bounds_size && !sn.capabilities().exact_usage);
    let e = sn.prepare(&key("a"), None, &sized("64M")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("btrfs quota enable"), "{e}");
    assert!(fake.log().is_empty(), "{:?}", fake.log());

    // Quotas on: the new subvolume is limited, its usage is the qgroup's.
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    fake.0.lock().unwrap().quotas = true;
    let sn = Snapshots::open(
        dir.path(),
        Btrfs::with_ops(dir.path(), fake.clone()).unwrap(),
    )
    .unwrap();
    assert!(sn.capabilities().bounds_size && sn.capabilities().exact_usage);
    sn.prepare(&key("a"), None, &sized("64M")).unwrap();
    assert_eq!(fake.log(), ["create active/1", "limit active/1 67108864"]);
    assert_eq!(sn.usage(&key("a")).unwrap().size, Bytes(4096));
    // Views are never written: a size there is a mistake, refused.
    sn.commit(&name("c"), &key("a"), &Labels::new()).unwrap();
    let e = sn
        .view(&key("v"), Some(&name("c")), &sized("1G"))
        .unwrap_err();
    assert!(e.to_string().contains("views are read-only"), "{e}");
    assert!(sn.stat(&key("v")).is_err());
}

#[test]
fn a_qgroup_is_at_its_limit_within_the_slack() {
    let q = |referenced, max| Qgroup {
        referenced,
        exclusive: 0,
        max_referenced: max,
    };
    assert!(q(16 << 20, Some(16 << 20)).at_limit(0));
    assert!(q((16 << 20) - 16384, Some(16 << 20)).at_limit(1 << 20));
    assert!(!q(8 << 20, Some(16 << 20)).at_limit(1 << 20));
    assert!(
        !q(u64::MAX, None).at_limit(1 << 20),
        "no limit, never at it"
    );
}
