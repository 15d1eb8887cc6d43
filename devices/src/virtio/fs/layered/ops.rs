//! The `FileSystem` requests of [`LayeredFs`]: each one dispatched to the
//! file that does its job, or passed to the layer that holds the open file.

use std::any::Any;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, ListxattrReply,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::api::{BackendFileSystem, VFS_MAX_INO};

use super::mapped::private_xattr;
use super::refs::{forget_real, LayerHandle, OpenFile, Real};
use super::tree::ROOT;
use super::{lock, LayeredFs};
use crate::virtio::fs::guard::errno;

impl LayeredFs {
    pub(super) fn next_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an open file for the guest, which owns `handle` from now on.
    pub(super) fn open_file(&self, real: Real, handle: LayerHandle) -> u64 {
        let h = self.next_handle();
        let fh = handle.keep();
        lock(&self.files).insert(h, OpenFile { real, fh });
        h
    }

    pub(super) fn file(&self, handle: u64) -> io::Result<OpenFile> {
        lock(&self.files)
            .get(&handle)
            .copied()
            .ok_or_else(|| errno(libc::EBADF))
    }

    /// Drops `count` guest references on node `id`, and the node's layer
    /// references with the last one.
    pub(super) fn forget_node(&self, id: u64, count: u64) {
        if id == ROOT {
            return;
        }
        let Some(node) = lock(&self.tree).forget(id, count) else {
            return;
        };
        for r in node.reals.into_iter().chain(node.retired) {
            forget_real(self.layer(r), r);
        }
    }
}

impl BackendFileSystem for LayeredFs {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        let st = self.attr_of(self.top(ROOT)?)?;
        Ok((self.entry(ROOT, st), VFS_MAX_INO))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl FileSystem for LayeredFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut opts = None;
        for l in &self.layers {
            let o = l.init(capable)?;
            opts.get_or_insert(o);
        }
        Ok(opts.unwrap_or_else(FsOptions::empty))
    }

    fn destroy(&self) {
        self.layers.iter().for_each(|l| l.destroy());
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        match self.do_lookup(parent, name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(self.negative_entry()),
            r => r,
        }
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.forget_node(inode, count);
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let mut st = self.attr_of(self.top(inode)?)?;
        st.st_ino = inode;
        Ok((st, self.timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.do_setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let r = self.top(inode)?;
        self.layer(r).readlink(ctx, r.ino)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.do_symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.do_mknod(ctx, parent, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.do_mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove_entry(parent, name, false)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove_entry(parent, name, true)
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
        self.do_rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.do_link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let f = flags as i32;
        let writes = f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0;
        let real = if writes {
            self.copy_up(&mut lock(&self.tree), inode)?
        } else {
            self.top(inode)?
        };
        let layer = self.layer(real);
        let (fh, opts, _) = layer.open(ctx, real.ino, flags, fuse_flags)?;
        let handle = LayerHandle::file(layer, real.ino, fh);
        let opts = opts | OpenOptions::KEEP_CACHE;
        Ok((Some(self.open_file(real, handle)), opts, None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.do_create(ctx, parent, name, args)
    }

    fn read(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let f = self.file(handle)?;
        self.layer(f.real)
            .read(ctx, f.real.ino, f.fh, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let f = self.file(handle)?;
        if !self.in_upper(f.real) {
            return Err(errno(libc::EBADF));
        }
        self.layer(f.real).write(
            ctx,
            f.real.ino,
            f.fh,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, _inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        let f = self.file(handle)?;
        self.layer(f.real).flush(ctx, f.real.ino, f.fh, lock_owner)
    }

    fn fsync(&self, ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let f = self.file(handle)?;
        self.layer(f.real).fsync(ctx, f.real.ino, datasync, f.fh)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let f = self.file(handle)?;
        if !self.in_upper(f.real) {
            return Err(errno(libc::EBADF));
        }
        self.layer(f.real)
            .fallocate(ctx, f.real.ino, f.fh, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        _inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let f = lock(&self.files)
            .remove(&handle)
            .ok_or_else(|| errno(libc::EBADF))?;
        self.layer(f.real).release(
            ctx,
            f.real.ino,
            flags,
            f.fh,
            flush,
            flock_release,
            lock_owner,
        )
    }

    fn statfs(&self, ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        self.layers[0].statfs(ctx, ROOT)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if private_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        let up = self.copy_up(&mut lock(&self.tree), inode)?;
        self.upper()?
            .setxattr(ctx, up.ino, &self.host_xattr(name), value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if private_xattr(name) {
            return Err(errno(libc::ENODATA));
        }
        let r = self.top(inode)?;
        self.layer(r)
            .getxattr(ctx, r.ino, &self.host_xattr(name), size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.do_listxattr(ctx, self.top(inode)?, size)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        if private_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        let up = self.copy_up(&mut lock(&self.tree), inode)?;
        self.upper()?
            .removexattr(ctx, up.ino, &self.host_xattr(name))
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        Ok((Some(self.open_dir(inode)?), OpenOptions::CACHE_DIR))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(inode, handle, offset, add_entry)
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdirplus(inode, handle, offset, add_entry)
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, _handle: u64) -> io::Result<()> {
        let r = self.top(inode)?;
        if !self.in_upper(r) {
            return Ok(());
        }
        let upper = self.upper()?;
        let (fh, _) = upper.opendir(ctx, r.ino, libc::O_RDONLY as u32)?;
        let handle = LayerHandle::dir(upper, r.ino, fh);
        upper.fsyncdir(ctx, r.ino, datasync, handle.fh())
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        lock(&self.dirs).remove(&handle);
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let r = self.top(inode)?;
        self.layer(r).access(ctx, r.ino, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let f = self.file(handle)?;
        self.layer(f.real)
            .lseek(ctx, f.real.ino, f.fh, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        let f = self.file(handle)?;
        self.layer(f.real)
            .getlk(ctx, f.real.ino, f.fh, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        let f = self.file(handle)?;
        self.layer(f.real)
            .setlk(ctx, f.real.ino, f.fh, owner, lock, flags)
    }
}
