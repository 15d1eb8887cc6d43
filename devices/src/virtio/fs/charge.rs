//! The size-cap half of [`GuardFs`]: how a request's change in allocated
//! bytes is measured and charged to its [`SizeCap`] (see the guard's docs
//! for the rules).

use std::ffi::CStr;
use std::io;

use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};

use super::cap::{SizeCap, Usage};
use super::guard::GuardFs;

impl<F: FileSystem<Inode = u64, Handle = u64>> GuardFs<F> {
    pub(super) fn usage(&self, inode: u64) -> io::Result<Usage> {
        let (st, _) = self.inner.getattr(&Context::default(), inode, None)?;
        Ok(Usage::of(&st))
    }

    /// Usage of `parent/name` if it exists, without keeping a lookup reference.
    pub(super) fn probe(&self, parent: u64, name: &CStr) -> Option<Usage> {
        let ctx = Context::default();
        let entry = self.inner.lookup(&ctx, parent, name).ok()?;
        if entry.inode == 0 {
            return None;
        }
        self.inner.forget(&ctx, entry.inode, 1);
        Some(Usage::of(&entry.attr))
    }

    /// Runs `op` on `inode` and charges the change in its allocation.
    pub(super) fn charged<T>(
        &self,
        cap: &SizeCap,
        inode: u64,
        before: Usage,
        op: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let res = op();
        match self.usage(inode) {
            Ok(after) => cap.adjust(before.alloc, after.alloc),
            Err(e) => tracing::debug!("virtio-fs: size cap: stat after update: {e}"),
        }
        res
    }

    /// Runs a creating `op`; refuses when full and charges the new entry.
    pub(super) fn creating(&self, op: impl FnOnce() -> io::Result<Entry>) -> io::Result<Entry> {
        self.writable()?;
        if let Some(cap) = &self.cap {
            cap.check_not_full()?;
        }
        let entry = op()?;
        if let Some(cap) = &self.cap {
            cap.adjust(0, Usage::of(&entry.attr).alloc);
        }
        Ok(entry)
    }

    /// Runs a removing `op` and releases what `parent/name` occupied.
    pub(super) fn removing(
        &self,
        parent: u64,
        name: &CStr,
        op: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        self.writable()?;
        let Some(cap) = &self.cap else { return op() };
        let victim = self.probe(parent, name);
        op()?;
        if let Some(v) = victim {
            cap.release(v.freed_by_removal());
        }
        Ok(())
    }
}
