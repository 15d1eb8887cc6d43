//! Setting metadata as the unpacker writes entries: owner, mode, xattrs and
//! times, as root or in the unprivileged encoding (see the module docs of
//! [`super`]); copying files of lower layers.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use layerfmt::{mapped_xattr_name, Override, MAPPED_XATTR_PREFIX, OVERRIDE_XATTR};

use super::sys::{self, cstr};
use super::LayerStoreError;
use crate::walk::{show, Meta, WalkError};

/// How one layer's entries get their metadata: the layer (for messages) and
/// whether owners and devices are real (root) or encoded in xattrs.
pub(super) struct Attrs {
    pub(super) layer: String,
    pub(super) privileged: bool,
}

impl Attrs {
    /// An error of an operation on entry `path`.
    pub(super) fn entry_err(
        &self,
        path: &[u8],
        op: impl Into<String>,
    ) -> impl FnOnce(io::Error) -> LayerStoreError {
        let (layer, path, op) = (self.layer.clone(), show(path), op.into());
        move |source| LayerStoreError::Entry {
            layer,
            path,
            op,
            source,
        }
    }

    /// Entry `path` is unusable.
    pub(super) fn bad_path(&self, path: &[u8], problem: &'static str) -> LayerStoreError {
        WalkError::bad_path(&self.layer, path, problem).into()
    }

    /// An entry's metadata without the xattrs the store's format reserves,
    /// so that no image can forge a marker.
    pub(super) fn image_meta(&self, raw: &[u8], mut meta: Meta) -> Meta {
        meta.xattrs.retain(|(name, _)| {
            let reserved = layerfmt::is_reserved_xattr(name);
            if reserved {
                tracing::warn!(
                    "layer {}: {:?}: reserved xattr {:?} dropped",
                    self.layer,
                    show(raw),
                    show(name)
                );
            }
            !reserved
        });
        meta
    }

    /// A hardlink to a file of a lower layer: layer directories are separate
    /// trees, so the file is copied (contents, owner, mode, xattrs, mtime).
    /// Returns the bytes of file data copied.
    pub(super) fn copy_from_lower(
        &self,
        raw: &[u8],
        sp: BorrowedFd<'_>,
        sname: &CStr,
        st: &libc::stat,
        p: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<u64, LayerStoreError> {
        let (layer, path) = (self.layer.clone(), show(raw));
        let e = |op: &str| {
            let (layer, path) = (layer.clone(), path.clone());
            let op = format!("copy the hardlink target from a lower layer: {op}");
            move |source| LayerStoreError::Entry {
                layer,
                path,
                op,
                source,
            }
        };
        match sys::file_type(st) {
            libc::S_IFREG => {
                let mut src = sys::open_read(sp, sname).map_err(e("open"))?;
                let mut dst = sys::create(p, name, 0o600).map_err(e("create"))?;
                let n = io::copy(&mut src, &mut dst).map_err(e("copy"))?;
                let xattrs = sys::fget_all_xattrs(src.as_fd()).map_err(e("read xattrs"))?;
                self.apply_copied(raw, dst.as_fd(), st, &xattrs)?;
                Ok(n)
            }
            libc::S_IFLNK => {
                let target = sys::readlink_at(sp, sname).map_err(e("readlink"))?;
                let target = cstr(&target).map_err(e("readlink"))?;
                sys::symlink_at(&target, p, name).map_err(e("symlink"))?;
                if self.privileged {
                    sys::chown_at(p, name, st.st_uid, st.st_gid).map_err(e("chown"))?;
                }
                sys::set_times_at(p, name, st.st_mtime, st.st_mtime_nsec as u32)
                    .map_err(e("utimensat"))?;
                Ok(0)
            }
            _ => {
                sys::mknod_at(p, name, st.st_mode, st.st_rdev).map_err(e("mknod"))?;
                if self.privileged {
                    sys::chown_at(p, name, st.st_uid, st.st_gid).map_err(e("chown"))?;
                }
                sys::chmod_at(p, name, st.st_mode & 0o7777).map_err(e("chmod"))?;
                sys::set_times_at(p, name, st.st_mtime, st.st_mtime_nsec as u32)
                    .map_err(e("utimensat"))?;
                Ok(0)
            }
        }
    }

    /// Owner, mode, xattrs and mtime of an open regular file or directory
    /// (or, unprivileged, a device's stand-in file), in that order: chown
    /// clears setuid bits and `security.capability`.
    pub(super) fn apply_fd(
        &self,
        raw: &[u8],
        fd: BorrowedFd<'_>,
        ftype: u32,
        m: &Meta,
        rdev: Option<(u32, u32)>,
    ) -> Result<(), LayerStoreError> {
        if self.privileged {
            sys::chown_fd(fd, m.uid, m.gid).map_err(self.entry_err(raw, "chown"))?;
            sys::chmod_fd(fd, m.mode & 0o7777).map_err(self.entry_err(raw, "chmod"))?;
        } else {
            // The server must be able to read everything (and the store to
            // delete it); setuid bits stay off the host.
            let keep = if ftype == libc::S_IFDIR { 0o700 } else { 0o600 };
            sys::chmod_fd(fd, (m.mode & 0o777) | keep).map_err(self.entry_err(raw, "chmod"))?;
            let o = Override {
                uid: m.uid,
                gid: m.gid,
                mode: ftype | (m.mode & 0o7777),
                rdev,
            };
            let name = cstr(OVERRIDE_XATTR.as_bytes()).expect("no NUL");
            sys::fset_xattr(fd, &name, &o.encode())
                .map_err(self.entry_err(raw, format!("setxattr {OVERRIDE_XATTR}")))?;
        }
        for (n, v) in &m.xattrs {
            self.set_xattr(raw, n, v, &|name, v| sys::fset_xattr(fd, name, v))?;
        }
        sys::set_times_fd(fd, m.mtime, m.nsec).map_err(self.entry_err(raw, "futimens"))
    }

    /// The same for an entry that cannot be opened (symlink, FIFO, device).
    pub(super) fn apply_at(
        &self,
        raw: &[u8],
        p: BorrowedFd<'_>,
        name: &CStr,
        ftype: u32,
        m: &Meta,
    ) -> Result<(), LayerStoreError> {
        if self.privileged {
            sys::chown_at(p, name, m.uid, m.gid).map_err(self.entry_err(raw, "chown"))?;
        }
        if ftype != libc::S_IFLNK {
            let mode = if self.privileged {
                m.mode & 0o7777
            } else {
                m.mode & 0o777
            };
            sys::chmod_at(p, name, mode).map_err(self.entry_err(raw, "chmod"))?;
        }
        for (n, v) in &m.xattrs {
            // Linux allows no user.* xattrs on symlinks and special files.
            if !self.privileged || n.starts_with(b"user.") {
                tracing::debug!(
                    "layer {}: {:?}: xattr {:?} dropped",
                    self.layer,
                    show(raw),
                    show(n)
                );
                continue;
            }
            self.set_xattr(raw, n, v, &|x, v| sys::lset_xattr_at(p, name, x, v))?;
        }
        sys::set_times_at(p, name, m.mtime, m.nsec).map_err(self.entry_err(raw, "utimensat"))
    }

    /// Sets an image xattr; names outside `user.` that cannot be set (no
    /// root, or refused by the host) are kept as `user.minivm.xattr.NAME`.
    pub(super) fn set_xattr(
        &self,
        raw: &[u8],
        name: &[u8],
        value: &[u8],
        set: &dyn Fn(&CStr, &[u8]) -> io::Result<()>,
    ) -> Result<(), LayerStoreError> {
        let user = name.starts_with(b"user.");
        let bad = |_| self.bad_path(raw, "NUL in an xattr name");
        if self.privileged || user {
            match set(&cstr(name).map_err(bad)?, value) {
                Ok(()) => return Ok(()),
                Err(e)
                    if !user
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EPERM | libc::EOPNOTSUPP | libc::EINVAL | libc::EACCES)
                        ) =>
                {
                    tracing::debug!(
                        "layer {}: {:?}: xattr {:?}: {e}; stored as {MAPPED_XATTR_PREFIX}*",
                        self.layer,
                        show(raw),
                        show(name)
                    );
                }
                Err(e) => return Err(self.entry_err(raw, format!("setxattr {}", show(name)))(e)),
            }
        }
        let mapped = mapped_xattr_name(name); // Not a user. name: those returned above.
        set(&cstr(&mapped).map_err(bad)?, value)
            .map_err(self.entry_err(raw, format!("setxattr {}", show(&mapped))))
    }

    /// Applies metadata read from another entry of the store (already encoded).
    pub(super) fn apply_copied(
        &self,
        raw: &[u8],
        fd: BorrowedFd<'_>,
        st: &libc::stat,
        xattrs: &[(CString, Vec<u8>)],
    ) -> Result<(), LayerStoreError> {
        if self.privileged {
            sys::chown_fd(fd, st.st_uid, st.st_gid).map_err(self.entry_err(raw, "chown"))?;
        }
        sys::chmod_fd(fd, st.st_mode & 0o7777).map_err(self.entry_err(raw, "chmod"))?;
        for (n, v) in xattrs {
            if let Err(e) = sys::fset_xattr(fd, n, v) {
                if n.as_bytes().starts_with(b"user.") {
                    return Err(self
                        .entry_err(raw, format!("setxattr {}", show(n.as_bytes())))(
                        e
                    ));
                }
                tracing::debug!(
                    "layer {}: {:?}: xattr {n:?} not copied: {e}",
                    self.layer,
                    show(raw)
                );
            }
        }
        sys::set_times_fd(fd, st.st_mtime, st.st_mtime_nsec as u32)
            .map_err(self.entry_err(raw, "futimens"))
    }
}
