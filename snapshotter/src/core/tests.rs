//! [`Snapshots`]' rules, crash recovery and concurrency, over the memory
//! backend.

use super::*;
use crate::backend::memory::{Fault, MemoryBackend, Objects};
use std::panic::{catch_unwind, AssertUnwindSafe};

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}
fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn open(dir: &Path, objects: &Objects, fault: Option<Fault>) -> Snapshots<MemoryBackend> {
    Snapshots::open(dir, MemoryBackend::new(objects.clone(), fault)).unwrap()
}

fn ids(objects: &Objects) -> Vec<u64> {
    objects.lock().unwrap().keys().map(|i| i.0).collect()
}

/// Runs `f` on a snapshotter whose backend crashes as `fault` says, then
/// reopens and returns the reopened snapshotter.
fn crash_then_reopen(
    dir: &Path,
    objects: &Objects,
    fault: Fault,
    f: impl FnOnce(&Snapshots<MemoryBackend>),
) -> Snapshots<MemoryBackend> {
    let s = open(dir, objects, Some(fault));
    let r = catch_unwind(AssertUnwindSafe(|| f(&s)));
    assert!(r.is_err(), "the injected crash did not happen");
    drop(s);
    open(dir, objects, None)
}

#[test]
fn rules() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    let s = open(dir.path(), &objects, None);
    let l = Labels::new();
    s.prepare(&key("a"), None, &l).unwrap();
    assert_eq!(
        s.prepare(&key("a"), None, &l).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        s.prepare(&key("b"), Some(&name("a")), &l)
            .unwrap_err()
            .kind(),
        ErrorKind::ParentNotCommitted
    );
    s.commit(&name("c"), &key("a"), &l).unwrap();
    assert_eq!(s.stat(&key("a")).unwrap_err().kind(), ErrorKind::NotFound);
    let v = s.view(&key("v"), Some(&name("c")), &l).unwrap();
    assert_eq!(v[0].options, vec!["ro".to_owned()]);
    assert_eq!(
        s.commit(&name("x"), &key("v"), &l).unwrap_err().kind(),
        ErrorKind::CommitOfView
    );
    assert_eq!(
        s.remove(name("c").as_key()).unwrap_err().kind(),
        ErrorKind::HasChildren
    );
    assert_eq!(s.stat(&key("v")).unwrap().parent.as_deref(), Some("c"));
    s.remove(&key("v")).unwrap();
    s.remove(name("c").as_key()).unwrap();
    assert!(ids(&objects).is_empty());
    // A second opener of the same root shares it: each mutation takes
    // the root's lock, and each sees what the other committed.
    let other = Snapshots::open(dir.path(), MemoryBackend::default()).unwrap();
    other.view(&key("seen"), None, &l).unwrap();
    assert_eq!(s.stat(&key("seen")).unwrap().kind, Kind::View);
    other.close().unwrap();
    s.close().unwrap();
    s.close().unwrap();
    assert_eq!(s.stat(&key("v")).unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn failed_prepare_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    let s = open(dir.path(), &objects, Some(Fault::Fail("create")));
    let e = s.prepare(&key("a"), None, &Labels::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(ids(&objects).is_empty());
    let mut n = 0;
    s.walk(&[], &mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn failed_commit_keeps_the_active_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    let s = open(dir.path(), &objects, Some(Fault::Fail("commit")));
    s.prepare(&key("a"), None, &Labels::new()).unwrap();
    assert!(s.commit(&name("c"), &key("a"), &Labels::new()).is_err());
    assert_eq!(s.stat(&key("a")).unwrap().kind, Kind::Active);
    assert!(s.stat(name("c").as_key()).is_err());
}

#[test]
fn crash_during_prepare_is_undone_on_open() {
    for fault in [Fault::CrashBefore("create"), Fault::CrashAfter("create")] {
        let dir = tempfile::tempdir().unwrap();
        let objects = Objects::default();
        let s = crash_then_reopen(dir.path(), &objects, fault, |s| {
            let _ = s.prepare(&key("a"), None, &Labels::new());
        });
        assert!(ids(&objects).is_empty(), "{fault:?}: object left behind");
        assert_eq!(s.stat(&key("a")).unwrap_err().kind(), ErrorKind::NotFound);
        s.prepare(&key("a"), None, &Labels::new()).unwrap();
    }
}

#[test]
fn crash_during_commit_is_finished_on_open() {
    for fault in [Fault::CrashBefore("commit"), Fault::CrashAfter("commit")] {
        let dir = tempfile::tempdir().unwrap();
        let objects = Objects::default();
        {
            let s = open(dir.path(), &objects, None);
            s.prepare(&key("a"), None, &Labels::new()).unwrap();
        }
        let s = crash_then_reopen(dir.path(), &objects, fault, |s| {
            let _ = s.commit(&name("c"), &key("a"), &Labels::new());
        });
        assert_eq!(
            s.stat(name("c").as_key()).unwrap().kind,
            Kind::Committed,
            "{fault:?}"
        );
        assert_eq!(
            objects
                .lock()
                .unwrap()
                .values()
                .copied()
                .collect::<Vec<_>>(),
            vec![Kind::Committed]
        );
    }
}

#[test]
fn crash_during_a_clients_commit_is_undone_on_open() {
    for fault in [Fault::CrashBefore("commit"), Fault::CrashAfter("commit")] {
        let dir = tempfile::tempdir().unwrap();
        let objects = Objects::default();
        {
            let s = open(dir.path(), &objects, None);
            s.prepare(&key("@containerd/a"), None, &Labels::new())
                .unwrap();
        }
        let s = crash_then_reopen(dir.path(), &objects, fault, |s| {
            let _ = s.commit(
                &name("@containerd/c"),
                &key("@containerd/a"),
                &Labels::new(),
            );
        });
        assert_eq!(
            s.stat(&key("@containerd/a")).unwrap().kind,
            Kind::Active,
            "{fault:?}"
        );
        assert_eq!(
            s.stat(name("@containerd/c").as_key()).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            objects
                .lock()
                .unwrap()
                .values()
                .copied()
                .collect::<Vec<_>>(),
            vec![Kind::Active]
        );
        // And the client can commit it again.
        s.commit(
            &name("@containerd/c"),
            &key("@containerd/a"),
            &Labels::new(),
        )
        .unwrap();
    }
}

#[test]
fn crash_during_remove_is_finished_on_open() {
    for fault in [Fault::CrashBefore("remove"), Fault::CrashAfter("remove")] {
        let dir = tempfile::tempdir().unwrap();
        let objects = Objects::default();
        {
            let s = open(dir.path(), &objects, None);
            s.prepare(&key("a"), None, &Labels::new()).unwrap();
        }
        let s = crash_then_reopen(dir.path(), &objects, fault, |s| {
            let _ = s.remove(&key("a"));
        });
        assert!(ids(&objects).is_empty(), "{fault:?}");
        assert!(s.stat(&key("a")).is_err());
    }
}

#[test]
fn deferred_removal_and_orphans_are_reclaimed_by_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    {
        let s = open(dir.path(), &objects, Some(Fault::Fail("remove")));
        s.prepare(&key("a"), None, &Labels::new()).unwrap();
        s.remove(&key("a")).unwrap();
        // The key is free at once even though the object is not gone.
        assert!(s.stat(&key("a")).is_err());
        assert_eq!(ids(&objects).len(), 1);
    }
    let s = open(dir.path(), &objects, None);
    objects
        .lock()
        .unwrap()
        .insert(SnapshotId(999), Kind::Active);
    s.cleanup().unwrap();
    assert!(ids(&objects).is_empty());
}

#[test]
fn stat_inside_walk_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::default();
    let s = open(dir.path(), &objects, None);
    s.prepare(&key("a"), None, &Labels::new()).unwrap();
    let mut seen = vec![];
    s.walk(&[], &mut |info| {
        seen.push(s.stat(&Key::new(info.name.clone())?)?);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.len(), 1);
}

/// A backend that keeps its objects in memory and runs `on_create` inside
/// every create, where the backend's work would be.
struct Hooked {
    objects: Objects,
    on_create: Box<dyn Fn() + Send + Sync>,
}

impl fmt::Debug for Hooked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooked").finish_non_exhaustive()
    }
}

impl Hooked {
    fn new(on_create: impl Fn() + Send + Sync + 'static) -> Hooked {
        Hooked {
            objects: Objects::default(),
            on_create: Box::new(on_create),
        }
    }
}

impl Backend for Hooked {
    fn capabilities(&self) -> Capabilities {
        MemoryBackend::default().capabilities()
    }
    fn create(&self, obj: &Object<'_>, _labels: &Labels) -> Result<()> {
        (self.on_create)();
        self.objects.lock().unwrap().insert(obj.id, obj.kind);
        Ok(())
    }
    fn commit(&self, obj: &Object<'_>) -> Result<()> {
        self.objects.lock().unwrap().insert(obj.id, Kind::Committed);
        Ok(())
    }
    fn uncommit(&self, obj: &Object<'_>) -> Result<()> {
        self.objects.lock().unwrap().insert(obj.id, Kind::Active);
        Ok(())
    }
    fn remove(&self, id: SnapshotId) -> Result<()> {
        self.objects.lock().unwrap().remove(&id);
        Ok(())
    }
    fn mounts(&self, _obj: &Object<'_>) -> Result<Vec<MountSpec>> {
        Ok(vec![])
    }
    fn usage(&self, _obj: &Object<'_>) -> Result<Usage> {
        Ok(Usage::default())
    }
    fn list(&self) -> Result<Vec<SnapshotId>> {
        Ok(self.objects.lock().unwrap().keys().copied().collect())
    }
}

/// A count and the condition variable its changes are told on.
type Counted = std::sync::Arc<(Mutex<(usize, usize)>, std::sync::Condvar)>;

#[test]
fn backend_work_of_many_calls_overlaps() {
    // Each create waits, up to a bound, until four are inside the backend
    // at once, recording the most it saw; a serialising snapshotter lets
    // only one in.
    let inside = Counted::default();
    let seen = inside.clone();
    let backend = Hooked::new(move || {
        let (lock, changed) = &*inside;
        let mut g = lock.lock().unwrap();
        g.0 += 1;
        g.1 = g.1.max(g.0);
        changed.notify_all();
        let (mut g, _) = changed
            .wait_timeout_while(g, std::time::Duration::from_secs(10), |g| g.1 < 4)
            .unwrap();
        g.0 -= 1;
    });
    let dir = tempfile::tempdir().unwrap();
    let s = Snapshots::open(dir.path(), backend).unwrap();
    std::thread::scope(|t| {
        for i in 0..4 {
            let s = &s;
            t.spawn(move || {
                s.prepare(&key(&format!("k{i}")), None, &Labels::new())
                    .unwrap()
            });
        }
    });
    assert_eq!(
        seen.0.lock().unwrap().1,
        4,
        "four prepares were inside the backend at once"
    );
    let mut n = 0;
    s.walk(&[], &mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 4);
}

#[test]
fn cleanup_leaves_a_prepare_in_flight_alone() {
    // The create says it is inside (.0 = 1), then waits until let go
    // (.1 = 1).
    let gate = Counted::default();
    let inner = gate.clone();
    let backend = Hooked::new(move || {
        let (lock, changed) = &*inner;
        let mut g = lock.lock().unwrap();
        g.0 = 1;
        changed.notify_all();
        drop(changed.wait_while(g, |g| g.1 == 0).unwrap());
    });
    let dir = tempfile::tempdir().unwrap();
    let s = Snapshots::open(dir.path(), backend).unwrap();
    let (lock, changed) = &*gate;
    std::thread::scope(|t| {
        let prepare = t.spawn(|| s.prepare(&key("a"), None, &Labels::new()));
        drop(
            changed
                .wait_while(lock.lock().unwrap(), |g| g.0 == 0)
                .unwrap(),
        );
        // The prepare's intent is in the store, its object half made: a
        // cleanup now must wait for it, not undo it as interrupted.
        let cleanup = t.spawn(|| s.cleanup());
        std::thread::sleep(std::time::Duration::from_millis(200));
        lock.lock().unwrap().1 = 1;
        changed.notify_all();
        prepare.join().unwrap().unwrap();
        cleanup.join().unwrap().unwrap();
    });
    assert_eq!(s.stat(&key("a")).unwrap().kind, Kind::Active);
    assert_eq!(s.backend.objects.lock().unwrap().len(), 1);
}

#[test]
fn one_sync_covers_the_commits_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), &Objects::default(), None);
    assert!(
        s.wal.is_some(),
        "the store's log is synced by the snapshotter"
    );
    let before = s.syncs.load(Ordering::Relaxed);
    // A prepare syncs once (its done record; its intent is not synced), a
    // remove twice (its intent, before the backend acts, and its done).
    s.prepare(&key("a"), None, &Labels::new()).unwrap();
    assert_eq!(s.syncs.load(Ordering::Relaxed) - before, 1);
    s.remove(&key("a")).unwrap();
    assert_eq!(s.syncs.load(Ordering::Relaxed) - before, 3);
    // Commits made while none synced are covered by one sync, and a
    // caller whose commit is covered does not sync again.
    let first = s.committed.fetch_add(1, Ordering::SeqCst) + 1;
    let second = s.committed.fetch_add(1, Ordering::SeqCst) + 1;
    s.sync_through(second).unwrap();
    s.sync_through(first).unwrap();
    assert_eq!(s.syncs.load(Ordering::Relaxed) - before, 4);
    // A store in memory has no log to sync.
    let m = Snapshots::with_store(
        dir.path(),
        Store::open_in_memory().unwrap(),
        MemoryBackend::default(),
        None,
    )
    .unwrap();
    assert!(m.wal.is_none());
    m.prepare(&key("b"), None, &Labels::new()).unwrap();
}
