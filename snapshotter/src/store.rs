//! The metadata store: one SQLite database (bundled, embedded) holding every
//! snapshot's key, parent, kind, labels and times, plus the state of any
//! backend mutation in flight.
//!
//! The tables are prefixed `snapshotter_` so the database file can be shared
//! with thinpool's records. Every mutation of a backend object is bracketed
//! by two transactions: the *intent* (a record in state `creating`,
//! `committing` or `removing`) is written before the backend is touched, and
//! *done* (state `ready`, or the record deleted) after. On open,
//! [`crate::core::Snapshots`] finishes or undoes every intent it finds, so a
//! crash leaves neither a record without its backend object nor the reverse.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::error::{Error, ErrorKind, Result};
use crate::types::{Info, Kind, Labels};

/// The identity of a snapshot's backend object: the record's row id, never
/// reused (AUTOINCREMENT), stable across commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(pub u64);

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Intent recorded, backend object being created.
    Creating,
    /// Intent recorded, backend object being committed.
    Committing,
    /// Intent recorded, backend object being removed; the key is released.
    Removing,
    /// Backend object and record agree.
    Ready,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Committing => "committing",
            State::Removing => "removing",
            State::Ready => "ready",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "creating" => State::Creating,
            "committing" => State::Committing,
            "removing" => State::Removing,
            _ => State::Ready,
        }
    }
}

/// One snapshot's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Backend identity.
    pub id: SnapshotId,
    /// Key or name (None while being removed).
    pub key: Option<String>,
    /// The key before a commit or removal started.
    pub old_key: Option<String>,
    /// Parent record.
    pub parent: Option<SnapshotId>,
    /// Kind (already `Committed` while committing).
    pub kind: Kind,
    /// Life-cycle state.
    pub state: State,
    /// Creation time.
    pub created: SystemTime,
    /// Last update time.
    pub updated: SystemTime,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshotter_snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT UNIQUE,
    old_key TEXT,
    parent INTEGER REFERENCES snapshotter_snapshots(id),
    kind TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
    state TEXT NOT NULL CHECK (state IN ('creating', 'committing', 'removing', 'ready')),
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshotter_snapshots_parent ON snapshotter_snapshots(parent);
CREATE TABLE IF NOT EXISTS snapshotter_labels (
    snapshot INTEGER NOT NULL REFERENCES snapshotter_snapshots(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (snapshot, name)
);
";

fn to_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_ns(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

fn id_of(v: i64) -> SnapshotId {
    SnapshotId(u64::try_from(v).unwrap_or(0))
}

fn sql_id(id: SnapshotId) -> i64 {
    i64::try_from(id.0).unwrap_or(i64::MAX)
}

/// The store. Not `Sync`: callers wrap it in a lock.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

const COLUMNS: &str = "id, key, old_key, parent, kind, state, created_ns, updated_ns";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let kind: String = row.get(4)?;
    let state: String = row.get(5)?;
    Ok(Record {
        id: id_of(row.get(0)?),
        key: row.get(1)?,
        old_key: row.get(2)?,
        parent: row.get::<_, Option<i64>>(3)?.map(id_of),
        kind: kind.parse().unwrap_or(Kind::View),
        state: State::parse(&state),
        created: from_ns(row.get(6)?),
        updated: from_ns(row.get(7)?),
    })
}

fn get_by_key(tx: &Connection, key: &str) -> rusqlite::Result<Option<Record>> {
    tx.query_row(
        &format!("SELECT {COLUMNS} FROM snapshotter_snapshots WHERE key = ?1"),
        [key],
        row_to_record,
    )
    .optional()
}

fn get_by_id(tx: &Connection, id: SnapshotId) -> rusqlite::Result<Option<Record>> {
    tx.query_row(
        &format!("SELECT {COLUMNS} FROM snapshotter_snapshots WHERE id = ?1"),
        [sql_id(id)],
        row_to_record,
    )
    .optional()
}

fn labels_of(tx: &Connection, id: SnapshotId) -> rusqlite::Result<Labels> {
    let mut st =
        tx.prepare_cached("SELECT name, value FROM snapshotter_labels WHERE snapshot = ?1")?;
    let rows = st.query_map([sql_id(id)], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

fn set_labels(tx: &Connection, id: SnapshotId, labels: &Labels) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM snapshotter_labels WHERE snapshot = ?1",
        [sql_id(id)],
    )?;
    let mut st = tx.prepare_cached(
        "INSERT INTO snapshotter_labels (snapshot, name, value) VALUES (?1, ?2, ?3)",
    )?;
    for (k, v) in labels {
        st.execute(params![sql_id(id), k, v])?;
    }
    Ok(())
}

/// The metadata store's schema, opened through thinpool's one SQLite setup.
const SCHEMA_DEF: thinpool::sqlite::Schema = thinpool::sqlite::Schema {
    sql: SCHEMA,
    version: 1,
};

/// A store error from thinpool's SQLite setup, for `op` on `path`.
pub(crate) fn open_error(
    op: &'static str,
    path: Option<&Path>,
    e: thinpool::sqlite::OpenError,
) -> Error {
    let err = match e {
        thinpool::sqlite::OpenError::Sqlite(e) => Error::store(op, e),
        e @ thinpool::sqlite::OpenError::TooNew { .. } => Error::new(ErrorKind::Store, op)
            .detail(e.to_string())
            .source(e),
    };
    match path {
        Some(p) => err.path(p),
        None => err,
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = thinpool::sqlite::open(path, &SCHEMA_DEF)
            .map_err(|e| open_error("open metadata", Some(path), e))?;
        Ok(Store { conn })
    }

    /// Opens the existing database at `path` to read only, beside the
    /// process that has the snapshotter open (see [`crate::core::Reader`]).
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let conn = thinpool::sqlite::open_read_only(path, &SCHEMA_DEF)
            .map_err(|e| open_error("open metadata", Some(path), e))?;
        Ok(Store { conn })
    }

    /// Hands the syncing of this connection's commits to the caller:
    /// SQLite stops syncing its write-ahead log at each commit, and the
    /// caller syncs the returned file (the log, and its path) to make every
    /// commit so far durable, one sync for many commits ([`crate::core`]'s
    /// group commit). None, and SQLite keeps syncing each commit, for an
    /// in-memory store or a log it cannot open.
    pub fn defer_syncs(&mut self) -> Result<Option<(std::fs::File, std::path::PathBuf)>> {
        let Some(db) = self.conn.path().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let wal = std::path::PathBuf::from(format!("{db}-wal"));
        let Ok(file) = std::fs::File::open(&wal) else {
            return Ok(None);
        };
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| Error::store("open", e))?;
        Ok(Some((file, wal)))
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Store> {
        let conn = thinpool::sqlite::open_in_memory(&SCHEMA_DEF)
            .map_err(|e| open_error("open metadata", None, e))?;
        Ok(Store { conn })
    }

    fn tx(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
    }

    /// The ready record named `key`.
    pub fn get(&self, key: &str) -> Result<Record> {
        match get_by_key(&self.conn, key).map_err(|e| Error::store("stat", e))? {
            Some(r) if r.state == State::Ready => Ok(r),
            _ => Err(Error::new(ErrorKind::NotFound, "stat").key(key)),
        }
    }

    /// The full [`Info`] of a record.
    pub fn info(&self, rec: &Record) -> Result<Info> {
        let labels = labels_of(&self.conn, rec.id).map_err(|e| Error::store("stat", e))?;
        let parent = match rec.parent {
            Some(p) => get_by_id(&self.conn, p)
                .map_err(|e| Error::store("stat", e))?
                .and_then(|p| p.key),
            None => None,
        };
        Ok(Info {
            name: rec.key.clone().unwrap_or_default(),
            parent,
            kind: rec.kind,
            labels,
            created: rec.created,
            updated: rec.updated,
        })
    }

    /// The chain of parents of `id`, nearest first.
    pub fn parents(&self, id: SnapshotId) -> Result<Vec<SnapshotId>> {
        let mut out = Vec::new();
        let mut cur = get_by_id(&self.conn, id).map_err(|e| Error::store("parents", e))?;
        while let Some(p) = cur.and_then(|r| r.parent) {
            out.push(p);
            cur = get_by_id(&self.conn, p).map_err(|e| Error::store("parents", e))?;
        }
        Ok(out)
    }

    /// Intent to create: inserts a `creating` record for `key` (view or
    /// active) on `parent` (which must be committed).
    pub fn begin_create(
        &mut self,
        op: &'static str,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: &Labels,
        now: SystemTime,
    ) -> Result<Record> {
        let tx = self.tx().map_err(|e| Error::store(op, e))?;
        if get_by_key(&tx, key)
            .map_err(|e| Error::store(op, e))?
            .is_some()
        {
            return Err(Error::new(ErrorKind::AlreadyExists, op).key(key));
        }
        let parent_id = match parent {
            None => None,
            Some(p) => match get_by_key(&tx, p).map_err(|e| Error::store(op, e))? {
                Some(r) if r.state == State::Ready && r.kind == Kind::Committed => Some(r.id),
                Some(r) if r.state == State::Ready => {
                    return Err(Error::new(ErrorKind::ParentNotCommitted, op)
                        .key(p)
                        .detail(format!("the parent is {}; commit it first", r.kind)))
                }
                _ => {
                    return Err(Error::new(ErrorKind::NotFound, op)
                        .key(p)
                        .detail("parent does not exist"))
                }
            },
        };
        let ns = to_ns(now);
        tx.execute(
            "INSERT INTO snapshotter_snapshots (key, parent, kind, state, created_ns, updated_ns)
             VALUES (?1, ?2, ?3, 'creating', ?4, ?4)",
            params![key, parent_id.map(sql_id), kind.to_string(), ns],
        )
        .map_err(|e| Error::store(op, e))?;
        let id = id_of(tx.last_insert_rowid());
        set_labels(&tx, id, labels).map_err(|e| Error::store(op, e))?;
        let rec = get_by_id(&tx, id)
            .map_err(|e| Error::store(op, e))?
            .ok_or_else(|| Error::new(ErrorKind::Store, op).key(key))?;
        tx.commit().map_err(|e| Error::store(op, e))?;
        Ok(rec)
    }

    /// Done: the backend object matches the record.
    pub fn finish(&mut self, op: &'static str, id: SnapshotId) -> Result<()> {
        self.conn
            .execute(
                "UPDATE snapshotter_snapshots SET state = 'ready', old_key = NULL WHERE id = ?1",
                [sql_id(id)],
            )
            .map_err(|e| Error::store(op, e))?;
        Ok(())
    }

    /// Drops a record (after its backend object is gone).
    pub fn delete(&mut self, op: &'static str, id: SnapshotId) -> Result<()> {
        let tx = self.tx().map_err(|e| Error::store(op, e))?;
        tx.execute(
            "DELETE FROM snapshotter_labels WHERE snapshot = ?1",
            [sql_id(id)],
        )
        .map_err(|e| Error::store(op, e))?;
        tx.execute(
            "DELETE FROM snapshotter_snapshots WHERE id = ?1",
            [sql_id(id)],
        )
        .map_err(|e| Error::store(op, e))?;
        tx.commit().map_err(|e| Error::store(op, e))
    }

    /// Intent to commit active `key` as `name` with `labels`.
    pub fn begin_commit(
        &mut self,
        key: &str,
        name: &str,
        labels: &Labels,
        now: SystemTime,
    ) -> Result<Record> {
        let op = "commit";
        let tx = self.tx().map_err(|e| Error::store(op, e))?;
        let rec = match get_by_key(&tx, key).map_err(|e| Error::store(op, e))? {
            Some(r) if r.state == State::Ready => r,
            _ => return Err(Error::new(ErrorKind::NotFound, op).key(key)),
        };
        match rec.kind {
            Kind::Active => {}
            Kind::View => {
                return Err(Error::new(ErrorKind::CommitOfView, op)
                    .key(key)
                    .detail("views are read-only; prepare an active snapshot to commit"))
            }
            Kind::Committed => {
                return Err(Error::new(ErrorKind::NotActive, op)
                    .key(key)
                    .detail("already committed"))
            }
        }
        if get_by_key(&tx, name)
            .map_err(|e| Error::store(op, e))?
            .is_some()
        {
            return Err(Error::new(ErrorKind::AlreadyExists, op).key(name));
        }
        let ns = to_ns(now);
        tx.execute(
            "UPDATE snapshotter_snapshots SET key = ?2, old_key = ?3, kind = 'committed',
             state = 'committing', created_ns = ?4, updated_ns = ?4 WHERE id = ?1",
            params![sql_id(rec.id), name, key, ns],
        )
        .map_err(|e| Error::store(op, e))?;
        set_labels(&tx, rec.id, labels).map_err(|e| Error::store(op, e))?;
        let rec = get_by_id(&tx, rec.id)
            .map_err(|e| Error::store(op, e))?
            .ok_or_else(|| Error::new(ErrorKind::Store, op).key(key))?;
        tx.commit().map_err(|e| Error::store(op, e))?;
        Ok(rec)
    }

    /// Undoes [`Store::begin_commit`] after the backend refused the commit
    /// (the record becomes the active snapshot it was; labels given to
    /// commit are kept).
    pub fn abort_commit(&mut self, id: SnapshotId) -> Result<()> {
        self.conn
            .execute(
                "UPDATE snapshotter_snapshots SET key = old_key, old_key = NULL, kind = 'active',
                 state = 'ready' WHERE id = ?1 AND state = 'committing'",
                [sql_id(id)],
            )
            .map_err(|e| Error::store("commit", e))?;
        Ok(())
    }

    /// Intent to remove `key`: refused while children exist; releases the key.
    pub fn begin_remove(&mut self, key: &str) -> Result<Record> {
        let op = "remove";
        let tx = self.tx().map_err(|e| Error::store(op, e))?;
        let rec = match get_by_key(&tx, key).map_err(|e| Error::store(op, e))? {
            Some(r) if r.state == State::Ready => r,
            _ => return Err(Error::new(ErrorKind::NotFound, op).key(key)),
        };
        let children: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM snapshotter_snapshots WHERE parent = ?1",
                [sql_id(rec.id)],
                |r| r.get(0),
            )
            .map_err(|e| Error::store(op, e))?;
        if children > 0 {
            return Err(Error::new(ErrorKind::HasChildren, op)
                .key(key)
                .detail(format!(
                    "cannot remove a snapshot with {children} children; remove them first"
                )));
        }
        tx.execute(
            "UPDATE snapshotter_snapshots SET key = NULL, old_key = ?2, state = 'removing'
             WHERE id = ?1",
            params![sql_id(rec.id), key],
        )
        .map_err(|e| Error::store(op, e))?;
        tx.commit().map_err(|e| Error::store(op, e))?;
        Ok(Record {
            key: None,
            old_key: Some(key.to_owned()),
            state: State::Removing,
            ..rec
        })
    }

    /// Records whose intent was not completed.
    pub fn pending(&self) -> Result<Vec<Record>> {
        self.select("WHERE state != 'ready' ORDER BY id DESC", "recover")
    }

    /// Every ready record.
    pub fn ready(&self) -> Result<Vec<Record>> {
        self.select("WHERE state = 'ready' ORDER BY id", "walk")
    }

    /// The ids of every record, whatever its state.
    pub fn all_ids(&self) -> Result<Vec<SnapshotId>> {
        Ok(self
            .select("ORDER BY id", "cleanup")?
            .into_iter()
            .map(|r| r.id)
            .collect())
    }

    fn select(&self, clause: &str, op: &'static str) -> Result<Vec<Record>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM snapshotter_snapshots {clause}"
            ))
            .map_err(|e| Error::store(op, e))?;
        let rows = st
            .query_map([], row_to_record)
            .map_err(|e| Error::store(op, e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::store(op, e))
    }

    /// Applies a containerd-style update of labels to `key`.
    ///
    /// `fieldpaths` empty or containing `labels` replaces all labels;
    /// `labels.NAME` sets (or, when absent from `labels`, deletes) one label.
    /// Any other path is immutable.
    pub fn update(
        &mut self,
        key: &str,
        labels: &Labels,
        fieldpaths: &[&str],
        now: SystemTime,
    ) -> Result<Record> {
        let op = "update";
        let tx = self.tx().map_err(|e| Error::store(op, e))?;
        let rec = match get_by_key(&tx, key).map_err(|e| Error::store(op, e))? {
            Some(r) if r.state == State::Ready => r,
            _ => return Err(Error::new(ErrorKind::NotFound, op).key(key)),
        };
        let mut current = labels_of(&tx, rec.id).map_err(|e| Error::store(op, e))?;
        if fieldpaths.is_empty() || fieldpaths.contains(&"labels") {
            current = labels.clone();
        }
        for path in fieldpaths {
            if *path == "labels" {
                continue;
            }
            match path.strip_prefix("labels.") {
                Some(l) => match labels.get(l) {
                    Some(v) => {
                        current.insert(l.to_owned(), v.clone());
                    }
                    None => {
                        current.remove(l);
                    }
                },
                None => {
                    return Err(Error::new(ErrorKind::InvalidArgument, op).key(key).detail(
                        format!("field {path:?} is immutable; only labels can be updated"),
                    ))
                }
            }
        }
        crate::types::validate_labels(&current)?;
        set_labels(&tx, rec.id, &current).map_err(|e| Error::store(op, e))?;
        tx.execute(
            "UPDATE snapshotter_snapshots SET updated_ns = ?2 WHERE id = ?1",
            params![sql_id(rec.id), to_ns(now)],
        )
        .map_err(|e| Error::store(op, e))?;
        let rec = get_by_id(&tx, rec.id)
            .map_err(|e| Error::store(op, e))?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, op).key(key))?;
        tx.commit().map_err(|e| Error::store(op, e))?;
        Ok(rec)
    }

    /// Test hook: inserts a record in any state, as a crash would leave it.
    #[doc(hidden)]
    pub fn insert_raw(
        &mut self,
        key: Option<&str>,
        old_key: Option<&str>,
        parent: Option<SnapshotId>,
        kind: Kind,
        state: State,
    ) -> Result<SnapshotId> {
        self.conn
            .execute(
                "INSERT INTO snapshotter_snapshots (key, old_key, parent, kind, state, created_ns, updated_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, 0)",
                params![key, old_key, parent.map(sql_id), kind.to_string(), state.as_str()],
            )
            .map_err(|e| Error::store("insert", e))?;
        Ok(id_of(self.conn.last_insert_rowid()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn deferred_syncs_hand_over_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metadata.db");
        let mut s = Store::open(&db).unwrap();
        let synchronous = |s: &Store| -> i64 {
            s.conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(synchronous(&s), 2, "FULL until handed over");
        let (_, wal) = s.defer_syncs().unwrap().expect("the log");
        assert_eq!(wal, dir.path().join("metadata.db-wal"));
        assert_eq!(synchronous(&s), 1, "NORMAL: the caller syncs");
        assert!(Store::open_in_memory()
            .unwrap()
            .defer_syncs()
            .unwrap()
            .is_none());
    }

    #[test]
    fn create_commit_remove_cycle() {
        let mut s = Store::open_in_memory().unwrap();
        let r = s
            .begin_create("prepare", "a", None, Kind::Active, &Labels::new(), now())
            .unwrap();
        assert_eq!(r.state, State::Creating);
        // Not visible until done.
        assert_eq!(s.get("a").unwrap_err().kind(), ErrorKind::NotFound);
        s.finish("prepare", r.id).unwrap();
        assert_eq!(s.get("a").unwrap().kind, Kind::Active);

        let c = s.begin_commit("a", "c", &Labels::new(), now()).unwrap();
        assert_eq!(c.id, r.id);
        assert_eq!(c.old_key.as_deref(), Some("a"));
        s.finish("commit", c.id).unwrap();
        assert_eq!(s.get("c").unwrap().kind, Kind::Committed);
        assert!(s.get("a").is_err());

        let child = s
            .begin_create("view", "v", Some("c"), Kind::View, &Labels::new(), now())
            .unwrap();
        s.finish("view", child.id).unwrap();
        assert_eq!(s.parents(child.id).unwrap(), vec![c.id]);
        assert_eq!(
            s.begin_remove("c").unwrap_err().kind(),
            ErrorKind::HasChildren
        );
        let r = s.begin_remove("v").unwrap();
        s.delete("remove", r.id).unwrap();
        let r = s.begin_remove("c").unwrap();
        // The key is free again while the removal is pending.
        let again = s
            .begin_create("prepare", "c", None, Kind::Active, &Labels::new(), now())
            .unwrap();
        assert_ne!(again.id, r.id);
        s.delete("remove", r.id).unwrap();
    }

    #[test]
    fn parent_rules() {
        let mut s = Store::open_in_memory().unwrap();
        let a = s
            .begin_create("prepare", "a", None, Kind::Active, &Labels::new(), now())
            .unwrap();
        s.finish("prepare", a.id).unwrap();
        let e = s
            .begin_create(
                "prepare",
                "b",
                Some("a"),
                Kind::Active,
                &Labels::new(),
                now(),
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ParentNotCommitted);
        let e = s
            .begin_create(
                "prepare",
                "b",
                Some("zz"),
                Kind::Active,
                &Labels::new(),
                now(),
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = s
            .begin_create("prepare", "a", None, Kind::Active, &Labels::new(), now())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    }

    #[test]
    fn commit_rules_and_abort() {
        let mut s = Store::open_in_memory().unwrap();
        let v = s
            .begin_create("view", "v", None, Kind::View, &Labels::new(), now())
            .unwrap();
        s.finish("view", v.id).unwrap();
        let e = s.begin_commit("v", "x", &Labels::new(), now()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CommitOfView);
        let a = s
            .begin_create("prepare", "a", None, Kind::Active, &Labels::new(), now())
            .unwrap();
        s.finish("prepare", a.id).unwrap();
        let e = s.begin_commit("a", "v", &Labels::new(), now()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        s.begin_commit("a", "c", &Labels::new(), now()).unwrap();
        s.abort_commit(a.id).unwrap();
        assert_eq!(s.get("a").unwrap().kind, Kind::Active);
        s.begin_commit("a", "c", &Labels::new(), now()).unwrap();
        s.finish("commit", a.id).unwrap();
        let e = s.begin_commit("c", "d", &Labels::new(), now()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotActive);
    }

    #[test]
    fn update_labels_by_field_path() {
        let mut s = Store::open_in_memory().unwrap();
        let l = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let a = s
            .begin_create(
                "prepare",
                "a",
                None,
                Kind::Active,
                &l(&[("keep", "1")]),
                now(),
            )
            .unwrap();
        s.finish("prepare", a.id).unwrap();
        let r = s
            .update("a", &l(&[("l1", "v1"), ("l2", "v2")]), &[], now())
            .unwrap();
        assert_eq!(s.info(&r).unwrap().labels, l(&[("l1", "v1"), ("l2", "v2")]));
        let r = s
            .update(
                "a",
                &l(&[("l1", "x"), ("l4", "v4")]),
                &["labels.l1", "labels.l2"],
                now(),
            )
            .unwrap();
        assert_eq!(s.info(&r).unwrap().labels, l(&[("l1", "x")]));
        let e = s
            .update("a", &Labels::new(), &["parent"], now())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}
