//! Extent trees: up to 4 extents in the inode, else full index/leaf blocks.

use super::alloc::Run;
use super::layout::BS;

const MAGIC: u16 = 0xF30A;
/// Longest initialized extent.
pub(crate) const MAX_EXTENT_LEN: u64 = 32768;
/// Entries in the inode's `i_block` root.
const ROOT_ENTRIES: usize = 4;
/// Entries in a 4 KiB tree block: (4096 - 12-byte header) / 12.
const BLOCK_ENTRIES: usize = (BS as usize - 12) / 12;

/// One extent: logical block, physical block, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub lblk: u32,
    pub pblk: u64,
    pub len: u16,
}

/// Maps `runs` to consecutive logical blocks from 0, splitting runs longer
/// than an extent may be.
pub(crate) fn extents_of(runs: &[Run]) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut lblk = 0u64;
    for &(start, len) in runs {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_EXTENT_LEN);
            // ee_len 32768 is an initialized extent of that length.
            out.push(Extent {
                lblk: lblk as u32,
                pblk: start + done,
                len: n as u16,
            });
            lblk += n;
            done += n;
        }
    }
    out
}

/// Tree blocks needed below the inode root for `n` extents.
pub(crate) fn tree_blocks(n: usize) -> u64 {
    let mut total = 0;
    let mut nodes = n;
    while nodes > ROOT_ENTRIES {
        nodes = nodes.div_ceil(BLOCK_ENTRIES);
        total += nodes as u64;
    }
    total
}

fn header(out: &mut [u8], entries: usize, max: usize, depth: u16) {
    out[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    out[2..4].copy_from_slice(&(entries as u16).to_le_bytes());
    out[4..6].copy_from_slice(&(max as u16).to_le_bytes());
    out[6..8].copy_from_slice(&depth.to_le_bytes());
    // eh_generation (8..12) stays 0.
}

/// A 12-byte leaf (`depth == 0`) or index entry.
fn entry(depth: u16, lblk: u32, block: u64, len: u16) -> [u8; 12] {
    let mut e = [0u8; 12];
    e[0..4].copy_from_slice(&lblk.to_le_bytes());
    if depth == 0 {
        e[4..6].copy_from_slice(&len.to_le_bytes());
        e[6..8].copy_from_slice(&((block >> 32) as u16).to_le_bytes());
        e[8..12].copy_from_slice(&(block as u32).to_le_bytes());
    } else {
        e[4..8].copy_from_slice(&(block as u32).to_le_bytes());
        e[8..10].copy_from_slice(&((block >> 32) as u16).to_le_bytes());
    }
    e
}

/// Builds the tree for `extents`, placing tree blocks at `blocks` (exactly
/// [`tree_blocks`] of them). Returns the inode's `i_block` and the tree
/// blocks to write. Nodes are packed full, so e2fsck finds nothing to
/// narrow or shorten.
pub(crate) fn build(extents: &[Extent], blocks: &[u64]) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    debug_assert_eq!(blocks.len() as u64, tree_blocks(extents.len()));
    let mut level: Vec<(u32, [u8; 12])> = extents
        .iter()
        .map(|e| (e.lblk, entry(0, e.lblk, e.pblk, e.len)))
        .collect();
    let mut depth = 0u16;
    let mut next = blocks.iter();
    let mut written = Vec::new();
    while level.len() > ROOT_ENTRIES {
        let mut up = Vec::with_capacity(level.len().div_ceil(BLOCK_ENTRIES));
        for chunk in level.chunks(BLOCK_ENTRIES) {
            let block = *next.next().expect("enough tree blocks");
            let mut buf = vec![0u8; BS as usize];
            header(&mut buf, chunk.len(), BLOCK_ENTRIES, depth);
            for (i, (_, e)) in chunk.iter().enumerate() {
                buf[12 + i * 12..24 + i * 12].copy_from_slice(e);
            }
            // An index entry starts where its child's first entry starts.
            up.push((chunk[0].0, entry(depth + 1, chunk[0].0, block, 0)));
            written.push((block, buf));
        }
        level = up;
        depth += 1;
    }
    let mut root = [0u8; 60];
    header(&mut root, level.len(), ROOT_ENTRIES, depth);
    for (i, (_, e)) in level.iter().enumerate() {
        root[12 + i * 12..24 + i * 12].copy_from_slice(e);
    }
    (root, written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_long_runs() {
        let ex = extents_of(&[(100, 70000), (500_000, 3)]);
        assert_eq!(ex.len(), 4);
        assert_eq!(
            ex[1],
            Extent {
                lblk: 32768,
                pblk: 100 + 32768,
                len: 32768
            }
        );
        assert_eq!(
            ex[3],
            Extent {
                lblk: 70000,
                pblk: 500_000,
                len: 3
            }
        );
    }

    #[test]
    fn tree_shapes() {
        assert_eq!(tree_blocks(0), 0);
        assert_eq!(tree_blocks(4), 0);
        assert_eq!(tree_blocks(5), 1);
        assert_eq!(tree_blocks(340 * 4), 4);
        assert_eq!(tree_blocks(340 * 4 + 1), 6);
        let ex: Vec<Extent> = (0..2000u32)
            .map(|i| Extent {
                lblk: i,
                pblk: 10 + 2 * u64::from(i),
                len: 1,
            })
            .collect();
        let blocks: Vec<u64> = (0..tree_blocks(ex.len())).map(|b| 100_000 + b).collect();
        let (root, written) = build(&ex, &blocks);
        assert_eq!(written.len(), blocks.len());
        assert_eq!(u16::from_le_bytes([root[6], root[7]]), 2); // depth
        assert_eq!(u16::from_le_bytes([root[2], root[3]]), 1); // one index block
    }
}
