//! On-disk inode encoding (256-byte inodes, `i_extra_isize` = 32).

use super::layout::INODE_SIZE;

/// File type bits of `i_mode`.
pub(crate) const S_IFIFO: u16 = 0o010000;
pub(crate) const S_IFCHR: u16 = 0o020000;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const S_IFBLK: u16 = 0o060000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFLNK: u16 = 0o120000;

/// `i_flags`: the inode uses an extent tree.
pub(crate) const EXTENTS_FL: u32 = 0x0008_0000;

/// Bytes of the fixed inode part plus `i_extra_isize`; in-inode xattrs follow.
pub(crate) const EXTRA_ISIZE: usize = 32;
/// Offset of the in-inode xattr area (its 4-byte magic first).
pub(crate) const IBODY_OFFSET: usize = 128 + EXTRA_ISIZE;
/// Size of the in-inode xattr area, magic included.
pub(crate) const IBODY_SIZE: usize = INODE_SIZE as usize - IBODY_OFFSET;

/// Everything needed to encode one inode.
#[derive(Debug, Clone)]
pub(crate) struct InodeSpec {
    /// Type bits | permission bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// `i_size` in bytes.
    pub size: u64,
    pub links: u16,
    /// Blocks used (data, extent tree and xattr block), in 4 KiB blocks.
    pub fs_blocks: u64,
    pub flags: u32,
    /// `i_block`: extent tree root, fast symlink target or device number.
    pub i_block: [u8; 60],
    /// Block of the external xattr block, or 0.
    pub file_acl: u64,
    /// Seconds since the epoch, used for atime, ctime, mtime and crtime.
    pub time: i64,
    pub time_nsec: u32,
    /// In-inode xattr area ([`IBODY_SIZE`] bytes, magic included), if any.
    pub ibody: Option<Vec<u8>>,
}

/// Smallest and largest representable seconds: 32 signed bits plus two epoch
/// bits, capped below 2310 because e2fsck takes years 2310..2378 for
/// mis-encoded pre-1970 dates (see `check_inode_extra_negative_epoch`).
const MIN_TIME: i64 = i32::MIN as i64;
const MAX_TIME: i64 = (2i64 << 32) + i32::MAX as i64;

/// Encodes a time as (`i_xtime`, `i_xtime_extra`) the way the kernel does:
/// low 32 bits of the seconds, epoch bits `(secs - (s32)secs) >> 32` and the
/// nanoseconds shifted left by 2.
pub(crate) fn encode_time(secs: i64, nsec: u32) -> (u32, u32) {
    let secs = secs.clamp(MIN_TIME, MAX_TIME);
    let nsec = nsec.min(999_999_999);
    let low = secs as i32;
    let epoch = ((secs - i64::from(low)) >> 32) as u32 & 3;
    (low as u32, epoch | (nsec << 2))
}

/// Encodes a device number into `i_block` like the kernel: the old 16-bit
/// form in word 0 when both halves fit in a byte, else the new form in word 1.
pub(crate) fn encode_dev(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        b[0..4].copy_from_slice(&((major << 8) | minor).to_le_bytes());
    } else {
        let new = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12);
        b[4..8].copy_from_slice(&new.to_le_bytes());
    }
    b
}

impl Default for InodeSpec {
    fn default() -> Self {
        InodeSpec {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            links: 0,
            fs_blocks: 0,
            flags: 0,
            i_block: [0; 60],
            file_acl: 0,
            time: 0,
            time_nsec: 0,
            ibody: None,
        }
    }
}

fn put16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

impl InodeSpec {
    /// Writes the inode into `out` (exactly [`INODE_SIZE`] bytes, zeroed).
    pub fn encode(&self, out: &mut [u8]) {
        debug_assert_eq!(out.len(), INODE_SIZE as usize);
        let (t, extra) = encode_time(self.time, self.time_nsec);
        // i_blocks counts 512-byte sectors (huge_file: 48 bits, no HUGE_FILE_FL).
        let sectors = self.fs_blocks * 8;
        put16(out, 0x00, self.mode);
        put16(out, 0x02, self.uid as u16);
        put32(out, 0x04, self.size as u32);
        put32(out, 0x08, t); // atime
        put32(out, 0x0C, t); // ctime
        put32(out, 0x10, t); // mtime
        put16(out, 0x18, self.gid as u16);
        put16(out, 0x1A, self.links);
        put32(out, 0x1C, sectors as u32);
        put32(out, 0x20, self.flags);
        out[0x28..0x64].copy_from_slice(&self.i_block);
        put32(out, 0x68, self.file_acl as u32);
        put32(out, 0x6C, (self.size >> 32) as u32);
        put16(out, 0x74, (sectors >> 32) as u16);
        put16(out, 0x76, (self.file_acl >> 32) as u16);
        put16(out, 0x78, (self.uid >> 16) as u16);
        put16(out, 0x7A, (self.gid >> 16) as u16);
        put16(out, 0x80, EXTRA_ISIZE as u16);
        put32(out, 0x84, extra); // ctime_extra
        put32(out, 0x88, extra); // mtime_extra
        put32(out, 0x8C, extra); // atime_extra
        put32(out, 0x90, t); // crtime
        put32(out, 0x94, extra);
        if let Some(ibody) = &self.ibody {
            out[IBODY_OFFSET..].copy_from_slice(ibody);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(lo: u32, extra: u32) -> i64 {
        i64::from(lo as i32) + (i64::from(extra & 3) << 32)
    }

    #[test]
    fn times_round_trip() {
        for secs in [
            0,
            1,
            -1,
            -2_000_000_000,
            i32::MIN as i64,
            1 << 31,
            4_000_000_000,
            (2i64 << 32) + 5,
        ] {
            let (lo, extra) = encode_time(secs, 123);
            assert_eq!(decode(lo, extra), secs, "{secs}");
            assert_eq!(extra >> 2, 123);
        }
        let (lo, extra) = encode_time(i64::MIN, 2_000_000_000);
        assert_eq!(decode(lo, extra), MIN_TIME);
        assert_eq!(extra >> 2, 999_999_999);
        let (lo, extra) = encode_time(i64::MAX, 0);
        assert_eq!(decode(lo, extra), MAX_TIME);
    }

    #[test]
    fn devices() {
        let b = encode_dev(8, 1);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 0x801);
        let b = encode_dev(259, 300);
        assert_eq!(&b[0..4], &[0; 4]);
        let v = u32::from_le_bytes(b[4..8].try_into().unwrap());
        assert_eq!((v & 0xfff00) >> 8, 259);
        assert_eq!((v & 0xff) | ((v >> 12) & 0xfff00), 300);
    }
}
