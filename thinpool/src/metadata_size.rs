//! How big a pool's metadata device must be, computed the way
//! thin-provisioning-tools' `thin_metadata_size` computes it
//! (`src/thin/metadata_size.rs`): mapping-tree leaves assumed half full,
//! one root block per thin device, one superblock (1.x counts it, 0.9 does
//! not: we take the larger), capped at the largest
//! metadata device the kernel uses (`THIN_METADATA_MAX_SECTORS`).

use crate::error::{Error, ErrorKind, Result};
use crate::units::{BlockSize, MetaBlocks, Sectors, META_BLOCK_SIZE};

/// Entries in a full mapping-tree leaf: (4096 - 32 byte node header) / (8 byte
/// key + 8 byte block_time value) = 254, rounded down to a multiple of 3
/// (`calc_max_entries`), so 252.
pub const MAX_LEAF_ENTRIES: u64 = {
    let total = (META_BLOCK_SIZE - 32) / 16;
    total / 3 * 3
};

/// The most metadata blocks the kernel uses: 255 index entries of
/// (2^14 - 64) blocks each (`DM_SM_METADATA_MAX_BLOCKS`, ~15.9 GiB).
pub const MAX_METADATA_BLOCKS: MetaBlocks = MetaBlocks::new(255 * ((1 << 14) - 64));

/// Metadata blocks needed for a pool with `data_size` of data in blocks of
/// `block_size`, holding up to `max_thins` thin devices.
pub fn thin_metadata_size(block_size: BlockSize, data_size: Sectors, max_thins: u64) -> MetaBlocks {
    let nr_blocks = data_size.get().div_ceil(block_size.sectors().get());
    let per_leaf = MAX_LEAF_ENTRIES / 2;
    let leaves = nr_blocks.div_ceil(per_leaf);
    let n = 1u64.saturating_add(leaves).saturating_add(max_thins);
    MetaBlocks::new(n.min(MAX_METADATA_BLOCKS.get()))
}

/// Checks that a metadata device of `meta_size` is big enough.
pub fn check_metadata_size(
    block_size: BlockSize,
    data_size: Sectors,
    max_thins: u64,
    meta_size: Sectors,
) -> Result<()> {
    let need = thin_metadata_size(block_size, data_size, max_thins).sectors();
    if meta_size < need {
        return Err(Error::new(ErrorKind::MetadataTooSmall {
            have: meta_size,
            need,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Bytes;

    #[test]
    fn matches_thin_metadata_size() {
        // 100 GiB / 64 KiB = 1638400 blocks, / 126 = 13004 leaves (rounded
        // up), + 1 superblock + 1000 roots = 14005 blocks. (Debian 12's
        // thin-provisioning-tools 0.9.0 prints 57360384 bytes = 14004 blocks:
        // it does not count the superblock; 1.x does.)
        let bs = BlockSize::DEFAULT;
        let data = Sectors::from_bytes(Bytes::gib(100)).unwrap();
        let n = thin_metadata_size(bs, data, 1000);
        assert_eq!(n, MetaBlocks::new(1 + 1_638_400u64.div_ceil(126) + 1000));
        assert_eq!(n.get(), 14005);
    }

    #[test]
    fn caps_at_kernel_maximum() {
        let n = thin_metadata_size(BlockSize::MIN, Sectors::new(u64::MAX), u64::MAX);
        assert_eq!(n, MAX_METADATA_BLOCKS);
    }

    #[test]
    fn too_small_names_sizes() {
        let bs = BlockSize::DEFAULT;
        let data = Sectors::from_bytes(Bytes::gib(100)).unwrap();
        let err = check_metadata_size(bs, data, 1000, Sectors::from_bytes(Bytes::mib(1)).unwrap())
            .unwrap_err();
        let s = err.to_string();
        assert!(matches!(err.kind(), ErrorKind::MetadataTooSmall { .. }));
        assert!(s.contains("1 MiB") && s.contains("56020 KiB"), "{s}");
        check_metadata_size(bs, data, 1000, Sectors::from_bytes(Bytes::gib(2)).unwrap()).unwrap();
    }
}
