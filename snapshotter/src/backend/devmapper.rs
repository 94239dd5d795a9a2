//! The devmapper backend, over the `thinpool` crate, as containerd's
//! devmapper snapshotter: one base thin device (`base`) carrying a
//! filesystem (ext4 by default, or xfs) made once per snapshotter; every
//! active snapshot or view is a dm-thin snapshot (`snap-ID`) of its parent's
//! device, or of the base when it has no parent. Committing deactivates the
//! device (it is never written again); children are snapshots of it.
//! Mounts name the active device node (`/dev/dm-N`) with the filesystem
//! type: read-write for active snapshots, read-only for views, `nouuid` for
//! xfs snapshots. Usage is the device's exclusive blocks in the pool
//! (`thin_ls` on a metadata snapshot), so it excludes what it shares with
//! its parent. The [`MAX_SIZE_LABEL`] label on `prepare` makes the new
//! device bigger than its parent's and grows its filesystem (online, on a
//! temporary mount); children of a grown snapshot inherit its size.
//! Diffs compare trees ([`crate::Capabilities::lists_changes`] is off):
//! `thin_delta` lists the data blocks two thin devices do not share, which
//! says nothing about which files they belong to without reading the
//! filesystem's own metadata.
//!
//! Kernel features: device-mapper with the `thin-pool` and `thin` targets;
//! tools: thin-provisioning-tools (`thin_ls`), e2fsprogs or xfsprogs. The
//! pool (loopback, direct-lvm or adopted) is made and opened by the caller
//! and handed over; its kernel interfaces are `thinpool`'s seams.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use thinpool::fs::Filesystem;
use thinpool::pool::Pool;
use thinpool::Sectors;

use crate::core::{Backend, Object, Snapshots};
use crate::error::{Error, ErrorKind, Result};
use crate::mount::{MountGuard, MountSpec};
use crate::store::SnapshotId;
use crate::types::{
    max_size, size_label, Bytes, Capabilities, Kind, Labels, Usage, MAX_SIZE_LABEL,
};

/// The base thin device's name in the pool.
pub const BASE: &str = "base";
const PREFIX: &str = "snap-";

/// How the base device is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevmapperConfig {
    /// Virtual size of the base device, and so of every snapshot (a
    /// multiple of the pool's block size).
    pub base_size: Sectors,
    /// Filesystem on the base device.
    pub fs: Filesystem,
    /// Discard a snapshot's blocks before deleting its thin device, so
    /// the pool passes the discards down and a loopback pool's data file
    /// gets its space back (containerd's `discard_blocks`, for #5691;
    /// deleting alone frees the blocks only inside the pool).
    pub discard_blocks: bool,
}

impl Default for DevmapperConfig {
    /// containerd's default base image size (10 GiB) with ext4.
    fn default() -> DevmapperConfig {
        DevmapperConfig {
            base_size: Sectors::new(10 << 21),
            fs: Filesystem::Ext4,
            discard_blocks: true,
        }
    }
}

/// The devmapper backend: a thin device per snapshot in one pool. Its
/// operations take turns on the pool (each is a pool metadata commit that
/// moves the pool's transaction id, which the pool's records follow): in
/// this process on a mutex, and across the processes sharing the root
/// (`thinbox serve` and the CLI beside it) on `ROOT/pool-ops.lock`. The
/// snapshotter's own records are committed beside them, not under these.
#[derive(Debug)]
pub struct Devmapper {
    thins: Mutex<Thins>,
    fs: Filesystem,
    turns: PathBuf,
}

/// The pool and what the backend's operations need beside it.
#[derive(Debug)]
struct Thins {
    pool: Pool,
    fs: Filesystem,
    root: PathBuf,
    discard_blocks: bool,
}

fn dm_err(op: &'static str, name: &str, e: thinpool::Error) -> Error {
    Error::new(ErrorKind::Io, op)
        .key(name)
        .detail(e.to_string())
        .source(e)
}

/// Removes what mkfs put in the root directory of the filesystem on `dev`.
fn empty_root(dev: &Path, fs: Filesystem, target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|e| Error::io("open", target, e))?;
    let spec = MountSpec {
        fstype: fs.to_string(),
        source: dev.display().to_string(),
        options: vec!["rw".into()],
    };
    let guard = MountGuard::new(&[spec], target)?;
    let lost = target.join("lost+found");
    let removed = match std::fs::remove_dir(&lost) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("open", &lost, e)),
        _ => Ok(()),
    };
    guard.unmount()?;
    removed?;
    std::fs::remove_dir(target).map_err(|e| Error::io("open", target, e))
}

fn thin_name(id: SnapshotId) -> String {
    format!("{PREFIX}{id}")
}

fn name_of(obj: &Object<'_>) -> String {
    thin_name(obj.id)
}

impl Devmapper {
    /// Opens a devmapper snapshotter with metadata at `root` over `pool`.
    pub fn open(root: &Path, pool: Pool, cfg: DevmapperConfig) -> Result<Snapshots<Devmapper>> {
        std::fs::create_dir_all(root).map_err(|e| Error::io("open", root, e))?;
        let held = crate::core::lock_root(root)?;
        Self::open_locked(root, pool, cfg, held)
    }

    /// [`Devmapper::open`] for a caller holding the root's lock (taken with
    /// [`crate::core::lock_root`] before it opened the pool, so no other
    /// process's change to the pool was half done meanwhile).
    pub fn open_locked(
        root: &Path,
        pool: Pool,
        cfg: DevmapperConfig,
        held: nix::fcntl::Flock<std::fs::File>,
    ) -> Result<Snapshots<Devmapper>> {
        Snapshots::open_locked(root, Devmapper::new(pool, cfg, root)?, held)
    }

    /// A backend over `pool`, making the base device and its filesystem if
    /// the pool has none yet (idempotent: an existing base is kept). A new
    /// base is mounted once on `ROOT/base` to empty its root directory
    /// (mkfs.ext4 leaves `lost+found`, which would otherwise show up in
    /// every parentless snapshot and its diff).
    pub fn new(mut pool: Pool, cfg: DevmapperConfig, root: &Path) -> Result<Devmapper> {
        if !Thins::exists(&pool, BASE)? {
            pool.create_thin(BASE, cfg.base_size)
                .map_err(|e| dm_err("open", BASE, e))?;
        }
        let fs = match pool.filesystem(BASE).map_err(|e| dm_err("open", BASE, e))? {
            Some(fs) => fs,
            None => {
                pool.mkfs(BASE, cfg.fs)
                    .map_err(|e| dm_err("open", BASE, e))?;
                let dev = pool.activate(BASE).map_err(|e| dm_err("open", BASE, e))?;
                empty_root(&dev, cfg.fs, &root.join("base"))?;
                cfg.fs
            }
        };
        pool.deactivate(BASE, false)
            .map_err(|e| dm_err("open", BASE, e))?;
        Ok(Devmapper {
            thins: Mutex::new(Thins {
                pool,
                fs,
                root: root.to_owned(),
                discard_blocks: cfg.discard_blocks,
            }),
            fs,
            turns: root.join("pool-ops.lock"),
        })
    }

    /// The filesystem on every snapshot.
    pub fn filesystem(&self) -> Filesystem {
        self.fs
    }

    fn thins(&self) -> MutexGuard<'_, Thins> {
        self.thins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This process's turn on the pool among the processes sharing the
    /// root, for an operation that changes the pool's metadata; taken
    /// before [`Devmapper::thins`] (a thread of this process waits on its
    /// own descriptor like any other process).
    fn pool_turn(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.turns)
            .map_err(|e| Error::io("open", &self.turns, e))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            Error::new(ErrorKind::Io, "lock")
                .path(&self.turns)
                .detail("cannot take a turn on the pool")
                .source(e)
        })
    }
}

impl Thins {
    /// How to mount thin device `dev`: read-write or read-only, plus the
    /// filesystem's own options for a snapshot (xfs: `nouuid`).
    fn mount_spec(&self, dev: &Path, writable: bool) -> MountSpec {
        let mut options = vec![if writable { "rw" } else { "ro" }.to_owned()];
        options.extend(
            self.fs
                .mount_options(true)
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_owned),
        );
        MountSpec {
            fstype: self.fs.to_string(),
            source: dev.display().to_string(),
            options,
        }
    }

    /// Discards the mapped blocks of thin device `name` (`BLKDISCARD` up
    /// to its highest mapped sector, on the device activated for the
    /// moment): its exclusive blocks go back to the pool, which passes the
    /// discards down to the data device. It is deactivated first, which
    /// fails while anyone has it open (a mounted filesystem is never
    /// discarded under its users).
    fn discard(&self, name: &str) -> Result<()> {
        self.pool
            .deactivate(name, false)
            .map_err(|e| dm_err("discard", name, e))?;
        let dev = self
            .pool
            .activate(name)
            .map_err(|e| dm_err("discard", name, e))?;
        let discarded = self.discard_mapped(name, &dev);
        let deactivated = self.pool.deactivate(name, false);
        discarded?;
        deactivated.map_err(|e| dm_err("discard", name, e))
    }

    fn discard_mapped(&self, name: &str, dev: &Path) -> Result<()> {
        let highest = match self.pool.thin_status(name) {
            Ok(thinpool::status::ThinStatus::Working {
                highest_mapped: Some(h),
                ..
            }) => h,
            // Nothing mapped: nothing to give back.
            Ok(thinpool::status::ThinStatus::Working { .. }) => return Ok(()),
            Ok(other) => {
                return Err(Error::new(ErrorKind::Io, "discard")
                    .key(name)
                    .detail(format!("the thin device's status is {other}")))
            }
            Err(e) => return Err(dm_err("discard", name, e)),
        };
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dev)
            .map_err(|e| Error::io("discard", dev, e))?;
        let len = (highest.get() + 1).saturating_mul(512);
        crate::sys::discard(&f, 0, len).map_err(|e| {
            Error::new(ErrorKind::Io, "discard")
                .key(name)
                .detail(format!(
                    "BLKDISCARD of {len} bytes on {} failed: {e}",
                    dev.display()
                ))
        })
    }

    /// The size [`MAX_SIZE_LABEL`] asks for, rounded up to the pool's block
    /// size, when it is larger than `origin`'s; refused (naming the value)
    /// when smaller, and on views, which are never written.
    fn wanted_size(
        &self,
        obj: &Object<'_>,
        origin: &str,
        labels: &Labels,
    ) -> Result<Option<Sectors>> {
        let Some(bytes) = max_size(labels)? else {
            return Ok(None);
        };
        let (label, value) = size_label(labels)?.unwrap_or((MAX_SIZE_LABEL, ""));
        let refuse = |why: String| {
            Err(Error::new(ErrorKind::InvalidArgument, "create")
                .key(thin_name(obj.id))
                .detail(format!("{label}={value:?}: {why}")))
        };
        if obj.kind == Kind::View {
            return refuse("views are read-only and cannot be grown; prepare instead".into());
        }
        let block = self.pool.table().block_size.sectors().get();
        let sectors = bytes.0.div_ceil(512).div_ceil(block).saturating_mul(block);
        let current = self.record(origin)?.size;
        if sectors < current.get() {
            return refuse(format!(
                "{} bytes is smaller than the parent's {} bytes; snapshots can only grow",
                bytes.0,
                current.bytes().0
            ));
        }
        Ok((sectors > current.get()).then_some(Sectors::new(sectors)))
    }

    /// Grows thin device `name` (active at `dev`) to `size`, then its
    /// filesystem, mounted for the moment on `ROOT/grow-ID` (xfs grows only
    /// when mounted; ext4 grows online, which needs no prior fsck).
    fn grow(&mut self, name: &str, dev: &Path, size: Sectors, id: SnapshotId) -> Result<()> {
        if self.record(name)?.size >= size {
            return Ok(());
        }
        let target = self.root.join(format!("grow-{id}"));
        std::fs::create_dir_all(&target).map_err(|e| Error::io("create", &target, e))?;
        let guard = MountGuard::new(&[self.mount_spec(dev, true)], &target)?;
        let grown = self
            .pool
            .resize_thin_and_fs(name, size, Some(&target))
            .map_err(|e| dm_err("create", name, e));
        let unmounted = guard.unmount();
        grown?;
        unmounted?;
        std::fs::remove_dir(&target).map_err(|e| Error::io("create", &target, e))
    }

    fn record(&self, name: &str) -> Result<thinpool::store::ThinRecord> {
        self.pool
            .thins()
            .map_err(|e| dm_err("list", name, e))?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| {
                Error::new(ErrorKind::NotFound, "list")
                    .key(name)
                    .detail("no thin device")
            })
    }

    fn exists(pool: &Pool, name: &str) -> Result<bool> {
        Ok(pool
            .thins()
            .map_err(|e| dm_err("list", name, e))?
            .iter()
            .any(|t| t.name == name))
    }

    fn create(&mut self, obj: &Object<'_>, labels: &Labels) -> Result<()> {
        let name = thin_name(obj.id);
        let origin = obj
            .parents
            .first()
            .map_or(BASE.to_owned(), |p| thin_name(*p));
        // Checked before anything is made, so a refused size leaves nothing.
        let grow = self.wanted_size(obj, &origin, labels)?;
        if !Self::exists(&self.pool, &name)? {
            self.pool
                .snapshot(&origin, &name)
                .map_err(|e| dm_err("create", &name, e))?;
        }
        let dev = self
            .pool
            .activate(&name)
            .map_err(|e| dm_err("create", &name, e))?;
        if let Some(size) = grow {
            self.grow(&name, &dev, size, obj.id)?;
        }
        Ok(())
    }

    fn commit(&mut self, obj: &Object<'_>) -> Result<()> {
        // A committed snapshot's device is not used directly again; it is
        // deactivated so that tools (lvm2, blkid) leave it alone. A client
        // may commit one still mounted (containerd's suite does): the
        // removal is deferred until its last close, as containerd's
        // devmapper snapshotter defers it. Snapshots of it suspend an
        // origin still open meanwhile.
        self.pool
            .deactivate(&name_of(obj), true)
            .map_err(|e| dm_err("commit", &name_of(obj), e))
    }

    fn remove(&mut self, id: SnapshotId) -> Result<()> {
        let name = thin_name(id);
        if Self::exists(&self.pool, &name)? {
            if self.discard_blocks {
                // Only space, never correctness: a failed discard is logged.
                if let Err(e) = self.discard(&name) {
                    tracing::warn!("cannot discard the blocks of {name} before deleting it: {e}");
                }
            }
            match self.pool.delete_thin(&name) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), thinpool::ErrorKind::Busy { .. }) => {
                    // Someone has it open (a leftover mount): the device
                    // goes when they close it (deferred removal), and the
                    // thin device with it on the next open or cleanup,
                    // which retry this removal.
                    self.pool
                        .deactivate(&name, true)
                        .map_err(|e| dm_err("remove", &name, e))?;
                    return Err(Error::new(ErrorKind::Busy, "remove")
                        .key(&name)
                        .detail(
                            "its device is open: removed when closed (deferred), the thin device on the next cleanup",
                        )
                        .source(e));
                }
                Err(e) => return Err(dm_err("remove", &name, e)),
            }
        }
        Ok(())
    }

    fn mounts(&self, obj: &Object<'_>) -> Result<Vec<MountSpec>> {
        let name = thin_name(obj.id);
        let dev = self
            .pool
            .activate(&name)
            .map_err(|e| dm_err("mounts", &name, e))?;
        Ok(vec![self.mount_spec(&dev, obj.kind != Kind::View)])
    }

    fn usage(&self, obj: &Object<'_>) -> Result<Usage> {
        let name = thin_name(obj.id);
        let rec = self
            .pool
            .thins()
            .map_err(|e| dm_err("usage", &name, e))?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| {
                Error::new(ErrorKind::NotFound, "usage")
                    .key(&name)
                    .detail("no thin device")
            })?;
        let all = self.pool.usage().map_err(|e| dm_err("usage", &name, e))?;
        let exclusive = all
            .iter()
            .find(|u| u.id == rec.id)
            .map_or(0, |u| u.exclusive.get());
        let block = self.pool.table().block_size.bytes().0;
        Ok(Usage {
            size: Bytes(exclusive * block),
            inodes: 0,
        })
    }

    fn list(&self) -> Result<Vec<SnapshotId>> {
        Ok(self
            .pool
            .thins()
            .map_err(|e| dm_err("list", PREFIX, e))?
            .iter()
            .filter_map(|t| t.name.strip_prefix(PREFIX))
            .filter_map(|id| id.parse().ok().map(SnapshotId))
            .collect())
    }
}

impl Backend for Devmapper {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_level: true,
            exact_usage: true,
            max_size_label: true,
            rename_lower_dirs: true,
            cheap_commit: true,
            bounds_size: true,
            counts_inodes: false,
            lists_changes: false,
        }
    }

    fn create(&self, obj: &Object<'_>, labels: &Labels) -> Result<()> {
        let _turn = self.pool_turn()?;
        self.thins().create(obj, labels)
    }

    fn commit(&self, obj: &Object<'_>) -> Result<()> {
        let _turn = self.pool_turn()?;
        self.thins().commit(obj)
    }

    fn uncommit(&self, _obj: &Object<'_>) -> Result<()> {
        // Committing only deactivated the device; mounting activates it.
        Ok(())
    }

    fn remove(&self, id: SnapshotId) -> Result<()> {
        let _turn = self.pool_turn()?;
        self.thins().remove(id)
    }

    fn mounts(&self, obj: &Object<'_>) -> Result<Vec<MountSpec>> {
        self.thins().mounts(obj)
    }

    fn usage(&self, obj: &Object<'_>) -> Result<Usage> {
        self.thins().usage(obj)
    }

    fn list(&self) -> Result<Vec<SnapshotId>> {
        self.thins().list()
    }
}
