//! Filesystem geometry: block groups, where each group's metadata lives.
//!
//! Without `flex_bg`, every group holds its own block bitmap, inode bitmap and
//! inode table, preceded (in groups 0, 1 and powers of 3, 5, 7 under
//! `sparse_super`) by a copy of the superblock and the group descriptor table.

use super::Ext4Error;

/// Block size in bytes (fixed: 4 KiB).
pub(crate) const BS: u64 = 4096;
/// Blocks per group: one bitmap block of 8 * 4096 bits.
pub(crate) const BPG: u64 = 32768;
/// On-disk inode size.
pub(crate) const INODE_SIZE: u64 = 256;
/// Inodes in one inode-table block.
pub(crate) const INODES_PER_BLOCK: u64 = BS / INODE_SIZE;
/// Group descriptor size without the `64bit` feature.
pub(crate) const DESC_SIZE: u64 = 32;
/// Largest filesystem: block numbers are 32-bit without `64bit`.
pub(crate) const MAX_SIZE: u64 = 16 << 40;
/// Bytes of filesystem per inode when the caller does not say (mkfs default).
pub(crate) const INODE_RATIO: u64 = 16384;
/// First non-reserved inode.
pub(crate) const FIRST_INO: u32 = 11;
/// A group must keep at least this many data blocks after its metadata, or
/// it is dropped (mkfs does the same for a tiny trailing group).
const MIN_GROUP_DATA: u64 = 64;
/// The smallest inode count we format with (reserved inodes + a few).
const MIN_INODES: u64 = 16;

/// Computed geometry of one filesystem.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Total blocks (the filesystem's size / 4096).
    pub blocks_count: u64,
    /// Number of block groups.
    pub groups: u64,
    /// Inodes in every group (a multiple of [`INODES_PER_BLOCK`]).
    pub inodes_per_group: u64,
    /// Blocks of the group descriptor table.
    pub gdt_blocks: u64,
    /// Blocks of one group's inode table.
    pub itable_blocks: u64,
}

impl Layout {
    /// Geometry for a filesystem of `size` bytes with (about) `inodes` inodes.
    pub fn new(size: u64, inodes: Option<u64>) -> Result<Layout, Ext4Error> {
        if size > MAX_SIZE {
            return Err(Ext4Error::TooLarge {
                size,
                max: MAX_SIZE,
            });
        }
        // Block numbers are u32, so 16 TiB exactly loses its last block.
        let mut blocks = (size / BS).min(u64::from(u32::MAX));
        loop {
            let groups = blocks.div_ceil(BPG);
            if groups == 0 {
                return Err(Ext4Error::TooSmall {
                    size,
                    min: Self::min_size(),
                });
            }
            let want = inodes.unwrap_or(blocks * BS / INODE_RATIO).max(MIN_INODES);
            // Inode numbers are u32 too; keep ipg * groups below 2^32.
            let max_ipg =
                (BS * 8).min(u64::from(u32::MAX) / groups / INODES_PER_BLOCK * INODES_PER_BLOCK);
            let ipg = want
                .div_ceil(groups)
                .next_multiple_of(INODES_PER_BLOCK)
                .max(MIN_INODES);
            if ipg > max_ipg {
                return Err(Ext4Error::TooManyInodes {
                    requested: want,
                    max: max_ipg * groups,
                });
            }
            let layout = Layout {
                blocks_count: blocks,
                groups,
                inodes_per_group: ipg,
                gdt_blocks: (groups * DESC_SIZE).div_ceil(BS),
                itable_blocks: ipg / INODES_PER_BLOCK,
            };
            let last = groups - 1;
            if layout.group_blocks(last) >= layout.overhead(last) + MIN_GROUP_DATA {
                return Ok(layout);
            }
            if groups == 1 {
                let min = ((layout.overhead(0) + MIN_GROUP_DATA) * BS).max(Self::min_size());
                return Err(Ext4Error::TooSmall { size, min });
            }
            // The trailing partial group cannot hold its own metadata: drop it.
            blocks = last * BPG;
        }
    }

    /// The smallest size [`Layout::new`] accepts with default inodes.
    pub fn min_size() -> u64 {
        // superblock + gdt + 2 bitmaps + 1 inode table block, plus data.
        (5 + MIN_GROUP_DATA) * BS
    }

    /// Total inodes.
    pub fn inodes_count(&self) -> u64 {
        self.inodes_per_group * self.groups
    }

    /// Whether group `g` holds a superblock backup (`sparse_super`).
    pub fn has_super(g: u64) -> bool {
        fn power_of(mut n: u64, base: u64) -> bool {
            while n % base == 0 {
                n /= base;
            }
            n == 1
        }
        g <= 1 || power_of(g, 3) || power_of(g, 5) || power_of(g, 7)
    }

    /// First block of group `g`.
    pub fn group_start(&self, g: u64) -> u64 {
        g * BPG
    }

    /// Blocks in group `g` (the last one may be partial).
    pub fn group_blocks(&self, g: u64) -> u64 {
        BPG.min(self.blocks_count - g * BPG)
    }

    /// Block bitmap of group `g` (right after the superblock/GDT copy, if any).
    pub fn block_bitmap(&self, g: u64) -> u64 {
        let sb = if Self::has_super(g) {
            1 + self.gdt_blocks
        } else {
            0
        };
        self.group_start(g) + sb
    }

    /// Inode bitmap of group `g`.
    pub fn inode_bitmap(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 1
    }

    /// First inode-table block of group `g`.
    pub fn inode_table(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 2
    }

    /// Metadata blocks at the start of group `g`.
    pub fn overhead(&self, g: u64) -> u64 {
        self.inode_table(g) + self.itable_blocks - self.group_start(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let with: Vec<u64> = (0..100).filter(|&g| Layout::has_super(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn drops_tiny_last_group() {
        // 128 MiB + 4 KiB: the second group would be a single block.
        let l = Layout::new((128 << 20) + 4096, None).unwrap();
        assert_eq!(l.groups, 1);
        assert_eq!(l.blocks_count, BPG);
        let l = Layout::new(200 << 20, None).unwrap();
        assert_eq!(l.groups, 2);
        assert_eq!(l.blocks_count, 51200);
        assert_eq!(l.inodes_count(), 200 << 20 >> 14);
    }

    #[test]
    fn limits() {
        assert!(matches!(
            Layout::new(64 << 10, None),
            Err(Ext4Error::TooSmall { .. })
        ));
        assert!(matches!(
            Layout::new(MAX_SIZE + 4096, None),
            Err(Ext4Error::TooLarge { .. })
        ));
        let l = Layout::new(MAX_SIZE, None).unwrap();
        assert!(l.inodes_count() <= u64::from(u32::MAX));
        assert!(matches!(
            Layout::new(1 << 30, Some(1 << 30)),
            Err(Ext4Error::TooManyInodes { .. })
        ));
    }
}
