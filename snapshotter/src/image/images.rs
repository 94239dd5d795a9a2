//! [`Images`]: the image records (`DIR/images.db`) and the operations that
//! create and remove layer snapshots for them, each crash-safe.
//!
//! Crash protocol:
//! - **import**: an intent row is written first; before each snapshot the
//!   import creates, a row naming its active key and the chain id it will
//!   be committed as is added (only for chain ids that did not exist). The
//!   image rows are inserted and the intent deleted in one transaction at
//!   the end. An intent found on open is rolled back: its snapshots are
//!   removed, newest first.
//! - **commit**: the intent carries the finished image record; on open it
//!   is rolled forward when the new layer's snapshot is committed (the
//!   container's active snapshot is gone), else dropped.
//! - **remove**: the image row is marked `removing` (hidden from `list` and
//!   `get`) before any snapshot is removed; open finishes it.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{params, Connection, OptionalExtension};

use crate::core::Snapshotter;
use crate::error::{Error, ErrorKind, Result};
use crate::layer;
use crate::types::{Key, Kind, Labels, Name};

use super::digest::{chain_id, chain_ids, Digest, HashingReader, HashingWriter};
use super::source::{self, check_size_digest, Archive, Found};
use super::write::uncompressed_manifest_digest;
use super::{Image, ImageConfig, ImportOutcome, ImportProgress, Imported, Layer};

mod commit;
mod export;
mod import;

pub use export::{ExportedImage, ExportedLayer};
pub use import::Arriving;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,
    manifest TEXT NOT NULL,
    config TEXT NOT NULL,
    created INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('ready', 'removing'))
);
CREATE TABLE IF NOT EXISTS image_layers (
    image TEXT NOT NULL REFERENCES images(name) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    digest TEXT NOT NULL,
    diff_id TEXT NOT NULL,
    chain_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (image, idx)
);
CREATE INDEX IF NOT EXISTS image_layers_chain ON image_layers(chain_id);
CREATE TABLE IF NOT EXISTS image_intents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('import', 'commit')),
    payload TEXT
);
CREATE TABLE IF NOT EXISTS image_intent_snapshots (
    intent INTEGER NOT NULL REFERENCES image_intents(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (intent, seq)
);
";

/// Points where a test can inject a failure or a crash into an import or a
/// commit (see [`Images::set_fault_hook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPoint {
    /// Layer `n` (0-based, counted over the whole import) was applied and
    /// committed as a new snapshot.
    LayerCommitted(usize),
    /// Every layer is in place; the image rows are about to be written.
    BeforeRecord,
    /// `commit_container` committed the new layer; the image row is next.
    ContainerCommitted,
}

type FaultHook = Box<dyn Fn(FaultPoint) -> Result<()> + Send + Sync>;
type WaitHook = Box<dyn Fn(&Path) + Send + Sync>;

/// The image store. One per state directory; holds `DIR/lock`.
pub struct Images {
    conn: Mutex<Connection>,
    dir: PathBuf,
    /// `DIR/lock`, which each change (import, commit, removal) holds for
    /// its duration; None for a reader ([`Images::open_read_only`]).
    lock: Option<PathBuf>,
    fault: Option<FaultHook>,
    /// Told when a change waits for another process's (`DIR/lock`).
    on_wait: Option<WaitHook>,
    /// Serialises imports, commits and removals within this process (the
    /// flock on `DIR/lock` does so between processes).
    op: Mutex<()>,
}

impl fmt::Debug for Images {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Images")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Locks the image store's `lock` file as `how` says; None when a
/// non-blocking attempt finds it held.
fn lock_images(path: &Path, how: FlockArg) -> Result<Option<Flock<File>>> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("lock images", path, e))?;
    match Flock::lock(file, how) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::new(ErrorKind::Io, "lock images")
            .path(path)
            .source(e)),
    }
}

fn store_err(op: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::store(op, e)
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn digest_col(s: String) -> rusqlite::Result<Digest> {
    s.parse().map_err(|e: Error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn not_found(name: &str) -> Error {
    Error::new(ErrorKind::NotFound, "image")
        .key(name)
        .detail("no such image; `thinbox image ls` lists them")
}

fn name_taken(name: &str) -> Error {
    Error::new(ErrorKind::AlreadyExists, "import")
        .key(name)
        .detail(format!(
            "an image with this name exists; remove it first (thinbox image rm {name}) or choose another name (--name)"
        ))
}

/// Checks an image name: 1 to 255 bytes, no whitespace or control
/// characters.
/// Checks an image name: 1 to 255 characters, no spaces or control
/// characters.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::new(ErrorKind::InvalidArgument, "image name")
            .key(name.escape_debug())
            .detail("an image name has 1 to 255 characters, no spaces or control characters"));
    }
    Ok(())
}

fn exists(sn: &dyn Snapshotter, key: &str) -> Result<Option<Kind>> {
    let Ok(k) = Key::new(key) else {
        return Ok(None);
    };
    match sn.stat(&k) {
        Ok(info) => Ok(Some(info.kind)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn remove_if_present(sn: &dyn Snapshotter, key: &str) -> Result<()> {
    let k = Key::new(key)?;
    match sn.remove(&k) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Unmounts (lazily) and removes the scratch directories of an intent. A
/// directory that cannot be emptied is left (never deleted recursively:
/// it may still show a snapshot's tree).
fn clear_scratch(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for sub in ["mnt", "upper", "lower"] {
        let p = dir.join(sub);
        if p.exists() {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            if let Err(e) = fs::remove_dir(&p) {
                tracing::warn!("cannot remove scratch directory {}: {e}", p.display());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        tracing::warn!("cannot remove scratch directory {}: {e}", dir.display());
    }
}

impl Images {
    /// Opens (creating) the image store in `dir` (`dir/images.db`) and,
    /// unless another process is changing it (holding `dir/lock`: its
    /// intents are live), settles whatever an interrupted import, commit or
    /// removal left, using `sn`. Several processes may have it open; their
    /// changes take turns on `dir/lock`.
    pub fn open(dir: &Path, sn: &dyn Snapshotter) -> Result<Images> {
        fs::create_dir_all(dir).map_err(|e| Error::io("open images", dir, e))?;
        let lock_path = dir.join("lock");
        let free = lock_images(&lock_path, FlockArg::LockExclusiveNonblock)?;
        let db = dir.join("images.db");
        let schema = thinpool::sqlite::Schema {
            sql: SCHEMA,
            version: 1,
        };
        let conn = thinpool::sqlite::open(&db, &schema)
            .map_err(|e| crate::store::open_error("open images", Some(&db), e))?;
        let images = Images {
            conn: Mutex::new(conn),
            dir: dir.to_owned(),
            lock: Some(lock_path),
            fault: None,
            on_wait: None,
            op: Mutex::new(()),
        };
        if let Some(held) = free {
            images.recover(sn)?;
            drop(held);
        }
        Ok(images)
    }

    /// Opens the image store in `dir` to read (list, get) while another
    /// process may be writing to it: no lock, nothing settled (an import in
    /// progress is not seen until it is done). None when there is no store.
    pub fn open_read_only(dir: &Path) -> Result<Option<Images>> {
        let db = dir.join("images.db");
        if !db.exists() {
            return Ok(None);
        }
        let schema = thinpool::sqlite::Schema {
            sql: SCHEMA,
            version: 1,
        };
        let conn = thinpool::sqlite::open_read_only(&db, &schema)
            .map_err(|e| crate::store::open_error("open images", Some(&db), e))?;
        Ok(Some(Images {
            conn: Mutex::new(conn),
            dir: dir.to_owned(),
            lock: None,
            fault: None,
            on_wait: None,
            op: Mutex::new(()),
        }))
    }

    /// Installs a hook called at each [`FaultPoint`]; an error it returns
    /// fails the operation there (and is rolled back like any failure), a
    /// panic in it stands for a crash. For tests.
    pub fn set_fault_hook(
        &mut self,
        hook: impl Fn(FaultPoint) -> Result<()> + Send + Sync + 'static,
    ) {
        self.fault = Some(Box::new(hook));
    }

    /// Installs what to call when a change must wait for another
    /// process's change to this store (with the lock file's path).
    pub fn on_wait(&mut self, hook: impl Fn(&Path) + Send + Sync + 'static) {
        self.on_wait = Some(Box::new(hook));
    }

    fn fault(&self, p: FaultPoint) -> Result<()> {
        match &self.fault {
            Some(f) => f(p),
            None => Ok(()),
        }
    }

    /// Serialises a change within this process and, through `DIR/lock`,
    /// with other processes; refused on a reader.
    fn writer(&self, op: &'static str) -> Result<(MutexGuard<'_, ()>, Flock<File>)> {
        let Some(path) = &self.lock else {
            return Err(Error::new(ErrorKind::InvalidArgument, op)
                .path(&self.dir)
                .detail("the image store was opened read-only"));
        };
        let guard = self.op.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = lock_images(path, FlockArg::LockExclusiveNonblock)? {
            return Ok((guard, held));
        }
        if let Some(hook) = &self.on_wait {
            hook(path);
        }
        let held = lock_images(path, FlockArg::LockExclusive)?.ok_or_else(|| {
            Error::new(ErrorKind::Busy, op)
                .path(path)
                .detail("the image store stayed locked")
        })?;
        Ok((guard, held))
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scratch(&self, intent: i64) -> PathBuf {
        self.dir.join("tmp").join(intent.to_string())
    }

    /// Settles interrupted imports (rolled back), commits (rolled forward
    /// or dropped) and removals (finished).
    fn recover(&self, sn: &dyn Snapshotter) -> Result<()> {
        let intents: Vec<(i64, String, Option<String>)> = {
            let db = self.db();
            let mut st = db
                .prepare("SELECT id, kind, payload FROM image_intents ORDER BY id")
                .map_err(store_err("recover images"))?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(store_err("recover images"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(store_err("recover images"))?
        };
        for (id, kind, payload) in intents {
            if kind == "commit" {
                self.settle_commit(sn, id, payload.as_deref())?;
            } else {
                tracing::info!("rolling back interrupted image import {id}");
                self.rollback(sn, id)?;
            }
        }
        let removing: Vec<String> = {
            let db = self.db();
            let mut st = db
                .prepare("SELECT name FROM images WHERE state = 'removing'")
                .map_err(store_err("recover images"))?;
            let rows = st
                .query_map([], |r| r.get(0))
                .map_err(store_err("recover images"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(store_err("recover images"))?
        };
        for name in removing {
            tracing::info!("finishing the interrupted removal of image {name}");
            self.finish_remove(sn, &name)?;
        }
        // Views a killed `run --commit` (or `snapshot diff`) left would
        // hold the layers below them for ever.
        crate::layer::remove_stale_diff_views(sn, |pid| {
            Path::new(&format!("/proc/{pid}")).exists()
        })?;
        Ok(())
    }

    /// Removes every snapshot intent `id` created, newest first, then the
    /// intent.
    fn rollback(&self, sn: &dyn Snapshotter, id: i64) -> Result<()> {
        clear_scratch(&self.scratch(id));
        let created: Vec<(String, String)> = {
            let db = self.db();
            let mut st = db
                .prepare(
                    "SELECT key, name FROM image_intent_snapshots WHERE intent = ?1
                     ORDER BY seq DESC",
                )
                .map_err(store_err("roll back import"))?;
            let rows = st
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(store_err("roll back import"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(store_err("roll back import"))?
        };
        for (key, name) in created {
            remove_if_present(sn, &key)?;
            remove_if_present(sn, &name)?;
        }
        self.db()
            .execute("DELETE FROM image_intents WHERE id = ?1", [id])
            .map_err(store_err("roll back import"))?;
        Ok(())
    }

    fn settle_commit(&self, sn: &dyn Snapshotter, id: i64, payload: Option<&str>) -> Result<()> {
        clear_scratch(&self.scratch(id));
        let key: Option<String> = self
            .db()
            .query_row(
                "SELECT key FROM image_intent_snapshots WHERE intent = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(store_err("recover commit"))?;
        let image: Option<Image> = payload.and_then(|p| serde_json::from_str(p).ok());
        let mut db = self.db();
        let tx = db.transaction().map_err(store_err("recover commit"))?;
        if let (Some(image), Some(key)) = (image, key) {
            let top = image.layers.last().map(|l| l.chain_id.to_string());
            let committed = match &top {
                Some(t) => exists(sn, t)? == Some(Kind::Committed),
                None => false,
            };
            let key_gone = exists(sn, &key)?.is_none();
            let taken: bool = tx
                .query_row(
                    "SELECT 1 FROM images WHERE name = ?1",
                    [&image.name],
                    |_| Ok(()),
                )
                .optional()
                .map_err(store_err("recover commit"))?
                .is_some();
            if committed && key_gone && !taken {
                tracing::info!("finishing the interrupted commit of image {}", image.name);
                insert_image(&tx, &image)?;
            }
        }
        tx.execute("DELETE FROM image_intents WHERE id = ?1", [id])
            .map_err(store_err("recover commit"))?;
        tx.commit().map_err(store_err("recover commit"))
    }

    fn new_intent(&self, kind: &str, payload: Option<&str>) -> Result<i64> {
        let db = self.db();
        db.execute(
            "INSERT INTO image_intents (kind, payload) VALUES (?1, ?2)",
            params![kind, payload],
        )
        .map_err(store_err("record intent"))?;
        Ok(db.last_insert_rowid())
    }

    fn record_snapshot(&self, intent: i64, seq: usize, key: &str, name: &str) -> Result<()> {
        self.db()
            .execute(
                "INSERT INTO image_intent_snapshots (intent, seq, key, name) VALUES (?1, ?2, ?3, ?4)",
                params![intent, seq as i64, key, name],
            )
            .map_err(store_err("record intent"))?;
        Ok(())
    }

    fn name_used(&self, name: &str) -> Result<bool> {
        Ok(self
            .db()
            .query_row("SELECT 1 FROM images WHERE name = ?1", [name], |_| Ok(()))
            .optional()
            .map_err(store_err("image"))?
            .is_some())
    }

    /// Every image, by name.
    pub fn list(&self) -> Result<Vec<Image>> {
        let names: Vec<String> = {
            let db = self.db();
            let mut st = db
                .prepare("SELECT name FROM images WHERE state = 'ready' ORDER BY name")
                .map_err(store_err("list images"))?;
            let rows = st
                .query_map([], |r| r.get(0))
                .map_err(store_err("list images"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(store_err("list images"))?
        };
        names.iter().map(|n| self.load(n)).collect()
    }

    fn load(&self, name: &str) -> Result<Image> {
        let db = self.db();
        let head = db
            .query_row(
                "SELECT manifest, config, created FROM images WHERE name = ?1 AND state = 'ready'",
                [name],
                |r| {
                    Ok((
                        digest_col(r.get(0)?)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(store_err("image"))?;
        let Some((manifest, config, created)) = head else {
            return Err(not_found(name));
        };
        let config: ImageConfig = serde_json::from_str(&config).map_err(|e| {
            Error::new(ErrorKind::Store, "image")
                .key(name)
                .detail("stored config is damaged")
                .source(e)
        })?;
        let mut st = db
            .prepare(
                "SELECT digest, diff_id, chain_id, size FROM image_layers WHERE image = ?1 ORDER BY idx",
            )
            .map_err(store_err("image"))?;
        let layers = st
            .query_map([name], |r| {
                Ok(Layer {
                    digest: digest_col(r.get(0)?)?,
                    diff_id: digest_col(r.get(1)?)?,
                    chain_id: digest_col(r.get(2)?)?,
                    size: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                })
            })
            .map_err(store_err("image"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(store_err("image"))?;
        Ok(Image {
            name: name.to_owned(),
            manifest,
            config,
            layers,
            created: UNIX_EPOCH + Duration::from_secs(u64::try_from(created).unwrap_or(0)),
        })
    }

    /// The image called `name` (as Docker reads names: `busybox` is
    /// `busybox:latest`, `docker.io/library/busybox` is `busybox`), or else
    /// the one whose manifest digest is `name` or starts with it (`sha256:`
    /// optional, at least 4 hex digits).
    pub fn get(&self, name: &str) -> Result<Image> {
        for candidate in name_candidates(name) {
            match self.load(&candidate) {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                other => return other,
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() < 4
            || !hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(not_found(name));
        }
        let matches: Vec<String> = {
            let db = self.db();
            let mut st = db
                .prepare("SELECT name FROM images WHERE state = 'ready' AND manifest LIKE ?1 ORDER BY name")
                .map_err(store_err("image"))?;
            let rows = st
                .query_map([format!("sha256:{hex}%")], |r| r.get(0))
                .map_err(store_err("image"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(store_err("image"))?
        };
        match matches.as_slice() {
            [] => Err(not_found(name)),
            [one] => self.load(one),
            many => Err(Error::new(ErrorKind::InvalidArgument, "image")
                .key(name)
                .detail(format!(
                    "matches several images ({}); use a name",
                    many.join(", ")
                ))),
        }
    }
}

/// A reader that remembers the first error its source returned, to tell a
/// broken layer stream from a failing snapshot.
struct Watched<R> {
    inner: R,
    failed: Option<io::Error>,
}

impl<R: io::Read> io::Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if self.failed.is_none() {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

fn now_secs() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs(SystemTime::now())).unwrap_or(0))
}

fn archive_top(a: &Archive) -> &Path {
    match a {
        Archive::Dir(p) => p,
        Archive::Tar { path, .. } => path,
    }
}

fn layer_error(a: &Archive, what: &str, digest: &Digest, e: Error) -> Error {
    match e.kind() {
        ErrorKind::InvalidLayer => Error::new(ErrorKind::InvalidImage, "import")
            .path(archive_top(a))
            .detail(format!("{what} ({digest}) is truncated or corrupt: {e}"))
            .source(e),
        _ => e,
    }
}

/// Renames image `from` to `to` (in one transaction with what else the
/// caller does); when `to` is taken (by the same manifest under its digest)
/// the old name is only dropped.
fn move_image(tx: &rusqlite::Transaction<'_>, from: &str, to: &str) -> Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO images (name, manifest, config, created, state)
         SELECT ?2, manifest, config, created, state FROM images WHERE name = ?1",
        params![from, to],
    )
    .map_err(store_err("move image name"))?;
    tx.execute(
        "INSERT OR IGNORE INTO image_layers (image, idx, digest, diff_id, chain_id, size)
         SELECT ?2, idx, digest, diff_id, chain_id, size FROM image_layers WHERE image = ?1",
        params![from, to],
    )
    .map_err(store_err("move image name"))?;
    tx.execute("DELETE FROM images WHERE name = ?1", [from])
        .map_err(store_err("move image name"))?;
    Ok(())
}

fn insert_image(tx: &rusqlite::Transaction<'_>, img: &Image) -> Result<()> {
    let config = serde_json::to_string(&img.config)
        .map_err(|e| Error::new(ErrorKind::Store, "record image").source(e))?;
    tx.execute(
        "INSERT INTO images (name, manifest, config, created, state) VALUES (?1, ?2, ?3, ?4, 'ready')",
        params![img.name, img.manifest.to_string(), config, secs(img.created)],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            Error::new(ErrorKind::AlreadyExists, "record image").key(&img.name)
        }
        e => Error::store("record image", e),
    })?;
    for (i, l) in img.layers.iter().enumerate() {
        tx.execute(
            "INSERT INTO image_layers (image, idx, digest, diff_id, chain_id, size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                img.name,
                i as i64,
                l.digest.to_string(),
                l.diff_id.to_string(),
                l.chain_id.to_string(),
                i64::try_from(l.size).unwrap_or(i64::MAX)
            ],
        )
        .map_err(store_err("record image"))?;
    }
    Ok(())
}

/// The names `name` may mean, most literal first: itself, its familiar
/// form without `docker.io/library/`, and that with `:latest` when it has
/// no tag or digest.
fn name_candidates(name: &str) -> Vec<String> {
    let familiar = super::source::familiar(name);
    let last = familiar.rsplit('/').next().unwrap_or(&familiar);
    let mut out = vec![name.to_owned()];
    if familiar != name {
        out.push(familiar.clone());
    }
    if !last.contains(':') && !familiar.contains('@') {
        out.push(format!("{familiar}:latest"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::name_candidates;

    #[test]
    fn names_are_read_as_docker_reads_them() {
        assert_eq!(name_candidates("busybox"), ["busybox", "busybox:latest"]);
        assert_eq!(name_candidates("busybox:1.36"), ["busybox:1.36"]);
        assert_eq!(
            name_candidates("docker.io/library/busybox"),
            ["docker.io/library/busybox", "busybox", "busybox:latest"]
        );
        assert_eq!(
            name_candidates("localhost:5000/app"),
            ["localhost:5000/app", "localhost:5000/app:latest"]
        );
        assert_eq!(name_candidates("app@sha256:ab"), ["app@sha256:ab"]);
    }
}
