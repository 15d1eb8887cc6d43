//! Linear directory blocks (`filetype` entries, no htree).

use super::layout::BS;

/// `file_type` values of directory entries.
pub(crate) const FT_REG: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_CHR: u8 = 3;
pub(crate) const FT_BLK: u8 = 4;
pub(crate) const FT_FIFO: u8 = 5;
pub(crate) const FT_SYMLINK: u8 = 7;

/// Space an entry with a `name_len`-byte name takes: 8-byte header + name, 4-aligned.
fn rec_len(name_len: usize) -> usize {
    (8 + name_len).next_multiple_of(4)
}

/// Builds the blocks of a directory: `.`, `..`, then `entries` in order.
/// Each block's last entry stretches to the block end; the result is a whole
/// number of blocks. Names must be 1..=255 bytes (checked by the caller).
pub(crate) struct DirBuilder {
    buf: Vec<u8>,
    /// Offset of the current block's last entry (for stretching its rec_len).
    last: usize,
}

impl DirBuilder {
    /// Starts a directory `ino` whose parent is `parent`.
    pub fn new(ino: u32, parent: u32) -> Self {
        let mut d = DirBuilder {
            buf: Vec::with_capacity(BS as usize),
            last: 0,
        };
        d.push(b".", ino, FT_DIR);
        d.push(b"..", parent, FT_DIR);
        d
    }

    /// Appends one entry, starting a new block when it does not fit.
    pub fn push(&mut self, name: &[u8], ino: u32, ft: u8) {
        let bs = BS as usize;
        let len = rec_len(name.len());
        let used_in_block = self.buf.len() % bs;
        if used_in_block != 0 && used_in_block + len > bs {
            self.close_block();
        }
        let off = self.buf.len();
        self.buf.resize(off + len, 0);
        let e = &mut self.buf[off..];
        e[0..4].copy_from_slice(&ino.to_le_bytes());
        e[4..6].copy_from_slice(&(len as u16).to_le_bytes());
        e[6] = name.len() as u8;
        e[7] = ft;
        e[8..8 + name.len()].copy_from_slice(name);
        self.last = off;
    }

    /// Pads the current block by stretching its last entry.
    fn close_block(&mut self) {
        let bs = BS as usize;
        let end = self.buf.len().next_multiple_of(bs);
        let stretched = (end - self.last) as u16;
        self.buf[self.last + 4..self.last + 6].copy_from_slice(&stretched.to_le_bytes());
        self.buf.resize(end, 0);
    }

    /// Finishes the last block; the contents, `extra_blocks` empty blocks added
    /// (lost+found is made 4 blocks long, like mkfs, so e2fsck can reconnect
    /// files without allocating).
    pub fn finish(mut self, extra_blocks: usize) -> Vec<u8> {
        self.close_block();
        for _ in 0..extra_blocks {
            // An empty block: one unused entry (inode 0) spanning it.
            let off = self.buf.len();
            self.buf.resize(off + BS as usize, 0);
            self.buf[off + 4..off + 6].copy_from_slice(&(BS as u16).to_le_bytes());
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the entries of `blocks`, checking rec_len invariants.
    fn walk(blocks: &[u8]) -> Vec<(Vec<u8>, u32)> {
        let bs = BS as usize;
        assert_eq!(blocks.len() % bs, 0);
        let mut out = Vec::new();
        for block in blocks.chunks(bs) {
            let mut off = 0;
            while off < bs {
                let ino = u32::from_le_bytes(block[off..off + 4].try_into().unwrap());
                let len = u16::from_le_bytes(block[off + 4..off + 6].try_into().unwrap()) as usize;
                let nl = block[off + 6] as usize;
                assert!(len >= rec_len(nl) && len % 4 == 0 && off + len <= bs);
                if ino != 0 {
                    out.push((block[off + 8..off + 8 + nl].to_vec(), ino));
                }
                off += len;
            }
            assert_eq!(off, bs);
        }
        out
    }

    #[test]
    fn many_entries_span_blocks() {
        let mut d = DirBuilder::new(2, 2);
        for i in 0..1000u32 {
            d.push(
                format!("entry-{i:05}-{}", "x".repeat(i as usize % 255 / 3)).as_bytes(),
                100 + i,
                FT_REG,
            );
        }
        d.push(&[b'n'; 255], 5000, FT_REG);
        let blocks = d.finish(0);
        let entries = walk(&blocks);
        assert_eq!(entries.len(), 1003);
        assert_eq!(entries[0], (b".".to_vec(), 2));
        assert_eq!(entries[1002].0.len(), 255);
        assert!(blocks.len() > BS as usize * 5);
    }

    #[test]
    fn empty_blocks() {
        let blocks = DirBuilder::new(11, 2).finish(3);
        assert_eq!(blocks.len(), 4 * BS as usize);
        assert_eq!(walk(&blocks).len(), 2);
    }
}
