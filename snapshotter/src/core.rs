//! The [`Snapshotter`] trait and [`Snapshots`], the one implementation of
//! its semantics over any [`Backend`].
//!
//! [`Snapshots`] owns the metadata [`Store`] and enforces every rule (keys
//! unique, parents committed, no removal while children exist, views never
//! committed); a [`Backend`] only creates, commits, removes, mounts and
//! measures the objects it is told about, by [`SnapshotId`]. Each backend
//! mutation is bracketed by an intent and a done record in the store, and
//! [`Snapshots::open`] reconciles whatever a crash left in between.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, ErrorKind, Result};
use crate::filter::{matches_any, Filter};
use crate::mount::MountSpec;
use crate::store::{Record, SnapshotId, State, Store};
use crate::types::{
    is_client_key, max_size, validate_labels, Capabilities, Info, Key, Kind, Labels, Name, Usage,
    MAX_SIZE_LABEL,
};

/// containerd's snapshotter interface.
///
/// Life cycle: `prepare(key, parent)` makes an *active* snapshot (writable)
/// on top of a committed `parent` and returns how to mount it; the caller
/// mounts, writes, unmounts and `commit(name, key)`s it, which makes a
/// *committed* snapshot called `name` (the key disappears). `view(key,
/// parent)` makes a read-only snapshot that cannot be committed. Committed
/// snapshots are the only possible parents, and `remove` refuses a snapshot
/// that still has children.
pub trait Snapshotter: Send + Sync + fmt::Debug {
    /// What the backend underneath can do.
    fn capabilities(&self) -> Capabilities;
    /// The info of a snapshot by key or name.
    fn stat(&self, key: &Key) -> Result<Info>;
    /// Updates the labels of `info.name` (see [`Store::update`] for
    /// `fieldpaths`); any other field is immutable.
    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info>;
    /// Space used by the snapshot itself, excluding its parents.
    fn usage(&self, key: &Key) -> Result<Usage>;
    /// How to mount an active snapshot or view.
    fn mounts(&self, key: &Key) -> Result<Vec<MountSpec>>;
    /// Creates an active snapshot `key` on `parent` and returns its mounts.
    fn prepare(&self, key: &Key, parent: Option<&Name>, labels: &Labels) -> Result<Vec<MountSpec>>;
    /// Creates a read-only view `key` of `parent` and returns its mounts.
    fn view(&self, key: &Key, parent: Option<&Name>, labels: &Labels) -> Result<Vec<MountSpec>>;
    /// Commits active `key` as `name`, with `labels`. The active snapshot
    /// must not be mounted.
    fn commit(&self, name: &Name, key: &Key, labels: &Labels) -> Result<()>;
    /// Removes a snapshot without children. The key is released at once;
    /// if the backend cannot remove the object now, [`Snapshotter::cleanup`]
    /// retries.
    fn remove(&self, key: &Key) -> Result<()>;
    /// Calls `f` for every snapshot matching any of `filters` (all when
    /// empty). `f` may call other methods of the snapshotter.
    fn walk(&self, filters: &[Filter], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()>;
    /// Reclaims what removals deferred and backend objects without a record.
    fn cleanup(&self) -> Result<()>;
    /// Releases the store and the root; later calls fail with
    /// [`ErrorKind::Closed`]. Closing twice is fine.
    fn close(&self) -> Result<()>;
    /// See [`Backend::upper_dir`]; `None` when the backend keeps no such
    /// directory.
    fn upper_dir(&self, _key: &Key) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    /// See [`Backend::changed_paths`]; `None` when the backend cannot say
    /// more cheaply than a tree comparison.
    fn changed_paths(&self, _key: &Key) -> Result<Option<Vec<PathBuf>>> {
        Ok(None)
    }
}

/// A backend object as the backend is told about it.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    /// Its identity.
    pub id: SnapshotId,
    /// Its kind (for `commit`: `Active`, the kind it is leaving).
    pub kind: Kind,
    /// Its parents, nearest first.
    pub parents: &'a [SnapshotId],
}

/// Reads a snapshotter's metadata (`ROOT/metadata.db`) without its lock or
/// backend, beside a process that has it open and may be writing: `walk`
/// and `stat` see committed transactions only, so a snapshot being made
/// shows once it is ready. For listing commands that must not wait.
#[derive(Debug)]
pub struct Reader {
    store: Store,
}

impl Reader {
    /// The reader of the snapshotter whose metadata lives in `root`; None
    /// when it has none yet.
    pub fn open(root: &Path) -> Result<Option<Reader>> {
        let db = root.join("metadata.db");
        if !db.exists() {
            return Ok(None);
        }
        Ok(Some(Reader {
            store: Store::open_read_only(&db)?,
        }))
    }

    /// As [`Snapshotter::stat`].
    pub fn stat(&self, key: &Key) -> Result<Info> {
        let rec = self.store.get(key.as_str())?;
        self.store.info(&rec)
    }

    /// As [`Snapshotter::walk`].
    pub fn walk(&self, filters: &[Filter], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        for rec in self.store.ready()? {
            let info = self.store.info(&rec)?;
            if matches_any(filters, &info) {
                f(&info)?;
            }
        }
        Ok(())
    }
}

/// The storage underneath a [`Snapshots`]. Every method may be called again
/// after a crash for the same object, so each must be idempotent.
pub trait Backend: Send + fmt::Debug {
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;
    /// Why it cannot bound a snapshot's size (when
    /// [`Capabilities::bounds_size`] is false), and what would.
    fn why_unbounded(&self) -> String {
        "this backend cannot bound a snapshot's size; use dm-thin, zfs, or btrfs with quotas on, or drop the label".into()
    }
    /// Creates the object of a new active snapshot or view, with the
    /// labels given to `prepare`/`view` (a backend with
    /// [`Capabilities::max_size_label`] or [`Capabilities::bounds_size`]
    /// reads [`crate::types::MAX_SIZE_LABEL`]; [`Snapshots`] refuses that
    /// label before calling a backend with neither). On failure it may leave a partial object behind;
    /// [`Backend::remove`] deletes it.
    fn create(&mut self, obj: &Object<'_>, labels: &Labels) -> Result<()>;
    /// Makes active `obj` committed (read-only from now on). Calling it again
    /// when it is done or half-done completes it.
    fn commit(&mut self, obj: &Object<'_>) -> Result<()>;
    /// Makes `obj`, whose commit was cut before its record was done, the
    /// active snapshot it was before (writable, at its active path), from
    /// whatever state the cut commit left; calling it again completes it.
    /// Used for a remote client's snapshot, whose client saw the commit fail.
    fn uncommit(&mut self, obj: &Object<'_>) -> Result<()>;
    /// Deletes the object, whatever state it is in; an absent object is fine.
    fn remove(&mut self, id: SnapshotId) -> Result<()>;
    /// How to mount `obj`.
    fn mounts(&self, obj: &Object<'_>) -> Result<Vec<MountSpec>>;
    /// Space used by `obj` alone.
    fn usage(&self, obj: &Object<'_>) -> Result<Usage>;
    /// Ids of every object the backend holds.
    fn list(&self) -> Result<Vec<SnapshotId>>;
    /// The directory holding only `obj`'s own changes in overlayfs form
    /// (deletions as 0:0 character devices, opaque directories marked with
    /// the `trusted.overlay.opaque` xattr), if the backend keeps one; lets
    /// a diff skip comparing whole trees.
    fn upper_dir(&self, _obj: &Object<'_>) -> Option<PathBuf> {
        None
    }
    /// The paths (relative to the snapshot's root) that may differ from
    /// its parent, when the backend can list them more cheaply than by
    /// comparing trees (`btrfs send`, `zfs diff`); every differing path must
    /// be listed, except below a directory the parent lacks (all of which
    /// is new), extra ones are harmless. Called while `obj` is mounted (as
    /// `layer::diff_snapshot` does). `None`: compare the trees (a backend
    /// with [`Capabilities::lists_changes`] says so only when its tool
    /// fails or surprises it).
    fn changed_paths(&self, _obj: &Object<'_>) -> Result<Option<Vec<PathBuf>>> {
        Ok(None)
    }
}

struct Inner<B> {
    store: Option<Store>,
    backend: B,
    /// `ROOT/lock`, taken for each mutation (so processes sharing a root
    /// take turns); None for a store opened without a root lock.
    lock: Option<PathBuf>,
}

/// A [`Snapshotter`] over backend `B`.
pub struct Snapshots<B> {
    inner: Mutex<Inner<B>>,
    caps: Capabilities,
    root: PathBuf,
}

impl<B: Backend> fmt::Debug for Snapshots<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshots")
            .field("root", &self.root)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

/// Test hook: when the environment variable `THINBOX_CRASH_AT` names
/// `step`, the process kills itself there with SIGKILL, so tests prove
/// that a mutation cut at that step is settled by the next open. The
/// snapshotter's steps are `snapshot-VERB-recorded` (the intent is in the
/// store, the backend untouched) and `snapshot-VERB-made` (the backend
/// done, the store not yet), VERB one of prepare, view, commit, remove.
pub fn crash_point(step: &str) {
    if std::env::var_os("THINBOX_CRASH_AT").is_some_and(|v| v == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// [`crash_point`] at `snapshot-{verb}-{when}`, formatted only when the
/// hook is set.
fn crash_at(verb: &str, when: &str) {
    if std::env::var_os("THINBOX_CRASH_AT").is_some() {
        crash_point(&format!("snapshot-{verb}-{when}"));
    }
}

/// Takes the lock of a snapshotter root (`ROOT/lock`), waiting while
/// another process mutates it. Every mutation holds it from its intent to
/// its done record, so whoever holds it sees only intents of processes that
/// died: recovery runs under it.
pub fn lock_root(root: &Path) -> Result<Flock<File>> {
    std::fs::create_dir_all(root).map_err(|e| Error::io("open", root, e))?;
    let path = root.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| {
        Error::new(ErrorKind::Io, "lock")
            .path(&path)
            .detail("cannot lock the snapshotter root")
            .source(e)
    })
}

impl<B: Backend> Snapshots<B> {
    /// Opens a snapshotter whose metadata lives in `ROOT/metadata.db` and
    /// reconciles interrupted mutations. Other processes may open the same
    /// root: each mutation takes `ROOT/lock` for its duration.
    pub fn open(root: &Path, backend: B) -> Result<Snapshots<B>> {
        let held = lock_root(root)?;
        Self::open_locked(root, backend, held)
    }

    /// [`Snapshots::open`] for a caller already holding `ROOT/lock` (from
    /// [`lock_root`], to open the backend under it too); it is released
    /// once recovery is done.
    pub fn open_locked(root: &Path, backend: B, held: Flock<File>) -> Result<Snapshots<B>> {
        let store = Store::open(&root.join("metadata.db"))?;
        let s = Self::with_store(root, store, backend, Some(root.join("lock")))?;
        s.recover()?;
        drop(held);
        Ok(s)
    }

    /// A snapshotter over an already open store whose mutations take
    /// `lock` (None: the caller serialises them, as in tests). Recovers
    /// nothing: [`Snapshots::open`] does, under the lock.
    pub fn with_store(
        root: &Path,
        store: Store,
        backend: B,
        lock: Option<PathBuf>,
    ) -> Result<Snapshots<B>> {
        let caps = backend.capabilities();
        Ok(Snapshots {
            inner: Mutex::new(Inner {
                store: Some(store),
                backend,
                lock,
            }),
            caps,
            root: root.to_owned(),
        })
    }

    /// Takes `ROOT/lock` for one mutation (nothing when there is none).
    fn mutating(g: &Inner<B>) -> Result<Option<Flock<File>>> {
        match &g.lock {
            Some(path) => lock_root(path.parent().unwrap_or(Path::new("/"))).map(Some),
            None => Ok(None),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn guard(&self) -> MutexGuard<'_, Inner<B>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn parts<'a>(g: &'a mut Inner<B>, op: &'static str) -> Result<(&'a mut Store, &'a mut B)> {
        match g.store.as_mut() {
            Some(s) => Ok((s, &mut g.backend)),
            None => Err(Error::new(ErrorKind::Closed, op)),
        }
    }

    /// Finishes or undoes every intent left by an interrupted mutation.
    fn recover(&self) -> Result<()> {
        let mut g = self.guard();
        let (store, backend) = Self::parts(&mut g, "recover")?;
        for rec in store.pending()? {
            if let Err(e) = Self::settle(store, backend, &rec) {
                tracing::warn!("cannot settle interrupted snapshot {}: {e}", rec.id);
            }
        }
        Ok(())
    }

    fn settle(store: &mut Store, backend: &mut B, rec: &Record) -> Result<()> {
        match rec.state {
            State::Creating | State::Removing => {
                backend.remove(rec.id)?;
                store.delete("recover", rec.id)
            }
            State::Committing => {
                let parents = store.parents(rec.id)?;
                let obj = Object {
                    id: rec.id,
                    kind: Kind::Active,
                    parents: &parents,
                };
                // A remote client (containerd) saw the call fail and kept
                // the active snapshot in its own records: undo. Our own
                // callers finish what they began.
                if rec.old_key.as_deref().is_some_and(is_client_key) {
                    backend.uncommit(&obj)?;
                    store.abort_commit(rec.id)
                } else {
                    backend.commit(&obj)?;
                    store.finish("recover", rec.id)
                }
            }
            State::Ready => Ok(()),
        }
    }

    fn create(
        &self,
        op: &'static str,
        kind: Kind,
        key: &Key,
        parent: Option<&Name>,
        labels: &Labels,
    ) -> Result<Vec<MountSpec>> {
        validate_labels(labels)?;
        let sized = max_size(labels)?.is_some();
        let mut g = self.guard();
        let _held = Self::mutating(&g)?;
        if sized && !self.caps.max_size_label && !self.caps.bounds_size {
            return Err(Error::new(ErrorKind::InvalidArgument, op)
                .key(key)
                .detail(format!(
                    "label {MAX_SIZE_LABEL}: {}",
                    g.backend.why_unbounded()
                )));
        }
        let (store, backend) = Self::parts(&mut g, op)?;
        let rec = store.begin_create(
            op,
            key.as_str(),
            parent.map(Name::as_str),
            kind,
            labels,
            SystemTime::now(),
        )?;
        crash_at(op, "recorded");
        let parents = store.parents(rec.id)?;
        let obj = Object {
            id: rec.id,
            kind,
            parents: &parents,
        };
        let made = backend
            .create(&obj, labels)
            .and_then(|()| backend.mounts(&obj));
        match made {
            Ok(mounts) => {
                crash_at(op, "made");
                store.finish(op, rec.id)?;
                Ok(mounts)
            }
            Err(e) => {
                // Undo; if the backend cannot, the `creating` record stays
                // so that cleanup or the next open retries.
                match backend.remove(rec.id) {
                    Ok(()) => store.delete(op, rec.id)?,
                    Err(e2) => tracing::warn!("undo of failed {op} {key} deferred: {e2}"),
                }
                Err(e)
            }
        }
    }

    fn with_object<T>(
        &self,
        op: &'static str,
        key: &Key,
        f: impl FnOnce(&B, &Object<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut g = self.guard();
        let (store, backend) = Self::parts(&mut g, op)?;
        let rec = store.get(key.as_str()).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::new(ErrorKind::NotFound, op).key(key)
            } else {
                e
            }
        })?;
        let parents = store.parents(rec.id)?;
        f(
            backend,
            &Object {
                id: rec.id,
                kind: rec.kind,
                parents: &parents,
            },
        )
    }
}

impl<B: Backend> Snapshotter for Snapshots<B> {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn stat(&self, key: &Key) -> Result<Info> {
        let mut g = self.guard();
        let (store, _) = Self::parts(&mut g, "stat")?;
        let rec = store.get(key.as_str())?;
        store.info(&rec)
    }

    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        let key = Key::new(info.name.clone())?;
        let mut g = self.guard();
        let _held = Self::mutating(&g)?;
        let (store, _) = Self::parts(&mut g, "update")?;
        let rec = store.update(key.as_str(), &info.labels, fieldpaths, SystemTime::now())?;
        store.info(&rec)
    }

    fn usage(&self, key: &Key) -> Result<Usage> {
        self.with_object("usage", key, |b, obj| b.usage(obj))
    }

    fn mounts(&self, key: &Key) -> Result<Vec<MountSpec>> {
        self.with_object("mounts", key, |b, obj| {
            if obj.kind == Kind::Committed {
                return Err(Error::new(ErrorKind::InvalidArgument, "mounts")
                    .key(key)
                    .detail("committed snapshots are not mounted; view them instead"));
            }
            b.mounts(obj)
        })
    }

    fn prepare(&self, key: &Key, parent: Option<&Name>, labels: &Labels) -> Result<Vec<MountSpec>> {
        self.create("prepare", Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &Key, parent: Option<&Name>, labels: &Labels) -> Result<Vec<MountSpec>> {
        self.create("view", Kind::View, key, parent, labels)
    }

    fn commit(&self, name: &Name, key: &Key, labels: &Labels) -> Result<()> {
        validate_labels(labels)?;
        let mut g = self.guard();
        let _held = Self::mutating(&g)?;
        let (store, backend) = Self::parts(&mut g, "commit")?;
        let rec = store.begin_commit(key.as_str(), name.as_str(), labels, SystemTime::now())?;
        crash_at("commit", "recorded");
        let parents = store.parents(rec.id)?;
        let obj = Object {
            id: rec.id,
            kind: Kind::Active,
            parents: &parents,
        };
        if let Err(e) = backend.commit(&obj) {
            store.abort_commit(rec.id)?;
            return Err(e);
        }
        crash_at("commit", "made");
        store.finish("commit", rec.id)
    }

    fn remove(&self, key: &Key) -> Result<()> {
        let mut g = self.guard();
        let _held = Self::mutating(&g)?;
        let (store, backend) = Self::parts(&mut g, "remove")?;
        let rec = store.begin_remove(key.as_str())?;
        crash_at("remove", "recorded");
        match backend.remove(rec.id) {
            Ok(()) => {
                crash_at("remove", "made");
                store.delete("remove", rec.id)
            }
            Err(e) => {
                tracing::warn!("removal of {key} deferred to cleanup: {e}");
                Ok(())
            }
        }
    }

    fn walk(&self, filters: &[Filter], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        let infos = {
            let mut g = self.guard();
            let (store, _) = Self::parts(&mut g, "walk")?;
            let mut out = Vec::new();
            for rec in store.ready()? {
                let info = store.info(&rec)?;
                if matches_any(filters, &info) {
                    out.push(info);
                }
            }
            out
        };
        for info in &infos {
            f(info)?;
        }
        Ok(())
    }

    fn cleanup(&self) -> Result<()> {
        let mut g = self.guard();
        let _held = Self::mutating(&g)?;
        let (store, backend) = Self::parts(&mut g, "cleanup")?;
        let mut first_err = None;
        for rec in store.pending()? {
            if let Err(e) = Self::settle(store, backend, &rec) {
                first_err.get_or_insert(e);
            }
        }
        let known: std::collections::BTreeSet<SnapshotId> = store.all_ids()?.into_iter().collect();
        for id in backend.list()? {
            if !known.contains(&id) {
                if let Err(e) = backend.remove(id) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn upper_dir(&self, key: &Key) -> Result<Option<PathBuf>> {
        self.with_object("diff", key, |b, obj| Ok(b.upper_dir(obj)))
    }

    fn changed_paths(&self, key: &Key) -> Result<Option<Vec<PathBuf>>> {
        self.with_object("diff", key, |b, obj| b.changed_paths(obj))
    }

    fn close(&self) -> Result<()> {
        let mut g = self.guard();
        g.store = None;
        g.lock = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
