//! New names: MKNOD, MKDIR, SYMLINK, LINK and CREATE, made in the upper
//! (over a whiteout, a new directory is made opaque) and recorded in the
//! node tree.

use std::ffi::CStr;
use std::io;

use fuse_backend_rs::abi::fuse_abi::{stat64, CreateIn};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, OpenOptions};
use layerfmt::Override;

use super::lookup::hidden_name;
use super::refs::{ctx0, LayerHandle, Real, RealRef};
use super::tree::Tree;
use super::{lock, xattr_name, LayeredFs};
use crate::virtio::fs::guard::errno;

impl LayeredFs {
    /// Gets `parent` ready for a new `name` in the upper layer: its upper
    /// directory, after removing a whiteout there. Returns that directory
    /// and whether a whiteout was removed (a lower entry is hidden).
    fn prepare_new(&self, t: &mut Tree, parent: u64, name: &CStr) -> io::Result<(Real, bool)> {
        if hidden_name(name) {
            return Err(errno(libc::EPERM));
        }
        let upper = self.upper()?;
        let dirs = t.dir_reals(parent)?;
        if self.resolve(&dirs, name)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        let pup = self.copy_up(t, parent)?;
        let whiteout = match self.whiteout_at(pup, name)? {
            Some(false) => return Err(errno(libc::EEXIST)),
            Some(true) => {
                upper.unlink(&ctx0(), pup.ino, name)?;
                true
            }
            None => false,
        };
        Ok((pup, whiteout))
    }

    /// Registers the new upper file `new` (attributes `attr`) the guest
    /// created as `name` in `parent`, first recording `ids` on it (mapped
    /// mode).
    fn created(
        &self,
        t: &mut Tree,
        parent: u64,
        name: &CStr,
        new: RealRef,
        attr: &stat64,
        ids: Option<Override>,
    ) -> io::Result<Entry> {
        if let Some(ids) = ids.filter(|_| layerfmt::carries_override(attr.st_mode)) {
            self.record(*new, ids)?;
        }
        let shown = self.present(*new, *attr);
        let id = t.take_node(parent, name, vec![new], attr);
        Ok(self.entry(id, shown))
    }

    pub(super) fn do_symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let mut t = lock(&self.tree);
        let (pup, _) = self.prepare_new(&mut t, parent, name)?;
        let (hctx, _, _, _) = self.creation(ctx, libc::S_IFLNK | 0o777, 0);
        let e = self.upper()?.symlink(&hctx, linkname, pup.ino, name)?;
        let new = self.hold(0, e.inode);
        self.created(&mut t, parent, name, new, &e.attr, None)
    }

    pub(super) fn do_mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
            // That is a whiteout: it would hide the name, not create it.
            return Err(errno(libc::EPERM));
        }
        let mut t = lock(&self.tree);
        let (pup, _) = self.prepare_new(&mut t, parent, name)?;
        let (hctx, mut hmode, humask, mut ids) = self.creation(ctx, mode, umask);
        let mut hrdev = rdev;
        let kind = mode & libc::S_IFMT;
        if let Some(ids) = ids
            .as_mut()
            .filter(|_| kind == libc::S_IFCHR || kind == libc::S_IFBLK)
        {
            // A device is an empty file that says what it is.
            ids.rdev = Some((libc::major(rdev.into()), libc::minor(rdev.into())));
            hmode = libc::S_IFREG | 0o600;
            hrdev = 0;
        }
        let e = self
            .upper()?
            .mknod(&hctx, pup.ino, name, hmode, hrdev, humask)?;
        let new = self.hold(0, e.inode);
        self.created(&mut t, parent, name, new, &e.attr, ids)
    }

    pub(super) fn do_mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let mut t = lock(&self.tree);
        let (pup, hid_lower) = self.prepare_new(&mut t, parent, name)?;
        let upper = self.upper()?;
        let (hctx, hmode, humask, ids) = self.creation(ctx, libc::S_IFDIR | mode, umask);
        let e = upper.mkdir(&hctx, pup.ino, name, hmode & 0o7777, humask)?;
        let new = self.hold(0, e.inode);
        if hid_lower {
            // What a lower layer had under this name stays hidden.
            let opaque = xattr_name(layerfmt::OPAQUE_XATTR);
            let marked = upper.setxattr(&ctx0(), e.inode, &opaque, layerfmt::OPAQUE_VALUE, 0);
            if let Err(err) = marked {
                drop(new);
                let _ = upper.rmdir(&ctx0(), pup.ino, name);
                let _ = self.whiteout(pup, name);
                return Err(err);
            }
        }
        self.created(&mut t, parent, name, new, &e.attr, ids)
    }

    pub(super) fn do_link(
        &self,
        ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        let mut t = lock(&self.tree);
        let (pup, _) = self.prepare_new(&mut t, newparent, newname)?;
        let up = self.copy_up(&mut t, inode)?;
        let e = self.upper()?.link(ctx, up.ino, pup.ino, newname)?;
        let new = self.hold(0, e.inode);
        self.created(&mut t, newparent, newname, new, &e.attr, None)
    }

    pub(super) fn do_create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let mut t = lock(&self.tree);
        let (pup, _) = self.prepare_new(&mut t, parent, name)?;
        let mode = match args.mode & libc::S_IFMT {
            0 => args.mode | libc::S_IFREG,
            _ => args.mode,
        };
        let (hctx, mode, umask, ids) = self.creation(ctx, mode, args.umask);
        let hargs = CreateIn {
            mode,
            umask,
            ..args
        };
        let upper = self.upper()?;
        let (e, fh, opts, _) = upper.create(&hctx, pup.ino, name, hargs)?;
        let new = self.hold(0, e.inode);
        let handle = LayerHandle::file(upper, e.inode, fh);
        let real = *new;
        let entry = self.created(&mut t, parent, name, new, &e.attr, ids)?;
        let opts = opts | OpenOptions::KEEP_CACHE;
        Ok((entry, Some(self.open_file(real, handle)), opts, None))
    }
}
