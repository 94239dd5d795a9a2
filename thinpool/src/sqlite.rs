//! How every thinbox SQLite store opens (thinpool's record store, the
//! snapshotter's metadata and image stores, the engine's containers): one
//! setup, so they cannot drift apart.
//!
//! - a write-ahead log with `synchronous=FULL`: a commit is durable before
//!   it returns, for one fsync of the log per transaction (the rollback
//!   journal paid about four: journal, its directory, the database, the
//!   journal's deletion);
//! - no checkpoint when the last connection closes
//!   (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`): the log stays for the next
//!   command instead of being copied into the database and deleted, which
//!   cost each command that opened a store three more fsyncs (the
//!   database, the log, and the directory when the log was made again);
//!   a commit is as durable as before. The automatic checkpoint runs every
//!   [`WAL_PAGES`] pages of log instead of SQLite's 1000, because each
//!   command's first connection reads the whole log to rebuild its index
//!   (the `-shm` file is reset when no other connection has it): 387 page
//!   reads a `snapshot prepare` at 1000;
//! - foreign keys enforced;
//! - a busy timeout of 30 s: a command waits out another process's commit
//!   (milliseconds) instead of failing with "database is locked"; only a
//!   stuck disk makes it wait that long;
//! - a schema version in `PRAGMA user_version`: a store written by a newer
//!   thinbox is refused, naming the versions, instead of misread.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// Pages of write-ahead log after which a commit checkpoints it.
pub const WAL_PAGES: u32 = 64;

/// How long a connection waits for another's lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A store's schema: its tables (idempotent `CREATE ... IF NOT EXISTS`)
/// and their version.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The statements that create the tables.
    pub sql: &'static str,
    /// The version these statements make; raised when they change.
    pub version: i64,
}

/// Why a store did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A newer thinbox wrote the store.
    #[error("the store has schema version {found}, and this thinbox understands up to {understood}: upgrade thinbox")]
    TooNew {
        /// The store's version.
        found: i64,
        /// The newest this code knows.
        understood: i64,
    },
}

/// Opens (creating if needed) the store at `path` with `schema`.
///
/// Two processes making the same new store can both hold it shared while
/// switching it to WAL; SQLite then answers one of them "database is
/// locked" at once rather than call the busy handler (which could
/// deadlock), so that answer is retried here until [`BUSY_TIMEOUT`].
pub fn open(path: &Path, schema: &Schema) -> Result<Connection, OpenError> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match init(Connection::open(path)?, schema) {
            Err(OpenError::Sqlite(rusqlite::Error::SqliteFailure(f, _)))
                if f.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

/// Opens the existing store at `path` to read only, beside a writer in
/// another process (WAL lets readers in while it writes): nothing is made
/// or migrated; a store newer than `schema` is refused.
pub fn open_read_only(path: &Path, schema: &Schema) -> Result<Connection, OpenError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > schema.version {
        return Err(OpenError::TooNew {
            found,
            understood: schema.version,
        });
    }
    Ok(conn)
}

/// An in-memory store with `schema` (tests).
pub fn open_in_memory(schema: &Schema) -> Result<Connection, OpenError> {
    init(Connection::open_in_memory()?, schema)
}

fn init(conn: Connection, schema: &Schema) -> Result<Connection, OpenError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // An in-memory database answers "memory"; either answer is fine.
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > schema.version {
        return Err(OpenError::TooNew {
            found,
            understood: schema.version,
        });
    }
    conn.execute_batch(schema.sql)?;
    if found != schema.version {
        conn.pragma_update(None, "user_version", schema.version)?;
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: Schema = Schema {
        sql: "CREATE TABLE IF NOT EXISTS a (id INTEGER PRIMARY KEY);
              CREATE TABLE IF NOT EXISTS b (a INTEGER NOT NULL REFERENCES a(id));",
        version: 2,
    };

    #[test]
    fn two_makers_of_one_store_both_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let makers: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let c = open(&path, &SCHEMA).expect("open while another makes it");
                    c.execute("INSERT INTO a DEFAULT VALUES", []).unwrap();
                })
            })
            .collect();
        for m in makers {
            m.join().unwrap();
        }
        let c = open(&path, &SCHEMA).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM a", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 8);
    }

    #[test]
    fn the_log_outlives_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let conn = open(&path, &SCHEMA).unwrap();
            conn.execute("INSERT INTO a (id) VALUES (7)", []).unwrap();
        }
        // Not checkpointed and deleted on close: the next opener finds it.
        let wal = dir.path().join("s.db-wal");
        assert!(wal.metadata().unwrap().len() > 0, "the log is kept");
        let conn = open(&path, &SCHEMA).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM a WHERE id = 7", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let ro = open_read_only(&path, &SCHEMA).unwrap();
        let n: i64 = ro
            .query_row("SELECT count(*) FROM a", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn every_store_gets_the_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("s.db"), &SCHEMA).unwrap();
        let text = |q: &str| conn.query_row(q, [], |r| r.get::<_, String>(0)).unwrap();
        let int = |q: &str| conn.query_row(q, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(text("PRAGMA journal_mode"), "wal");
        assert_eq!(int("PRAGMA synchronous"), 2, "FULL");
        assert_eq!(int("PRAGMA foreign_keys"), 1);
        assert_eq!(int("PRAGMA busy_timeout"), 30_000);
        assert_eq!(int("PRAGMA user_version"), 2);
        assert!(conn
            .db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE)
            .unwrap());
        assert_eq!(int("PRAGMA wal_autocheckpoint"), i64::from(WAL_PAGES));
        // Foreign keys are enforced.
        assert!(conn.execute("INSERT INTO b(a) VALUES (7)", []).is_err());
    }

    #[test]
    fn a_store_from_a_newer_thinbox_is_refused_and_an_older_one_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(open(&path, &SCHEMA).unwrap());
        let older = Schema {
            version: 1,
            ..SCHEMA
        };
        let e = open(&path, &older).unwrap_err();
        assert!(
            matches!(
                e,
                OpenError::TooNew {
                    found: 2,
                    understood: 1
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("upgrade thinbox"), "{e}");
        let newer = Schema {
            version: 3,
            ..SCHEMA
        };
        let conn = open(&path, &newer).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 3);
    }
}
