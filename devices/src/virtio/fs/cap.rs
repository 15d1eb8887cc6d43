//! Size cap bookkeeping for a writable share (`--upper-size`).
//!
//! Usage is counted in allocated bytes (`st_blocks * 512`) rather than file
//! sizes, so sparse files cost what they really occupy. [`GuardFs`] keeps the
//! count current by stat-ing the affected inode before and after each
//! mutating request and adding the difference; see its docs for the rules.
//!
//! [`GuardFs`]: super::GuardFs

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use fuse_backend_rs::abi::fuse_abi::stat64;

/// Allocation granularity assumed when estimating how much a write may add.
const BLOCK: u64 = 4096;

/// A byte limit and the bytes currently counted against it.
#[derive(Debug)]
pub struct SizeCap {
    limit: u64,
    used: AtomicU64,
}

impl SizeCap {
    /// A cap of `limit` bytes of which `used` are already taken (e.g. by
    /// [`disk_usage`] of the directory).
    pub fn new(limit: u64, used: u64) -> SizeCap {
        SizeCap {
            limit,
            used: AtomicU64::new(used),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes currently counted.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes left before the cap (zero when over it).
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used())
    }

    /// ENOSPC if adding `bytes` would pass the limit.
    pub(super) fn check_grow(&self, bytes: u64) -> io::Result<()> {
        if bytes > 0 && self.used().saturating_add(bytes) > self.limit {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// ENOSPC once the limit is reached: nothing new may be created.
    pub(super) fn check_not_full(&self) -> io::Result<()> {
        if self.used() >= self.limit {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// Records that something went from `before` to `after` allocated bytes.
    pub(super) fn adjust(&self, before: u64, after: u64) {
        if after >= before {
            self.used.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.release(before - after);
        }
    }

    /// Records that `bytes` were freed (saturating: host-side changes may
    /// have freed space we never counted).
    pub(super) fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }
}

/// Rounds `n` up to a whole [`BLOCK`].
pub(super) fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// Allocated bytes under `root`, the way `du -x` counts them: symlinks are
/// not followed, other file systems mounted below are skipped, and a file
/// with several hard links counts once. Entries that vanish or cannot be read
/// during the walk are skipped.
pub fn disk_usage(root: &Path) -> io::Result<u64> {
    let meta = std::fs::symlink_metadata(root)?;
    let dev = meta.dev();
    let mut seen = HashSet::new();
    let mut total = meta.blocks() * 512;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!("disk usage: skipping {}: {e}", dir.display());
                continue;
            }
        };
        for entry in entries.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                continue;
            }
            total = total.saturating_add(m.blocks() * 512);
            if m.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// Allocation facts about one inode, for the size cap.
#[derive(Clone, Copy)]
pub(super) struct Usage {
    pub(super) alloc: u64,
    pub(super) size: u64,
    nlink: u64,
    is_dir: bool,
    pub(super) id: (u64, u64),
}

impl Usage {
    pub(super) fn of(st: &stat64) -> Usage {
        Usage {
            alloc: u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512),
            size: u64::try_from(st.st_size).unwrap_or(0),
            nlink: st.st_nlink,
            is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
            id: (st.st_dev, st.st_ino),
        }
    }

    /// Bytes that become free when this entry's name goes away.
    pub(super) fn freed_by_removal(&self) -> u64 {
        if self.is_dir || self.nlink <= 1 {
            self.alloc
        } else {
            0
        }
    }
}
