//! The container records in `ROOT/containers.db`: names, states, the
//! cgroup of each run, and reconciliation of runs that were killed.

use super::*;

/// A container name: 1 to 64 of `[A-Za-z0-9_.-]`, starting with a letter
/// or digit (it becomes part of a snapshot key, a directory and a cgroup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerName(String);

impl ContainerName {
    /// Validates `s` as a container name.
    pub fn new(s: &str) -> Result<ContainerName> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if s.is_empty() || s.len() > 64 || !first_ok || !s.chars().all(ok_char) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "invalid container name {s:?}: use 1 to 64 letters, digits, '_', '.' or '-', \
                     starting with a letter or digit"
                ),
            ));
        }
        Ok(ContainerName(s.to_owned()))
    }

    /// A fresh random name (`c-` and 12 hex digits).
    pub fn random() -> ContainerName {
        ContainerName(format!("c-{}", random_hex(6)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of the container's writable snapshot.
    pub fn snapshot_key(&self) -> Key {
        Key::new(format!("container/{}", self.0)).expect("a container name makes a valid key")
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Its record exists; its snapshot is being made (a crash here rolls back).
    Preparing,
    /// Its snapshot exists and is mounted; the process is not started yet.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended; its snapshot stays until `rm` (or was committed).
    Exited,
}

impl State {
    /// The state as `ps` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Preparing => "preparing",
            State::Created => "created",
            State::Running => "running",
            State::Exited => "exited",
        }
    }

    pub(super) fn parse(s: &str) -> Result<State> {
        Ok(match s {
            "preparing" => State::Preparing,
            "created" => State::Created,
            "running" => State::Running,
            "exited" => State::Exited,
            other => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("containers.db holds an unknown state {other:?}"),
                ))
            }
        })
    }
}

/// `n` random bytes in hex, from /dev/urandom (or the clock and pid when
/// it cannot be read).
pub(super) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    let filled = fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if filled.is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            ^ u64::from(std::process::id());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (nanos >> (8 * (i % 8))) as u8;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cgroup of one run of container `name` under state root `root`:
/// `thinbox/ROOT-ID/NAME-INSTANCE`. The root's id (from its path) keeps two
/// roots' containers of the same name apart; the instance keeps a new run
/// from reusing the cgroup (and the limits) a killed one left.
pub(super) fn instance_cgroup(
    root: &Path,
    name: &ContainerName,
) -> Result<runner::cgroup::CgroupPath> {
    Ok(runner::cgroup::CgroupPath::new(
        root_cgroup(root)?
            .as_path()
            .join(format!("{}-{}", name.as_str(), random_hex(4))),
    )?)
}

/// The parent of the cgroups of `root`'s containers: `thinbox/ROOT_ID`
/// (a digest of the root's path), in every hierarchy.
pub fn root_cgroup(root: &Path) -> Result<runner::cgroup::CgroupPath> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    let root_id: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    Ok(runner::cgroup::CgroupPath::new(format!(
        "thinbox/{root_id}"
    ))?)
}

/// Removes a dead container's cgroup (in every hierarchy), if it is left.
pub fn remove_cgroup(path: &str) -> Result<()> {
    let path = runner::cgroup::CgroupPath::new(path)?;
    let hierarchies = runner::cgroup::Hierarchies::detect()?;
    Ok(hierarchies.open(&path).remove()?)
}

/// A container's record.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerRecord {
    /// Its name.
    pub name: String,
    /// The image it was started from.
    pub image: String,
    /// Its state.
    pub state: State,
    /// The host pid of its first process while it runs.
    pub pid: Option<i32>,
    /// The pid of the `thinbox run` that made it and waits for it.
    pub owner: i32,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// How it ended (absent while running, or when `thinbox run` itself
    /// was killed).
    pub report: Option<runner::ExitReport>,
    /// The image its changes were committed as (`run --commit`); its
    /// snapshot became that image's top layer.
    pub committed: Option<String>,
    /// Its cgroup path below each hierarchy's root
    /// (`thinbox/ROOT-ID/NAME-INSTANCE`).
    pub cgroup: Option<String>,
}

/// The container records (`ROOT/containers.db`).
#[derive(Debug)]
pub struct Containers {
    conn: Connection,
    root: PathBuf,
}

pub(super) fn db_error(what: &str, e: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Io, format!("containers.db: {what}: {e}"))
}

impl Containers {
    /// Opens (creating) the records under `root`.
    pub fn open(root: &Path) -> Result<Containers> {
        let path = root.join("containers.db");
        let schema = thinpool::sqlite::Schema {
            sql: "CREATE TABLE IF NOT EXISTS containers (
                name TEXT PRIMARY KEY,
                image TEXT NOT NULL,
                state TEXT NOT NULL,
                pid INTEGER,
                owner INTEGER NOT NULL,
                created INTEGER NOT NULL,
                report TEXT,
                committed TEXT,
                cgroup TEXT
            );",
            version: 2,
        };
        let conn = thinpool::sqlite::open(&path, &schema).map_err(|e| match e {
            thinpool::sqlite::OpenError::Sqlite(e) => db_error("open", e),
            e => Error::new(ErrorKind::Corrupt, format!("{}: {e}", path.display())),
        })?;
        // Version 1 had no cgroup column (nor, before it, a version).
        let has_cgroup = conn
            .prepare("SELECT cgroup FROM containers LIMIT 0")
            .is_ok();
        if !has_cgroup {
            conn.execute_batch("ALTER TABLE containers ADD COLUMN cgroup TEXT")
                .map_err(|e| db_error("add the cgroup column", e))?;
        }
        Ok(Containers {
            conn,
            root: root.to_owned(),
        })
    }

    /// The directory the container's root is mounted on.
    pub fn rootfs_dir(&self, name: &ContainerName) -> PathBuf {
        self.root
            .join("containers")
            .join(name.as_str())
            .join("rootfs")
    }

    /// Records a new container as `preparing`, with the cgroup this run
    /// of it gets; a name in use is refused.
    pub fn begin(&self, name: &ContainerName, image: &str) -> Result<runner::cgroup::CgroupPath> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let cgroup = instance_cgroup(&self.root, name)?;
        let r = self.conn.execute(
            "INSERT INTO containers (name, image, state, owner, created, cgroup) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                name.as_str(),
                image,
                State::Preparing.as_str(),
                std::process::id(),
                now as i64,
                cgroup.as_path().to_string_lossy()
            ],
        );
        match r {
            Ok(_) => Ok(cgroup),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "container name {:?} is already in use: pick another --name or `thinbox rm {}`",
                        name.as_str(),
                        name.as_str()
                    ),
                ))
            }
            Err(e) => Err(db_error("insert", e)),
        }
    }

    pub(super) fn set(&self, name: &ContainerName, state: State, pid: Option<i32>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE containers SET state = ?2, pid = ?3 WHERE name = ?1",
                params![name.as_str(), state.as_str(), pid],
            )
            .map_err(|e| db_error("update", e))?;
        Ok(())
    }

    pub(super) fn finish(
        &self,
        name: &ContainerName,
        report: Option<&runner::ExitReport>,
        committed: Option<&str>,
    ) -> Result<()> {
        let report = report.map(|r| r.to_json());
        self.conn
            .execute(
                "UPDATE containers SET state = 'exited', pid = NULL, report = ?2, committed = ?3 \
                 WHERE name = ?1",
                params![name.as_str(), report, committed],
            )
            .map_err(|e| db_error("update", e))?;
        Ok(())
    }

    pub(super) fn delete(&self, name: &ContainerName) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM containers WHERE name = ?1",
                params![name.as_str()],
            )
            .map_err(|e| db_error("delete", e))?;
        Ok(())
    }

    /// Every container, oldest first.
    pub fn list(&self) -> Result<Vec<ContainerRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, image, state, pid, owner, created, report, committed, cgroup \
                 FROM containers ORDER BY created, name",
            )
            .map_err(|e| db_error("select", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i32>>(3)?,
                    r.get::<_, i32>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .map_err(|e| db_error("select", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, image, state, pid, owner, created, report, committed, cgroup) =
                row.map_err(|e| db_error("select", e))?;
            out.push(ContainerRecord {
                name,
                image,
                state: State::parse(&state)?,
                pid,
                owner,
                created: created.max(0) as u64,
                report: report.and_then(|r| serde_json::from_str(&r).ok()),
                committed,
                cgroup,
            });
        }
        Ok(out)
    }

    /// The record of `name`.
    pub fn get(&self, name: &ContainerName) -> Result<ContainerRecord> {
        let found = self
            .conn
            .query_row(
                "SELECT name FROM containers WHERE name = ?1",
                params![name.as_str()],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| db_error("select", e))?;
        if found.is_none() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no container named {:?}: `thinbox ps -a` lists them",
                    name.as_str()
                ),
            ));
        }
        self.list()?
            .into_iter()
            .find(|c| c.name == name.as_str())
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "container vanished"))
    }

    /// Undoes what killed runs left behind (see the module docs); returns
    /// the names it touched.
    pub fn reconcile(&self, sn: &dyn Snapshotter) -> Result<Vec<String>> {
        self.reconcile_with(Some(sn))
    }

    /// Whether a killed run left a half-made container whose snapshot
    /// only [`Containers::reconcile`] with the snapshotter can remove.
    pub fn needs_snapshotter(&self) -> Result<bool> {
        Ok(self
            .list()?
            .iter()
            .any(|c| matches!(c.state, State::Preparing | State::Created) && !owner_alive(c.owner)))
    }

    /// [`Containers::reconcile`]; without a snapshotter (a reader beside
    /// a writer holding the engine) half-made containers are left for the
    /// next writer.
    pub fn reconcile_with(&self, sn: Option<&dyn Snapshotter>) -> Result<Vec<String>> {
        let mut touched = Vec::new();
        for c in self.list()? {
            let name = ContainerName::new(&c.name)?;
            // Its `thinbox run` is still at work on it: leave it alone.
            if c.state != State::Exited && owner_alive(c.owner) {
                continue;
            }
            // Its run is over: the cgroup a killed run left goes (the
            // container died with it: its first process has the
            // parent-death signal).
            if let Some(cg) = c.cgroup.as_ref().filter(|_| c.report.is_none()) {
                remove_cgroup(cg)?;
            }
            match (c.state, sn) {
                (State::Preparing | State::Created, None) => {}
                (State::Preparing | State::Created, Some(sn)) => {
                    // Created but never started (or half-made): roll back.
                    self.teardown(sn, &name, c.committed.is_none())?;
                    self.delete(&name)?;
                    touched.push(c.name);
                }
                (State::Running, _) => {
                    unmount_if_mounted(&self.rootfs_dir(&name))?;
                    self.finish(&name, None, None)?;
                    touched.push(c.name);
                }
                _ => {}
            }
        }
        Ok(touched)
    }

    /// Unmounts the root and (when `remove_snapshot`) removes the snapshot;
    /// absent pieces are fine.
    pub(super) fn teardown(
        &self,
        sn: &dyn Snapshotter,
        name: &ContainerName,
        remove_snapshot: bool,
    ) -> Result<()> {
        let rootfs = self.rootfs_dir(name);
        unmount_if_mounted(&rootfs)?;
        if remove_snapshot {
            match sn.remove(&name.snapshot_key()) {
                Ok(()) => {}
                Err(e) if e.kind() == snapshotter::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(dir) = rootfs.parent() {
            let _ = fs::remove_dir(&rootfs);
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }
}

pub(super) fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Whether `pid` is a live thinbox process (not a reused pid, not a zombie).
pub(super) fn owner_alive(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `PID (COMM) STATE ...`; COMM may hold spaces and parentheses.
    let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") ")) else {
        return false;
    };
    comm.starts_with("thinbox") && !rest.starts_with('Z')
}

/// Whether `dir` is a mount point (listed in /proc/self/mountinfo).
pub(super) fn is_mount_point(dir: &Path) -> Result<bool> {
    Ok(mounts::mount_at(dir)?.is_some())
}

pub(super) fn unmount_if_mounted(dir: &Path) -> Result<()> {
    while is_mount_point(dir)? {
        snapshotter::unmount(dir)?;
    }
    Ok(())
}
