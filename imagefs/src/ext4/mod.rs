//! An ext4 filesystem writer: file data is streamed into freshly allocated
//! blocks as it arrives ([`Ext4Builder::write_data`]); the tree comes last
//! ([`Ext4Builder::finish`]) and is laid out as inodes, directories, extent
//! trees, xattrs, bitmaps, group descriptors and superblocks.
//!
//! Format: 4 KiB blocks, 32768 blocks per group, 256-byte inodes, features
//! `ext_attr`, `filetype`, `extents`, `sparse_super`, `large_file`,
//! `dir_nlink`, `extra_isize`; no journal (valid, mounts read-write), no
//! checksums, linear directories. The image is sparse: nothing is written
//! that would be zeros (unused inode table space reads as zeros, which is a
//! valid unused inode), so an image costs only its content on the host.

mod layout;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

pub use layout::Layout;

use crate::tree::DataId;

/// Block size.
pub const BLOCK: u64 = 4096;
/// Blocks per group.
pub const BLOCKS_PER_GROUP: u64 = 32768;
/// Inode size.
pub const INODE_SIZE: u64 = 256;
/// Bytes of disk per inode when the caller does not say.
pub const BYTES_PER_INODE: u64 = 16384;
/// Largest filesystem written (32-bit block numbers).
pub const MAX_SIZE: u64 = (1u64 << 32) * BLOCK;
/// Longest extent.
const MAX_EXTENT: u64 = 32768;

/// Errors from writing an ext4 image.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// The content does not fit.
    #[error("the disk is full: {needed} more bytes needed in a {size}-byte filesystem")]
    NoSpace {
        /// Bytes the failed allocation asked for.
        needed: u64,
        /// Filesystem size.
        size: u64,
    },
    /// More files than inodes.
    #[error("{needed} inodes needed but the filesystem has {available}")]
    NoInodes {
        /// Inodes needed.
        needed: u64,
        /// Inodes available.
        available: u64,
    },
    /// The size is below the minimum.
    #[error("a {size}-byte filesystem is too small (minimum {min} bytes)")]
    TooSmall {
        /// Requested size.
        size: u64,
        /// Minimum.
        min: u64,
    },
    /// The size is beyond what this writer supports.
    #[error("a {size}-byte filesystem is too large (maximum {max} bytes)")]
    TooLarge {
        /// Requested size.
        size: u64,
        /// Maximum.
        max: u64,
    },
    /// A name longer than 255 bytes.
    #[error("name too long ({} bytes): {:?}", .0.len(), String::from_utf8_lossy(.0))]
    NameTooLong(Vec<u8>),
    /// An xattr whose namespace ext4 cannot store.
    #[error("unsupported extended attribute {0:?}")]
    UnsupportedXattr(String),
    /// Extended attributes too large for one block.
    #[error("extended attributes of one file exceed {0} bytes")]
    XattrTooLarge(u64),
    /// A symlink target longer than a block.
    #[error("symlink target of {0} bytes is too long")]
    SymlinkTooLong(usize),
    /// The data reader ended early.
    #[error("file data ended after {got} of {want} bytes")]
    ShortData {
        /// Bytes read.
        got: u64,
        /// Bytes promised.
        want: u64,
    },
    /// Reading data or writing the image failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Ext4Error {
    move |source| Ext4Error::Io { what, source }
}

/// How to make the filesystem.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// Bytes, whole filesystem (the file is set to this length, sparse).
    pub size: u64,
    /// Inode count; `None`: one per 16 KiB.
    pub inodes: Option<u64>,
    /// Volume label (at most 16 bytes are kept).
    pub label: String,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Superblock times (reproducible output).
    pub timestamp: i64,
}

/// What [`Ext4Builder::finish`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4Stats {
    /// Inodes in use.
    pub inodes_used: u64,
    /// Blocks in use (metadata included).
    pub blocks_used: u64,
    /// Filesystem size in bytes.
    pub size: u64,
}

/// A run of blocks holding file data: logical block, physical block, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub logical: u32,
    pub start: u64,
    pub len: u64,
}

/// Builds one ext4 image.
pub struct Ext4Builder {
    file: File,
    opts: Ext4Options,
    layout: Layout,
    /// One bit per block: in use.
    used: Vec<u64>,
    /// Where the next allocation search starts.
    cursor: u64,
    free_blocks: u64,
    data: HashMap<u64, Vec<Extent>>,
    next_id: u64,
}

/// Bytes of disk a tree of this shape needs: data, one block per directory,
/// inodes, and the fixed metadata of the groups; no free space.
pub fn estimate_size(files: u64, dirs: u64, data_bytes: u64) -> u64 {
    let data_blocks = data_bytes.div_ceil(BLOCK) + dirs * 2 + files / 64 + 16;
    let inodes = ((files + dirs) * 3 / 2).max(1024);
    let itable_blocks = (inodes * INODE_SIZE).div_ceil(BLOCK);
    let blocks = data_blocks + itable_blocks;
    let groups = blocks.div_ceil(BLOCKS_PER_GROUP).max(1);
    (blocks + groups * 4 + 64) * BLOCK
}

impl Ext4Builder {
    /// Lays out a filesystem of `opts.size` bytes in `file` (made sparse at that length).
    pub fn new(file: File, opts: Ext4Options) -> Result<Self, Ext4Error> {
        let layout = Layout::new(opts.size, opts.inodes)?;
        file.set_len(layout.blocks * BLOCK)
            .map_err(io_err("setting the image size"))?;
        let mut used = vec![0u64; layout.blocks.div_ceil(64) as usize];
        let mut meta = 0;
        for g in 0..layout.groups {
            for b in layout.metadata_blocks(g) {
                used[(b / 64) as usize] |= 1 << (b % 64);
                meta += 1;
            }
        }
        Ok(Ext4Builder {
            file,
            free_blocks: layout.blocks - meta,
            cursor: 0,
            layout,
            opts,
            used,
            data: HashMap::new(),
            next_id: 0,
        })
    }

    fn is_used(&self, b: u64) -> bool {
        self.used[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    fn set_used(&mut self, b: u64, on: bool) {
        if on {
            self.used[(b / 64) as usize] |= 1 << (b % 64);
        } else {
            self.used[(b / 64) as usize] &= !(1 << (b % 64));
        }
    }

    /// Allocates `n` blocks as few runs as possible, each at most `MAX_EXTENT` long.
    pub(crate) fn alloc(&mut self, n: u64) -> Result<Vec<(u64, u64)>, Ext4Error> {
        if n > self.free_blocks {
            return Err(Ext4Error::NoSpace {
                needed: n * BLOCK,
                size: self.layout.blocks * BLOCK,
            });
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut left = n;
        let total = self.layout.blocks;
        let mut b = self.cursor % total;
        let mut scanned = 0u64;
        while left > 0 && scanned <= total {
            // Skip whole used words quickly.
            if b.is_multiple_of(64) && self.used[(b / 64) as usize] == u64::MAX {
                b += 64;
                if b >= total {
                    b = 0;
                }
                scanned += 64;
                continue;
            }
            if !self.is_used(b) {
                self.set_used(b, true);
                match runs.last_mut() {
                    Some((s, l)) if *s + *l == b && *l < MAX_EXTENT => *l += 1,
                    _ => runs.push((b, 1)),
                }
                left -= 1;
            }
            b += 1;
            scanned += 1;
            if b >= total {
                b = 0;
            }
        }
        debug_assert_eq!(left, 0, "free count and bitmap disagree");
        self.cursor = b;
        self.free_blocks -= n;
        Ok(runs)
    }

    pub(crate) fn release(&mut self, start: u64, len: u64) {
        for b in start..start + len {
            if self.is_used(b) {
                self.set_used(b, false);
                self.free_blocks += 1;
            }
        }
    }

    /// Streams exactly `len` bytes from `reader` into new blocks.
    pub fn write_data(&mut self, reader: &mut dyn Read, len: u64) -> Result<DataId, Ext4Error> {
        let blocks = len.div_ceil(BLOCK);
        if blocks > u64::from(u32::MAX) {
            return Err(Ext4Error::NoSpace {
                needed: len,
                size: self.layout.blocks * BLOCK,
            });
        }
        let runs = self.alloc(blocks)?;
        let mut extents = Vec::with_capacity(runs.len());
        let mut logical = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        let result = (|| {
            for &(start, n) in &runs {
                extents.push(Extent {
                    logical: logical as u32,
                    start,
                    len: n,
                });
                logical += n;
                let mut off = start * BLOCK;
                let run_bytes = (n * BLOCK).min(len - done);
                let mut left = run_bytes;
                while left > 0 {
                    let chunk = (left as usize).min(buf.len());
                    read_full(reader, &mut buf[..chunk], done, len)?;
                    self.file
                        .write_all_at(&buf[..chunk], off)
                        .map_err(io_err("writing file data"))?;
                    off += chunk as u64;
                    left -= chunk as u64;
                    done += chunk as u64;
                }
            }
            // The tail of the last block may hold an earlier file's bytes.
            let tail = (blocks * BLOCK) - len;
            if tail > 0 {
                let last = runs.last().map(|&(s, n)| s + n).unwrap_or(0);
                let zeros = vec![0u8; tail as usize];
                self.file
                    .write_all_at(&zeros, last * BLOCK - tail)
                    .map_err(io_err("writing file data"))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            for (s, n) in runs {
                self.release(s, n);
            }
            return Err(e);
        }
        self.next_id += 1;
        self.data.insert(self.next_id, extents);
        Ok(DataId(self.next_id))
    }

    /// Frees the blocks of data no longer in the tree.
    pub fn free_data(&mut self, id: DataId) {
        if let Some(extents) = self.data.remove(&id.0) {
            for e in extents {
                self.release(e.start, e.len);
            }
        }
    }

    /// Writes everything but the file data, then syncs.
    pub fn finish(mut self, tree: &crate::tree::Tree) -> Result<Ext4Stats, Ext4Error> {
        let inodes_used = write::write_tree(&mut self, tree)?;
        self.file.sync_all().map_err(io_err("syncing the image"))?;
        Ok(Ext4Stats {
            inodes_used,
            blocks_used: self.layout.blocks - self.free_blocks,
            size: self.layout.blocks * BLOCK,
        })
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8], done: u64, want: u64) -> Result<(), Ext4Error> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Ext4Error::ShortData {
                    got: done + got as u64,
                    want,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Ext4Error::Io {
                    what: "reading file data",
                    source: e,
                })
            }
        }
    }
    Ok(())
}
