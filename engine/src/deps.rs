//! The kernel seams the engine works through, passed in by the caller:
//! what the kernel offers (for the backend choice), the thin-pool seams,
//! loop devices, and making and mounting the btrfs image. [`Deps::real`]
//! drives the kernel; tests pass fakes (thinpool's `FakeDm`, `FakeLoop`,
//! and the probes and filesystems they write themselves).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thinpool::loopdev::{LoopControl, RealLoop};

use crate::error::{Error, ErrorKind, Result};
use crate::mounts;

/// What the kernel and the host offer, for choosing a backend. Each
/// answer is `Err(why not)` so the choice can say why it fell back.
pub trait KernelProbe: Send + Sync + fmt::Debug {
    /// device-mapper with the `thin-pool` target (loaded on demand).
    fn dm_thin(&self) -> std::result::Result<(), String>;
    /// btrfs, loop devices and `mkfs.btrfs`, for the loopback image.
    fn loopback_btrfs(&self) -> std::result::Result<(), String>;
    /// Whether the kernel has filesystem `fs` (loaded on demand).
    fn has_fs(&self, fs: &str) -> bool;
}

/// Making and mounting filesystems.
pub trait Filesystems: Send + Sync + fmt::Debug {
    /// Makes a btrfs filesystem in the file (or device) `on`.
    fn mkfs_btrfs(&self, on: &Path) -> Result<()>;
    /// Mounts the btrfs on `dev` at `target`.
    fn mount_btrfs(&self, dev: &Path, target: &Path) -> Result<()>;
    /// Turns on quotas on the btrfs mounted at `mnt` unless they are on
    /// (so container roots can be bounded by qgroup limits).
    fn enable_btrfs_quotas(&self, mnt: &Path) -> Result<()>;
    /// Whether `path` is a mount point.
    fn is_mountpoint(&self, path: &Path) -> bool;
    /// Whether the mount at `path` is read-only (as btrfs turns itself
    /// after an I/O error).
    fn mounted_read_only(&self, path: &Path) -> bool;
    /// Detaches the mount at `path` (lazily: `MNT_DETACH`).
    fn unmount(&self, path: &Path) -> Result<()>;
    /// Whether any mount's source is device `dev`.
    fn mounted_elsewhere(&self, dev: &Path) -> bool;
    /// Detaches every mount whose source is device `dev` (bind mounts of
    /// its subvolumes too, deepest first), so its superblock goes; returns
    /// how many there were.
    fn unmount_device(&self, dev: &Path) -> Result<usize>;
}

/// Makes the thin-pool seams when a pool is first needed (the real ones
/// need `/dev/mapper/control`, which hosts without dm-thin lack).
pub type PoolDepsFn = dyn Fn() -> thinpool::Result<thinpool::pool::Deps> + Send + Sync;

/// The engine's kernel seams.
#[derive(Clone)]
pub struct Deps {
    /// What the kernel offers.
    pub probe: Arc<dyn KernelProbe>,
    /// The thin-pool seams (dm, loop, metadata tools, LVM), on demand.
    pub pools: Arc<PoolDepsFn>,
    /// Loop devices, for the btrfs image.
    pub loops: Arc<dyn LoopControl>,
    /// mkfs and mount.
    pub fs: Arc<dyn Filesystems>,
}

impl fmt::Debug for Deps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deps")
            .field("probe", &self.probe)
            .field("loops", &self.loops)
            .field("fs", &self.fs)
            .finish_non_exhaustive()
    }
}

impl Deps {
    /// The real kernel and tools.
    pub fn real() -> Deps {
        Deps {
            probe: Arc::new(RealProbe),
            pools: Arc::new(thinpool::pool::Deps::real),
            loops: Arc::new(RealLoop),
            fs: Arc::new(RealFilesystems),
        }
    }

    /// The thin-pool seams.
    pub fn pool_deps(&self) -> Result<thinpool::pool::Deps> {
        Ok((self.pools)()?)
    }
}

/// The kernel's answers, from `/dev/mapper/control`, dm's target list,
/// `/proc/filesystems` and `$PATH` (loading modules with `modprobe`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealProbe;

fn modprobe(module: &str) {
    let _ = std::process::Command::new("modprobe")
        .args(["-q", module])
        .stderr(std::process::Stdio::null())
        .status();
}

fn proc_filesystems_has(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|t| t.lines().any(|l| l.split_whitespace().last() == Some(fs)))
        .unwrap_or(false)
}

fn have_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

impl KernelProbe for RealProbe {
    fn dm_thin(&self) -> std::result::Result<(), String> {
        if !Path::new("/dev/mapper/control").exists() {
            modprobe("dm-mod");
        }
        if !Path::new("/dev/mapper/control").exists() {
            return Err("no device-mapper: /dev/mapper/control is missing".to_owned());
        }
        let has = || -> std::result::Result<bool, String> {
            let dm = thinpool::dm::RealDm::new().map_err(|e| e.to_string())?;
            let types = thinpool::dm::DmControl::target_types(&dm).map_err(|e| e.to_string())?;
            Ok(types.iter().any(|t| t == "thin-pool"))
        };
        if has()? {
            return Ok(());
        }
        modprobe("dm-thin-pool");
        if has()? {
            Ok(())
        } else {
            Err("the kernel has no thin-pool target (modprobe dm-thin-pool failed)".to_owned())
        }
    }

    fn loopback_btrfs(&self) -> std::result::Result<(), String> {
        if !self.has_fs("btrfs") {
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

    fn has_fs(&self, fs: &str) -> bool {
        if proc_filesystems_has(fs) {
            return true;
        }
        modprobe(fs);
        proc_filesystems_has(fs)
    }
}

/// Runs btrfs-progs' `tool ARGS PATH`, its output captured; its stderr
/// goes into the error.
fn btrfs_progs(tool: &str, args: &[&str], path: &Path) -> Result<()> {
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| {
            Error::new(
                ErrorKind::BackendUnavailable,
                format!("cannot run {tool}: {e}: install btrfs-progs"),
            )
        })?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{tool} {} {} failed: {}",
                args.join(" "),
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// `mkfs.btrfs` and mount(2).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFilesystems;

impl Filesystems for RealFilesystems {
    fn mkfs_btrfs(&self, on: &Path) -> Result<()> {
        btrfs_progs("mkfs.btrfs", &["-q", "-f"], on)
    }

    fn mount_btrfs(&self, dev: &Path, target: &Path) -> Result<()> {
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

    fn enable_btrfs_quotas(&self, mnt: &Path) -> Result<()> {
        use snapshotter::backend::btrfs::{BtrfsOps, SystemBtrfs};
        if SystemBtrfs.quotas_enabled(mnt)? {
            return Ok(());
        }
        btrfs_progs("btrfs", &["quota", "enable"], mnt)
    }

    fn is_mountpoint(&self, path: &Path) -> bool {
        mounts::is_mount_point(path).unwrap_or(false)
    }

    fn mounted_read_only(&self, path: &Path) -> bool {
        let Ok(mounts) = kernfmt::MountInfo::read_self() else {
            return false;
        };
        // The last mount on the path is the one seen there.
        mounts
            .iter()
            .rev()
            .find(|m| m.mount_point_path() == path)
            .is_some_and(|m| {
                // btrfs forced read-only shows in the superblock's options.
                m.options.split(',').any(|o| o == "ro")
                    || m.super_options.split(',').any(|o| o == "ro")
            })
    }

    fn unmount(&self, path: &Path) -> Result<()> {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot unmount {}: {e}", path.display()),
            )
        })
    }

    fn mounted_elsewhere(&self, dev: &Path) -> bool {
        kernfmt::MountInfo::read_self()
            .is_ok_and(|mounts| mounts.iter().any(|m| m.source_path() == dev))
    }

    fn unmount_device(&self, dev: &Path) -> Result<usize> {
        let mounts = kernfmt::MountInfo::read_self()
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot read mounts: {e}")))?;
        let mut points: Vec<PathBuf> = mounts
            .iter()
            .filter(|m| m.source_path() == dev)
            .map(|m| m.mount_point_path())
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for p in &points {
            self.unmount(p)?;
        }
        Ok(points.len())
    }
}

/// A probe with fixed answers, for tests.
#[derive(Debug, Clone)]
pub struct FakeProbe {
    /// The answer of [`KernelProbe::dm_thin`].
    pub dm_thin: std::result::Result<(), String>,
    /// The answer of [`KernelProbe::loopback_btrfs`].
    pub loopback_btrfs: std::result::Result<(), String>,
    /// The filesystems [`KernelProbe::has_fs`] says the kernel has.
    pub filesystems: Vec<String>,
}

impl FakeProbe {
    /// A kernel with nothing.
    pub fn nothing() -> FakeProbe {
        FakeProbe {
            dm_thin: Err("no dm (fake)".to_owned()),
            loopback_btrfs: Err("no btrfs (fake)".to_owned()),
            filesystems: Vec::new(),
        }
    }
}

impl KernelProbe for FakeProbe {
    fn dm_thin(&self) -> std::result::Result<(), String> {
        self.dm_thin.clone()
    }
    fn loopback_btrfs(&self) -> std::result::Result<(), String> {
        self.loopback_btrfs.clone()
    }
    fn has_fs(&self, fs: &str) -> bool {
        self.filesystems.iter().any(|f| f == fs)
    }
}

/// Filesystems in memory, for tests: mounts are a set of paths, mkfs
/// writes a marker into the file and can be made to fail. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeFilesystems {
    mounted: Arc<std::sync::Mutex<Vec<std::path::PathBuf>>>,
    quotas: Arc<std::sync::Mutex<Vec<std::path::PathBuf>>>,
    read_only: Arc<std::sync::Mutex<Vec<std::path::PathBuf>>>,
    fail_mkfs: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeFilesystems {
    /// Nothing mounted.
    pub fn new() -> FakeFilesystems {
        FakeFilesystems::default()
    }

    /// Makes `mkfs_btrfs` fail from now on.
    pub fn fail_mkfs(&self, fail: bool) {
        self.fail_mkfs
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// What is mounted.
    pub fn mounted(&self) -> Vec<std::path::PathBuf> {
        self.mounted.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Makes the mount at `path` read-only (as an I/O error would) until
    /// it is unmounted.
    pub fn set_read_only(&self, path: &Path) {
        if let Ok(mut r) = self.read_only.lock() {
            r.push(path.to_owned());
        }
    }

    /// Where quotas were turned on.
    pub fn quotas(&self) -> Vec<std::path::PathBuf> {
        self.quotas.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Filesystems for FakeFilesystems {
    fn mkfs_btrfs(&self, on: &Path) -> Result<()> {
        if self.fail_mkfs.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Io,
                format!("mkfs.btrfs {} failed (fake)", on.display()),
            ));
        }
        std::fs::write(on, b"fake btrfs").map_err(|e| Error::io("cannot write", on, e))
    }

    fn mount_btrfs(&self, _dev: &Path, target: &Path) -> Result<()> {
        if let Ok(mut m) = self.mounted.lock() {
            m.push(target.to_owned());
        }
        Ok(())
    }

    fn enable_btrfs_quotas(&self, mnt: &Path) -> Result<()> {
        if let Ok(mut q) = self.quotas.lock() {
            q.push(mnt.to_owned());
        }
        Ok(())
    }

    fn is_mountpoint(&self, path: &Path) -> bool {
        self.mounted().iter().any(|m| m == path)
    }

    fn mounted_read_only(&self, path: &Path) -> bool {
        self.read_only
            .lock()
            .map(|r| r.iter().any(|p| p == path))
            .unwrap_or(false)
    }

    fn unmount(&self, path: &Path) -> Result<()> {
        if let Ok(mut m) = self.mounted.lock() {
            m.retain(|p| p != path);
        }
        if let Ok(mut r) = self.read_only.lock() {
            r.retain(|p| p != path);
        }
        Ok(())
    }

    fn mounted_elsewhere(&self, _dev: &Path) -> bool {
        !self.mounted().is_empty()
    }

    fn unmount_device(&self, _dev: &Path) -> Result<usize> {
        let n = self.mounted().len();
        if let Ok(mut m) = self.mounted.lock() {
            m.clear();
        }
        if let Ok(mut r) = self.read_only.lock() {
            r.clear();
        }
        Ok(n)
    }
}
