//! Mapped mode (see the module docs): the image's and the guest's owners,
//! modes, devices and system xattrs kept in `layerfmt`'s xattrs, presented
//! to the guest as if they were the host's.

use std::ffi::{CStr, CString};
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::stat64;
use fuse_backend_rs::api::filesystem::{
    Context, FileSystem, GetxattrReply, ListxattrReply, SetattrValid,
};
use layerfmt::Override;

use super::refs::{ctx0, Real};
use super::{lock, xattr_name, LayeredFs, XATTR_MAX};
use crate::virtio::fs::guard::errno;

/// The host's owner and mode of `st`, as an override would record them.
fn override_of(st: &stat64) -> Override {
    Override {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode,
        rdev: None,
    }
}

/// `st` with the owner, mode and device `o` records.
fn apply(o: &Override, st: &mut stat64) {
    st.st_uid = o.uid;
    st.st_gid = o.gid;
    st.st_mode = o.mode;
    if let Some((major, minor)) = o.rdev {
        st.st_rdev = libc::makedev(major, minor);
    }
}

/// Whether the guest may not see or set the xattr `name` (the merge's
/// bookkeeping).
pub(super) fn private_xattr(name: &CStr) -> bool {
    layerfmt::is_bookkeeping_xattr(name.to_bytes())
}

impl LayeredFs {
    /// The ids mapped mode recorded on `r`, if any.
    pub(super) fn ids(&self, r: Real) -> Option<Override> {
        if !self.mapped {
            return None;
        }
        let name = xattr_name(layerfmt::OVERRIDE_XATTR);
        match self.layer(r).getxattr(&ctx0(), r.ino, &name, 64) {
            Ok(GetxattrReply::Value(v)) => Override::parse(&v),
            _ => None,
        }
    }

    /// `st` (of `r`) as the guest must see it.
    pub(super) fn present(&self, r: Real, mut st: stat64) -> stat64 {
        if let Some(ids) = self.ids(r) {
            apply(&ids, &mut st);
        }
        st
    }

    /// The guest's attributes of `r`.
    pub(super) fn attr_of(&self, r: Real) -> io::Result<stat64> {
        Ok(self.present(r, self.getattr_real(r)?))
    }

    pub(super) fn record(&self, r: Real, ids: Override) -> io::Result<()> {
        let name = xattr_name(layerfmt::OVERRIDE_XATTR);
        self.upper()?
            .setxattr(&ctx0(), r.ino, &name, &ids.encode(), 0)
    }

    /// The host name of the guest's xattr `name`.
    pub(super) fn host_xattr(&self, name: &CStr) -> CString {
        if !self.mapped {
            return name.to_owned();
        }
        CString::new(layerfmt::mapped_xattr_name(name.to_bytes())).expect("no NUL inside")
    }

    /// The guest's view of the host xattr names `names` (NUL-separated):
    /// bookkeeping hidden, mapped system xattrs under their own names.
    pub(super) fn shown_xattrs(&self, names: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(names.len());
        for n in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            // Not layerfmt::unmapped_xattr_name: that one also hides empty
            // and `user.` names under the prefix, which the guest has always
            // been shown.
            let shown = match n.strip_prefix(layerfmt::MAPPED_XATTR_PREFIX.as_bytes()) {
                Some(system) if self.mapped => system,
                _ if layerfmt::is_bookkeeping_xattr(n) => continue,
                _ => n,
            };
            out.extend_from_slice(shown);
            out.push(0);
        }
        out
    }

    pub(super) fn do_listxattr(
        &self,
        ctx: &Context,
        r: Real,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        let names = match self.layer(r).listxattr(ctx, r.ino, XATTR_MAX)? {
            ListxattrReply::Names(n) => n,
            ListxattrReply::Count(_) => Vec::new(),
        };
        let out = self.shown_xattrs(&names);
        if size == 0 {
            Ok(ListxattrReply::Count(out.len() as u32))
        } else if out.len() > size as usize {
            Err(errno(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(out))
        }
    }

    /// For a guest create in mapped mode: the credentials, mode and umask
    /// to create the host file with, and the ids to record on it.
    pub(super) fn creation(
        &self,
        ctx: &Context,
        mode: u32,
        umask: u32,
    ) -> (Context, u32, u32, Option<Override>) {
        if !self.mapped {
            return (*ctx, mode, umask, None);
        }
        let kind = mode & libc::S_IFMT;
        let own = if kind == libc::S_IFDIR { 0o700 } else { 0o600 };
        let ids = Override {
            uid: ctx.uid,
            gid: ctx.gid,
            mode: kind | (mode & !umask & 0o7777),
            rdev: None,
        };
        (ctx0(), kind | (mode & 0o777) | own, 0, Some(ids))
    }

    /// SETATTR: on the copy-up; in mapped mode owner and mode go to the
    /// recorded ids.
    pub(super) fn do_setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let up = self.copy_up(&mut lock(&self.tree), inode)?;
        let fh = match handle.map(|h| self.file(h)) {
            Some(Ok(f)) if f.real == up => Some(f.fh),
            _ => None,
        };
        let upper = self.upper()?;
        let idbits = SetattrValid::UID | SetattrValid::GID | SetattrValid::MODE;
        if !self.mapped || !valid.intersects(idbits) {
            let (st, d) = upper.setattr(ctx, up.ino, attr, fh, valid)?;
            let mut st = self.present(up, st);
            st.st_ino = inode;
            return Ok((st, d));
        }
        // The host file only gets the permission bits, and keeps the VMM's
        // access.
        let raw = self.getattr_real(up)?;
        if layerfmt::carries_override(raw.st_mode) {
            let mut ids = self.ids(up).unwrap_or_else(|| override_of(&raw));
            if valid.contains(SetattrValid::UID) {
                ids.uid = attr.st_uid;
            }
            if valid.contains(SetattrValid::GID) {
                ids.gid = attr.st_gid;
            }
            if valid.contains(SetattrValid::MODE) {
                ids.mode = (ids.mode & libc::S_IFMT) | (attr.st_mode & 0o7777);
                let (_, host_mode, _, _) = self.creation(
                    &ctx0(),
                    raw.st_mode & libc::S_IFMT | (attr.st_mode & 0o777),
                    0,
                );
                let mut a = raw;
                a.st_mode = host_mode;
                upper.setattr(&ctx0(), up.ino, a, None, SetattrValid::MODE)?;
            }
            self.record(up, ids)?;
        }
        let rest = valid - idbits;
        if !rest.is_empty() {
            upper.setattr(ctx, up.ino, attr, fh, rest)?;
        }
        let mut st = self.attr_of(up)?;
        st.st_ino = inode;
        Ok((st, self.timeout))
    }
}
