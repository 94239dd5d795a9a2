//! The backend under a state root: the record of which one it is
//! (`ROOT/backend.toml`), choosing one on first use, making it (a loopback
//! thin-pool, or a btrfs filesystem in a sparse file on a loop device),
//! opening its snapshotter, and undoing a half-made one.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use snapshotter::backend::btrfs::Btrfs;
use snapshotter::backend::devmapper::{Devmapper, DevmapperConfig};
use snapshotter::backend::naive::Naive;
use snapshotter::backend::overlay::Overlay;
use snapshotter::backend::zfs::Zfs;
use snapshotter::{Snapshots, Snapshotter};
use thinpool::dm::DmControl;
use thinpool::pool::LoopbackConfig;
use thinpool::{BlockSize, Sectors};

use crate::config::{BackendChoice, Bytes, Config};
use crate::deps::{Deps, KernelProbe};
use crate::error::{Error, ErrorKind, Result};
use crate::observer::{Event, Observer};
use crate::options::EngineOptions;
use crate::pools::Pools;
use crate::state::{crash_point, read_toml};

/// The kind of storage under the snapshotter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// dm-thin snapshots in a thin-pool (the devmapper snapshotter).
    DmThin,
    /// btrfs subvolumes and snapshots.
    Btrfs,
    /// ZFS datasets, snapshots and clones.
    Zfs,
    /// overlayfs directories.
    Overlay,
    /// Full copies.
    Naive,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::DmThin => "dm-thin",
            BackendKind::Btrfs => "btrfs",
            BackendKind::Zfs => "zfs",
            BackendKind::Overlay => "overlay",
            BackendKind::Naive => "naive",
        })
    }
}

/// Where the backend's storage is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// A loopback dm-thin pool recorded as `ROOT/pools/POOL`.
    LoopbackPool {
        /// The pool's name (and dm name).
        pool: String,
        /// Virtual size of every snapshot.
        base_size: Bytes,
        /// Filesystem on the base device.
        fs: String,
    },
    /// A pool made beforehand with `thinbox pool create` (loopback,
    /// direct-lvm or adopted) and named by `[devmapper] pool_name`; the root
    /// uses it but does not own it.
    NamedPool {
        /// The pool's name under `ROOT/pools`.
        pool: String,
        /// Virtual size of every snapshot.
        base_size: Bytes,
        /// Filesystem on the base device.
        fs: String,
    },
    /// A btrfs filesystem in a sparse file on a loop device.
    BtrfsImage {
        /// The image file.
        image: PathBuf,
        /// Where it is mounted.
        mountpoint: PathBuf,
    },
    /// An existing directory on btrfs.
    BtrfsDir {
        /// The directory.
        path: PathBuf,
    },
    /// A ZFS dataset.
    ZfsDataset {
        /// The dataset.
        dataset: String,
    },
    /// A plain directory (overlay, naive).
    Directory {
        /// The directory.
        path: PathBuf,
    },
}

/// `ROOT/backend.toml`: the backend a root uses, chosen once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// The kind.
    pub backend: BackendKind,
    /// Why it was chosen.
    pub reason: String,
    /// Where it lives.
    pub source: Source,
}

/// The record's file name under the root.
pub(crate) const RECORD: &str = "backend.toml";
/// The record of a backend being made.
pub(crate) const PARTIAL: &str = "backend.partial.toml";

/// The pool a root's backend record names, if its backend is dm-thin.
pub(crate) fn engine_pool(root: &Path) -> Option<String> {
    let rec = read_toml::<BackendRecord>(&root.join(RECORD)).ok()?;
    match rec.source {
        Source::LoopbackPool { pool, .. } | Source::NamedPool { pool, .. } => Some(pool),
        _ => None,
    }
}

/// The default dm name of a root's loopback pool: the root's directory
/// name with `-pool` (so `/var/lib/thinbox` uses `thinbox-pool`).
pub fn default_pool_name(root: &Path) -> String {
    let base: String = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "thinbox".to_owned())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(59)
        .collect();
    format!("{base}-pool")
}

pub(crate) fn choose(
    config: &Config,
    root: &Path,
    probe: &dyn KernelProbe,
) -> Result<BackendRecord> {
    let dm_record = |reason: String| {
        let pool = config
            .devmapper
            .pool_name
            .clone()
            .unwrap_or_else(|| default_pool_name(root));
        let (base_size, fs) = (config.devmapper.base_size, config.devmapper.fs.clone());
        let existing = config.devmapper.pool_name.is_some()
            && root.join("pools").join(&pool).join("pool.toml").exists();
        if existing {
            BackendRecord {
                backend: BackendKind::DmThin,
                reason: format!("{reason}, on the existing pool {pool}"),
                source: Source::NamedPool {
                    pool,
                    base_size,
                    fs,
                },
            }
        } else {
            BackendRecord {
                backend: BackendKind::DmThin,
                reason,
                source: Source::LoopbackPool {
                    pool,
                    base_size,
                    fs,
                },
            }
        }
    };
    let image_record = |reason: String| BackendRecord {
        backend: BackendKind::Btrfs,
        reason,
        source: Source::BtrfsImage {
            image: root.join("btrfs.img"),
            mountpoint: root.join("btrfs"),
        },
    };
    let dir_record = |kind: BackendKind, reason: String| BackendRecord {
        backend: kind,
        reason,
        source: Source::Directory {
            path: root.join("snapshots"),
        },
    };
    let unavailable = |what: &str, why: String, fix: &str| {
        Error::new(
            ErrorKind::BackendUnavailable,
            format!("cannot use {what}: {why}: {fix}"),
        )
    };
    Ok(match config.backend {
        BackendChoice::Auto => {
            match probe.dm_thin() {
                Ok(()) => dm_record(
                    "the kernel has dm-thin, so a loopback thin-pool in sparse files".to_owned(),
                ),
                Err(no_dm) => match probe.loopback_btrfs() {
                    Ok(()) => image_record(format!(
                        "no dm-thin ({no_dm}), so a loopback btrfs filesystem in a sparse file"
                    )),
                    Err(no_btrfs) if probe.has_fs("overlay") => dir_record(
                        BackendKind::Overlay,
                        format!(
                            "no dm-thin ({no_dm}) and no loopback btrfs ({no_btrfs}), so overlayfs"
                        ),
                    ),
                    Err(no_btrfs) => return Err(unavailable(
                        "any copy-on-write backend",
                        format!(
                            "no dm-thin ({no_dm}), no loopback btrfs ({no_btrfs}), no overlayfs"
                        ),
                        "load dm-thin-pool or btrfs, or set backend = \"naive\" in the config file",
                    )),
                },
            }
        }
        BackendChoice::Devmapper => {
            probe.dm_thin().map_err(|why| {
                unavailable(
                    "backend devmapper",
                    why,
                    "load dm-thin-pool or choose another backend",
                )
            })?;
            dm_record("configured: backend = \"devmapper\"".to_owned())
        }
        BackendChoice::Btrfs => match &config.btrfs.path {
            Some(path) => BackendRecord {
                backend: BackendKind::Btrfs,
                reason: format!("configured: btrfs directory {}", path.display()),
                source: Source::BtrfsDir { path: path.clone() },
            },
            None => {
                probe.loopback_btrfs().map_err(|why| {
                    unavailable(
                        "a loopback btrfs filesystem",
                        why,
                        "install btrfs-progs and load btrfs, or set [btrfs] path",
                    )
                })?;
                image_record("configured: backend = \"btrfs\" in a sparse file".to_owned())
            }
        },
        BackendChoice::Zfs => {
            let dataset = config.zfs.dataset.clone().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    "backend = \"zfs\" needs a dataset: set [zfs] dataset = \"POOL/PATH\" in the config file",
                )
            })?;
            BackendRecord {
                backend: BackendKind::Zfs,
                reason: format!("configured: zfs dataset {dataset}"),
                source: Source::ZfsDataset { dataset },
            }
        }
        BackendChoice::Overlay => dir_record(
            BackendKind::Overlay,
            "configured: backend = \"overlay\"".to_owned(),
        ),
        BackendChoice::Naive => dir_record(
            BackendKind::Naive,
            "configured: backend = \"naive\"".to_owned(),
        ),
    })
}

/// Attaches `image` (or finds its loop device) and mounts it on `mnt`
/// unless already mounted. Detaches a loop device it attached if the mount fails.
/// Mounts the btrfs image at `mnt` unless it is mounted read-write. A
/// read-only one (btrfs turns so after an I/O error, as when the
/// filesystem under the image fills) is recovered: every mount of its
/// device (stopped containers' roots hold the errored superblock too) is
/// detached and the image mounted afresh, telling `observer`.
fn ensure_btrfs_mounted(
    deps: &Deps,
    observer: &dyn Observer,
    image: &Path,
    mnt: &Path,
) -> Result<()> {
    let mounted = deps.fs.is_mountpoint(mnt);
    if mounted && !deps.fs.mounted_read_only(mnt) {
        return Ok(());
    }
    std::fs::create_dir_all(mnt).map_err(|e| Error::io("cannot create", mnt, e))?;
    let stale = match deps.loops.find(image)? {
        Some(l) if mounted || deps.fs.mounted_elsewhere(&l.path) => Some(l.path),
        _ => None,
    };
    let Some(dev) = stale else {
        return mount_btrfs_image(deps, image, mnt);
    };
    let under = image.parent().unwrap_or(Path::new("/"));
    let free = crate::sparse::backing_of(image)
        .map(|b| format!("{} free", b.free.round_down()))
        .unwrap_or_else(|_| "unknown free space".to_owned());
    let held = deps.fs.unmount_device(&dev)?;
    mount_btrfs_image(deps, image, mnt).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!(
                "{} went read-only after an I/O error and cannot be mounted again ({}): \
                 check `dmesg`, free space under {} ({free}), and stop whatever still has it open",
                image.display(),
                e.message,
                under.display()
            ),
        )
    })?;
    if deps.fs.mounted_read_only(mnt) {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{} is read-only after an I/O error and stays so when mounted again: a process still \
                 has it open (a running container?); stop it, check `dmesg`, and free space under {} ({free})",
                mnt.display(),
                under.display()
            ),
        ));
    }
    observer.event(&Event::Warning {
        message: format!(
            "{} had gone read-only (btrfs does after an I/O error, as when the filesystem under it fills; \
             {} has {free}): detached its {held} mount(s) and mounted it again; see `dmesg` for the error",
            image.display(),
            under.display()
        ),
    });
    Ok(())
}

/// Mounts the btrfs image at `mnt`, attaching a loop device for it first
/// unless one is attached.
fn mount_btrfs_image(deps: &Deps, image: &Path, mnt: &Path) -> Result<()> {
    let loops = &deps.loops;
    let (dev, fresh) = match loops.find(image)? {
        Some(l) => (l, false),
        None => (loops.attach(image, true)?, true),
    };
    deps.fs.mount_btrfs(&dev.path, mnt).inspect_err(|_| {
        if fresh {
            let _ = loops.detach(&dev.path);
        }
    })
}

/// Opens the btrfs snapshotter on subvolumes under `data` with its
/// metadata in `meta` (`ROOT/snapshots`, on the state root's filesystem):
/// the store must not live on the filesystem containers write into, or one
/// container filling it takes every command down (SQLite cannot map its
/// shared memory). Metadata an older thinbox kept in `data` is moved first.
fn open_btrfs(data: &Path, meta: &Path) -> Result<Snapshots<Btrfs>> {
    move_metadata(data, meta)?;
    Ok(Snapshots::open(meta, Btrfs::new(data)?)?)
}

/// Moves `from/metadata.db` to `to/metadata.db` (a consistent copy by
/// `VACUUM INTO`, renamed into place, then the old files removed). Crash
/// safe: a copy already in place wins, and the old files go on the next
/// open. Runs under the engine lock, so nothing has the old store open.
pub(crate) fn move_metadata(from: &Path, to: &Path) -> Result<()> {
    let old = from.join("metadata.db");
    if !old.exists() {
        return Ok(());
    }
    let new = to.join("metadata.db");
    if !new.exists() {
        std::fs::create_dir_all(to).map_err(|e| Error::io("cannot create", to, e))?;
        let partial = to.join("metadata.db.moving");
        let _ = std::fs::remove_file(&partial);
        let failed = |e: rusqlite::Error| {
            Error::new(
                ErrorKind::Io,
                format!(
                    "cannot move the snapshot metadata {} to {}: {e}: free space under {} and retry",
                    old.display(),
                    new.display(),
                    to.display()
                ),
            )
        };
        let db = rusqlite::Connection::open(&old).map_err(failed)?;
        db.execute("VACUUM INTO ?1", [partial.to_string_lossy()])
            .map_err(failed)?;
        drop(db);
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("cannot sync", &partial, e))?;
        std::fs::rename(&partial, &new).map_err(|e| Error::io("cannot write", &new, e))?;
        File::open(to)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("cannot sync", to, e))?;
        tracing::info!(
            "moved snapshot metadata {} to {}",
            old.display(),
            new.display()
        );
    }
    for name in ["metadata.db", "metadata.db-wal", "metadata.db-shm", "lock"] {
        let _ = std::fs::remove_file(from.join(name));
    }
    Ok(())
}

/// The smallest btrfs image worth making (mkfs.btrfs refuses under 114
/// MiB with its default profiles).
const MIN_BTRFS_IMAGE: Bytes = Bytes::mib(128);

fn make_btrfs_image(
    deps: &Deps,
    observer: &dyn Observer,
    image: &Path,
    mnt: &Path,
    size: Bytes,
) -> Result<()> {
    let fitted = crate::sparse::fit(
        &crate::sparse::backing_of(image)?,
        image,
        size,
        size == crate::config::BtrfsSection::default().image_size,
        "btrfs.image_size",
        MIN_BTRFS_IMAGE,
    )?;
    if let Some(message) = fitted.warning {
        observer.event(&Event::Warning { message });
    }
    let size = fitted.size;
    observer.event(&Event::Mkfs {
        fs: "btrfs".to_owned(),
        on: image.to_owned(),
        size: Some(size),
    });
    let f = File::create_new(image).map_err(|e| Error::io("cannot create", image, e))?;
    f.set_len(size.0)
        .map_err(|e| Error::io("cannot size", image, e))?;
    drop(f);
    crash_point("btrfs-image");
    deps.fs.mkfs_btrfs(image)?;
    crash_point("btrfs-mkfs");
    observer.event(&Event::Mounting {
        path: mnt.to_owned(),
    });
    ensure_btrfs_mounted(deps, observer, image, mnt)?;
    crash_point("btrfs-mount");
    observer.event(&Event::StepDone);
    Ok(())
}

/// Best-effort removal of a half-made backend.
pub(crate) fn undo(root: &Path, opts: &EngineOptions, rec: &BackendRecord) {
    let deps = &opts.deps;
    match &rec.source {
        Source::LoopbackPool { pool, .. } => {
            if let Ok(pools) = Pools::for_engine(root, opts) {
                let _ = pools.destroy(pool, false);
            }
            let _ = std::fs::remove_dir_all(root.join("snapshots"));
        }
        Source::NamedPool { .. } => {
            // Not ours to remove; a base device left in it is reused.
            let _ = std::fs::remove_dir_all(root.join("snapshots"));
        }
        Source::BtrfsImage { image, mountpoint } => {
            if deps.fs.is_mountpoint(mountpoint) {
                let _ = deps.fs.unmount(mountpoint);
            }
            if let Ok(Some(l)) = deps.loops.find(image) {
                let _ = deps.loops.detach(&l.path);
            }
            let _ = std::fs::remove_file(image);
            let _ = std::fs::remove_dir(mountpoint);
            let _ = std::fs::remove_dir_all(root.join("snapshots"));
        }
        Source::BtrfsDir { .. } | Source::ZfsDataset { .. } | Source::Directory { .. } => {
            let _ = std::fs::remove_dir_all(root.join("snapshots"));
        }
    }
}

pub(crate) struct Opened {
    pub(crate) snapshotter: Box<dyn Snapshotter>,
    pub(crate) pool_name: Option<String>,
    pub(crate) dm: Option<Arc<dyn DmControl>>,
    pub(crate) pool_lock: Option<Flock<File>>,
}

fn sectors(what: &str, s: Bytes) -> Result<Sectors> {
    Sectors::from_bytes(s).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{what} {s} is not a multiple of 512 bytes: round it"),
        )
    })
}

/// How the engine has its root while opening the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Alone (`engine.lock` exclusive): the backend is made on first use,
    /// and repairs run (a read-only btrfs image mounted again, metadata
    /// moved out of an old image, quotas turned on, the pool autoextended).
    Alone { fresh: bool },
    /// Beside other engines (`engine.lock` shared): nothing is made or
    /// repaired; what needs that asks for the root alone instead.
    Shared,
}

/// Opens the backend `rec` describes; None when it needs repairs that
/// [`Access::Shared`] cannot do (the caller then waits for the root alone).
pub(crate) fn open_backend(
    root: &Path,
    config: &Config,
    opts: &EngineOptions,
    rec: &BackendRecord,
    access: Access,
) -> Result<Option<Opened>> {
    let fresh = access == Access::Alone { fresh: true };
    let alone = access != Access::Shared;
    let (deps, observer) = (&opts.deps, opts.observer.as_ref());
    let snap_root = root.join("snapshots");
    let plain = |s: Box<dyn Snapshotter>| Opened {
        snapshotter: s,
        pool_name: None,
        dm: None,
        pool_lock: None,
    };
    Ok(Some(match &rec.source {
        Source::LoopbackPool {
            pool,
            base_size,
            fs,
        }
        | Source::NamedPool {
            pool,
            base_size,
            fs,
        } => {
            let make = fresh && matches!(rec.source, Source::LoopbackPool { .. });
            let pools = Pools::for_engine(root, opts)?;
            if make {
                observer.event(&Event::MakingPool {
                    pool: pool.clone(),
                    dir: pools.dir_of(pool),
                });
            }
            // Other engines' changes to the pool take turns on the
            // snapshotter's lock: hold it while the pool opens (reconciling
            // its records) and the snapshotter recovers.
            std::fs::create_dir_all(&snap_root)
                .map_err(|e| Error::io("cannot create", &snap_root, e))?;
            let held = snapshotter::core::lock_root(&snap_root)?;
            let mut open = if make {
                let d = &config.devmapper;
                let defaults = crate::config::DevmapperSection::default();
                let dir = pools.dir_of(pool);
                let (data_size, metadata_size, warning) = crate::sparse::fit_pool(
                    &crate::sparse::backing_of(&dir)?,
                    &dir,
                    (d.data_size, d.data_size == defaults.data_size),
                    (d.metadata_size, d.metadata_size == defaults.metadata_size),
                    d.block_size,
                )?;
                if let Some(message) = warning {
                    observer.event(&Event::Warning { message });
                }
                let mut cfg = LoopbackConfig::new(pool.clone(), dir);
                cfg.data_size = data_size;
                cfg.metadata_size = metadata_size;
                cfg.block_size = BlockSize::from_bytes(d.block_size)?;
                pools.create_loopback(&cfg, &d.autoextend()?, d.free_space_floor)?
            } else if alone {
                pools.open_pool(pool)?
            } else {
                pools.open_pool_shared(pool)?
            };
            if let Some(to) = open.record.lent_to {
                return Err(Error::new(
                    ErrorKind::InUse,
                    format!(
                        "pool {pool:?} is lent to {to}, which owns its thin devices: name another pool in [devmapper] pool_name, or take it back with `thinbox pool hand-over {pool} --to thinbox`"
                    ),
                ));
            }
            if alone && !make {
                // Autoextend on use, as the monitor would (a status ioctl
                // when nothing needs growing).
                match open.pool.maybe_extend(&open.record.policy()) {
                    Ok(grew) => pools.count_extension(pool, &grew)?,
                    Err(e) => tracing::warn!("pool {pool}: autoextend failed: {e}"),
                }
            }
            open.share()?;
            let (p, _, lock) = open.into_parts();
            let cfg = DevmapperConfig {
                base_size: sectors("devmapper.base_size", *base_size)?,
                fs: fs.parse()?,
                discard_blocks: config.devmapper.discard_blocks,
            };
            let dm = Arc::clone(&pools.deps().dm);
            if make {
                observer.event(&Event::Mkfs {
                    fs: fs.clone(),
                    on: snap_root.clone(),
                    size: Some(*base_size),
                });
            }
            let s = Devmapper::open_locked(&snap_root, p, cfg, held)?;
            if make {
                observer.event(&Event::StepDone);
            }
            Opened {
                snapshotter: Box::new(s),
                pool_name: Some(pool.clone()),
                dm: Some(dm),
                pool_lock: Some(lock),
            }
        }
        Source::BtrfsImage { image, mountpoint } => {
            if fresh {
                make_btrfs_image(deps, observer, image, mountpoint, config.btrfs.image_size)?;
            } else {
                if !image.exists() {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "{} is recorded in {} but is gone: restore it, or remove {} to start afresh",
                            image.display(),
                            root.join(RECORD).display(),
                            root.display()
                        ),
                    ));
                }
                if !alone
                    && (!deps.fs.is_mountpoint(mountpoint)
                        || deps.fs.mounted_read_only(mountpoint)
                        || mountpoint.join("metadata.db").exists())
                {
                    return Ok(None);
                }
                ensure_btrfs_mounted(deps, observer, image, mountpoint)?;
            }
            if alone {
                // The image is thinbox's own: quotas on, so container roots
                // are bounded (roots made before they were are turned on here).
                deps.fs.enable_btrfs_quotas(mountpoint)?;
            }
            plain(Box::new(open_btrfs(mountpoint, &snap_root)?))
        }
        Source::BtrfsDir { path } => {
            if !alone && path.join("metadata.db").exists() {
                return Ok(None);
            }
            plain(Box::new(open_btrfs(path, &snap_root)?))
        }
        Source::ZfsDataset { dataset } => plain(Box::new(Zfs::open(&snap_root, dataset)?)),
        Source::Directory { path } => match rec.backend {
            BackendKind::Naive => plain(Box::new(Naive::open(path)?)),
            _ => plain(Box::new(Overlay::open(path)?)),
        },
    }))
}
pub(crate) fn check_agrees(config: &Config, rec: &BackendRecord, root: &Path) -> Result<()> {
    let wanted = match config.backend {
        BackendChoice::Auto => return Ok(()),
        BackendChoice::Devmapper => BackendKind::DmThin,
        BackendChoice::Btrfs => BackendKind::Btrfs,
        BackendChoice::Zfs => BackendKind::Zfs,
        BackendChoice::Overlay => BackendKind::Overlay,
        BackendChoice::Naive => BackendKind::Naive,
    };
    if wanted != rec.backend {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "{} already uses the {} backend but the config asks for {}: use another --root for {}, or set backend = \"auto\"",
                root.display(),
                rec.backend,
                config.backend,
                config.backend
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
