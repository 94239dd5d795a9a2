//! The room a sparse file has on the filesystem under it.
//!
//! A loopback pool's data and metadata files and the engine's btrfs image
//! are sparse: making a 20 GiB one on a filesystem with 200 MB free costs
//! nothing until it fills, then the loop device gets I/O errors, the
//! filesystem on it goes read-only, and the stores beside it (SQLite, on
//! the same full filesystem) cannot even open. So before making or growing
//! one the caller asks [`Backing::verdict`]: its *room* is what it already
//! holds plus what is free under it (`statvfs` `f_bavail`, which already
//! leaves ext4's root reserve), less a reserve kept for the stores and
//! everything else (5% of that filesystem, at most 1 GiB). A size within
//! the room fits; a larger one is refused with the figures (no
//! overcommit: a loopback file cannot get more space later the way an LVM
//! volume group can).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::units::Bytes;

/// The most kept free for everything else on the filesystem under a
/// sparse file.
pub const MAX_RESERVE: Bytes = Bytes::gib(1);

/// The filesystem under a sparse file, and what the file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    /// The directory the file lives in.
    pub dir: PathBuf,
    /// The filesystem's size.
    pub fs_size: Bytes,
    /// What is free on it for ordinary use.
    pub free: Bytes,
    /// What the file already holds (its allocated blocks; 0 for a new one).
    pub held: Bytes,
}

/// What [`Backing::verdict`] says of a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It fits in the room.
    Fits,
    /// It is larger than the room.
    TooBig {
        /// The room.
        room: Bytes,
    },
}

impl Backing {
    /// Reads the filesystem holding `dir` and, if it exists, `file`'s
    /// allocated blocks.
    pub fn of(dir: &Path, file: Option<&Path>) -> std::io::Result<Backing> {
        let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
        let frag = st.fragment_size();
        let held = match file.map(std::fs::metadata) {
            Some(Ok(md)) => md.blocks() * 512,
            Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => 0,
        };
        Ok(Backing {
            dir: dir.to_owned(),
            fs_size: Bytes(st.blocks().saturating_mul(frag)),
            free: Bytes(st.blocks_available().saturating_mul(frag)),
            held: Bytes(held),
        })
    }

    /// What is kept free for everything else.
    pub fn reserve(&self) -> Bytes {
        Bytes((self.fs_size.0 / 20).min(MAX_RESERVE.0))
    }

    /// The most the file can come to hold.
    pub fn room(&self) -> Bytes {
        Bytes(
            (self.held.0 + self.free.0)
                .saturating_sub(self.reserve().0)
                .max(self.held.0),
        )
    }

    /// Whether a sparse file of `size` fits.
    pub fn verdict(&self, size: Bytes) -> Verdict {
        let room = self.room();
        if size <= room {
            Verdict::Fits
        } else {
            Verdict::TooBig { room }
        }
    }

    /// Says what `file` of `size` on this filesystem would mean, with the
    /// figures: for a warning or an error.
    pub fn explain(&self, file: &Path, size: Bytes) -> String {
        format!(
            "{} would be {size} (sparse) but {} has {} free, {} of it kept in reserve, so it can hold only {}",
            file.display(),
            self.dir.display(),
            self.free.round_down(),
            self.reserve().round_down(),
            self.room().round_down(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(fs_mib: u64, free_mib: u64, held_mib: u64) -> Backing {
        Backing {
            dir: PathBuf::from("/var/lib"),
            fs_size: Bytes::mib(fs_mib),
            free: Bytes::mib(free_mib),
            held: Bytes::mib(held_mib),
        }
    }

    #[test]
    fn room_is_held_plus_free_less_the_reserve() {
        // 200 MB filesystem, 180 MB free: a 10 MB reserve.
        let b = backing(200, 180, 0);
        assert_eq!(b.reserve(), Bytes::mib(10));
        assert_eq!(b.room(), Bytes::mib(170));
        assert_eq!(b.verdict(Bytes::mib(160)), Verdict::Fits);
        // The 20 GiB image on it.
        assert_eq!(
            b.verdict(Bytes::gib(20)),
            Verdict::TooBig {
                room: Bytes::mib(170)
            }
        );
        let msg = b.explain(Path::new("/var/lib/thinbox/btrfs.img"), Bytes::gib(20));
        assert!(
            msg.contains("20 GiB") && msg.contains("180 MiB free"),
            "{msg}"
        );
        assert!(msg.contains("hold only 170 MiB"), "{msg}");
        // The reserve is at most 1 GiB; what a file holds counts as room.
        let big = backing(1 << 20, 100 << 10, 0);
        assert_eq!(big.reserve(), MAX_RESERVE);
        let grown = backing(200, 0, 150);
        assert_eq!(grown.room(), Bytes::mib(150));
        assert_eq!(grown.verdict(Bytes::mib(150)), Verdict::Fits);
    }

    #[test]
    fn a_real_directory_has_room() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backing::of(dir.path(), Some(&dir.path().join("absent"))).unwrap();
        assert!(b.fs_size.0 > 0 && b.held == Bytes(0));
        assert_eq!(b.verdict(Bytes(1)), Verdict::Fits);
    }
}
