//! The record store: crash-safe intent/done records for every pool mutation.
//!
//! **Why SQLite (rusqlite, bundled) rather than redb.** The records must
//! survive a SIGKILL or power cut at any instant, and one mutation touches
//! more than one record (the operation log *and* the thin device's row, and
//! later the snapshotter's snapshot rows): that needs multi-table ACID
//! transactions, which SQLite gives with `journal_mode=WAL` and
//! `synchronous=FULL` and has been crash-tested for two decades. The
//! snapshotter's metadata needs secondary lookups (by name, by parent, by
//! label) that SQL indexes express directly, where redb, a typed key-value
//! store, would need hand-maintained index tables. Operators can inspect and
//! repair the file with the stock `sqlite3` shell, and schema upgrades are
//! ordinary migrations keyed by `PRAGMA user_version`. The price is a C
//! library compiled into the binary (`bundled`, so no system libsqlite3 and
//! no version skew) instead of redb's pure Rust; we judged the maturity of the
//! on-disk format and the query power worth that.
//!
//! **Protocol.** Before a kernel mutation the caller records an [`Intent`]
//! naming the thin id, the operation and the pool transaction id before and
//! after (`txn_from` → `txn_to`); after the kernel call and the
//! `set_transaction_id` message it marks the operation done. Both writes are
//! single SQLite transactions. On open, any operation still in the intent
//! state is resolved by comparing the pool's transaction id with
//! `txn_from`/`txn_to` (see `pool::reconcile`).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, ErrorKind, Result};
use crate::units::{Sectors, ThinId, TransactionId};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS config (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS thins (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    size    INTEGER NOT NULL,
    origin  INTEGER,
    state   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ops (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    kind      TEXT NOT NULL,
    thin_id   INTEGER NOT NULL,
    name      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    origin    INTEGER,
    txn_from  INTEGER NOT NULL,
    txn_to    INTEGER NOT NULL,
    state     TEXT NOT NULL
);
";

/// The kind of a recorded mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `create_thin`.
    Create,
    /// `create_snap` of `origin`.
    Snapshot,
    /// `delete`.
    Delete,
    /// A thin device grown to `size` (its live table reloaded when active).
    Resize,
}

impl OpKind {
    fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Snapshot => "snapshot",
            OpKind::Delete => "delete",
            OpKind::Resize => "resize",
        }
    }
    fn parse(s: &str) -> Result<OpKind> {
        match s {
            "create" => Ok(OpKind::Create),
            "snapshot" => Ok(OpKind::Snapshot),
            "delete" => Ok(OpKind::Delete),
            "resize" => Ok(OpKind::Resize),
            _ => Err(Error::parse(
                "operation kind",
                s,
                "expected create, snapshot, delete or resize",
            )),
        }
    }
}

/// A mutation about to be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// What.
    pub kind: OpKind,
    /// The thin id created, deleted or resized.
    pub thin_id: ThinId,
    /// The thin device's name.
    pub name: String,
    /// Its virtual size (for a resize, the new size).
    pub size: Sectors,
    /// For snapshots, the origin.
    pub origin: Option<ThinId>,
    /// The pool's transaction id before.
    pub txn_from: TransactionId,
    /// The pool's transaction id after.
    pub txn_to: TransactionId,
}

/// The state of a recorded operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    /// Recorded before the kernel call; not yet known to be done.
    Intent,
    /// The kernel call and transaction id update completed.
    Done,
    /// Undone during reconciliation.
    RolledBack,
}

impl OpState {
    fn as_str(self) -> &'static str {
        match self {
            OpState::Intent => "intent",
            OpState::Done => "done",
            OpState::RolledBack => "rolled_back",
        }
    }
    fn parse(s: &str) -> Result<OpState> {
        match s {
            "intent" => Ok(OpState::Intent),
            "done" => Ok(OpState::Done),
            "rolled_back" => Ok(OpState::RolledBack),
            _ => Err(Error::parse(
                "operation state",
                s,
                "expected intent, done or rolled_back",
            )),
        }
    }
}

/// A recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    /// Sequence number.
    pub seq: i64,
    /// The intent.
    pub intent: Intent,
    /// Its state.
    pub state: OpState,
}

/// The state of a recorded thin device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinState {
    /// Being created (an intent is pending).
    Creating,
    /// Exists in the pool.
    Ready,
    /// Being deleted (an intent is pending).
    Deleting,
    /// Recorded but the pool does not have it (found during reconciliation).
    Missing,
}

impl ThinState {
    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ThinState::Creating => "creating",
            ThinState::Ready => "ready",
            ThinState::Deleting => "deleting",
            ThinState::Missing => "missing",
        }
    }
    fn parse(s: &str) -> Result<ThinState> {
        match s {
            "creating" => Ok(ThinState::Creating),
            "ready" => Ok(ThinState::Ready),
            "deleting" => Ok(ThinState::Deleting),
            "missing" => Ok(ThinState::Missing),
            _ => Err(Error::parse(
                "thin state",
                s,
                "expected creating, ready, deleting or missing",
            )),
        }
    }
}

/// A recorded thin device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinRecord {
    /// Its id in the pool.
    pub id: ThinId,
    /// Its name.
    pub name: String,
    /// Its virtual size.
    pub size: Sectors,
    /// The origin it was snapshotted from.
    pub origin: Option<ThinId>,
    /// Its state.
    pub state: ThinState,
}

type OpRow = (i64, String, u32, String, i64, Option<u32>, i64, i64, String);
type ThinRow = (u32, String, i64, Option<u32>, String);

/// The store: one SQLite file.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn db_err(e: rusqlite::Error, path: &Path) -> Error {
    Error::new(ErrorKind::Store).path(path).with_source(e)
}

fn u64_of(v: i64) -> u64 {
    v as u64
}

fn i64_of(v: u64) -> i64 {
    v as i64
}

/// The config key of [`Store::ids_checked_at`].
const IDS_CHECKED: &str = "ids_checked_txn";

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let schema = crate::sqlite::Schema {
            sql: SCHEMA,
            version: SCHEMA_VERSION,
        };
        let conn = crate::sqlite::open(path, &schema).map_err(|e| match e {
            crate::sqlite::OpenError::Sqlite(e) => db_err(e, path).op("open record store"),
            crate::sqlite::OpenError::TooNew { found, understood } => Error::parse(
                "record store schema version",
                &found.to_string(),
                format!("this thinbox understands up to {understood}: upgrade thinbox"),
            )
            .path(path),
        })?;
        Ok(Store {
            conn,
            path: path.to_owned(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error, op: &'static str) -> Error {
        db_err(e, &self.path).op(op)
    }

    /// Sets a configuration value.
    pub fn set_config(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO config(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(|e| self.err(e, "write configuration"))?;
        Ok(())
    }

    /// Removes a configuration value.
    pub fn remove_config(&self, key: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM config WHERE key = ?1", [key])
            .map_err(|e| self.err(e, "write configuration"))?;
        Ok(())
    }

    /// A configuration value.
    pub fn config(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM config WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e, "read configuration"))
    }

    /// The transaction id at which the thin rows were last known to match
    /// the pool's thin ids: set by a full comparison (thin_ls) that found
    /// them equal, carried forward by each operation thinbox settles from
    /// that transaction id, and so unchanged by anything else. An open that
    /// finds the pool at this id, with nothing pending, need not compare.
    pub fn ids_checked_at(&self) -> Result<Option<TransactionId>> {
        self.config(IDS_CHECKED)?.map(|s| s.parse()).transpose()
    }

    /// Records that the thin rows match the pool's ids at `txn` (None:
    /// not known to).
    pub fn set_ids_checked_at(&self, txn: Option<TransactionId>) -> Result<()> {
        match txn {
            Some(t) => self.set_config(IDS_CHECKED, &t.to_string()),
            None => self.remove_config(IDS_CHECKED),
        }
    }

    /// The transaction id the records expect the pool to have.
    pub fn expected_txn(&self) -> Result<TransactionId> {
        match self.config("txn")? {
            Some(s) => s.parse(),
            None => Ok(TransactionId(0)),
        }
    }

    /// Records an intent (and the thin row it affects) in one transaction.
    pub fn begin(&mut self, i: &Intent) -> Result<i64> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_err(e, &path).op("record intent"))?;
        tx.execute(
            "INSERT INTO ops(kind, thin_id, name, size, origin, txn_from, txn_to, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'intent')",
            params![
                i.kind.as_str(),
                i.thin_id.get(),
                i.name,
                i64_of(i.size.get()),
                i.origin.map(ThinId::get),
                i64_of(i.txn_from.0),
                i64_of(i.txn_to.0)
            ],
        )
        .map_err(|e| db_err(e, &path).op("record intent"))?;
        let seq = tx.last_insert_rowid();
        let r = match i.kind {
            OpKind::Create | OpKind::Snapshot => tx.execute(
                "INSERT INTO thins(id, name, size, origin, state) VALUES (?1, ?2, ?3, ?4, 'creating')",
                params![i.thin_id.get(), i.name, i64_of(i.size.get()), i.origin.map(ThinId::get)],
            ),
            OpKind::Delete => tx.execute(
                "UPDATE thins SET state = 'deleting' WHERE id = ?1",
                params![i.thin_id.get()],
            ),
            // The row keeps its old size (and stays usable) until done.
            OpKind::Resize => Ok(0),
        };
        match r {
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(Error::new(ErrorKind::NameTaken {
                    name: i.name.clone(),
                })
                .op("record intent"));
            }
            r => {
                r.map_err(|e| db_err(e, &path).op("record intent"))?;
            }
        }
        tx.commit()
            .map_err(|e| db_err(e, &path).op("record intent"))?;
        Ok(seq)
    }

    /// Marks an operation done: the thin row becomes ready (or goes away for
    /// a delete, or takes the new size for a resize), and the expected
    /// transaction id advances.
    pub fn finish(&mut self, seq: i64) -> Result<()> {
        self.settle(seq, OpState::Done)
    }

    /// Marks an operation rolled back: a half-made thin row goes away (a
    /// delete's row becomes ready again), the expected transaction id stays.
    pub fn roll_back(&mut self, seq: i64) -> Result<()> {
        self.settle(seq, OpState::RolledBack)
    }

    fn settle(&mut self, seq: i64, state: OpState) -> Result<()> {
        let op = self.op(seq)?;
        let path = self.path.clone();
        let e = |e| db_err(e, &path).op("record completion");
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute(
            "UPDATE ops SET state = ?1 WHERE seq = ?2",
            params![state.as_str(), seq],
        )
        .map_err(e)?;
        let id = op.intent.thin_id.get();
        match (op.intent.kind, state) {
            (OpKind::Create | OpKind::Snapshot, OpState::Done)
            | (OpKind::Delete, OpState::RolledBack) => {
                tx.execute("UPDATE thins SET state = 'ready' WHERE id = ?1", [id])
                    .map_err(e)?;
            }
            (OpKind::Create | OpKind::Snapshot, OpState::RolledBack)
            | (OpKind::Delete, OpState::Done) => {
                tx.execute("DELETE FROM thins WHERE id = ?1", [id])
                    .map_err(e)?;
            }
            (OpKind::Resize, OpState::Done) => {
                tx.execute(
                    "UPDATE thins SET size = ?1 WHERE id = ?2",
                    params![i64_of(op.intent.size.get()), id],
                )
                .map_err(e)?;
            }
            (OpKind::Resize, OpState::RolledBack) | (_, OpState::Intent) => {}
        }
        let txn = match state {
            OpState::Done => op.intent.txn_to,
            _ => op.intent.txn_from,
        };
        tx.execute(
            "INSERT INTO config(key, value) VALUES ('txn', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [txn.to_string()],
        )
        .map_err(e)?;
        // Records that matched the pool's ids before this operation match
        // them after it: thinbox made the only change (see `ids_checked_at`).
        tx.execute(
            "UPDATE config SET value = ?1 WHERE key = ?2 AND value = ?3",
            params![txn.to_string(), IDS_CHECKED, op.intent.txn_from.to_string()],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(())
    }

    fn row_to_op(r: &rusqlite::Row<'_>) -> rusqlite::Result<OpRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
        ))
    }

    fn build_op(t: OpRow) -> Result<OpRecord> {
        let (seq, kind, id, name, size, origin, from, to, state) = t;
        Ok(OpRecord {
            seq,
            intent: Intent {
                kind: OpKind::parse(&kind)?,
                thin_id: ThinId::new(u64::from(id))?,
                name,
                size: Sectors::new(u64_of(size)),
                origin: origin.map(|o| ThinId::new(u64::from(o))).transpose()?,
                txn_from: TransactionId(u64_of(from)),
                txn_to: TransactionId(u64_of(to)),
            },
            state: OpState::parse(&state)?,
        })
    }

    const OP_COLS: &'static str = "seq, kind, thin_id, name, size, origin, txn_from, txn_to, state";

    /// One operation.
    pub fn op(&self, seq: i64) -> Result<OpRecord> {
        let t = self
            .conn
            .query_row(
                &format!("SELECT {} FROM ops WHERE seq = ?1", Self::OP_COLS),
                [seq],
                Self::row_to_op,
            )
            .map_err(|e| self.err(e, "read operation"))?;
        Self::build_op(t)
    }

    /// Operations still in the intent state, oldest first.
    pub fn pending(&self) -> Result<Vec<OpRecord>> {
        self.ops_where("state = 'intent'")
    }

    /// All operations, oldest first.
    pub fn ops(&self) -> Result<Vec<OpRecord>> {
        self.ops_where("1")
    }

    fn ops_where(&self, cond: &str) -> Result<Vec<OpRecord>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM ops WHERE {cond} ORDER BY seq",
                Self::OP_COLS
            ))
            .map_err(|e| self.err(e, "read operations"))?;
        let rows = st
            .query_map([], Self::row_to_op)
            .map_err(|e| self.err(e, "read operations"))?;
        rows.map(|r| {
            r.map_err(|e| self.err(e, "read operations"))
                .and_then(Self::build_op)
        })
        .collect()
    }

    fn row_to_thin(r: &rusqlite::Row<'_>) -> rusqlite::Result<ThinRow> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    }

    fn build_thin(t: ThinRow) -> Result<ThinRecord> {
        let (id, name, size, origin, state) = t;
        Ok(ThinRecord {
            id: ThinId::new(u64::from(id))?,
            name,
            size: Sectors::new(u64_of(size)),
            origin: origin.map(|o| ThinId::new(u64::from(o))).transpose()?,
            state: ThinState::parse(&state)?,
        })
    }

    /// All recorded thin devices, by id.
    pub fn thins(&self) -> Result<Vec<ThinRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, size, origin, state FROM thins ORDER BY id")
            .map_err(|e| self.err(e, "read thin records"))?;
        let rows = st
            .query_map([], Self::row_to_thin)
            .map_err(|e| self.err(e, "read thin records"))?;
        rows.map(|r| {
            r.map_err(|e| self.err(e, "read thin records"))
                .and_then(Self::build_thin)
        })
        .collect()
    }

    /// The thin device of this name.
    pub fn thin(&self, name: &str) -> Result<Option<ThinRecord>> {
        let t = self
            .conn
            .query_row(
                "SELECT id, name, size, origin, state FROM thins WHERE name = ?1",
                [name],
                Self::row_to_thin,
            )
            .optional()
            .map_err(|e| self.err(e, "read thin record"))?;
        t.map(Self::build_thin).transpose()
    }

    /// The thin device with this id.
    pub fn thin_by_id(&self, id: ThinId) -> Result<Option<ThinRecord>> {
        Ok(self.thins()?.into_iter().find(|t| t.id == id))
    }

    /// Marks a thin record missing (the pool does not have it).
    pub fn mark_missing(&self, id: ThinId) -> Result<()> {
        self.conn
            .execute(
                "UPDATE thins SET state = 'missing' WHERE id = ?1",
                [id.get()],
            )
            .map_err(|e| self.err(e, "mark thin record missing"))?;
        Ok(())
    }

    /// The lowest thin id not recorded (in any state).
    pub fn free_thin_id(&self) -> Result<ThinId> {
        self.free_thin_id_except(&[])
    }

    /// The lowest thin id neither recorded nor in `also_taken` (ids the pool
    /// has that no record explains).
    pub fn free_thin_id_except(&self, also_taken: &[ThinId]) -> Result<ThinId> {
        let mut used: Vec<u32> = self.thins()?.iter().map(|t| t.id.get()).collect();
        used.extend(also_taken.iter().map(|t| t.get()));
        used.sort_unstable();
        used.dedup();
        let mut next = 0u64;
        for id in used {
            if u64::from(id) == next {
                next += 1;
            } else if u64::from(id) > next {
                break;
            }
        }
        ThinId::new(next).map_err(|_| Error::new(ErrorKind::ThinIdsExhausted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(kind: OpKind, id: u64, name: &str, from: u64) -> Intent {
        Intent {
            kind,
            thin_id: ThinId::new(id).unwrap(),
            name: name.to_owned(),
            size: Sectors::new(2048),
            origin: None,
            txn_from: TransactionId(from),
            txn_to: TransactionId(from + 1),
        }
    }

    #[test]
    fn intent_done_lifecycle_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let mut s = Store::open(&path).unwrap();
            let a = s.begin(&intent(OpKind::Create, 0, "a", 0)).unwrap();
            s.finish(a).unwrap();
            let b = s.begin(&intent(OpKind::Create, 1, "b", 1)).unwrap();
            assert_eq!(s.thin("b").unwrap().unwrap().state, ThinState::Creating);
            assert_eq!(s.pending().unwrap().len(), 1);
            assert_eq!(s.pending().unwrap()[0].seq, b);
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.expected_txn().unwrap(), TransactionId(1));
        let p = s.pending().unwrap();
        assert_eq!(p.len(), 1);
        s.roll_back(p[0].seq).unwrap();
        assert!(s.thin("b").unwrap().is_none());
        assert_eq!(s.free_thin_id().unwrap(), ThinId::new(1).unwrap());
        let d = s.begin(&intent(OpKind::Delete, 0, "a", 1)).unwrap();
        assert_eq!(s.thin("a").unwrap().unwrap().state, ThinState::Deleting);
        s.finish(d).unwrap();
        assert!(s.thins().unwrap().is_empty());
        assert_eq!(s.expected_txn().unwrap(), TransactionId(2));
        assert_eq!(s.ops().unwrap().len(), 3);
    }

    #[test]
    fn resize_takes_the_new_size_only_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        let a = s.begin(&intent(OpKind::Create, 0, "a", 0)).unwrap();
        s.finish(a).unwrap();
        let mut grow = intent(OpKind::Resize, 0, "a", 1);
        grow.size = Sectors::new(4096);
        let r = s.begin(&grow).unwrap();
        let t = s.thin("a").unwrap().unwrap();
        assert_eq!((t.size, t.state), (Sectors::new(2048), ThinState::Ready));
        assert_eq!(s.op(r).unwrap().intent.kind, OpKind::Resize);
        s.roll_back(r).unwrap();
        assert_eq!(s.thin("a").unwrap().unwrap().size, Sectors::new(2048));
        assert_eq!(s.expected_txn().unwrap(), TransactionId(1));
        let r = s.begin(&grow).unwrap();
        s.finish(r).unwrap();
        assert_eq!(s.thin("a").unwrap().unwrap().size, Sectors::new(4096));
        assert_eq!(s.expected_txn().unwrap(), TransactionId(2));
    }

    #[test]
    fn duplicate_name_is_name_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        s.begin(&intent(OpKind::Create, 0, "a", 0)).unwrap();
        let e = s.begin(&intent(OpKind::Create, 1, "a", 0)).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::NameTaken { .. }));
        // The failed intent left nothing behind.
        assert_eq!(s.ops().unwrap().len(), 1);
    }

    #[test]
    fn free_ids_fill_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        for (id, n) in [(0, "a"), (1, "b"), (3, "c")] {
            let seq = s.begin(&intent(OpKind::Create, id, n, 0)).unwrap();
            s.finish(seq).unwrap();
        }
        assert_eq!(s.free_thin_id().unwrap(), ThinId::new(2).unwrap());
    }
}
