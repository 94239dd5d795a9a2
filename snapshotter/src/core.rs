//! The [`Snapshotter`] trait and [`Snapshots`], the one implementation of
//! its semantics over any [`Backend`].
//!
//! [`Snapshots`] owns the metadata [`Store`] and enforces every rule (keys
//! unique, parents committed, no removal while children exist, views never
//! committed); a [`Backend`] only creates, commits, removes, mounts and
//! measures the objects it is told about, by [`SnapshotId`]. Each backend
//! mutation is bracketed by an intent and a done record in the store, and
//! [`Snapshots::open`] reconciles whatever a crash left in between.
//!
//! Only the records take turns: each mutation holds the store's mutex for
//! its intent and again for its done record, and runs the backend's work
//! between them unlocked, so many calls at once (containerd's, through
//! `thinbox serve`) overlap their snapshot ioctls, mounts and tool runs.
//! Whoever settles interrupted intents (open, cleanup) takes the root's
//! lock exclusively, which every mutation in flight holds shared, so it
//! sees only the intents of callers that died.
//!
//! Durability is a group commit: SQLite does not sync the log at each
//! commit; a mutation syncs it before the backend acts on an intent (commit,
//! remove) and before it returns, and one sync covers every commit before
//! it, so calls at once share their syncs. A create's intent alone goes
//! unsynced: lost, it leaves an object without a record, which cleanup
//! removes.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
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
///
/// Its methods are called from many threads at once, each for a different
/// object (the store never hands out one object to two mutations), so a
/// backend with shared state guards it itself.
pub trait Backend: Send + Sync + fmt::Debug {
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
    fn create(&self, obj: &Object<'_>, labels: &Labels) -> Result<()>;
    /// Makes active `obj` committed (read-only from now on). Calling it again
    /// when it is done or half-done completes it.
    fn commit(&self, obj: &Object<'_>) -> Result<()>;
    /// Makes `obj`, whose commit was cut before its record was done, the
    /// active snapshot it was before (writable, at its active path), from
    /// whatever state the cut commit left; calling it again completes it.
    /// Used for a remote client's snapshot, whose client saw the commit fail.
    fn uncommit(&self, obj: &Object<'_>) -> Result<()>;
    /// Deletes the object, whatever state it is in; an absent object is fine.
    fn remove(&self, id: SnapshotId) -> Result<()>;
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

/// A [`Snapshotter`] over backend `B`.
pub struct Snapshots<B> {
    /// The records; None once closed. Held only for a record's commit.
    store: Mutex<Option<Store>>,
    backend: B,
    /// `ROOT/lock`, taken shared by each mutation and exclusively by
    /// whoever settles interrupted ones (so processes sharing a root see
    /// each other's intents in flight); None for a store opened without a
    /// root lock.
    lock: Option<PathBuf>,
    /// The same rule inside this process: mutations read, settling writes
    /// (a root without a lock file still keeps cleanup off intents in
    /// flight).
    settling: RwLock<()>,
    /// The store's write-ahead log, synced for durability (None: SQLite
    /// syncs each commit itself).
    wal: Option<(File, PathBuf)>,
    /// Commits made that must be durable, and how many of them are.
    committed: AtomicU64,
    synced: Mutex<u64>,
    /// Syncs of the log so far.
    syncs: AtomicU64,
    caps: Capabilities,
    root: PathBuf,
}

/// What a mutation holds from its intent to its done record.
struct InFlight<'a> {
    _settling: RwLockReadGuard<'a, ()>,
    _root: Option<Flock<File>>,
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

/// Takes the lock of a snapshotter root (`ROOT/lock`) exclusively, waiting
/// while mutations are in flight. Every mutation holds it shared from its
/// intent to its done record, so whoever holds it exclusively sees only
/// intents of processes that died: recovery runs under it.
pub fn lock_root(root: &Path) -> Result<Flock<File>> {
    flock_root(root, FlockArg::LockExclusive)
}

fn flock_root(root: &Path, how: FlockArg) -> Result<Flock<File>> {
    std::fs::create_dir_all(root).map_err(|e| Error::io("open", root, e))?;
    let path = root.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    Flock::lock(file, how).map_err(|(_, e)| {
        Error::new(ErrorKind::Io, "lock")
            .path(&path)
            .detail("cannot lock the snapshotter root")
            .source(e)
    })
}

impl<B: Backend> Snapshots<B> {
    /// Opens a snapshotter whose metadata lives in `ROOT/metadata.db` and
    /// reconciles interrupted mutations. Other processes may open the same
    /// root: each mutation holds `ROOT/lock` shared for its duration.
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
        mut store: Store,
        backend: B,
        lock: Option<PathBuf>,
    ) -> Result<Snapshots<B>> {
        let caps = backend.capabilities();
        let wal = store.defer_syncs()?;
        Ok(Snapshots {
            store: Mutex::new(Some(store)),
            backend,
            lock,
            settling: RwLock::new(()),
            wal,
            committed: AtomicU64::new(0),
            synced: Mutex::new(0),
            syncs: AtomicU64::new(0),
            caps,
            root: root.to_owned(),
        })
    }

    /// What one mutation holds for its duration: `ROOT/lock` shared
    /// (nothing when there is none), and this process's settling lock.
    fn mutating(&self) -> Result<InFlight<'_>> {
        if self.guard().is_none() {
            return Err(Error::new(ErrorKind::Closed, "mutate"));
        }
        let settling = self.settling.read().unwrap_or_else(|p| p.into_inner());
        let root = match &self.lock {
            Some(path) => Some(flock_root(
                path.parent().unwrap_or(Path::new("/")),
                FlockArg::LockShared,
            )?),
            None => None,
        };
        Ok(InFlight {
            _settling: settling,
            _root: root,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn guard(&self) -> MutexGuard<'_, Option<Store>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the store, under its mutex (a record's commit, never a
    /// backend's work).
    fn records<T>(&self, op: &'static str, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        match self.guard().as_mut() {
            Some(store) => f(store),
            None => Err(Error::new(ErrorKind::Closed, op)),
        }
    }

    /// [`Snapshots::records`] for a commit that must be durable before the
    /// caller goes on: it returns once the log is synced past it.
    fn durable<T>(&self, op: &'static str, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        let (out, seq) = {
            let mut g = self.guard();
            let Some(store) = g.as_mut() else {
                return Err(Error::new(ErrorKind::Closed, op));
            };
            let out = f(store)?;
            (out, self.committed.fetch_add(1, Ordering::SeqCst) + 1)
        };
        self.sync_through(seq)?;
        Ok(out)
    }

    /// Syncs the log unless a sync since commit `seq` already did: whoever
    /// syncs covers every commit made before it starts, and the callers
    /// waiting meanwhile find their commits covered.
    fn sync_through(&self, seq: u64) -> Result<()> {
        let Some((wal, path)) = &self.wal else {
            return Ok(());
        };
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced >= seq {
            return Ok(());
        }
        let covered = self.committed.load(Ordering::SeqCst);
        wal.sync_data().map_err(|e| Error::io("sync", path, e))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        *synced = covered;
        Ok(())
    }

    /// Makes what settling committed durable.
    fn sync_all(&self) -> Result<()> {
        self.sync_through(self.committed.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Finishes or undoes every intent left by an interrupted mutation
    /// (the caller holds `ROOT/lock` exclusively).
    fn recover(&self) -> Result<()> {
        let _settling = self.settling.write().unwrap_or_else(|p| p.into_inner());
        let mut g = self.guard();
        let Some(store) = g.as_mut() else {
            return Err(Error::new(ErrorKind::Closed, "recover"));
        };
        for rec in store.pending()? {
            if let Err(e) = Self::settle(store, &self.backend, &rec) {
                tracing::warn!("cannot settle interrupted snapshot {}: {e}", rec.id);
            }
        }
        drop(g);
        self.sync_all()
    }

    fn settle(store: &mut Store, backend: &B, rec: &Record) -> Result<()> {
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
        if sized && !self.caps.max_size_label && !self.caps.bounds_size {
            return Err(Error::new(ErrorKind::InvalidArgument, op)
                .key(key)
                .detail(format!(
                    "label {MAX_SIZE_LABEL}: {}",
                    self.backend.why_unbounded()
                )));
        }
        let _held = self.mutating()?;
        let (rec, parents) = self.records(op, |store| {
            let rec = store.begin_create(
                op,
                key.as_str(),
                parent.map(Name::as_str),
                kind,
                labels,
                SystemTime::now(),
            )?;
            let parents = store.parents(rec.id)?;
            Ok((rec, parents))
        })?;
        crash_at(op, "recorded");
        let obj = Object {
            id: rec.id,
            kind,
            parents: &parents,
        };
        let made = self
            .backend
            .create(&obj, labels)
            .and_then(|()| self.backend.mounts(&obj));
        match made {
            Ok(mounts) => {
                crash_at(op, "made");
                self.durable(op, |store| store.finish(op, rec.id))?;
                Ok(mounts)
            }
            Err(e) => {
                // Undo; if the backend cannot, the `creating` record stays
                // so that cleanup or the next open retries.
                match self.backend.remove(rec.id) {
                    Ok(()) => self.durable(op, |store| store.delete(op, rec.id))?,
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
        let (rec, parents) = self.records(op, |store| {
            let rec = store.get(key.as_str()).map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Error::new(ErrorKind::NotFound, op).key(key)
                } else {
                    e
                }
            })?;
            let parents = store.parents(rec.id)?;
            Ok((rec, parents))
        })?;
        f(
            &self.backend,
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
        self.records("stat", |store| {
            let rec = store.get(key.as_str())?;
            store.info(&rec)
        })
    }

    fn update(&self, info: &Info, fieldpaths: &[&str]) -> Result<Info> {
        let key = Key::new(info.name.clone())?;
        let _held = self.mutating()?;
        self.durable("update", |store| {
            let rec = store.update(key.as_str(), &info.labels, fieldpaths, SystemTime::now())?;
            store.info(&rec)
        })
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
        let _held = self.mutating()?;
        let (rec, parents) = self.durable("commit", |store| {
            let rec = store.begin_commit(key.as_str(), name.as_str(), labels, SystemTime::now())?;
            let parents = store.parents(rec.id)?;
            Ok((rec, parents))
        })?;
        crash_at("commit", "recorded");
        let obj = Object {
            id: rec.id,
            kind: Kind::Active,
            parents: &parents,
        };
        if let Err(e) = self.backend.commit(&obj) {
            self.durable("commit", |store| store.abort_commit(rec.id))?;
            return Err(e);
        }
        crash_at("commit", "made");
        self.durable("commit", |store| store.finish("commit", rec.id))
    }

    fn remove(&self, key: &Key) -> Result<()> {
        let _held = self.mutating()?;
        let rec = self.durable("remove", |store| store.begin_remove(key.as_str()))?;
        crash_at("remove", "recorded");
        match self.backend.remove(rec.id) {
            Ok(()) => {
                crash_at("remove", "made");
                self.durable("remove", |store| store.delete("remove", rec.id))
            }
            Err(e) => {
                tracing::warn!("removal of {key} deferred to cleanup: {e}");
                Ok(())
            }
        }
    }

    fn walk(&self, filters: &[Filter], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        let infos = self.records("walk", |store| {
            let mut out = Vec::new();
            for rec in store.ready()? {
                let info = store.info(&rec)?;
                if matches_any(filters, &info) {
                    out.push(info);
                }
            }
            Ok(out)
        })?;
        for info in &infos {
            f(info)?;
        }
        Ok(())
    }

    fn cleanup(&self) -> Result<()> {
        // Settling needs every mutation in flight, here and in other
        // processes, to be done first: their intents are not interrupted.
        let _settling = self.settling.write().unwrap_or_else(|p| p.into_inner());
        let _held = match &self.lock {
            Some(path) => Some(lock_root(path.parent().unwrap_or(Path::new("/")))?),
            None => None,
        };
        let mut g = self.guard();
        let Some(store) = g.as_mut() else {
            return Err(Error::new(ErrorKind::Closed, "cleanup"));
        };
        let mut first_err = None;
        for rec in store.pending()? {
            if let Err(e) = Self::settle(store, &self.backend, &rec) {
                first_err.get_or_insert(e);
            }
        }
        let known: std::collections::BTreeSet<SnapshotId> = store.all_ids()?.into_iter().collect();
        for id in self.backend.list()? {
            if !known.contains(&id) {
                if let Err(e) = self.backend.remove(id) {
                    first_err.get_or_insert(e);
                }
            }
        }
        drop(g);
        self.sync_all()?;
        first_err.map_or(Ok(()), Err)
    }

    fn upper_dir(&self, key: &Key) -> Result<Option<PathBuf>> {
        self.with_object("diff", key, |b, obj| Ok(b.upper_dir(obj)))
    }

    fn changed_paths(&self, key: &Key) -> Result<Option<Vec<PathBuf>>> {
        self.with_object("diff", key, |b, obj| b.changed_paths(obj))
    }

    fn close(&self) -> Result<()> {
        *self.guard() = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
