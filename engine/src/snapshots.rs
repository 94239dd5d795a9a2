//! Snapshot work beyond the snapshotter API that `thinbox snapshot` needs:
//! mounting a snapshot's mounts on a directory, writing a snapshot's
//! changes as a layer tar without leaving a half-written file, and
//! removing or committing a snapshot only when no image or container owns
//! it (or `--force` says so, and never under a running container).

use std::io::Write;
use std::path::Path;

use snapshotter::layer::DiffStats;
use snapshotter::{Key, Labels, MountSpec, Name};

use crate::clients::Client;
use crate::containers::{self, Containers};
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};

/// Where a diff goes.
pub enum DiffTarget<'a> {
    /// A stream (stdout, say), flushed at the end.
    Stream(&'a mut dyn Write),
    /// A file, written beside it and renamed into place.
    File(&'a Path),
}

impl std::fmt::Debug for DiffTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiffTarget::Stream(_) => f.write_str("Stream"),
            DiffTarget::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// Mounts `mounts` on `dir`, making `dir` first.
pub fn mount_on(mounts: &[MountSpec], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create mount point", dir, e))?;
    Ok(snapshotter::mount_all(mounts, dir)?)
}

/// A snapshotter error with the fix for the common cases appended.
pub fn with_fix(e: snapshotter::Error) -> Error {
    use snapshotter::ErrorKind as K;
    let fix = match e.kind() {
        K::NotFound => "list snapshots with `thinbox snapshot ls`",
        K::AlreadyExists => "choose another key, or remove the existing one with `thinbox snapshot rm`",
        K::ParentNotCommitted => "give a committed snapshot as the parent (`thinbox snapshot ls --filter kind==committed`)",
        K::CommitOfView => "only active snapshots (made by `prepare`) can be committed",
        K::NotActive => "only active snapshots (made by `prepare`) can be committed",
        K::HasChildren => "remove its children first",
        _ => "",
    };
    let msg = e.to_string();
    // Only where the snapshotter gave no detail of its own.
    let bare = msg.ends_with(&e.kind().to_string());
    let mut err = Error::from(e);
    if !fix.is_empty() && bare {
        err.message = format!("{msg}: {fix}");
    }
    err
}

/// Who owns a snapshot thinbox made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// It is a layer of these images (by name).
    Images(Vec<String>),
    /// It is the root of container `name`; `running` while its run lives.
    Container {
        /// The container.
        name: String,
        /// Whether it runs (or is starting).
        running: bool,
    },
    /// containerd made it, through `thinbox serve`.
    Containerd,
}

impl Engine {
    /// Who owns snapshot `key`: the images it is a layer of, or the
    /// container whose root it is; `None` when it is the user's own.
    pub fn snapshot_owner(&self, key: &Key) -> Result<Option<Owner>> {
        if Client::of(key.as_str()) == Client::Containerd {
            return Ok(Some(Owner::Containerd));
        }
        let mut users: Vec<String> = self
            .images()?
            .list()?
            .into_iter()
            .filter(|i| {
                i.layers
                    .iter()
                    .any(|l| l.chain_id.to_string() == key.as_str())
            })
            .map(|i| i.name)
            .collect();
        if !users.is_empty() {
            users.sort();
            return Ok(Some(Owner::Images(users)));
        }
        let containers = Containers::open(self.root())?;
        for c in containers.list()? {
            let name = containers::ContainerName::new(&c.name)?;
            if name.snapshot_key().as_str() == key.as_str() {
                let running = containers::is_live(&c);
                return Ok(Some(Owner::Container {
                    name: c.name,
                    running,
                }));
            }
        }
        Ok(None)
    }

    /// Refuses to change `key` (`what`: "remove", "commit") when an image
    /// or a container owns it, unless `force`; never under a running
    /// container.
    fn check_owner(&self, key: &Key, what: &str, force: bool) -> Result<()> {
        let refuse = |m: String| Err(Error::new(ErrorKind::InUse, m));
        match self.snapshot_owner(key)? {
            None => Ok(()),
            Some(Owner::Container {
                name,
                running: true,
            }) => refuse(format!(
                "cannot {what} snapshot {key}: it is the root of running container {name:?}; \
                 stop it first (`thinbox rm --force {name}`)"
            )),
            Some(_) if force => Ok(()),
            Some(Owner::Containerd) => refuse(format!(
                "cannot {what} snapshot {key}: containerd made it through `thinbox serve`; \
                 remove it with `ctr snapshots --snapshotter thinbox rm`, or give --force"
            )),
            Some(Owner::Container { name, .. }) => refuse(format!(
                "cannot {what} snapshot {key}: it is the root of container {name:?}; \
                 remove the container with `thinbox rm {name}`, or give --force"
            )),
            Some(Owner::Images(images)) => refuse(format!(
                "cannot {what} snapshot {key}: it is a layer of image {}; \
                 remove the image with `thinbox image rm {}`, or give --force",
                images.join(", "),
                images[0]
            )),
        }
    }

    /// Removes snapshot `key` (see [`Engine::snapshot_owner`] for what is
    /// refused).
    pub fn remove_snapshot(&self, key: &Key, force: bool) -> Result<()> {
        self.check_owner(key, "remove", force)?;
        self.snapshotter().remove(key).map_err(with_fix)
    }

    /// Commits active snapshot `key` as `name` (refused for a container's
    /// root as [`Engine::remove_snapshot`] is).
    pub fn commit_snapshot(
        &self,
        name: &Name,
        key: &Key,
        labels: &Labels,
        force: bool,
    ) -> Result<()> {
        self.check_owner(key, "commit", force)?;
        self.snapshotter()
            .commit(name, key, labels)
            .map_err(with_fix)
    }

    /// Writes the changes of snapshot `key` against its parent as a layer
    /// tar to `target`.
    pub fn diff_snapshot(&self, key: &Key, target: DiffTarget<'_>) -> Result<DiffStats> {
        let scratch = tempfile::Builder::new()
            .prefix("diff-")
            .tempdir_in(self.scratch_dir()?)
            .map_err(|e| Error::io("cannot create scratch directory in", self.root(), e))?;
        let sn = self.snapshotter();
        match target {
            DiffTarget::Stream(w) => {
                let s = snapshotter::layer::diff_snapshot(sn, key, scratch.path(), &mut *w)?;
                w.flush()
                    .map_err(|e| Error::io("cannot write", Path::new("-"), e))?;
                Ok(s)
            }
            DiffTarget::File(out) => {
                // Written beside OUT and renamed into place: no half-written layer.
                let dir = out
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let mut tmp = tempfile::Builder::new()
                    .prefix(".thinbox-diff-")
                    .tempfile_in(dir)
                    .map_err(|e| Error::io("cannot create a file in", dir, e))?;
                let s =
                    snapshotter::layer::diff_snapshot(sn, key, scratch.path(), tmp.as_file_mut())?;
                tmp.as_file()
                    .sync_all()
                    .map_err(|e| Error::io("cannot write", out, e))?;
                tmp.persist(out)
                    .map_err(|e| Error::io("cannot write", out, e.error))?;
                Ok(s)
            }
        }
    }
}
