//! An ext4 filesystem image writer: no root, no mount, no mkfs.
//!
//! File contents are streamed into the image first ([`Ext4Builder::write_data`]),
//! while image layers go by; contents a later layer deletes can be released
//! ([`Ext4Builder::free_data`]). [`Ext4Builder::finish`] then writes the
//! final [`Tree`](crate::tree::Tree): inodes, directories, extent trees,
//! xattrs, bitmaps, group descriptors and superblocks.
//!
//! Format: 4 KiB blocks, 32768 blocks per group, 256-byte inodes with
//! nanosecond times, features `ext_attr`, `filetype`, `extents`,
//! `sparse_super`, `large_file`, `huge_file`, `dir_nlink`, `extra_isize`;
//! no journal, no checksums, linear directories. The output is sparse: blocks
//! never written (unused inode tables, free space) read as zeros, which is
//! what an empty ext4 structure is without `uninit_bg`.

mod alloc;
mod dir;
mod extent;
mod finish;
mod inode;
mod io;
mod layout;
mod superblock;
mod xattr;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_extra;
#[cfg(test)]
mod testutil;

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};

use crate::tree::DataId;
use alloc::{Allocator, Run};
use layout::{Layout, BS};

/// Largest single data write (and the read buffer size).
const DATA_BUF: usize = 1 << 20;

/// How to format the filesystem.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// Size of the whole filesystem in bytes (rounded down to 4 KiB; at most 16 TiB).
    pub size: u64,
    /// Inode count; None: one per 16 KiB of size, like mkfs.
    pub inodes: Option<u64>,
    /// Volume label, at most 16 bytes.
    pub label: String,
    /// Filesystem uuid (also seeds the directory hash seed).
    pub uuid: [u8; 16],
    /// Seconds since the epoch for the superblock's times (for reproducible images).
    pub timestamp: i64,
}

/// What went wrong while writing an image.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// The data does not fit: `needed` bytes of filesystem (everything so far
    /// plus the request) against a `size`-byte filesystem.
    #[error("ext4 image full: {needed} bytes needed, filesystem is {size} bytes")]
    NoSpace {
        /// Bytes of filesystem needed.
        needed: u64,
        /// Filesystem size in bytes.
        size: u64,
    },
    /// The tree has more nodes than the filesystem has inodes.
    #[error("ext4 image out of inodes: {needed} needed, {available} available")]
    NoInodes {
        /// Inodes the tree needs (reserved ones included).
        needed: u64,
        /// Inodes in the filesystem.
        available: u64,
    },
    /// The size cannot hold even the filesystem's own metadata.
    #[error("ext4 image size {size} bytes is too small (minimum {min} bytes)")]
    TooSmall {
        /// Requested size.
        size: u64,
        /// Smallest usable size with these options.
        min: u64,
    },
    /// The size needs more than 32-bit block numbers (the `64bit` feature is not used).
    #[error("ext4 image size {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Requested size.
        size: u64,
        /// Largest supported size.
        max: u64,
    },
    /// More inodes were requested than the geometry can hold.
    #[error("{requested} inodes requested, at most {max} fit")]
    TooManyInodes {
        /// Requested inode count.
        requested: u64,
        /// Most inodes possible at this size.
        max: u64,
    },
    /// An I/O error on the image file or the data reader.
    #[error("I/O error {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The data reader ended early.
    #[error("file data ended after {got} of {expected} bytes")]
    ShortRead {
        /// Bytes promised.
        expected: u64,
        /// Bytes delivered.
        got: u64,
    },
    /// The label is longer than 16 bytes.
    #[error("volume label {0:?} is longer than 16 bytes")]
    LabelTooLong(String),
    /// A directory entry name is longer than 255 bytes.
    #[error("file name too long ({} bytes): {}", .0.len(), String::from_utf8_lossy(.0))]
    NameTooLong(Vec<u8>),
    /// A directory entry name is empty, `.`, `..`, or contains `/` or NUL.
    #[error("invalid file name {:?}", String::from_utf8_lossy(.0))]
    InvalidName(Vec<u8>),
    /// An xattr name whose namespace ext4 cannot store.
    #[error("unsupported extended attribute {:?}", String::from_utf8_lossy(.0))]
    UnsupportedXattr(Vec<u8>),
    /// An xattr value, or all of a node's xattrs, do not fit in one block.
    #[error("extended attributes too large ({size} bytes, at {:?})", String::from_utf8_lossy(.name))]
    XattrTooLarge {
        /// Name of the (first) attribute that does not fit.
        name: Vec<u8>,
        /// Bytes of value that did not fit.
        size: usize,
    },
    /// A POSIX ACL xattr value that is not in the `posix_acl_xattr` format.
    #[error("malformed POSIX ACL in {:?}", String::from_utf8_lossy(.0))]
    InvalidAcl(Vec<u8>),
    /// A symlink target that is empty, longer than 4095 bytes, or contains NUL.
    #[error("invalid symlink target {:?}", String::from_utf8_lossy(.0))]
    InvalidSymlink(Vec<u8>),
    /// A device number ext4 cannot encode (major > 4095 or minor > 1048575).
    #[error("device number {major}:{minor} out of range")]
    InvalidDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A file names data that was never written or was freed.
    #[error("file data {0:?} is unknown (never written or freed)")]
    UnknownData(DataId),
    /// Two different files name the same data.
    #[error("file data {0:?} is used by more than one inode")]
    SharedData(DataId),
    /// A file's data is longer than its size.
    #[error("file data {id:?} is {data_len} bytes but the file is {size} bytes")]
    DataSizeMismatch {
        /// The data.
        id: DataId,
        /// Bytes written for it.
        data_len: u64,
        /// The file's size in the tree.
        size: u64,
    },
    /// A file larger than ext4 extents can address (16 TiB - 4 KiB).
    #[error("file of {0} bytes is too large for ext4")]
    FileTooLarge(u64),
    /// A directory (or the root) is named by more than one entry.
    #[error("directory node {0} is linked more than once")]
    DirHardlink(crate::tree::NodeId),
    /// A non-directory with more than 65000 names.
    #[error("{0} links to one inode exceed ext4's limit of 65000")]
    TooManyLinks(u32),
    /// The tree's root is not a directory.
    #[error("the tree's root is not a directory")]
    RootNotDir,
}

/// Figures about a finished image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4Stats {
    /// Inodes in use, reserved ones (1..=10) included.
    pub inodes_used: u64,
    /// Blocks in use, metadata included.
    pub blocks_used: u64,
    /// Filesystem size in bytes (may be below the requested size when a
    /// trailing partial group was too small to keep).
    pub size: u64,
}

/// Where one piece of file data lives.
#[derive(Debug, Clone)]
struct DataRec {
    len: u64,
    runs: Vec<Run>,
}

/// Writes an ext4 image into a file; see the module documentation.
pub struct Ext4Builder {
    file: File,
    opts: Ext4Options,
    layout: Layout,
    alloc: Allocator,
    data: HashMap<u64, DataRec>,
    next_id: u64,
    buf: Vec<u8>,
}

impl Ext4Builder {
    /// Prepares `file` as an image of `opts.size` bytes: truncates it and sets
    /// its length (sparse: nothing is written until data arrives).
    pub fn new(file: File, opts: Ext4Options) -> Result<Self, Ext4Error> {
        if opts.label.len() > 16 {
            return Err(Ext4Error::LabelTooLong(opts.label));
        }
        let layout = Layout::new(opts.size, opts.inodes)?;
        // Truncating first guarantees never-written blocks read as zeros.
        file.set_len(0).map_err(|source| Ext4Error::Io {
            what: "truncating the image",
            source,
        })?;
        file.set_len(opts.size).map_err(|source| Ext4Error::Io {
            what: "sizing the image",
            source,
        })?;
        let alloc = Allocator::new(&layout);
        Ok(Ext4Builder {
            file,
            opts,
            layout,
            alloc,
            data: HashMap::new(),
            next_id: 0,
            buf: Vec::new(),
        })
    }

    /// Filesystem size in bytes.
    fn fs_size(&self) -> u64 {
        self.layout.blocks_count * BS
    }

    /// The error for a failed allocation of `blocks` more blocks.
    fn no_space(&self, blocks: u64) -> Ext4Error {
        let used = self.layout.blocks_count - self.alloc.free_blocks();
        Ext4Error::NoSpace {
            needed: (used + blocks) * BS,
            size: self.fs_size(),
        }
    }

    /// Allocates blocks for `len` bytes (contiguous when possible) and copies
    /// exactly `len` bytes from `reader` into them. Fails before writing
    /// anything with [`Ext4Error::NoSpace`] when they do not fit, and with
    /// [`Ext4Error::ShortRead`] if the reader ends early (the blocks are
    /// released on any error).
    pub fn write_data(&mut self, reader: &mut dyn Read, len: u64) -> Result<DataId, Ext4Error> {
        let blocks = len.div_ceil(BS);
        let runs = self
            .alloc
            .alloc(blocks)
            .ok_or_else(|| self.no_space(blocks))?;
        if let Err(e) = self.stream(reader, len, &runs) {
            for &(start, n) in &runs {
                self.alloc.free(start, n);
            }
            return Err(e);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.data.insert(id, DataRec { len, runs });
        Ok(DataId(id))
    }

    /// Copies `len` bytes from `reader` into `runs`, zero-padding the last block.
    fn stream(&mut self, reader: &mut dyn Read, len: u64, runs: &[Run]) -> Result<(), Ext4Error> {
        if self.buf.len() < DATA_BUF {
            self.buf.resize(DATA_BUF, 0);
        }
        let mut remaining = len;
        for &(start, blocks) in runs {
            let mut off = start * BS;
            let end = (start + blocks) * BS;
            while off < end {
                let chunk = (end - off).min(DATA_BUF as u64) as usize;
                let want = remaining.min(chunk as u64) as usize;
                let got = read_full(reader, &mut self.buf[..want])?;
                if got < want {
                    return Err(Ext4Error::ShortRead {
                        expected: len,
                        got: len - remaining + got as u64,
                    });
                }
                // Freed blocks may be reused: clear the tail past the data.
                self.buf[want..chunk].fill(0);
                io::write_at(&self.file, &self.buf[..chunk], off)?;
                remaining -= want as u64;
                off += chunk as u64;
            }
        }
        Ok(())
    }

    /// Releases data written by [`Ext4Builder::write_data`] (a later layer
    /// deleted or replaced the file); its blocks become reusable. Unknown ids
    /// are ignored.
    pub fn free_data(&mut self, id: DataId) {
        if let Some(rec) = self.data.remove(&id.0) {
            for (start, n) in rec.runs {
                self.alloc.free(start, n);
            }
        }
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> Result<usize, Ext4Error> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Ext4Error::Io {
                    what: "reading file data",
                    source,
                })
            }
        }
    }
    Ok(n)
}

/// Bytes of filesystem a tree of `files` non-directories (symlinks, devices
/// included), `dirs` directories and `data_bytes` of file contents needs,
/// assuming `inodes: None`: data rounded up per file, directory blocks,
/// extent/xattr blocks, inode tables, bitmaps and superblock copies. It is
/// meant to be sufficient on its own (assuming directory entries average
/// under 64 bytes and at most one file in 16 needs an external xattr
/// block); add headroom for a writable image.
pub fn estimate_size(files: u64, dirs: u64, data_bytes: u64) -> u64 {
    let entries = files + dirs;
    // Each file may waste most of a block (and a long symlink takes one).
    let data = data_bytes.div_ceil(BS) + files;
    // Directory entries average well under 64 bytes; one partial block per dir.
    let dir_blocks = (entries * 64).div_ceil(BS) + dirs + 1 + 4;
    // Extent index blocks for fragmented files and external xattr blocks.
    let extra = files.div_ceil(16) + 16;
    let payload = data + dir_blocks + extra;
    let inodes = entries + 16;
    let mut blocks = (payload + payload / 32 + 128).max(Layout::min_size() / BS);
    loop {
        let size = blocks * BS;
        if size >= layout::MAX_SIZE {
            return size;
        }
        if let Ok(l) = Layout::new(size, None) {
            let free: u64 = (0..l.groups)
                .map(|g| l.group_blocks(g) - l.overhead(g))
                .sum();
            if free >= payload && l.inodes_count() >= inodes {
                return size;
            }
        }
        blocks += blocks / 16 + 16;
    }
}
