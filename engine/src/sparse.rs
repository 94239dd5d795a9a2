//! Sizing the sparse files the engine makes (the btrfs image, the default
//! loopback pool's data and metadata) against the filesystem under them
//! ([`thinpool::backing`]): a configured size within the room is used, a
//! larger one refused with the figures and the key to change. A *default*
//! size that does not fit is cut to the room instead (with a warning
//! naming the key), so a first run on a small filesystem makes what fits
//! rather than a 20 GiB image that fails with I/O errors later, and the
//! reserve stays free for the stores beside it.

use std::path::Path;

use thinpool::backing::{Backing, Verdict};

use crate::config::Bytes;
use crate::error::{Error, ErrorKind, Result};

/// A size chosen for a sparse file, and what to warn about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fitted {
    /// The size to make it.
    pub size: Bytes,
    /// A warning for the user, if any.
    pub warning: Option<String>,
}

/// What a default cut to the room leaves of it: the files and stores made
/// right after (the pool's record store, mkfs) must not tip it over.
fn usable(room: Bytes) -> Bytes {
    Bytes(room.0.saturating_sub((room.0 / 64).max(16 << 20)))
}

/// Reads the filesystem under `file` (which does not exist yet, nor may
/// its directory: the nearest existing one is asked).
pub(crate) fn backing_of(file: &Path) -> Result<Backing> {
    let mut dir = file.parent().unwrap_or(Path::new("/"));
    while !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    Backing::of(dir, None).map_err(|e| Error::io("cannot read free space of", dir, e))
}

/// The size to make `file` of: `size` (from `key`; `is_default` when the
/// configuration did not set it), at least `min`, on `b`.
pub(crate) fn fit(
    b: &Backing,
    file: &Path,
    size: Bytes,
    is_default: bool,
    key: &str,
    min: Bytes,
) -> Result<Fitted> {
    let verdict = b.verdict(size);
    if verdict == Verdict::Fits {
        return Ok(Fitted {
            size,
            warning: None,
        });
    }
    let explained = b.explain(file, size);
    if is_default {
        let room = usable(b.room()).round_down();
        if room < min {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "{explained}; it needs at least {min}: free space under {} or give --root another filesystem",
                    b.dir.display()
                ),
            ));
        }
        return Ok(Fitted {
            size: room,
            warning: Some(format!(
                "{explained}; made it {room} instead of the default {size} (set {key} to choose)"
            )),
        });
    }
    Err(Error::new(
        ErrorKind::NoSpace,
        format!(
            "{explained}: set {key} to at most {}, or free space there",
            b.room().round_down()
        ),
    ))
}

/// The sizes of a new loopback pool's data and metadata files in `dir`:
/// checked together; a default that does not fit takes what the other
/// leaves (both defaults: data 31/32 of the room, in whole `block`s,
/// metadata the rest, at least 16 MiB).
pub(crate) fn fit_pool(
    b: &Backing,
    dir: &Path,
    data: (Bytes, bool),
    metadata: (Bytes, bool),
    block: Bytes,
) -> Result<(Bytes, Bytes, Option<String>)> {
    let total = data.0.saturating_add(metadata.0);
    if b.verdict(total) == Verdict::Fits || (!data.1 && !metadata.1) {
        let f = fit(b, dir, total, false, "devmapper.data_size", Bytes(0))?;
        return Ok((data.0, metadata.0, f.warning));
    }
    let room = usable(b.room());
    let whole = |n: u64| n / block.0.max(1) * block.0.max(1);
    let min_meta = Bytes::mib(16);
    let (data_size, meta) = match (data.1, metadata.1) {
        (true, true) => {
            let meta = Bytes((room.0 / 32).max(min_meta.0)).round_down();
            (Bytes(whole(room.0.saturating_sub(meta.0))), meta)
        }
        // A configured data size keeps it; the default metadata shrinks.
        (false, _) => (
            data.0,
            Bytes(
                room.0
                    .saturating_sub(data.0 .0)
                    .max(min_meta.0)
                    .min(metadata.0 .0),
            )
            .round_down(),
        ),
        (true, false) => (
            Bytes(whole(room.0.saturating_sub(metadata.0 .0))),
            metadata.0,
        ),
    };
    let explained = b.explain(dir, total);
    if data_size.saturating_add(meta) > room || data_size < Bytes::mib(256) {
        let key = if data.1 {
            "devmapper.metadata_size"
        } else {
            "devmapper.data_size"
        };
        return Err(Error::new(
            ErrorKind::NoSpace,
            format!(
                "{explained}; a pool needs at least 256 MiB of data: set {key} smaller, free space under {} or give --root another filesystem",
                b.dir.display()
            ),
        ));
    }
    Ok((
        data_size,
        meta,
        Some(format!(
            "{explained}; made its data {} and metadata {meta} (set devmapper.data_size and metadata_size to choose)",
            data_size.round_down()
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fs(free_mib: u64) -> Backing {
        Backing {
            dir: PathBuf::from("/small"),
            fs_size: Bytes::mib(200),
            free: Bytes::mib(free_mib),
            held: Bytes(0),
        }
    }

    const IMG: &str = "/small/root/btrfs.img";

    #[test]
    fn a_default_that_does_not_fit_is_cut_to_the_room() {
        let f = fit(
            &fs(180),
            Path::new(IMG),
            Bytes::gib(20),
            true,
            "btrfs.image_size",
            Bytes::mib(128),
        )
        .unwrap();
        assert_eq!(
            f.size,
            Bytes::mib(154),
            "170 MiB of room less a 16 MiB margin"
        );
        let w = f.warning.unwrap();
        assert!(
            w.contains("20 GiB") && w.contains("made it 154 MiB") && w.contains("btrfs.image_size"),
            "{w}"
        );
        // Too little room even for the minimum: refused, nothing to make.
        let e = fit(
            &fs(60),
            Path::new(IMG),
            Bytes::gib(20),
            true,
            "k",
            Bytes::mib(128),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSpace);
        assert!(e.to_string().contains("at least 128 MiB"), "{e}");
    }

    #[test]
    fn a_configured_size_is_used_or_refused() {
        let f = fit(
            &fs(180),
            Path::new(IMG),
            Bytes::mib(100),
            false,
            "k",
            Bytes(0),
        )
        .unwrap();
        assert_eq!(
            f,
            Fitted {
                size: Bytes::mib(100),
                warning: None
            }
        );
        let e = fit(
            &fs(180),
            Path::new(IMG),
            Bytes::gib(20),
            false,
            "btrfs.image_size",
            Bytes(0),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSpace);
        let m = e.to_string();
        assert!(
            m.contains("at most 170 MiB") && m.contains("btrfs.image_size"),
            "{m}"
        );
    }

    #[test]
    fn the_nearest_existing_directory_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let b = backing_of(&dir.path().join("pools/p/data")).unwrap();
        assert_eq!(b.dir, dir.path());
    }

    #[test]
    fn default_pool_files_share_the_room() {
        let b = Backing {
            fs_size: Bytes::gib(2),
            free: Bytes::gib(2),
            ..fs(0)
        };
        let (data, meta, w) = fit_pool(
            &b,
            Path::new("/small/pools/p"),
            (Bytes::gib(100), true),
            (Bytes::gib(2), true),
            Bytes::kib(64),
        )
        .unwrap();
        assert!(data.0 + meta.0 <= b.room().0, "{data} + {meta}");
        assert_eq!(data.0 % (64 << 10), 0);
        assert!(
            meta >= Bytes::mib(16) && data > Bytes::gib(1),
            "{data} {meta}"
        );
        assert!(w.unwrap().contains("devmapper.data_size"));
        // A configured data size stays; the default metadata shrinks to fit.
        let (data, meta, _) = fit_pool(
            &b,
            Path::new("/small/pools/p"),
            (Bytes::gib(1), false),
            (Bytes::gib(2), true),
            Bytes::kib(64),
        )
        .unwrap();
        assert_eq!(data, Bytes::gib(1));
        assert!(meta < Bytes::gib(1) && meta >= Bytes::mib(16), "{meta}");
        // Configured sizes that do not fit are refused.
        let e = fit_pool(
            &b,
            Path::new("/small/pools/p"),
            (Bytes::gib(100), false),
            (Bytes::gib(2), true),
            Bytes::kib(64),
        )
        .unwrap_err();
        assert!(e.to_string().contains("devmapper.data_size"), "{e}");
    }
}
