//! Copy-up: a node's file (and its ancestors, as directories) copied from a
//! lower layer into the upper with data (holes kept), owner, mode, xattrs
//! and times, made in the work directory and renamed into place.

use std::ffi::{CStr, CString};
use std::io;

use fuse_backend_rs::abi::fuse_abi::{stat64, CreateIn};
use fuse_backend_rs::api::filesystem::{FileSystem, GetxattrReply, ListxattrReply, SetattrValid};

use super::chunk::{Chunk, CHUNK};
use super::refs::{ctx0, LayerHandle, Real, RealRef};
use super::tree::{is_dir, Tree};
use super::{LayeredFs, XATTR_MAX};
use crate::virtio::fs::guard::errno;

impl LayeredFs {
    /// Makes sure node `id` has its top-most file in the upper layer and
    /// returns that file.
    pub(super) fn copy_up(&self, t: &mut Tree, id: u64) -> io::Result<Real> {
        self.upper()?;
        // The node and its ancestors without an upper directory, nearest
        // first: walked, not recursed, as an image's tree may be very deep.
        let mut chain = Vec::new();
        let mut cur = id;
        loop {
            let node = t.nodes.get(&cur).ok_or_else(|| errno(libc::ENOENT))?;
            if node.reals[0].layer == 0 {
                break;
            }
            if chain.len() > t.nodes.len() {
                return Err(errno(libc::ELOOP));
            }
            chain.push(cur);
            cur = node
                .names
                .iter()
                .find(|(p, _)| t.nodes.contains_key(p))
                .map(|(p, _)| *p)
                .ok_or_else(|| errno(libc::ENOENT))?;
        }
        for &n in chain.iter().rev() {
            self.copy_up_one(t, n)?;
        }
        Ok(t.node_reals(id)?[0])
    }

    /// Copies node `id` up; its parent is in the upper already.
    fn copy_up_one(&self, t: &mut Tree, id: u64) -> io::Result<Real> {
        let upper = self.upper()?;
        let node = t.nodes.get(&id).ok_or_else(|| errno(libc::ENOENT))?;
        let lower = node.reals[0];
        let names: Vec<(u64, CString)> = node
            .names
            .iter()
            .filter(|(p, _)| t.nodes.contains_key(p))
            .cloned()
            .collect();
        let (parent, name) = names.first().cloned().ok_or_else(|| errno(libc::ENOENT))?;
        let pup = t.node_reals(parent)?[0];
        debug_assert_eq!(pup.layer, 0);
        let st = self.getattr_real(lower)?;
        let (new, new_st) = if is_dir(&st) {
            let e = upper.mkdir(&ctx0(), pup.ino, &name, st.st_mode & 0o7777, 0)?;
            let new = self.hold(0, e.inode);
            if let Err(err) = self.copy_meta(lower, *new, &st) {
                drop(new);
                let _ = upper.rmdir(&ctx0(), pup.ino, &name);
                return Err(err);
            }
            (new, e.attr)
        } else {
            // What the lower copy occupies is what the upper one will.
            let cost = (st.st_blocks as u64).saturating_mul(512);
            if let Some(cap) = &self.cap {
                cap.check_grow(cost)?;
            }
            let tmp = t.tmp_name();
            let work = self.work()?;
            let new = self.copy_file(lower, &st, work, &tmp)?;
            if let Err(err) = upper.rename(&ctx0(), work.ino, &tmp, pup.ino, &name, 0) {
                drop(new);
                let _ = upper.unlink(&ctx0(), work.ino, &tmp);
                return Err(err);
            }
            if let Some(cap) = &self.cap {
                let got = self
                    .getattr_real(*new)
                    .map_or(cost, |s| s.st_blocks as u64 * 512);
                cap.adjust(0, got);
            }
            let new_st = self.getattr_real(*new)?;
            (new, new_st)
        };
        let new = new.keep();
        let key = (new_st.st_dev, new_st.st_ino);
        let node = t.nodes.get_mut(&id).expect("checked above");
        if node.is_dir {
            node.reals.insert(0, new);
        } else {
            node.reals[0] = new;
            node.retired.push(lower);
        }
        let old_key = std::mem::replace(&mut node.key, key);
        if t.by_key.get(&old_key) == Some(&id) {
            t.by_key.remove(&old_key);
        }
        t.by_key.insert(key, id);
        // Keep the other names of a hardlinked file pointing at one file.
        if !is_dir(&st) {
            for (p, n) in names.iter().skip(1) {
                let linked = self
                    .copy_up(t, *p)
                    .and_then(|pu| upper.link(&ctx0(), new.ino, pu.ino, n));
                match linked {
                    Ok(e) => drop(self.hold(0, e.inode)),
                    Err(e) => tracing::warn!("copy-up: cannot link {n:?} to its copy: {e}"),
                }
            }
        }
        Ok(new)
    }

    /// Copies the non-directory `lower` (attributes `st`) to `tmp` in the
    /// upper directory `pup` (the work directory); returns the copy. Nothing
    /// is left under `tmp` on failure.
    fn copy_file(
        &self,
        lower: Real,
        st: &stat64,
        pup: Real,
        tmp: &CStr,
    ) -> io::Result<RealRef<'_>> {
        let upper = self.upper()?;
        let copied = self.make_copy(lower, st, pup, tmp).and_then(|new| {
            self.copy_meta(lower, *new, st)?;
            Ok(new)
        });
        if copied.is_err() {
            let _ = upper.unlink(&ctx0(), pup.ino, tmp);
        }
        copied
    }

    /// A copy of `lower`'s type and data as `tmp` in `pup`, without its
    /// metadata.
    fn make_copy(
        &self,
        lower: Real,
        st: &stat64,
        pup: Real,
        tmp: &CStr,
    ) -> io::Result<RealRef<'_>> {
        let upper = self.upper()?;
        let ctx = ctx0();
        let e = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                let args = CreateIn {
                    flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32,
                    mode: libc::S_IFREG | (st.st_mode & 0o7777),
                    umask: 0,
                    fuse_flags: 0,
                };
                let (e, fh, _, _) = upper.create(&ctx, pup.ino, tmp, args)?;
                let new = self.hold(0, e.inode);
                let handle = LayerHandle::file(upper, e.inode, fh);
                self.copy_data(lower, *new, handle.fh(), st.st_size as u64)?;
                return Ok(new);
            }
            libc::S_IFLNK => {
                let target = self.layer(lower).readlink(&ctx, lower.ino)?;
                let target = CString::new(target).map_err(|_| errno(libc::EINVAL))?;
                upper.symlink(&ctx, &target, pup.ino, tmp)?
            }
            _ => upper.mknod(&ctx, pup.ino, tmp, st.st_mode, st.st_rdev as u32, 0)?,
        };
        Ok(self.hold(0, e.inode))
    }

    /// Copies `size` bytes of data, leaving all-zero chunks as holes.
    fn copy_data(&self, lower: Real, new: Real, ufh: u64, size: u64) -> io::Result<()> {
        let ctx = ctx0();
        let upper = self.upper()?;
        let src = self.layer(lower);
        let (lfh, _, _) = src.open(&ctx, lower.ino, libc::O_RDONLY as u32, 0)?;
        let lfh = LayerHandle::file(src, lower.ino, lfh);
        let mut buf = Chunk::new();
        let mut off = 0u64;
        loop {
            buf.clear();
            let n = src.read(
                &ctx,
                lower.ino,
                lfh.fh(),
                &mut buf,
                CHUNK as u32,
                off,
                None,
                0,
            )?;
            if n == 0 {
                break;
            }
            if buf.data().iter().any(|b| *b != 0) {
                while !buf.remaining().is_empty() {
                    let len = buf.remaining().len() as u32;
                    let at = off + buf.pos as u64;
                    let w =
                        upper.write(&ctx, new.ino, ufh, &mut buf, len, at, None, false, 0, 0)?;
                    if w == 0 {
                        return Err(io::Error::from(io::ErrorKind::WriteZero));
                    }
                }
            }
            off += n as u64;
        }
        // The size, for a file ending in a hole.
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut attr: stat64 = unsafe { std::mem::zeroed() };
        attr.st_size = off.max(size) as i64;
        upper.setattr(&ctx, new.ino, attr, Some(ufh), SetattrValid::SIZE)?;
        Ok(())
    }

    /// Gives `new` the owner, mode, xattrs and times of `lower` (`st`).
    pub(super) fn copy_meta(&self, lower: Real, new: Real, st: &stat64) -> io::Result<()> {
        let ctx = ctx0();
        let upper = self.upper()?;
        let symlink = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        // Owner first: chown clears set-id bits and file capabilities.
        let owner = SetattrValid::UID | SetattrValid::GID;
        match upper.setattr(&ctx, new.ino, *st, None, owner) {
            Ok(_) => {}
            Err(e) if !self.privileged && e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(e),
        }
        if !symlink {
            upper.setattr(&ctx, new.ino, *st, None, SetattrValid::MODE)?;
        }
        let names = match self.layer(lower).listxattr(&ctx, lower.ino, XATTR_MAX) {
            Ok(ListxattrReply::Names(n)) => n,
            Ok(ListxattrReply::Count(_)) => Vec::new(),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
            Err(e) => return Err(e),
        };
        for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            // The merge's markers are per layer; mapped ids and xattrs move.
            if name.starts_with(layerfmt::OVERLAY_XATTR_PREFIX.as_bytes()) {
                continue;
            }
            let cname = CString::new(name).map_err(|_| errno(libc::EINVAL))?;
            let value = match self
                .layer(lower)
                .getxattr(&ctx, lower.ino, &cname, XATTR_MAX)?
            {
                GetxattrReply::Value(v) => v,
                GetxattrReply::Count(_) => continue,
            };
            upper.setxattr(&ctx, new.ino, &cname, &value, 0)?;
        }
        let times = SetattrValid::ATIME | SetattrValid::MTIME;
        upper.setattr(&ctx, new.ino, *st, None, times)?;
        Ok(())
    }
}
