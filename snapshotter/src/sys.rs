//! The kernel calls the snapshotter makes without a crate that wraps
//! them, each behind a safe function: the only `unsafe` in the crate.
//!
//! - `BTRFS_IOC_QGROUP_LIMIT`: a subvolume's referenced-bytes limit (the
//!   `thinbox.io/max-size` bound). libbtrfsutil has no call for it, and
//!   running `btrfs qgroup limit` cost an exec (and a `PATH` search) in
//!   every bounded prepare.
//! - `BLKDISCARD`: a removed dm-thin snapshot's blocks given back (what
//!   `blkdiscard` does, without its exec: about 0.1 s under TCG).

use std::os::fd::AsRawFd;

/// `struct btrfs_qgroup_limit` (linux/btrfs.h).
#[repr(C)]
#[derive(Debug, Default)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
#[derive(Debug, Default)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`: `max_rfer` is set.
const LIMIT_MAX_RFER: u64 = 1;

// linux/btrfs.h declares it _IOR although the kernel only reads the
// argument; the number must match, so read it is.
nix::ioctl_read!(qgroup_limit_ioctl, BTRFS_IOCTL_MAGIC, 43, QgroupLimitArgs);

/// Limits the referenced bytes of the subvolume `dir` is open on (its own
/// level-0 qgroup: qgroup id 0 means "the subvolume of this descriptor").
/// Needs CAP_SYS_ADMIN and quotas on.
pub(crate) fn set_qgroup_max_referenced(dir: &std::fs::File, bytes: u64) -> nix::Result<()> {
    let mut args = QgroupLimitArgs {
        qgroupid: 0,
        lim: QgroupLimit {
            flags: LIMIT_MAX_RFER,
            max_rfer: bytes,
            ..QgroupLimit::default()
        },
    };
    // SAFETY: the descriptor is open for the whole call (borrowed `dir`), and
    // `args` is an initialised `btrfs_ioctl_qgroup_limit_args` of the size the
    // request number encodes, which the kernel reads and does not keep.
    unsafe { qgroup_limit_ioctl(dir.as_raw_fd(), &mut args) }.map(drop)
}

// linux/fs.h: #define BLKDISCARD _IO(0x12,119), its argument a u64[2]
// (start, length) in bytes that the kernel reads.
nix::ioctl_write_ptr_bad!(
    blkdiscard_ioctl,
    nix::request_code_none!(0x12, 119),
    [u64; 2]
);

/// Discards `len` bytes from `start` of the block device `dev` is open on
/// (for writing); both multiples of its logical block size.
pub(crate) fn discard(dev: &std::fs::File, start: u64, len: u64) -> nix::Result<()> {
    let range = [start, len];
    // SAFETY: the descriptor is open for the whole call (borrowed `dev`),
    // and `range` is the two initialised u64s BLKDISCARD reads.
    unsafe { blkdiscard_ioctl(dev.as_raw_fd(), &range) }.map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_argument_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<super::QgroupLimitArgs>(), 48);
    }
}
