//! Containers: `thinbox run`, `ps` and `rm` as library calls.

//!

//! A container is a record in `ROOT/containers.db`, a writable snapshot

//! (key `container/NAME`) prepared on its image's top layer, and that

//! snapshot mounted at `ROOT/containers/NAME/rootfs` while it runs. The

//! record is written before anything is made (state `preparing`) and moves

//! through `created`, `running`, `exited`; [`Containers::reconcile`] undoes

//! what a killed `thinbox run` left: a `preparing` record loses its

//! snapshot and row, a `running` one whose process is gone becomes

//! `exited` (reason unknown) and its root is unmounted.

//!

//! The snapshotter's root lock is released while the container runs (so

//! `thinbox ps`, `rm` and other `run`s can work) and taken again to unmount,

//! commit and remove.
use crate::config::Bytes;
use crate::engine::{Engine, EngineOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::mounts;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use snapshotter::image::Image;
use snapshotter::{Key, Labels, Name, Snapshotter};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod records;
use records::{owner_alive, pid_alive, unmount_if_mounted};

/// Whether `c` runs or is starting: its `thinbox run` is alive.
pub fn is_live(c: &ContainerRecord) -> bool {
    c.state != State::Exited && owner_alive(c.owner)
}
pub use records::{remove_cgroup, root_cgroup, ContainerName, ContainerRecord, Containers, State};

/// Label on a container's snapshot naming its container.
pub const CONTAINER_LABEL: &str = "thinbox.io/container";

/// The block device behind the filesystem mounted at `dir`, when it is
/// one (dm-thin devices, loop devices; not ZFS datasets or binds of
/// directories on overlay).
pub fn root_device(dir: &Path) -> Result<Option<runner::cgroup::DevNum>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Some(source) = mounts::mount_at(dir)?.map(|m| m.source_path()) else {
        return Ok(None);
    };
    let Ok(meta) = fs::metadata(&source) else {
        return Ok(None);
    };
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    let rdev = meta.rdev();
    Ok(Some(runner::cgroup::DevNum::new(
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    )))
}

/// What `thinbox run` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The image to run (name or digest).
    pub image: String,
    /// The container's name (random when absent).
    pub name: Option<String>,
    /// The command; the image's entrypoint + cmd when empty.
    pub args: Vec<String>,
    /// Extra environment (`KEY=VALUE`), after the image's.
    pub env: Vec<String>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in CPUs (0.5 = half a CPU).
    pub cpus: Option<f64>,
    /// Limit on the number of processes.
    pub pids: Option<u64>,
    /// Read bandwidth limit on the root device, bytes per second.
    pub io_read_bps: Option<u64>,
    /// Write bandwidth limit on the root device, bytes per second.
    pub io_write_bps: Option<u64>,
    /// Mount the root read-only.
    pub read_only: bool,
    /// Remove the container (its record and snapshot) when it exits.
    pub remove: bool,
    /// Commit the container's changes as a new image with this name.
    pub commit: Option<String>,
    /// Kill the container after this long.
    pub timeout: Option<Duration>,
    /// The most its root may hold, in bytes (`[run] size` when absent).
    pub size: Option<u64>,
}

/// The smallest memory limit a container starts under: Docker refuses
/// less than 6 MiB too (below it even `true` is OOM-killed at once).
pub const MIN_MEMORY: Bytes = Bytes::mib(6);

impl RunOptions {
    /// Refuses limits no container can run under, and a `--commit` name
    /// that is not an image name, before anything is made.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::new(ErrorKind::InvalidArgument, m));
        if let Some(m) = self.memory.filter(|m| *m < MIN_MEMORY.0) {
            return invalid(format!(
                "--memory {} is below the {MIN_MEMORY} a container needs to start: give at least 6M",
                Bytes(m)
            ));
        }
        if self.pids == Some(0) {
            return invalid("--pids 0 allows no process at all: give at least 1".to_owned());
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return invalid(
                "--timeout 0 would kill the container at once: give at least 1 second, or leave it out"
                    .to_owned(),
            );
        }
        if let Some(c) = self.cpus {
            let n = online_cpus();
            if !(c.is_finite() && (0.01..=n as f64).contains(&c)) {
                return invalid(format!(
                    "--cpus {c} is out of range: give 0.01 to {n} (this machine has {n} CPUs)"
                ));
            }
        }
        if let Some(s) = self.size.filter(|s| *s < MIN_ROOT_SIZE.0) {
            return invalid(format!(
                "--size {} leaves no room for a container's root: give at least 1M",
                Bytes(s)
            ));
        }
        if let Some(c) = &self.commit {
            snapshotter::image::validate_name(c)
                .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("--commit: {e}")))?;
        }
        Ok(())
    }
}

/// The smallest `--size` (below it not even a log file fits).
pub const MIN_ROOT_SIZE: Bytes = Bytes::mib(1);

/// How a new container's root is bounded (see [`root_bound`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootBound {
    /// Prepared with [`snapshotter::MAX_SIZE_LABEL`] at this size.
    Label(Bytes),
    /// Its dm-thin device (`devmapper.base_size`) bounds it.
    Device,
    /// Nothing does, for this reason.
    Unbounded(String),
}

/// The bound of a new container root: `--size`, else `[run] size`, else
/// [`DEFAULT_ROOT_SIZE`](crate::config::DEFAULT_ROOT_SIZE) where the
/// backend bounds by limit (btrfs with quotas, zfs); on dm-thin only an
/// explicit size grows the device past `devmapper.base_size`. A `--size`
/// the backend cannot honour is refused; the default is then only noted.
pub(crate) fn root_bound(engine: &Engine, run: &RunOptions) -> Result<RootBound> {
    let caps = engine.snapshotter().capabilities();
    let asked = run.size.map(Bytes);
    let explicit = asked.or(engine.config().run.size);
    if caps.max_size_label {
        return Ok(explicit.map_or(RootBound::Device, RootBound::Label));
    }
    if caps.bounds_size {
        return Ok(RootBound::Label(
            explicit.unwrap_or(crate::config::DEFAULT_ROOT_SIZE),
        ));
    }
    let why = match &engine.record().source {
        crate::backend::Source::BtrfsDir { path } => format!(
            "btrfs quotas are off on {0}; run `btrfs quota enable {0}`",
            path.display()
        ),
        _ if engine.backend() == crate::backend::BackendKind::Overlay => format!(
            "the overlay backend bounds a container's root only on xfs mounted with -o prjquota, and {} is not",
            engine.root().display()
        ),
        _ => format!(
            "the {} backend cannot bound a container's root (dm-thin, btrfs, zfs and overlay on xfs can)",
            engine.backend()
        ),
    };
    match asked {
        Some(size) => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("--size {size}: {why}; leave --size out to run unbounded"),
        )),
        None => Ok(RootBound::Unbounded(why)),
    }
}

/// The CPUs the kernel has online.
fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// What `thinbox run` did.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// The container's name.
    pub name: String,
    /// How it ended.
    pub report: runner::ExitReport,
    /// The image committed from its changes (`--commit`).
    pub committed: Option<Image>,
    /// Whether its record and snapshot were removed (`--rm`).
    pub removed: bool,
    /// The most its root could hold, in bytes; None when unbounded.
    pub root_size: Option<u64>,
}

/// Opens the engine; `Engine::open` waits for the engine lock while
/// another thinbox process holds it (a `run` holds it only while preparing
/// and cleaning up).
fn open_engine(opts: &EngineOptions) -> Result<Engine> {
    Engine::open(opts)
}

fn parse_user(user: &str, rootfs: &Path) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = fs::read_to_string(rootfs.join(file)).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                let id = f.get(2)?.parse().ok()?;
                let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
                Some((id, gid))
            })?
        })
    };
    let bad = || {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("the image's user {user:?} is not a uid or a name in the image's /etc/passwd"),
        )
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => lookup("etc/passwd", u).ok_or_else(bad)?,
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("etc/group", g).map(|(id, _)| id).ok_or_else(bad)?,
        },
    };
    Ok((uid, gid))
}

fn container_config(
    run: &RunOptions,
    image: &Image,
    name: &ContainerName,
    rootfs: &Path,
    cgroup: runner::cgroup::CgroupPath,
) -> Result<runner::ContainerConfig> {
    use runner::cgroup::{Bytes, ThrottleKind};
    let cfg = &image.config;
    let args: Vec<String> = if run.args.is_empty() {
        cfg.entrypoint
            .iter()
            .chain(cfg.cmd.iter())
            .cloned()
            .collect()
    } else if cfg.entrypoint.is_empty() {
        run.args.clone()
    } else {
        // Like `docker run IMAGE ARGS`: the arguments replace Cmd only.
        cfg.entrypoint
            .iter()
            .chain(run.args.iter())
            .cloned()
            .collect()
    };
    if args.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "image {:?} has no Entrypoint or Cmd: give the command after `--`",
                image.name
            ),
        ));
    }
    let (uid, gid) = parse_user(&cfg.user, rootfs)?;
    let mut b = runner::ContainerConfig::builder(rootfs)
        .id(name.as_str())
        .cgroup_path(cgroup)
        .hostname(name.as_str())
        .args(args)
        .user(uid, gid)
        .readonly_root(run.read_only);
    if !cfg.working_dir.is_empty() {
        b = b.cwd(&cfg.working_dir);
    }
    for kv in cfg.env.iter().chain(run.env.iter()) {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("environment entry {kv:?} is not KEY=VALUE"),
            ));
        };
        b = b.env(k, v);
    }
    if let Some(m) = run.memory {
        b = b.memory_limit(Bytes(m));
    }
    if let Some(p) = run.pids {
        b = b.pids_limit(p);
    }
    if let Some(c) = run.cpus {
        let period = 100_000u64;
        b = b.cpu_quota(((c * period as f64).round() as u64).max(1000), period);
    }
    if let Some(t) = run.timeout {
        b = b.timeout(t);
    }
    if run.io_read_bps.is_some() || run.io_write_bps.is_some() {
        let dev = root_device(rootfs)?.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                "--io-read-bps/--io-write-bps need a root on a block device (dm-thin or the \
                 loopback btrfs default); this backend's root is not one",
            )
        })?;
        b = b.root_device(dev);
        if let Some(r) = run.io_read_bps {
            b = b.root_throttle(ThrottleKind::ReadBps, r);
        }
        if let Some(w) = run.io_write_bps {
            b = b.root_throttle(ThrottleKind::WriteBps, w);
        }
    }
    Ok(b.build()?)
}

/// `thinbox run`: prepares a writable snapshot of the image, runs the
/// container in it with its limits, and reports how it ended; commits its
/// changes as a new image with `commit`, removes it with `remove`.
/// `started` is called with the container's name once it runs.
pub fn run(
    opts: &EngineOptions,
    run: &RunOptions,
    started: &mut dyn FnMut(&str),
) -> Result<RunOutcome> {
    run.validate()?;
    let name = match &run.name {
        Some(n) => ContainerName::new(n)?,
        None => ContainerName::random(),
    };
    if let Some(c) = &run.commit {
        Name::new(c.clone())?;
    }
    let engine = open_engine(opts)?;
    let containers = Containers::open(engine.root())?;
    containers.reconcile(engine.snapshotter())?;
    let images = engine.images()?;
    let image = images.get(&run.image)?;
    if let Some(c) = &run.commit {
        if images.get(c).is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("image name {c:?} for --commit is taken: pick another or `thinbox image rm {c}`"),
            ));
        }
    }
    let top = image.top_snapshot().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("image {:?} has no layers to run", image.name),
        )
    })?;
    let bound = root_bound(&engine, run)?;
    if let RootBound::Unbounded(why) = &bound {
        opts.observer
            .event(&crate::observer::Event::RootUnbounded { why: why.clone() });
    }
    let cgroup = containers.begin(&name, &image.name)?;
    let rootfs = containers.rootfs_dir(&name);
    let mut specs = Vec::new();
    let made = (|| -> Result<runner::ContainerConfig> {
        let mut labels = Labels::new();
        labels.insert(CONTAINER_LABEL.to_owned(), name.as_str().to_owned());
        if let RootBound::Label(size) = bound {
            labels.insert(snapshotter::MAX_SIZE_LABEL.to_owned(), size.0.to_string());
        }
        specs = engine
            .snapshotter()
            .prepare(&name.snapshot_key(), Some(&top), &labels)?;
        fs::create_dir_all(&rootfs)
            .map_err(|e| Error::new(ErrorKind::Io, format!("create {}: {e}", rootfs.display())))?;
        snapshotter::mount_all(&specs, &rootfs)?;
        containers.set(&name, State::Created, None)?;
        container_config(run, &image, &name, &rootfs, cgroup)
    })();
    let config = match made {
        Ok(c) => c,
        Err(e) => {
            let _ = containers.teardown(engine.snapshotter(), &name, true);
            let _ = containers.delete(&name);
            return Err(e);
        }
    };
    // The run holds no lock: other thinbox commands may work meanwhile.
    drop(images);
    let probe = engine.root_probe(&rootfs, &specs, &bound);
    let root_size = match bound {
        RootBound::Label(size) => Some(size.0),
        RootBound::Device => Some(engine.config().devmapper.base_size.0),
        RootBound::Unbounded(_) => None,
    };
    engine.close()?;
    let report = run_container(&containers, &name, &config, &probe, started);
    let engine = open_engine(opts)?;
    let sn = engine.snapshotter();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = containers.teardown(sn, &name, true);
            let _ = containers.delete(&name);
            return Err(e);
        }
    };
    unmount_if_mounted(&rootfs)?;
    let committed = match &run.commit {
        Some(new_name) => {
            let made = engine.images().and_then(|images| {
                Ok(images.commit_container(sn, &image, &name.snapshot_key(), new_name)?)
            });
            match made {
                Ok(img) => Some(img),
                Err(e) => {
                    // The container ran: keep its record and report, so
                    // `thinbox ps -a` shows how it ended; its snapshot stays.
                    containers.finish(&name, Some(&report), None)?;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    if run.remove {
        containers.teardown(sn, &name, committed.is_none())?;
        containers.delete(&name)?;
    } else {
        containers.finish(
            &name,
            Some(&report),
            committed.as_ref().map(|i| i.name.as_str()),
        )?;
    }
    engine.close()?;
    Ok(RunOutcome {
        name: name.as_str().to_owned(),
        report,
        committed,
        removed: run.remove,
        root_size,
    })
}

fn run_container(
    containers: &Containers,
    name: &ContainerName,
    config: &runner::ContainerConfig,
    probe: &dyn runner::RootSpaceProbe,
    started: &mut dyn FnMut(&str),
) -> Result<runner::ExitReport> {
    let runtime = runner::Runtime::detect()?;
    let container = runtime.start(config)?.forward_signals(true);
    containers.set(name, State::Running, Some(container.pid().as_raw()))?;
    started(name.as_str());
    Ok(container.wait_with_probe(Some(probe))?)
}

/// `thinbox ps`: every container's record (finishing what killed runs left).
///
/// It never waits for another thinbox process (an import, say): the
/// containers store is read beside it, and what killed runs left is
/// finished here unless it needs the snapshotter while another process has
/// the engine (then the next command that opens the engine does it).
pub fn ps(opts: &EngineOptions) -> Result<Vec<ContainerRecord>> {
    let Some(root) = opts.used_root()? else {
        return Ok(Vec::new());
    };
    let containers = Containers::open(&root)?;
    if containers.needs_snapshotter()? {
        if let Some(engine) = Engine::open_if_free(opts)? {
            containers.reconcile(engine.snapshotter())?;
            engine.close()?;
        }
    }
    containers.reconcile_with(None)?;
    containers.list()
}

/// `thinbox rm`: removes stopped containers (their snapshot and record);
/// a running one is refused unless `force`, which kills it first.
pub fn rm(opts: &EngineOptions, names: &[String], force: bool) -> Result<Vec<String>> {
    let names = names
        .iter()
        .map(|n| ContainerName::new(n))
        .collect::<Result<Vec<_>>>()?;
    let engine = open_engine(opts)?;
    let containers = Containers::open(engine.root())?;
    containers.reconcile(engine.snapshotter())?;
    let mut removed = Vec::new();
    for name in &names {
        let c = containers.get(name)?;
        if c.state != State::Exited && owner_alive(c.owner) {
            let running = c.state == State::Running;
            if !force {
                return Err(Error::new(
                    ErrorKind::InUse,
                    format!(
                        "container {:?} is {}: stop it, or `thinbox rm --force {}`",
                        name.as_str(),
                        if running { "running" } else { "starting" },
                        name.as_str()
                    ),
                ));
            }
            // Killing the first process ends its pid namespace; its
            // `thinbox run` then reports the exit and waits for this
            // command's lock to finish its own cleanup (which finds
            // nothing left to do). A container still starting has no
            // first process yet: its `thinbox run` is killed instead, and
            // what it made is rolled back below.
            let victim = match c.pid.filter(|p| pid_alive(*p)) {
                Some(pid) => pid,
                None => c.owner,
            };
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(victim),
                nix::sys::signal::Signal::SIGKILL,
            );
            let gone = || {
                if victim == c.owner {
                    !owner_alive(victim)
                } else {
                    !pid_alive(victim)
                }
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while !gone() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if victim == c.owner {
                containers.reconcile(engine.snapshotter())?;
            }
        }
        containers.teardown(engine.snapshotter(), name, c.committed.is_none())?;
        containers.delete(name)?;
        removed.push(name.as_str().to_owned());
    }
    engine.close()?;
    Ok(removed)
}

#[cfg(test)]
mod tests;
