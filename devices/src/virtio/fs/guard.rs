//! [`GuardFs`]: a delegating [`FileSystem`] that enforces minivm's policy on
//! top of a backend: fuse-backend-rs's `PassthroughFs` for a shared
//! directory, minivm's [`LayeredFs`](super::LayeredFs) for an image's layers.
//!
//! * **Read-only**: fuse-backend-rs has no read-only option, so every request
//!   that could change the tree fails with EROFS: SETATTR, SYMLINK, MKNOD,
//!   MKDIR, UNLINK, RMDIR, RENAME(2), LINK, CREATE, WRITE, FALLOCATE,
//!   SETXATTR, REMOVEXATTR, IOCTL, OPEN with `O_WRONLY`/`O_RDWR`/`O_TRUNC`/
//!   `O_CREAT`, and ACCESS asking for `W_OK`. (COPY_FILE_RANGE and the DAX
//!   mapping requests never reach a backend: the server answers ENOSYS.)
//! * **Containment**: LOOKUP of `""`, `.`, `..` or a name with `/` is EINVAL;
//!   MKNOD of block/char devices (other than the 0:0 whiteout) is EPERM;
//!   xattr reply buffers are clamped to 64 KiB. See the module docs of
//!   [`super`] for the full analysis.
//! * **Size cap**: WRITE, FALLOCATE, SETATTR(size) and SETXATTR stat the inode
//!   before and after and charge the change in allocated bytes. A WRITE is
//!   refused up front (ENOSPC) if the bytes it adds past EOF would pass the
//!   cap, or if the cap is already reached and the file may have holes;
//!   FALLOCATE if its whole length would; CREATE/MKDIR/MKNOD/SYMLINK once the
//!   cap is reached. UNLINK/RMDIR/RENAME-over release what the removed inode
//!   occupied when its last link goes. Not counted: directory growth from new
//!   entries, and changes made behind the guest's back on the host. With
//!   a [`LayeredFs`](super::LayeredFs) backend, a copy-up is charged by the backend
//!   itself (against the same cap), the guard what the write then changes. The
//!   charging helpers are in `charge.rs`, the counter in `cap.rs`.
//! * **Unprivileged VMM**: PassthroughFs switches the thread's euid/egid to
//!   the guest's for creates, which fails with EPERM unless the VMM is root.
//!   When it is not, creates run with the VMM's own ids instead, unless the
//!   backend records the guest's ids itself ([`Policy::backend_maps_ids`]).

use std::any::Any;
use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData,
    ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::api::BackendFileSystem;
use fuse_backend_rs::transport::FsCacheReqHandler;

use super::cap::{round_up, SizeCap, Usage};
use super::fdbudget::FdBudget;
use super::worker::with_private_umask;

/// Largest xattr value or name list Linux hands out (`XATTR_SIZE_MAX`).
const XATTR_MAX: u32 = 65536;

/// What a [`GuardFs`] enforces.
#[derive(Debug, Default)]
pub struct Policy {
    /// Refuse every modification with EROFS.
    pub read_only: bool,
    /// Refuse growth past this many allocated bytes with ENOSPC (shared
    /// with a backend that charges its own copy-ups).
    pub size_cap: Option<Arc<SizeCap>>,
    /// The backend records the guest's ids itself (LayeredFs's mapped
    /// mode): hand it the guest's credentials for creates unchanged.
    pub backend_maps_ids: bool,
}

/// A backend file system with minivm's policy applied (see the module docs).
pub struct GuardFs<F> {
    pub(super) inner: F,
    read_only: bool,
    pub(super) cap: Option<Arc<SizeCap>>,
    /// The VMM is not root, so per-request credential switches cannot work.
    own_ids: bool,
    /// Requests that may open a host fd fail with ENFILE past this bound.
    fds: FdBudget,
}

/// The smallest READDIRPLUS record: `fuse_direntplus` and a name of 1 to 8
/// bytes, padded to 8.
const MIN_DIRENTPLUS: u64 = 152 + 8;

pub(super) fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl<F> GuardFs<F> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: F, policy: Policy) -> GuardFs<F> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        GuardFs {
            inner,
            read_only: policy.read_only,
            cap: policy.size_cap,
            own_ids: euid != 0 && !policy.backend_maps_ids,
            fds: FdBudget::for_process(),
        }
    }

    /// Replaces the process's fd budget (tests).
    #[cfg(test)]
    pub(super) fn with_fd_budget(mut self, fds: FdBudget) -> GuardFs<F> {
        self.fds = fds;
        self
    }

    /// The size cap, if one is enforced.
    pub fn size_cap(&self) -> Option<&SizeCap> {
        self.cap.as_deref()
    }

    /// Whether modifications are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub(super) fn writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(errno(libc::EROFS));
        }
        Ok(())
    }

    /// The credentials to create files with (see "Unprivileged VMM").
    fn creator(&self, ctx: &Context) -> Context {
        if self.own_ids {
            Context {
                uid: 0,
                gid: 0,
                pid: ctx.pid,
            }
        } else {
            *ctx
        }
    }
}

impl<F: BackendFileSystem<Inode = u64, Handle = u64> + Send + Sync + 'static> BackendFileSystem
    for GuardFs<F>
{
    fn mount(&self) -> io::Result<(Entry, u64)> {
        self.inner.mount()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64> + Sync> FileSystem for GuardFs<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        // PassthroughFs::destroy re-imports its root, which sets the umask to 0.
        with_private_umask(|| self.inner.destroy())
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.fds.check(1)?;
        // A kernel without FUSE export support (we never offer it) never sends
        // these; refusing them means `..` cannot climb out of anything.
        let b = name.to_bytes();
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
            return Err(errno(libc::EINVAL));
        }
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        match &self.cap {
            Some(cap) if valid.contains(SetattrValid::SIZE) => {
                // Growing a file by truncate makes a hole; shrinking frees.
                let before = self.usage(inode)?;
                self.charged(cap, inode, before, || {
                    self.inner.setattr(ctx, inode, attr, handle, valid)
                })
            }
            _ => self.inner.setattr(ctx, inode, attr, handle, valid),
        }
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.fds.check(1)?;
        let ctx = self.creator(ctx);
        self.creating(|| self.inner.symlink(&ctx, linkname, parent, name))
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.fds.check(1)?;
        self.writable()?;
        let kind = mode & libc::S_IFMT;
        // Device nodes would be opened by the host, not the guest; only the
        // overlayfs whiteout (char 0:0) is useful.
        if kind == libc::S_IFBLK || (kind == libc::S_IFCHR && rdev != 0) {
            return Err(errno(libc::EPERM));
        }
        let ctx = self.creator(ctx);
        self.creating(|| self.inner.mknod(&ctx, inode, name, mode, rdev, umask))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.fds.check(1)?;
        let ctx = self.creator(ctx);
        self.creating(|| self.inner.mkdir(&ctx, parent, name, mode, umask))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.removing(parent, name, || self.inner.unlink(ctx, parent, name))
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.removing(parent, name, || self.inner.rmdir(ctx, parent, name))
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        let rename = || {
            self.inner
                .rename(ctx, olddir, oldname, newdir, newname, flags)
        };
        let Some(cap) = &self.cap else {
            return rename();
        };
        if flags & libc::RENAME_EXCHANGE != 0 {
            return rename();
        }
        let target = self.probe(newdir, newname);
        // Renaming onto another link of the same file frees nothing.
        let source = target.and_then(|_| self.probe(olddir, oldname));
        rename()?;
        if let Some(t) = target {
            if source.map(|s| s.id) != Some(t.id) {
                cap.release(t.freed_by_removal());
            }
        }
        Ok(())
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.fds.check(1)?;
        self.writable()?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.fds.check(1)?;
        let f = flags as i32;
        if f & libc::O_ACCMODE != libc::O_RDONLY || f & (libc::O_TRUNC | libc::O_CREAT) != 0 {
            self.writable()?;
        }
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        // The new inode's fd and the open file's.
        self.fds.check(2)?;
        self.writable()?;
        if let Some(cap) = &self.cap {
            cap.check_not_full()?;
        }
        // An existing file opened with O_TRUNC frees its blocks.
        let existing = self.cap.as_ref().and_then(|_| self.probe(parent, name));
        let ctx = self.creator(ctx);
        let res = self.inner.create(&ctx, parent, name, args)?;
        if let Some(cap) = &self.cap {
            // The returned attributes predate an O_TRUNC of an existing file.
            let after = self.usage(res.0.inode).unwrap_or(Usage::of(&res.0.attr));
            cap.adjust(existing.map_or(0, |e| e.alloc), after.alloc);
        }
        Ok(res)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let mut write = || {
            self.inner.write(
                ctx,
                inode,
                handle,
                r,
                size,
                offset,
                lock_owner,
                delayed_write,
                flags,
                fuse_flags,
            )
        };
        let Some(cap) = &self.cap else { return write() };
        let before = self.usage(inode)?;
        let end = offset.saturating_add(u64::from(size));
        cap.check_grow(round_up(end).saturating_sub(round_up(before.size)))?;
        // At the cap, only overwrites of fully allocated data may proceed:
        // writing into a hole would allocate.
        if before.alloc < before.size {
            cap.check_not_full()?;
        }
        self.charged(cap, inode, before, write)
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        // The backends emulate close(2) with a dup and a close of the host
        // fd, which reports deferred write errors and drops host POSIX locks.
        // A read-only share has neither (every fd is read-only, and guest
        // locks never reach the host): each close in the guest costs two
        // host system calls fewer.
        if self.read_only {
            return Ok(());
        }
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        let op = || {
            self.inner
                .fallocate(ctx, inode, handle, mode, offset, length)
        };
        let Some(cap) = &self.cap else { return op() };
        let before = self.usage(inode)?;
        let frees = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_COLLAPSE_RANGE;
        if mode as i32 & frees == 0 {
            // Conservative: the range may already be partly allocated.
            cap.check_grow(round_up(length))?;
        }
        self.charged(cap, inode, before, op)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let mut st = self.inner.statfs(ctx, inode)?;
        if let Some(cap) = &self.cap {
            // Guests compute sizes as f_frsize * f_blocks.
            let unit = if st.f_frsize > 0 {
                st.f_frsize
            } else {
                st.f_bsize
            }
            .max(1);
            let free = cap.remaining() / unit;
            st.f_blocks = cap.limit() / unit;
            st.f_bfree = st.f_bfree.min(free);
            st.f_bavail = st.f_bavail.min(free);
        }
        Ok(st)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        let op = || self.inner.setxattr(ctx, inode, name, value, flags);
        let Some(cap) = &self.cap else { return op() };
        // An xattr may need a block of its own.
        cap.check_not_full()?;
        let before = self.usage(inode)?;
        self.charged(cap, inode, before, op)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        // Upstream allocates `size` bytes up front, and the guest picks it.
        self.inner.getxattr(ctx, inode, name, size.min(XATTR_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.fds.check(1)?;
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // One fd per entry that fits the guest's buffer, at most.
        self.fds.check(u64::from(size) / MIN_DIRENTPLUS + 1)?;
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn setupmapping(
        &self,
        _ctx: &Context,
        _inode: u64,
        _handle: u64,
        _foffset: u64,
        _len: u64,
        _flags: u64,
        _moffset: u64,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        // No DAX window is offered.
        Err(errno(libc::ENOSYS))
    }

    fn removemapping(
        &self,
        _ctx: &Context,
        _inode: u64,
        _requests: Vec<RemovemappingOne>,
        _vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        Err(errno(libc::ENOSYS))
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        if mask as i32 & libc::W_OK != 0 {
            self.writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        // Which ioctls guests send is not obvious (a Debian boot sent thousands): -vv shows them.
        tracing::debug!("virtio-fs: ioctl {cmd:#x} on inode {inode}");
        // Some file ioctls modify (FS_IOC_SETFLAGS); none is needed read-only.
        self.writable()?;
        self.inner
            .ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        khandle: u64,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
