//! Superblock and group descriptor encoding.

use super::layout::{Layout, BPG, DESC_SIZE, FIRST_INO, INODE_SIZE};

const MAGIC: u16 = 0xEF53;
const COMPAT_EXT_ATTR: u32 = 0x0008;
const INCOMPAT_FILETYPE: u32 = 0x0002;
const INCOMPAT_EXTENTS: u32 = 0x0040;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
const RO_COMPAT_HUGE_FILE: u32 = 0x0008;
const RO_COMPAT_DIR_NLINK: u32 = 0x0020;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x0040;
/// s_default_mount_opts: user_xattr | acl, as mkfs sets.
const DEFM_XATTR_USER_ACL: u32 = 0x0004 | 0x0008;
/// s_flags: directory hashes use unsigned chars (only matters if dir_index
/// is enabled later; e2fsck wants one of the two flags set).
const FLAGS_UNSIGNED_HASH: u32 = 0x0002;
const HASH_HALF_MD4: u8 = 1;

/// Per-filesystem values that go into every superblock copy.
#[derive(Debug, Clone)]
pub(crate) struct SuperInfo {
    pub free_blocks: u64,
    pub free_inodes: u64,
    pub uuid: [u8; 16],
    pub label: [u8; 16],
    pub timestamp: i64,
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// A deterministic, well-mixed directory hash seed derived from the uuid
/// (splitmix64 over its two halves), so rebuilding gives the same image.
fn hash_seed(uuid: &[u8; 16]) -> [u8; 16] {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let a = u64::from_le_bytes(uuid[0..8].try_into().expect("8 bytes"));
    let b = u64::from_le_bytes(uuid[8..16].try_into().expect("8 bytes"));
    let mut out = [0u8; 16];
    out[0..8].copy_from_slice(&mix(a ^ mix(b)).to_le_bytes());
    out[8..16].copy_from_slice(&mix(b ^ mix(a.rotate_left(17))).to_le_bytes());
    out
}

/// The 1024-byte superblock as stored in group `group` (0 = primary).
pub(crate) fn superblock(layout: &Layout, info: &SuperInfo, group: u64) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    let t = info.timestamp.clamp(0, (1 << 40) - 1);
    let (t_lo, t_hi) = (t as u32, (t >> 32) as u8);
    put32(&mut b, 0x00, layout.inodes_count() as u32);
    put32(&mut b, 0x04, layout.blocks_count as u32);
    // s_r_blocks_count: no blocks reserved for root (an image, not a host disk).
    put32(&mut b, 0x0C, info.free_blocks as u32);
    put32(&mut b, 0x10, info.free_inodes as u32);
    // s_first_data_block = 0 for 4 KiB blocks.
    put32(&mut b, 0x18, 2); // s_log_block_size: 1024 << 2
    put32(&mut b, 0x1C, 2); // s_log_cluster_size
    put32(&mut b, 0x20, BPG as u32);
    put32(&mut b, 0x24, BPG as u32);
    put32(&mut b, 0x28, layout.inodes_per_group as u32);
    put32(&mut b, 0x30, t_lo); // s_wtime
    put16(&mut b, 0x36, 0xFFFF); // s_max_mnt_count = -1
    put16(&mut b, 0x38, MAGIC);
    put16(&mut b, 0x3A, 1); // s_state: clean
    put16(&mut b, 0x3C, 1); // s_errors: continue
    put32(&mut b, 0x40, t_lo); // s_lastcheck
                               // s_creator_os = 0 (Linux).
    put32(&mut b, 0x4C, 1); // s_rev_level: dynamic
    put32(&mut b, 0x54, FIRST_INO);
    put16(&mut b, 0x58, INODE_SIZE as u16);
    put16(&mut b, 0x5A, group as u16);
    put32(&mut b, 0x5C, COMPAT_EXT_ATTR);
    put32(&mut b, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS);
    put32(
        &mut b,
        0x64,
        RO_COMPAT_SPARSE_SUPER
            | RO_COMPAT_LARGE_FILE
            | RO_COMPAT_HUGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE,
    );
    b[0x68..0x78].copy_from_slice(&info.uuid);
    b[0x78..0x88].copy_from_slice(&info.label);
    b[0xEC..0xFC].copy_from_slice(&hash_seed(&info.uuid));
    b[0xFC] = HASH_HALF_MD4;
    put32(&mut b, 0x100, DEFM_XATTR_USER_ACL);
    put32(&mut b, 0x108, t_lo); // s_mkfs_time
    put32(&mut b, 0x158, (info.free_blocks >> 32) as u32);
    put16(&mut b, 0x15C, 32); // s_min_extra_isize
    put16(&mut b, 0x15E, 32); // s_want_extra_isize
    put32(&mut b, 0x160, FLAGS_UNSIGNED_HASH);
    b[0x274] = t_hi; // s_wtime_hi
    b[0x276] = t_hi; // s_mkfs_time_hi
    b[0x277] = t_hi; // s_lastcheck_hi
    b
}

/// Counts that go into one group descriptor.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GroupCounts {
    pub free_blocks: u64,
    pub free_inodes: u64,
    pub used_dirs: u64,
}

/// The group descriptor table (all groups, whole blocks).
pub(crate) fn descriptors(layout: &Layout, counts: &[GroupCounts]) -> Vec<u8> {
    let mut b = vec![0u8; (layout.gdt_blocks * super::layout::BS) as usize];
    for (g, c) in counts.iter().enumerate() {
        let d = &mut b[g * DESC_SIZE as usize..(g + 1) * DESC_SIZE as usize];
        let g = g as u64;
        put32(d, 0x00, layout.block_bitmap(g) as u32);
        put32(d, 0x04, layout.inode_bitmap(g) as u32);
        put32(d, 0x08, layout.inode_table(g) as u32);
        put16(d, 0x0C, c.free_blocks as u16);
        put16(d, 0x0E, c.free_inodes as u16);
        put16(d, 0x10, c.used_dirs as u16);
        // bg_flags, checksums and itable_unused stay 0: no uninit_bg.
    }
    b
}
