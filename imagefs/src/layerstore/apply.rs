//! Setting metadata as the unpacker writes entries: owner, mode, xattrs and
//! times, as root or in the unprivileged encoding (see the module docs of
//! [`super`]); copying files of lower layers; reading a tar entry's metadata.

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};

use super::sys::{self, cstr};
use super::unpack::{show, Unpacker};
use super::{LayerStoreError, Override, OVERRIDE_XATTR, XATTR_PREFIX};
use crate::flatten::parse_pax_time;

/// Xattrs that overlay implementations interpret or the store uses itself:
/// dropped from tar entries, so an image cannot forge them.
const RESERVED_XATTRS: &[&[u8]] = &[
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.minivm.",
];

/// Metadata of a tar entry.
#[derive(Debug, Clone, Default)]
pub(super) struct Meta {
    /// Permission bits including setuid/setgid/sticky.
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: i64,
    pub(super) nsec: u32,
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Unpacker<'_> {
    /// A hardlink to a file of a lower layer: layer directories are separate
    /// trees, so the file is copied (contents, owner, mode, xattrs, mtime).
    pub(super) fn copy_from_lower(
        &mut self,
        raw: &[u8],
        sp: BorrowedFd<'_>,
        sname: &CStr,
        st: &libc::stat,
        p: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<(), LayerStoreError> {
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
                self.stats.file_bytes += n;
                if self.stats.file_bytes > self.max_bytes {
                    return Err(LayerStoreError::TooLarge {
                        layer: self.layer.clone(),
                        limit: self.max_bytes,
                    });
                }
                let xattrs = sys::fget_all_xattrs(src.as_fd()).map_err(e("read xattrs"))?;
                self.apply_copied(raw, dst.as_fd(), st, &xattrs)
            }
            libc::S_IFLNK => {
                let target = sys::readlink_at(sp, sname).map_err(e("readlink"))?;
                let target = cstr(&target).map_err(e("readlink"))?;
                sys::symlink_at(&target, p, name).map_err(e("symlink"))?;
                if self.privileged {
                    sys::chown_at(p, name, st.st_uid, st.st_gid).map_err(e("chown"))?;
                }
                sys::set_times_at(p, name, st.st_mtime, st.st_mtime_nsec as u32)
                    .map_err(e("utimensat"))
            }
            _ => {
                sys::mknod_at(p, name, st.st_mode, st.st_rdev).map_err(e("mknod"))?;
                if self.privileged {
                    sys::chown_at(p, name, st.st_uid, st.st_gid).map_err(e("chown"))?;
                }
                sys::chmod_at(p, name, st.st_mode & 0o7777).map_err(e("chmod"))?;
                sys::set_times_at(p, name, st.st_mtime, st.st_mtime_nsec as u32)
                    .map_err(e("utimensat"))
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
            sys::fset_xattr(fd, &name, o.to_string().as_bytes())
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
                        "layer {}: {:?}: xattr {:?}: {e}; stored as {XATTR_PREFIX}*",
                        self.layer,
                        show(raw),
                        show(name)
                    );
                }
                Err(e) => return Err(self.entry_err(raw, format!("setxattr {}", show(name)))(e)),
            }
        }
        let mut mapped = XATTR_PREFIX.as_bytes().to_vec();
        mapped.extend_from_slice(name);
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

    pub(super) fn metadata(
        &self,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        raw: &[u8],
    ) -> Result<Meta, LayerStoreError> {
        let h = entry.header();
        let bad = |what: &'static str| self.bad_path(raw, what);
        let mut meta = Meta {
            mode: h.mode().map_err(|_| bad("unreadable mode"))? & 0o7777,
            uid: u32::try_from(h.uid().map_err(|_| bad("unreadable uid"))?)
                .map_err(|_| bad("uid out of range"))?,
            gid: u32::try_from(h.gid().map_err(|_| bad("unreadable gid"))?)
                .map_err(|_| bad("gid out of range"))?,
            mtime: h.mtime().map(|t| t as i64).unwrap_or(0),
            nsec: 0,
            xattrs: Vec::new(),
        };
        let Some(exts) = entry.pax_extensions().map_err(|e| self.tar_err(e))? else {
            return Ok(meta);
        };
        for ext in exts {
            let ext = ext.map_err(|e| self.tar_err(e))?;
            let (key, value) = (ext.key_bytes(), ext.value_bytes());
            let num = || std::str::from_utf8(value).ok()?.parse::<u32>().ok();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if RESERVED_XATTRS.iter().any(|r| name.starts_with(r)) {
                    tracing::warn!(
                        "layer {}: {:?}: reserved xattr {:?} dropped",
                        self.layer,
                        show(raw),
                        show(name)
                    );
                } else {
                    meta.xattrs.retain(|(n, _)| n != name);
                    meta.xattrs.push((name.to_vec(), value.to_vec()));
                }
            } else if key == b"uid" {
                meta.uid = num().ok_or_else(|| bad("bad PAX uid"))?;
            } else if key == b"gid" {
                meta.gid = num().ok_or_else(|| bad("bad PAX gid"))?;
            } else if key == b"mtime" {
                (meta.mtime, meta.nsec) =
                    parse_pax_time(value).ok_or_else(|| bad("bad PAX mtime"))?;
            }
        }
        Ok(meta)
    }
}
