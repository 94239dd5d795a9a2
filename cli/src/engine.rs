//! The state root and the backend behind every command.
//!
//! [`Engine::open`] reads the configuration, takes `ROOT/engine.lock`
//! (waiting while another thinbox process holds it), and opens the
//! snapshotter on the backend recorded in `ROOT/backend.toml`. On first use
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

use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use snapshotter::backend::btrfs::Btrfs;
use snapshotter::backend::devmapper::{Devmapper, DevmapperConfig};
use snapshotter::backend::naive::Naive;
use snapshotter::backend::overlay::Overlay;
use snapshotter::backend::zfs::Zfs;
use snapshotter::Snapshotter;
use thinpool::dm::DmControl;
use thinpool::loopdev::{LoopControl, RealLoop};
use thinpool::pool::{Deps, LoopbackConfig};
use thinpool::status::PoolStatus;
use thinpool::{BlockSize, Sectors};

use crate::config::{BackendChoice, Config, Size, DEFAULT_CONFIG, DEFAULT_ROOT};
use crate::error::{Error, ErrorKind, Result};
use crate::pools::{lock_file, read_toml, write_toml, Pools};
use crate::progress::Spinner;

/// How to open the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// `--root`: overrides `root` in the configuration.
    pub root: Option<PathBuf>,
    /// The configuration file (`--config`).
    pub config: PathBuf,
    /// Print the backend choice on the run that makes it.
    pub announce: bool,
    /// Show progress spinners on a terminal (off for `--json`).
    pub progress: bool,
}

impl EngineOptions {
    /// Options for `root` and `config`, announcing, with progress.
    pub fn new(root: Option<PathBuf>, config: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions {
            root,
            config: config.into(),
            announce: true,
            progress: true,
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions::new(None, DEFAULT_CONFIG)
    }
}

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
        base_size: Size,
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
        base_size: Size,
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

/// Test hook: when the environment variable `THINBOX_CRASH_AT` names
/// `step`, the process kills itself there with SIGKILL, so
/// tests can prove that every step of making a backend or a pool is
/// recovered by the next run. Steps: `btrfs-image`, `btrfs-mkfs`,
/// `btrfs-mount`, `backend-opened`, `pool-created`.
pub fn crash_point(step: &str) {
    if std::env::var_os("THINBOX_CRASH_AT").is_some_and(|v| v == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

const RECORD: &str = "backend.toml";
const PARTIAL: &str = "backend.partial.toml";

/// The state root and its open snapshotter.
pub struct Engine {
    root: PathBuf,
    config: Config,
    record: BackendRecord,
    snapshotter: Box<dyn Snapshotter>,
    pool_name: Option<String>,
    dm: Option<std::sync::Arc<dyn DmControl>>,
    pool_lock: Option<Flock<File>>,
    lock: Option<Flock<File>>,
    chosen: bool,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("root", &self.root)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Why dm-thin is usable, or why not.
fn dm_thin_available() -> std::result::Result<(), String> {
    if !Path::new("/dev/mapper/control").exists() {
        let _ = std::process::Command::new("modprobe")
            .args(["-q", "dm-mod"])
            .stderr(std::process::Stdio::null())
            .status();
    }
    if !Path::new("/dev/mapper/control").exists() {
        return Err("no device-mapper: /dev/mapper/control is missing".to_owned());
    }
    let has = || -> std::result::Result<bool, String> {
        let dm = thinpool::dm::RealDm::new().map_err(|e| e.to_string())?;
        let types = dm.target_types().map_err(|e| e.to_string())?;
        Ok(types.iter().any(|t| t == "thin-pool"))
    };
    if has()? {
        return Ok(());
    }
    let _ = std::process::Command::new("modprobe")
        .args(["-q", "dm-thin-pool"])
        .stderr(std::process::Stdio::null())
        .status();
    if has()? {
        Ok(())
    } else {
        Err("the kernel has no thin-pool target (modprobe dm-thin-pool failed)".to_owned())
    }
}

fn proc_filesystems_has(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|t| t.lines().any(|l| l.split_whitespace().last() == Some(fs)))
        .unwrap_or(false)
}

fn have_fs(fs: &str) -> bool {
    if proc_filesystems_has(fs) {
        return true;
    }
    let _ = std::process::Command::new("modprobe")
        .args(["-q", fs])
        .stderr(std::process::Stdio::null())
        .status();
    proc_filesystems_has(fs)
}

fn have_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn btrfs_available() -> std::result::Result<(), String> {
    if !have_fs("btrfs") {
        return Err("the kernel has no btrfs".to_owned());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("there are no loop devices (/dev/loop-control)".to_owned());
    }
    if !have_tool("mkfs.btrfs") {
        return Err("mkfs.btrfs is not installed (btrfs-progs)".to_owned());
    }
    Ok(())
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

fn choose(config: &Config, root: &Path) -> Result<BackendRecord> {
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
            match dm_thin_available() {
                Ok(()) => dm_record(
                    "the kernel has dm-thin, so a loopback thin-pool in sparse files".to_owned(),
                ),
                Err(no_dm) => match btrfs_available() {
                    Ok(()) => image_record(format!(
                        "no dm-thin ({no_dm}), so a loopback btrfs filesystem in a sparse file"
                    )),
                    Err(no_btrfs) if have_fs("overlay") => dir_record(
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
            dm_thin_available().map_err(|why| {
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
                btrfs_available().map_err(|why| {
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

/// Decodes the octal escapes (`\040`) of a mountinfo path.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let n = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok());
            if let Some(n) = n {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(want) = std::fs::canonicalize(path) else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| {
            t.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .any(|m| Path::new(&unescape_mount_path(m)) == want)
        })
        .unwrap_or(false)
}

fn mount_btrfs(dev: &Path, target: &Path) -> Result<()> {
    nix::mount::mount(
        Some(dev),
        target,
        Some("btrfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!(
                "cannot mount {} on {}: {e}: check `dmesg` for why btrfs refused it",
                dev.display(),
                target.display()
            ),
        )
    })
}

/// Attaches `image` (or finds its loop device) and mounts it on `mnt`
/// unless already mounted. Detaches a loop device it attached if the mount fails.
fn ensure_btrfs_mounted(image: &Path, mnt: &Path) -> Result<()> {
    if is_mountpoint(mnt) {
        return Ok(());
    }
    std::fs::create_dir_all(mnt).map_err(|e| Error::io("cannot create", mnt, e))?;
    let loops = RealLoop;
    let (dev, fresh) = match loops.find(image)? {
        Some(l) => (l, false),
        None => (loops.attach(image, true)?, true),
    };
    mount_btrfs(&dev.path, mnt).inspect_err(|_| {
        if fresh {
            let _ = loops.detach(&dev.path);
        }
    })
}

fn make_btrfs_image(image: &Path, mnt: &Path, size: Size, progress: bool) -> Result<()> {
    let spinner = Spinner::start(
        progress,
        format!("making a {size} btrfs filesystem in {}", image.display()),
    );
    let f = File::create_new(image).map_err(|e| Error::io("cannot create", image, e))?;
    f.set_len(size.0)
        .map_err(|e| Error::io("cannot size", image, e))?;
    drop(f);
    crash_point("btrfs-image");
    let out = std::process::Command::new("mkfs.btrfs")
        .args(["-q", "-f"])
        .arg(image)
        .output()
        .map_err(|e| {
            Error::new(
                ErrorKind::BackendUnavailable,
                format!("cannot run mkfs.btrfs: {e}: install btrfs-progs"),
            )
        })?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "mkfs.btrfs {} failed: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    crash_point("btrfs-mkfs");
    spinner.set(format!("mounting {}", mnt.display()));
    ensure_btrfs_mounted(image, mnt)?;
    crash_point("btrfs-mount");
    Ok(())
}

/// Best-effort removal of a half-made backend.
fn undo(root: &Path, rec: &BackendRecord) {
    match &rec.source {
        Source::LoopbackPool { pool, .. } => {
            if let Ok(pools) = Pools::open(root) {
                let _ = pools.destroy(pool);
            }
            let _ = std::fs::remove_dir_all(root.join("snapshots"));
        }
        Source::NamedPool { .. } => {
            // Not ours to remove; a base device left in it is reused.
            let _ = std::fs::remove_dir_all(root.join("snapshots"));
        }
        Source::BtrfsImage { image, mountpoint } => {
            if is_mountpoint(mountpoint) {
                let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
            }
            if let Ok(Some(l)) = RealLoop.find(image) {
                let _ = RealLoop.detach(&l.path);
            }
            let _ = std::fs::remove_file(image);
            let _ = std::fs::remove_dir(mountpoint);
        }
        Source::BtrfsDir { .. } | Source::ZfsDataset { .. } | Source::Directory { .. } => {
            let _ = std::fs::remove_dir_all(root.join("snapshots"));
        }
    }
}

struct Opened {
    snapshotter: Box<dyn Snapshotter>,
    pool_name: Option<String>,
    dm: Option<std::sync::Arc<dyn DmControl>>,
    pool_lock: Option<Flock<File>>,
}

fn sectors(what: &str, s: Size) -> Result<Sectors> {
    s.bytes().to_sectors().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{what} {s} is not a multiple of 512 bytes: round it"),
        )
    })
}

fn open_backend(
    root: &Path,
    config: &Config,
    rec: &BackendRecord,
    fresh: bool,
    progress: bool,
) -> Result<Opened> {
    let snap_root = root.join("snapshots");
    let plain = |s: Box<dyn Snapshotter>| Opened {
        snapshotter: s,
        pool_name: None,
        dm: None,
        pool_lock: None,
    };
    Ok(match &rec.source {
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
            let pools = Pools::open(root)?;
            let spinner = Spinner::start(
                progress && make,
                format!(
                    "making loopback thin-pool {pool} in {}",
                    pools.dir_of(pool).display()
                ),
            );
            let open = if make {
                let d = &config.devmapper;
                let mut cfg = LoopbackConfig::new(pool.clone(), pools.dir_of(pool));
                cfg.data_size = d.data_size.bytes();
                cfg.metadata_size = d.metadata_size.bytes();
                cfg.block_size = BlockSize::from_bytes(d.block_size.bytes())?;
                pools.create_loopback(&cfg, &d.autoextend()?, d.free_space_floor)?
            } else {
                pools.open_pool(pool)?
            };
            spinner.set(format!("making the base {fs} filesystem"));
            let (mut p, rec, lock) = open.into_parts();
            if !make {
                // Autoextend on use, as the monitor would (a status ioctl
                // when nothing needs growing).
                if let Err(e) = p.maybe_extend(&rec.policy()) {
                    tracing::warn!("pool {pool}: autoextend failed: {e}");
                }
            }
            let cfg = DevmapperConfig {
                base_size: sectors("devmapper.base_size", *base_size)?,
                fs: fs.parse()?,
            };
            let dm = Deps::real()?.dm;
            let s = Devmapper::open(&snap_root, p, cfg)?;
            Opened {
                snapshotter: Box::new(s),
                pool_name: Some(pool.clone()),
                dm: Some(dm),
                pool_lock: Some(lock),
            }
        }
        Source::BtrfsImage { image, mountpoint } => {
            if fresh {
                make_btrfs_image(image, mountpoint, config.btrfs.image_size, progress)?;
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
                ensure_btrfs_mounted(image, mountpoint)?;
            }
            plain(Box::new(Btrfs::open(mountpoint)?))
        }
        Source::BtrfsDir { path } => plain(Box::new(Btrfs::open(path)?)),
        Source::ZfsDataset { dataset } => plain(Box::new(Zfs::open(&snap_root, dataset)?)),
        Source::Directory { path } => match rec.backend {
            BackendKind::Naive => plain(Box::new(Naive::open(path)?)),
            _ => plain(Box::new(Overlay::open(path)?)),
        },
    })
}

impl Engine {
    /// Opens the state root, choosing and making the backend on first use.
    pub fn open(opts: &EngineOptions) -> Result<Engine> {
        let config = Config::load(&opts.config)?;
        let root = opts
            .root
            .clone()
            .or_else(|| config.root.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::not_root("thinbox"));
        }
        std::fs::create_dir_all(&root).map_err(|e| Error::io("cannot create", &root, e))?;
        let root = std::fs::canonicalize(&root).map_err(|e| Error::io("cannot open", &root, e))?;
        let lock = lock_file(&root.join("engine.lock"))?;
        let record_path = root.join(RECORD);
        let partial_path = root.join(PARTIAL);
        let (record, opened, chosen) = if record_path.exists() {
            let record: BackendRecord = read_toml(&record_path)?;
            check_agrees(&config, &record, &root)?;
            let opened = open_backend(&root, &config, &record, false, opts.progress)?;
            (record, opened, false)
        } else {
            if partial_path.exists() {
                if let Ok(old) = read_toml::<BackendRecord>(&partial_path) {
                    undo(&root, &old);
                }
                let _ = std::fs::remove_file(&partial_path);
            }
            let record = choose(&config, &root)?;
            write_toml(&partial_path, &record)?;
            match open_backend(&root, &config, &record, true, opts.progress) {
                Ok(opened) => {
                    crash_point("backend-opened");
                    std::fs::rename(&partial_path, &record_path)
                        .map_err(|e| Error::io("cannot write", &record_path, e))?;
                    (record, opened, true)
                }
                Err(e) => {
                    undo(&root, &record);
                    let _ = std::fs::remove_file(&partial_path);
                    return Err(e);
                }
            }
        };
        if chosen && opts.announce {
            eprintln!(
                "thinbox: using the {} backend under {}: {} (recorded in {}; set `backend` in {} for another root)",
                record.backend,
                root.display(),
                record.reason,
                record_path.display(),
                opts.config.display()
            );
        }
        Ok(Engine {
            root,
            config,
            record,
            snapshotter: opened.snapshotter,
            pool_name: opened.pool_name,
            dm: opened.dm,
            pool_lock: opened.pool_lock,
            lock: Some(lock),
            chosen,
        })
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

    /// Closes the snapshotter and releases the root so another thinbox
    /// process can work.
    pub fn close(mut self) -> Result<()> {
        let r = self.snapshotter.close();
        self.pool_lock = None;
        self.lock = None;
        Ok(r?)
    }
}

fn check_agrees(config: &Config, rec: &BackendRecord, root: &Path) -> Result<()> {
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
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_unescape() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/x\\"), "/x\\");
    }

    #[test]
    fn pool_names_come_from_the_root() {
        assert_eq!(
            default_pool_name(Path::new("/var/lib/thinbox")),
            "thinbox-pool"
        );
        assert_eq!(default_pool_name(Path::new("/tmp/a b")), "a_b-pool");
        assert!(default_pool_name(Path::new(&"x".repeat(100))).len() <= 64);
    }

    #[test]
    fn records_round_trip() {
        for source in [
            Source::LoopbackPool {
                pool: "p".into(),
                base_size: Size::gib(10),
                fs: "ext4".into(),
            },
            Source::BtrfsImage {
                image: "/r/btrfs.img".into(),
                mountpoint: "/r/btrfs".into(),
            },
            Source::ZfsDataset {
                dataset: "tank/x".into(),
            },
            Source::NamedPool {
                pool: "lvm".into(),
                base_size: Size::gib(1),
                fs: "xfs".into(),
            },
        ] {
            let rec = BackendRecord {
                backend: BackendKind::Btrfs,
                reason: "why".into(),
                source,
            };
            let text = toml::to_string(&rec).unwrap();
            assert_eq!(
                toml::from_str::<BackendRecord>(&text).unwrap(),
                rec,
                "{text}"
            );
        }
    }

    #[test]
    fn configured_backend_must_agree_with_the_record() {
        let rec = BackendRecord {
            backend: BackendKind::Btrfs,
            reason: String::new(),
            source: Source::BtrfsDir { path: "/x".into() },
        };
        let mut c = Config::default();
        assert!(check_agrees(&c, &rec, Path::new("/r")).is_ok());
        c.backend = BackendChoice::Zfs;
        let e = check_agrees(&c, &rec, Path::new("/r")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(
            e.message.contains("btrfs") && e.message.contains("zfs"),
            "{}",
            e.message
        );
    }

    #[test]
    fn zfs_without_dataset_is_refused() {
        let c = Config {
            backend: BackendChoice::Zfs,
            ..Config::default()
        };
        let e = choose(&c, Path::new("/r")).unwrap_err();
        assert!(e.message.contains("[zfs] dataset"), "{}", e.message);
    }
}
