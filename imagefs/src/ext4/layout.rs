//! Where the groups and their metadata go.

use super::{Ext4Error, BLOCK, BLOCKS_PER_GROUP, BYTES_PER_INODE, INODE_SIZE, MAX_SIZE};

/// Group geometry of one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Total blocks.
    pub blocks: u64,
    /// Number of groups.
    pub groups: u64,
    /// Inodes per group (a multiple of 16: whole inode-table blocks).
    pub inodes_per_group: u64,
    /// Blocks of group descriptors.
    pub gdt_blocks: u64,
}

/// Whether group `g` holds a superblock backup (sparse_super: 0, 1, powers of 3, 5, 7).
pub fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&p| {
        let mut x = p;
        while x < g {
            x *= p;
        }
        x == g
    })
}

impl Layout {
    /// Chooses the geometry for `size` bytes and `inodes` (default 1 per 16 KiB).
    pub fn new(size: u64, inodes: Option<u64>) -> Result<Layout, Ext4Error> {
        if size > MAX_SIZE {
            return Err(Ext4Error::TooLarge {
                size,
                max: MAX_SIZE,
            });
        }
        let min = 256 * BLOCK;
        let mut blocks = size / BLOCK;
        if blocks < 256 {
            return Err(Ext4Error::TooSmall { size, min });
        }
        let want_inodes = inodes.unwrap_or(blocks * BLOCK / BYTES_PER_INODE).max(64);
        loop {
            let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
            let ipg = want_inodes
                .div_ceil(groups)
                .next_multiple_of(16)
                .clamp(16, 32768);
            let l = Layout {
                blocks,
                groups,
                inodes_per_group: ipg,
                gdt_blocks: (groups * 32).div_ceil(BLOCK),
            };
            // A last group too small for its own metadata (plus a little data) is dropped, as mke2fs does.
            let last = blocks - (groups - 1) * BLOCKS_PER_GROUP;
            if last < l.overhead(groups - 1) + 16 {
                if groups == 1 {
                    return Err(Ext4Error::TooSmall { size, min });
                }
                blocks -= last;
                continue;
            }
            return Ok(l);
        }
    }

    /// Total inodes.
    pub fn inodes(&self) -> u64 {
        self.groups * self.inodes_per_group
    }

    /// Blocks of one group's inode table.
    pub fn itable_blocks(&self) -> u64 {
        self.inodes_per_group * INODE_SIZE / BLOCK
    }

    /// First block of group `g`.
    pub fn group_start(&self, g: u64) -> u64 {
        g * BLOCKS_PER_GROUP
    }

    /// Blocks in group `g` (the last may be short).
    pub fn group_blocks(&self, g: u64) -> u64 {
        (self.blocks - self.group_start(g)).min(BLOCKS_PER_GROUP)
    }

    /// Superblock + descriptor copies at the start of group `g`.
    pub fn super_blocks(&self, g: u64) -> u64 {
        if has_super(g) {
            1 + self.gdt_blocks
        } else {
            0
        }
    }

    /// Metadata blocks of group `g`.
    pub fn overhead(&self, g: u64) -> u64 {
        self.super_blocks(g) + 2 + self.itable_blocks()
    }

    /// Block bitmap of group `g`.
    pub fn block_bitmap(&self, g: u64) -> u64 {
        self.group_start(g) + self.super_blocks(g)
    }

    /// Inode bitmap of group `g`.
    pub fn inode_bitmap(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 1
    }

    /// First inode-table block of group `g`.
    pub fn inode_table(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 2
    }

    /// Every metadata block of group `g`.
    pub fn metadata_blocks(&self, g: u64) -> std::ops::Range<u64> {
        self.group_start(g)..self.group_start(g) + self.overhead(g)
    }

    /// Byte offset of inode `ino` (1-based).
    pub fn inode_offset(&self, ino: u64) -> u64 {
        let g = (ino - 1) / self.inodes_per_group;
        let i = (ino - 1) % self.inodes_per_group;
        self.inode_table(g) * BLOCK + i * INODE_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let with: Vec<u64> = (0..100).filter(|&g| has_super(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn geometry() {
        let l = Layout::new(200 << 20, None).unwrap();
        assert_eq!((l.blocks, l.groups), (51200, 2));
        assert_eq!(l.inodes_per_group % 16, 0);
        assert!(l.inodes() >= (200 << 20) / BYTES_PER_INODE);
        // A tiny tail group is dropped.
        let l = Layout::new((128 << 20) + 8192, None).unwrap();
        assert_eq!((l.blocks, l.groups), (32768, 1));
        assert!(matches!(
            Layout::new(100_000, None),
            Err(Ext4Error::TooSmall { .. })
        ));
        assert!(matches!(
            Layout::new(MAX_SIZE + 1, None),
            Err(Ext4Error::TooLarge { .. })
        ));
    }
}
