//! The layer stack: what a name is in a merged directory (whiteouts hide,
//! non-directories stop the merge, opaque directories end it), and LOOKUP.

use std::ffi::CStr;
use std::io;

use fuse_backend_rs::abi::fuse_abi::stat64;
use fuse_backend_rs::api::filesystem::{Entry, FileSystem, GetxattrReply};

use super::refs::{ctx0, Real, RealRef};
use super::tree::{is_dir, COPYUP_PREFIX};
use super::{lock, xattr_name, LayeredFs};
use crate::virtio::fs::guard::errno;

/// Whether the host file `st` is a whiteout (layerfmt's 0:0 device).
pub(super) fn is_whiteout(st: &stat64) -> bool {
    layerfmt::is_whiteout(st.st_mode, st.st_rdev)
}

/// Whether `name` is one of the upper's scratch names, never the guest's.
pub(super) fn hidden_name(name: &CStr) -> bool {
    name.to_bytes().starts_with(COPYUP_PREFIX)
}

impl LayeredFs {
    /// `name` in the layer directory `dir`, holding one layer reference.
    pub(super) fn layer_lookup(
        &self,
        dir: Real,
        name: &CStr,
    ) -> io::Result<Option<(RealRef<'_>, stat64)>> {
        match self.layer(dir).lookup(&ctx0(), dir.ino, name) {
            Ok(e) if e.inode == 0 => Ok(None),
            Ok(e) => Ok(Some((self.hold(dir.layer, e.inode), e.attr))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the layer directory `r` hides the layers below (only the
    /// one marker minivm writes counts, as it always has).
    pub(super) fn is_opaque(&self, r: Real) -> bool {
        let name = xattr_name(layerfmt::OPAQUE_XATTR);
        matches!(
            self.layer(r).getxattr(&ctx0(), r.ino, &name, 16),
            Ok(GetxattrReply::Value(v)) if layerfmt::is_opaque_value(&v)
        )
    }

    /// What `name` is in the merged directory whose layer directories are
    /// `dirs`: its reals (holding a layer reference each) and the top-most
    /// one's attributes, or None if nothing or a whiteout is there.
    pub(super) fn resolve(
        &self,
        dirs: &[Real],
        name: &CStr,
    ) -> io::Result<Option<(Vec<RealRef<'_>>, stat64)>> {
        let mut found = Vec::new();
        let mut top: Option<stat64> = None;
        for &dir in dirs {
            let Some((real, st)) = self.layer_lookup(dir, name)? else {
                continue;
            };
            if is_whiteout(&st) || (top.is_some() && !is_dir(&st)) {
                break;
            }
            let opaque = !is_dir(&st) || self.is_opaque(*real);
            found.push(real);
            top.get_or_insert(st);
            if opaque {
                break;
            }
        }
        Ok(top.map(|st| (found, st)))
    }

    /// Whether a lower layer shows `name` in the merged directory `dirs`.
    pub(super) fn lower_has(&self, dirs: &[Real], name: &CStr) -> io::Result<bool> {
        for &dir in dirs.iter().filter(|d| !self.in_upper(**d)) {
            if let Some((_, st)) = self.layer_lookup(dir, name)? {
                return Ok(!is_whiteout(&st));
            }
        }
        Ok(false)
    }

    /// Whether the host entry `name` in the layer directory `dir` is a
    /// whiteout (false when there is none).
    pub(super) fn whiteout_at(&self, dir: Real, name: &CStr) -> io::Result<Option<bool>> {
        Ok(self
            .layer_lookup(dir, name)?
            .map(|(_, st)| is_whiteout(&st)))
    }

    pub(super) fn do_lookup(&self, parent: u64, name: &CStr) -> io::Result<Entry> {
        if hidden_name(name) {
            return Err(errno(libc::ENOENT));
        }
        let mut t = lock(&self.tree);
        let dirs = t.dir_reals(parent)?;
        let (reals, st) = self
            .resolve(&dirs, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let shown = self.present(reals[0].real(), st);
        let id = t.take_node(parent, name, reals, &st);
        Ok(self.entry(id, shown))
    }
}
