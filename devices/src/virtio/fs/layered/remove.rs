//! Names going away: UNLINK, RMDIR and RENAME, with whiteouts where a lower
//! layer still has the name.

use std::ffi::{CStr, CString};
use std::io;

use fuse_backend_rs::api::filesystem::{Context, FileSystem};

use super::lookup::hidden_name;
use super::refs::{ctx0, Real};
use super::tree::{is_dir, Tree};
use super::{lock, xattr_name, LayeredFs};
use crate::virtio::fs::guard::errno;

impl LayeredFs {
    /// Makes a whiteout `name` in the upper directory `pup`.
    pub(super) fn whiteout(&self, pup: Real, name: &CStr) -> io::Result<()> {
        let e = self
            .upper()?
            .mknod(&ctx0(), pup.ino, name, libc::S_IFCHR, 0, 0)?;
        drop(self.hold(0, e.inode));
        Ok(())
    }

    /// Renames `from` in the upper directory `fdir` to `to` in `tdir`,
    /// leaving a whiteout in its place in the same step (RENAME_WHITEOUT),
    /// so that no crash lets a lower entry show through. False if the host
    /// cannot (EINVAL, or EPERM without CAP_MKNOD): nothing was done then.
    fn rename_whiteout(
        &self,
        ctx: &Context,
        (fdir, from): (Real, &CStr),
        (tdir, to): (Real, &CStr),
        flags: u32,
    ) -> io::Result<bool> {
        let flags = flags | libc::RENAME_WHITEOUT;
        match self
            .upper()?
            .rename(ctx, fdir.ino, from, tdir.ino, to, flags)
        {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces the upper entry `name` in `pup` by a whiteout.
    fn replace_with_whiteout(
        &self,
        t: &mut Tree,
        pup: Real,
        name: &CStr,
        dir: bool,
    ) -> io::Result<()> {
        let upper = self.upper()?;
        let tmp = t.tmp_name();
        let work = self.work()?;
        let remove = |d: Real, n: &CStr| {
            if dir {
                upper.rmdir(&ctx0(), d.ino, n)
            } else {
                upper.unlink(&ctx0(), d.ino, n)
            }
        };
        if self.rename_whiteout(&ctx0(), (pup, name), (work, &tmp), 0)? {
            remove(work, &tmp)
        } else {
            remove(pup, name)?;
            self.whiteout(pup, name)
        }
    }

    /// Empties the upper part of a merged-empty directory (whiteouts only).
    fn clear_upper_dir(&self, dir: Real) -> io::Result<()> {
        let upper = self.upper()?;
        for (n, _, _) in self.read_layer_dir(dir)? {
            let n = CString::new(n).map_err(|_| errno(libc::EINVAL))?;
            upper.unlink(&ctx0(), dir.ino, &n)?;
        }
        Ok(())
    }

    /// Checks that the merged directory `reals` is empty, and empties its
    /// upper part (of whiteouts) so that it can be removed or replaced.
    fn empty_dir(&self, t: &mut Tree, reals: &[Real]) -> io::Result<()> {
        if !self.list(t, reals)?.is_empty() {
            return Err(errno(libc::ENOTEMPTY));
        }
        if self.in_upper(reals[0]) {
            self.clear_upper_dir(reals[0])?;
        }
        Ok(())
    }

    /// UNLINK (`want_dir` false) and RMDIR (true).
    pub(super) fn remove_entry(&self, parent: u64, name: &CStr, want_dir: bool) -> io::Result<()> {
        let upper = self.upper()?;
        let mut t = lock(&self.tree);
        let dirs = t.dir_reals(parent)?;
        let (refs, st) = self
            .resolve(&dirs, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let reals: Vec<Real> = refs.iter().map(|r| r.real()).collect();
        match (want_dir, is_dir(&st)) {
            (true, false) => return Err(errno(libc::ENOTDIR)),
            (false, true) => return Err(errno(libc::EISDIR)),
            _ => {}
        }
        if want_dir {
            self.empty_dir(&mut t, &reals)?;
        }
        let lower = self.lower_has(&dirs, name)?;
        if self.in_upper(reals[0]) {
            let pup = dirs[0];
            if lower {
                self.replace_with_whiteout(&mut t, pup, name, want_dir)?;
            } else if want_dir {
                upper.rmdir(&ctx0(), pup.ino, name)?;
            } else {
                upper.unlink(&ctx0(), pup.ino, name)?;
            }
        } else if lower {
            let pup = self.copy_up(&mut t, parent)?;
            self.whiteout(pup, name)?;
        }
        drop(refs);
        t.forget_alias(parent, name, (st.st_dev, st.st_ino));
        Ok(())
    }

    /// RENAME (only RENAME_NOREPLACE among the flags).
    pub(super) fn do_rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(errno(libc::EINVAL));
        }
        if hidden_name(oldname) || hidden_name(newname) {
            return Err(errno(libc::EPERM));
        }
        let upper = self.upper()?;
        let mut t = lock(&self.tree);
        let odirs = t.dir_reals(olddir)?;
        let ndirs = t.dir_reals(newdir)?;
        let (sreals, sst) = self
            .resolve(&odirs, oldname)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let skey = (sst.st_dev, sst.st_ino);
        let src_lower_parts = sreals.iter().any(|r| !self.in_upper(**r));
        drop(sreals);
        if is_dir(&sst) && src_lower_parts {
            return Err(errno(libc::EXDEV));
        }
        let mut dkey = None;
        if let Some((dreals, dst_st)) = self.resolve(&ndirs, newname)? {
            if (dst_st.st_dev, dst_st.st_ino) == skey {
                return Ok(()); // Same file: nothing to do.
            }
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(errno(libc::EEXIST));
            }
            match (is_dir(&sst), is_dir(&dst_st)) {
                (false, true) => return Err(errno(libc::EISDIR)),
                (true, false) => return Err(errno(libc::ENOTDIR)),
                (true, true) => {
                    let dreals: Vec<Real> = dreals.iter().map(|r| r.real()).collect();
                    self.empty_dir(&mut t, &dreals)?;
                }
                (false, false) => {}
            }
            dkey = Some((dst_st.st_dev, dst_st.st_ino));
        }
        let sid = *t.by_key.get(&skey).ok_or_else(|| errno(libc::ENOENT))?;
        self.copy_up(&mut t, sid)?;
        let pold = self.copy_up(&mut t, olddir)?;
        let pnew = self.copy_up(&mut t, newdir)?;
        let old_lower = self.lower_has(&odirs, oldname)?;
        let new_lower = self.lower_has(&ndirs, newname)?;
        // A directory cannot replace the whiteout (a device) in place.
        if is_dir(&sst) && self.whiteout_at(pnew, newname)? == Some(true) {
            upper.unlink(&ctx0(), pnew.ino, newname)?;
        }
        let (from, to) = ((pold, oldname), (pnew, newname));
        if !old_lower {
            upper.rename(ctx, pold.ino, oldname, pnew.ino, newname, flags)?;
        } else if !self.rename_whiteout(ctx, from, to, flags)? {
            upper.rename(ctx, pold.ino, oldname, pnew.ino, newname, flags)?;
            self.whiteout(pold, oldname)?;
        }
        let sup = t.node_reals(sid)?[0];
        if is_dir(&sst) && new_lower {
            let opaque = xattr_name(layerfmt::OPAQUE_XATTR);
            upper.setxattr(&ctx0(), sup.ino, &opaque, layerfmt::OPAQUE_VALUE, 0)?;
        }
        if let Some(dkey) = dkey {
            t.forget_alias(newdir, newname, dkey);
        }
        if let Some(node) = t.nodes.get_mut(&sid) {
            node.names
                .retain(|(p, n)| !(*p == olddir && n.as_c_str() == oldname));
            node.names.push((newdir, newname.to_owned()));
        }
        Ok(())
    }
}
