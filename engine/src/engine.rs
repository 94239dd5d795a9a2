//! The state root and the backend behind every command.
//!
//! [`Engine::open`] reads the configuration, takes `ROOT/engine.lock`, and
//! opens the snapshotter on the backend recorded in `ROOT/backend.toml`.
//! The lock is taken alone (exclusive) when nobody else has the root: then
//! the backend is made on first use and repaired (see below); else it is
//! shared with the engines already open (a long import does not keep a
//! `run` waiting), which only wait for an open that is alone, and an open
//! that finds repairs to do waits to be alone. Either way it is shared
//! once open. What they change takes turns on finer locks: each snapshot
//! mutation on the snapshotter's `ROOT/snapshots/lock`, each image change
//! on `ROOT/images/lock`, containers on their store's rows. On first use
//! of a root there is no record yet, so it picks one the way Docker did, but
//! safely:
//!
//! 1. `backend = "auto"` (the default): a loopback dm-thin pool (sparse
//!    files under `ROOT/pools/NAME`, the devmapper snapshotter) when the
//!    kernel has device-mapper and the `thin-pool` target (loaded with
//!    `modprobe dm-thin-pool` when needed); else a btrfs filesystem in the
//!    sparse file `ROOT/btrfs.img` on a loop device mounted at `ROOT/btrfs`;
//!    else overlayfs directories; else it fails saying what to configure;
//! 2. a configured backend: `devmapper`, `btrfs` (an existing btrfs
//!    directory in `[btrfs] path`, or the loopback image), `zfs` (`[zfs]
//!    dataset`), `overlay` or `naive`.
//!
//! The choice and the reason are printed once, on the run that made it.
//!
//! Crash safety: before making anything the chosen record is written as
//! `ROOT/backend.partial.toml`; only when the backend is complete and its
//! snapshotter opened is it renamed to `ROOT/backend.toml`. A partial record
//! found on open (a run killed during mkfs, say) is undone first: the
//! loopback pool destroyed or the image unmounted, detached and deleted;
//! then the choice is made again. After a reboot the btrfs image is
//! re-attached and re-mounted, and a loopback pool re-activated (and grown
//! past its autoextend threshold, as `thinbox pool monitor` would), on open.
//!
//! Kernel: device-mapper with `thin-pool` (dm-thin), or btrfs and loop
//! devices, or ZFS, or overlayfs. Everything needs root.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::Flock;
use snapshotter::image::{Images, ImportProgress, Imported};
use snapshotter::Snapshotter;
use thinpool::dm::DmControl;
use thinpool::status::PoolStatus;

use crate::backend::{check_agrees, choose, open_backend, undo, Access, PARTIAL, RECORD};
pub use crate::backend::{BackendKind, BackendRecord, Source};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::observer::Event;
pub use crate::options::EngineOptions;
use crate::pools::Pools;
use crate::state::{
    crash_point, lock_file, lock_file_shared, read_toml, try_lock_file, try_lock_file_shared,
    write_toml,
};

impl EngineOptions {
    /// The configuration and the state root, without opening the backend
    /// (for `thinbox pool`, which works on pools beside it). Needs root.
    pub fn state_root(&self) -> Result<(PathBuf, Config)> {
        let config = Config::load(&self.config)?;
        let root = self.root_in(&config);
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::not_root("thinbox"));
        }
        refuse_non_directory(&root)?;
        Ok((root, config))
    }

    /// The named pools beside the state root, through these options'
    /// seams (for `thinbox pool`).
    pub fn pools(&self) -> Result<Pools> {
        let (root, _) = self.state_root()?;
        Pools::for_engine(&root, self)
    }

    /// The state root of a root already in use (holding `backend.toml`),
    /// canonical; None for a root thinbox never used. Takes no lock: for
    /// readers beside a writer.
    pub fn used_root(&self) -> Result<Option<PathBuf>> {
        let (root, config) = self.state_root()?;
        let record_path = root.join(RECORD);
        if !record_path.exists() {
            return Ok(None);
        }
        // A config asking for another backend is refused here too.
        let record: BackendRecord = read_toml(&record_path)?;
        check_agrees(&config, &record, &root)?;
        Ok(Some(
            std::fs::canonicalize(&root).map_err(|e| Error::io("cannot open", &root, e))?,
        ))
    }

    /// The image store to read (`thinbox image ls|inspect`), without
    /// waiting for a writer such as an import: see
    /// [`Images::open_read_only`]. None before the first import.
    pub fn read_images(&self) -> Result<Option<Images>> {
        match self.used_root()? {
            Some(root) => Ok(Images::open_read_only(&root.join("images"))?),
            None => Ok(None),
        }
    }

    /// The snapshot metadata to read (`thinbox snapshot ls|inspect`)
    /// without waiting for a writer: see [`snapshotter::Reader`]. None
    /// before the backend exists (or while its metadata still has to move
    /// out of an older btrfs image: the caller then opens the engine).
    pub fn read_snapshots(&self) -> Result<Option<snapshotter::Reader>> {
        let Some(root) = self.used_root()? else {
            return Ok(None);
        };
        let record: BackendRecord = read_toml(&root.join(RECORD))?;
        let dir = match &record.source {
            Source::Directory { path } => path.clone(),
            _ => root.join("snapshots"),
        };
        Ok(snapshotter::Reader::open(&dir)?)
    }

    /// Removes named pool `name` (see [`Pools::destroy`]), refusing the
    /// pool under the root's own snapshotter.
    pub fn destroy_pool(&self, name: &str, force: bool) -> Result<()> {
        let (root, _) = self.state_root()?;
        if crate::backend::engine_pool(&root).as_deref() == Some(name) {
            return Err(Error::new(
                ErrorKind::InUse,
                format!(
                    "pool {name:?} holds the snapshots of {}: remove that state root instead of its pool",
                    root.display()
                ),
            ));
        }
        Pools::for_engine(&root, self)?.destroy(name, force)
    }

    /// Lends pool `name` to another engine, or takes it back (`to` None):
    /// see [`Pools::hand_over`]. Refused for the pool under the root's own
    /// snapshotter, whose thin devices are thinbox's.
    pub fn hand_over_pool(
        &self,
        name: &str,
        to: Option<crate::pools::LentTo>,
        settings: &crate::pools::EngineSettings,
    ) -> Result<crate::pools::HandOver> {
        let (root, _) = self.state_root()?;
        if let (Some(t), true) = (
            to,
            crate::backend::engine_pool(&root).as_deref() == Some(name),
        ) {
            return Err(Error::new(
                ErrorKind::InUse,
                format!(
                    "pool {name:?} holds the snapshots of {}: {t} cannot have it; make another pool for {t} (`thinbox pool create --for {t}`)",
                    root.display()
                ),
            ));
        }
        Pools::for_engine(&root, self)?.hand_over(name, to, settings)
    }
}

/// The state root and its open snapshotter.
pub struct Engine {
    root: PathBuf,
    config: Config,
    record: BackendRecord,
    snapshotter: Box<dyn Snapshotter>,
    pool_name: Option<String>,
    dm: Option<Arc<dyn DmControl>>,
    pool_lock: Option<Flock<File>>,
    lock: Option<Flock<File>>,
    chosen: bool,
    options: EngineOptions,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("root", &self.root)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// The [`runner::RootSpaceProbe`] of a container root (see
/// [`Engine::root_probe`]).
pub struct RootProbe {
    fs: runner::FilesystemFull,
    pool: Option<(Arc<dyn DmControl>, String)>,
    own: OwnBound,
}

/// What tells that a container filled its own root.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnBound {
    /// Nothing: its filesystem is shared.
    None,
    /// Its filesystem is its own (a dm-thin device) or shows its quota
    /// (zfs `refquota`): full means its size is reached.
    Filesystem,
    /// The qgroup limit of btrfs subvolume at this path.
    Qgroup(PathBuf),
}

/// How close to a qgroup limit counts as reaching it: btrfs refuses a
/// write whose reservation would pass the limit, so a full subvolume stops
/// short of it by up to an extent.
const QGROUP_SLACK: u64 = 1 << 20;

impl fmt::Debug for RootProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootProbe")
            .field("fs", &self.fs)
            .field("pool", &self.pool.as_ref().map(|(_, n)| n))
            .field("own", &self.own)
            .finish()
    }
}

impl runner::RootSpaceProbe for RootProbe {
    fn shortage(&self) -> runner::Result<Option<runner::Shortage>> {
        if let Some((dm, name)) = &self.pool {
            let mode = dm
                .status(name)
                .ok()
                .and_then(|lines| {
                    lines
                        .first()
                        .and_then(|l| l.params.parse::<PoolStatus>().ok())
                })
                .map(|s| s.mode());
            if mode.is_some_and(|m| m != thinpool::status::PoolMode::ReadWrite) {
                return Ok(Some(runner::Shortage::Pool));
            }
        }
        let fs = self.fs.shortage()?;
        match &self.own {
            OwnBound::Filesystem if fs.is_some() => Ok(Some(runner::Shortage::OwnSize)),
            OwnBound::Qgroup(path) if qgroup_at_limit(path) => Ok(Some(runner::Shortage::OwnSize)),
            _ => Ok(fs),
        }
    }
}

/// Whether btrfs subvolume `path` references all its qgroup limit allows
/// (false when that cannot be read: the filesystem probe still answers).
fn qgroup_at_limit(path: &Path) -> bool {
    use snapshotter::backend::btrfs::{BtrfsOps, SystemBtrfs};
    let ops = SystemBtrfs;
    // Qgroup counters follow transaction commits.
    let read = ops
        .sync(path)
        .and_then(|()| ops.subvolume_id(path))
        .and_then(|id| ops.qgroup(path, id));
    match read {
        Ok(q) => q.is_some_and(|q| q.at_limit(QGROUP_SLACK)),
        Err(e) => {
            tracing::warn!("cannot read the qgroup of {}: {e}", path.display());
            false
        }
    }
}

/// The state root must be a directory (or not exist yet).
fn refuse_non_directory(root: &Path) -> Result<()> {
    match std::fs::metadata(root) {
        Ok(m) if !m.is_dir() => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "state root {} is a file, not a directory: give --root (or `root` in the config) a directory",
                root.display()
            ),
        )),
        _ => Ok(()),
    }
}

impl Engine {
    /// Opens the state root, choosing and making the backend on first use.
    pub fn open(opts: &EngineOptions) -> Result<Engine> {
        Self::open_locking(opts, false).map(|e| e.expect("a waiting open returns an engine"))
    }

    /// [`Engine::open`] unless another thinbox process has the engine
    /// (None then), for readers that can do without it.
    pub fn open_if_free(opts: &EngineOptions) -> Result<Option<Engine>> {
        Self::open_locking(opts, true)
    }

    fn open_locking(opts: &EngineOptions, if_free: bool) -> Result<Option<Engine>> {
        let config = Config::load(&opts.config)?;
        let root = opts.root_in(&config);
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::not_root("thinbox"));
        }
        refuse_non_directory(&root)?;
        std::fs::create_dir_all(&root).map_err(|e| Error::io("cannot create", &root, e))?;
        let root = std::fs::canonicalize(&root).map_err(|e| Error::io("cannot open", &root, e))?;
        let lock_path = root.join("engine.lock");
        let record_path = root.join(RECORD);
        let partial_path = root.join(PARTIAL);
        let observer = opts.observer.as_ref();
        // Alone when nobody else has the root (making and repairing the
        // backend); else beside the others (a long import, say) without
        // waiting for them, unless the root needs repairs only done alone.
        let mut need_alone = false;
        let (lock, record, opened, chosen) = loop {
            let (lock, alone) = match try_lock_file(&lock_path)? {
                Some(l) => (l, true),
                None if need_alone => {
                    if if_free {
                        return Ok(None);
                    }
                    (lock_file(&lock_path, observer)?, true)
                }
                None if if_free => match try_lock_file_shared(&lock_path)? {
                    Some(l) => (l, false),
                    None => return Ok(None),
                },
                None => (lock_file_shared(&lock_path, observer)?, false),
            };
            if record_path.exists() {
                let record: BackendRecord = read_toml(&record_path)?;
                check_agrees(&config, &record, &root)?;
                let access = if alone {
                    Access::Alone { fresh: false }
                } else {
                    Access::Shared
                };
                match open_backend(&root, &config, opts, &record, access)? {
                    Some(opened) => break (lock, record, opened, false),
                    None => {
                        // Repairs wait for the others to finish.
                        drop(lock);
                        need_alone = true;
                        continue;
                    }
                }
            }
            if !alone {
                drop(lock);
                need_alone = true;
                continue;
            }
            if partial_path.exists() {
                if let Ok(old) = read_toml::<BackendRecord>(&partial_path) {
                    undo(&root, opts, &old);
                }
                let _ = std::fs::remove_file(&partial_path);
            }
            let record = choose(&config, &root, opts.deps.probe.as_ref())?;
            write_toml(&partial_path, &record)?;
            match open_backend(&root, &config, opts, &record, Access::Alone { fresh: true }) {
                Ok(Some(opened)) => {
                    crash_point("backend-opened");
                    std::fs::rename(&partial_path, &record_path)
                        .map_err(|e| Error::io("cannot write", &record_path, e))?;
                    break (lock, record, opened, true);
                }
                // Opened alone, a backend never asks for the root alone.
                Ok(None) => {
                    let _ = std::fs::remove_file(&partial_path);
                    return Err(Error::new(
                        ErrorKind::Failed,
                        "a new backend asked for repairs: remove the state root and retry",
                    ));
                }
                Err(e) => {
                    undo(&root, opts, &record);
                    let _ = std::fs::remove_file(&partial_path);
                    return Err(e);
                }
            }
        };
        // Done alone: let the others in beside this one.
        lock.relock(nix::fcntl::FlockArg::LockShared).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot share {}: {e}", lock_path.display()),
            )
        })?;
        if chosen {
            opts.observer.event(&Event::BackendChosen {
                backend: record.backend.to_string(),
                root: root.clone(),
                reason: record.reason.clone(),
                record: record_path.clone(),
                config: opts.config.clone(),
            });
        }
        Ok(Some(Engine {
            root,
            config,
            record,
            snapshotter: opened.snapshotter,
            pool_name: opened.pool_name,
            dm: opened.dm,
            pool_lock: opened.pool_lock,
            lock: Some(lock),
            chosen,
            options: opts.clone(),
        }))
    }

    /// The options the engine was opened with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Where the backend record lives (`ROOT/backend.toml`).
    pub fn record_path(&self) -> PathBuf {
        self.root.join(RECORD)
    }

    /// The state directory (default `/var/lib/thinbox`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backend record (`ROOT/backend.toml`).
    pub fn record(&self) -> &BackendRecord {
        &self.record
    }

    /// Whether this open chose (and made) the backend.
    pub fn chose_backend(&self) -> bool {
        self.chosen
    }

    /// The snapshotter on the backend.
    pub fn snapshotter(&self) -> &dyn Snapshotter {
        self.snapshotter.as_ref()
    }

    /// The backend's kind.
    pub fn backend(&self) -> BackendKind {
        self.record.backend
    }

    /// A scratch directory under the root for temporary mounts (made on demand).
    pub fn scratch_dir(&self) -> Result<PathBuf> {
        let d = self.root.join("tmp");
        std::fs::create_dir_all(&d).map_err(|e| Error::io("cannot create", &d, e))?;
        Ok(d)
    }

    /// The name of the dm-thin pool under the snapshotter (see `thinbox
    /// pool status NAME`), for the dm-thin backend.
    pub fn pool_name(&self) -> Option<&str> {
        self.pool_name.as_deref()
    }

    /// The kernel's status of the dm-thin pool, for the dm-thin backend.
    /// (The pool itself belongs to the devmapper snapshotter while the
    /// engine is open.)
    pub fn pool_status(&self) -> Option<Result<PoolStatus>> {
        let (name, dm) = (self.pool_name.as_ref()?, self.dm.as_ref()?);
        Some((|| {
            let lines = dm.status(name)?;
            let line = lines.first().ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("pool {name} has no status line"),
                )
            })?;
            Ok(line.params.parse::<PoolStatus>()?)
        })())
    }

    /// Opens the image store (`ROOT/images`), settling any interrupted
    /// import, commit or removal.
    pub fn images(&self) -> Result<Images> {
        let mut images = Images::open(&self.root.join("images"), self.snapshotter())?;
        let observer = Arc::clone(&self.options.observer);
        images.on_wait(move |path| {
            let holder = crate::state::holder_of(path);
            observer.event(&Event::WaitingForLock {
                path: path.to_owned(),
                holder,
            });
        });
        Ok(images)
    }

    /// Imports an OCI image layout (directory or tar) or a `docker save`
    /// tar from `source` into `images`, under `name` or the name the source
    /// records, reporting each layer to the observer. Atomic: on any error
    /// nothing of the import remains.
    pub fn import_image(
        &self,
        images: &Images,
        source: &Path,
        name: Option<&str>,
    ) -> Result<Vec<Imported>> {
        let observer = self.options.observer.as_ref();
        Ok(images.import(self.snapshotter(), source, name, &mut |p| {
            observer.event(&import_event(p))
        })?)
    }

    /// Removes image `name` from `images` (and the layers no other image
    /// uses), then the kept blobs no image names any more
    /// ([`crate::content::Content::sweep`]). Returns the image removed.
    pub fn remove_image(&self, images: &Images, name: &str) -> Result<snapshotter::image::Image> {
        let image = images.get(name)?;
        images.remove(self.snapshotter(), &image.name)?;
        // Blobs are a cache for pushes: one left by a failed sweep costs
        // only disk, and the next removal sweeps it.
        let remaining = images.list()?;
        crate::content::Content::new(self.root()).sweep(&remaining);
        Ok(image)
    }

    /// Where this engine reports progress.
    pub(crate) fn observer(&self) -> &dyn crate::Observer {
        self.options.observer.as_ref()
    }

    /// What can run out under a container root at `rootfs` (mounted from
    /// `specs`, bounded by `bound`) on this engine's storage: its own size,
    /// its filesystem, and for the dm-thin backend the thin pool (read from
    /// the pool's status line, so it answers after the engine is closed).
    pub(crate) fn root_probe(
        &self,
        rootfs: &Path,
        specs: &[snapshotter::MountSpec],
        bound: &crate::containers::RootBound,
    ) -> RootProbe {
        use crate::containers::RootBound;
        let own = match (self.backend(), bound) {
            (BackendKind::DmThin, _) => OwnBound::Filesystem,
            (_, RootBound::Unbounded(_) | RootBound::Device) => OwnBound::None,
            (BackendKind::Btrfs, RootBound::Label(_)) => {
                specs.first().map_or(OwnBound::None, |m| {
                    OwnBound::Qgroup(PathBuf::from(&m.source))
                })
            }
            (_, RootBound::Label(_)) => OwnBound::Filesystem,
        };
        RootProbe {
            fs: runner::FilesystemFull::new(rootfs),
            pool: self
                .pool_name
                .clone()
                .zip(self.dm.clone())
                .map(|(name, dm)| (dm, name)),
            own,
        }
    }

    /// Closes the snapshotter and releases the root so another thinbox
    /// process can work.
    pub fn close(mut self) -> Result<()> {
        let r = self.snapshotter.close();
        self.pool_lock = None;
        self.lock = None;
        Ok(r?)
    }
}

/// An import's progress as an [`Event`] (and the test hooks between layers).
pub(crate) fn import_event(p: ImportProgress<'_>) -> Event {
    match p {
        ImportProgress::Layer {
            index,
            count,
            digest,
            size,
        } => Event::Layer {
            index,
            count,
            digest: digest.to_string(),
            size,
        },
        ImportProgress::LayerDone { reused, .. } => {
            crate::state::pause_point("import-layer");
            if !reused {
                crate::state::crash_point("pull-layer-applied");
            }
            Event::LayerDone { reused }
        }
    }
}
