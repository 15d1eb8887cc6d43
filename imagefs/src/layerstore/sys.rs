//! Thin wrappers over the `*at(2)` system calls the unpacker uses. Each call
//! names exactly one path component relative to a directory descriptor and
//! never follows a symlink at that component, so no tar entry can make the
//! unpacker leave the layer directory.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A name as a C string (tar names were checked for NUL by [`crate::walk::normalize`]).
pub(crate) fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call; the result is checked.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory by path (a store path, not tar content).
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)?;
    Ok(f.into())
}

/// Opens the directory `name` in `dir`; fails with ELOOP for a symlink and
/// ENOTDIR for anything else that is not a directory.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Opens `name` in `dir` for reading (a symlink fails with ELOOP).
pub(crate) fn open_read(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    Ok(openat(dir, name, libc::O_RDONLY, 0)?.into())
}

/// Creates the regular file `name` in `dir`; fails if anything exists there.
pub(crate) fn create(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<File> {
    Ok(openat(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        mode,
    )?
    .into())
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; None when nothing is there.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of a `struct stat`; `name` is NUL-terminated.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: fstatat succeeded, so it filled in `st`.
    Ok(Some(unsafe { st.assume_init() }))
}

/// `fstat(fd)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of a `struct stat`.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled in `st`.
    Ok(unsafe { st.assume_init() })
}

/// The file type bits of a stat.
pub(crate) fn file_type(st: &libc::stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// Whether `st` is an overlayfs whiteout (see [`layerfmt::is_whiteout`]).
pub(crate) fn is_whiteout(st: &libc::stat) -> bool {
    layerfmt::is_whiteout(st.st_mode, st.st_rdev)
}

pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; plain syscall.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `mknodat`; `mode` includes the file type bits.
pub(crate) fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32, dev: u64) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; plain syscall.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, dev) })
        .map(drop)
}

pub(crate) fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; plain syscall.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `linkat` without AT_SYMLINK_FOLLOW: links the entry itself.
pub(crate) fn link_at(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; plain syscall.
    cvt(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            0,
        )
    })
    .map(drop)
}

pub(crate) fn rename_at(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; plain syscall.
    cvt(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) })
        .map(drop)
}

pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is NUL-terminated; plain syscall.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// The entry names of a directory (without `.` and `..`).
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    std::fs::read_dir(proc_path(dir, None))?
        .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
        .collect()
}

/// Removes `name` in `dir` and, if it is a directory, everything below it,
/// without following symlinks.
pub(crate) fn remove_tree_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let Some(st) = stat_at(dir, name)? else {
        return Ok(());
    };
    if file_type(&st) != libc::S_IFDIR {
        return unlink_at(dir, name, false);
    }
    let sub = open_dir(dir, name)?;
    for child in list_dir(sub.as_fd())? {
        remove_tree_at(sub.as_fd(), &cstr(&child)?)?;
    }
    unlink_at(dir, name, true)
}

/// `/proc/self/fd/N[/name]`: reaches the entry through the descriptor, so
/// only `name` (one component, not followed by the l*xattr calls) is looked up.
fn proc_path(dir: BorrowedFd<'_>, name: Option<&CStr>) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if let Some(n) = name {
        p.push(std::ffi::OsStr::from_bytes(n.to_bytes()));
    }
    p
}

fn path_cstr(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str().as_bytes())
}

/// `fchownat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; plain syscall.
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub(crate) fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

pub(crate) fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// chmod of a special file (FIFO, device) `name` in `dir`: opened with
/// O_PATH|O_NOFOLLOW and changed through `/proc/self/fd`, so a symlink is never followed.
pub(crate) fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    let fd = openat(dir, name, libc::O_PATH, 0)?;
    if file_type(&fstat(fd.as_fd())?) == libc::S_IFLNK {
        return Ok(()); // Symlink permissions mean nothing on Linux.
    }
    let p = path_cstr(&proc_path(fd.as_fd(), None))?;
    // SAFETY: `p` is NUL-terminated; plain syscall.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }).map(drop)
}

fn timespecs(secs: i64, nsec: u32) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec.min(999_999_999) as libc::c_long,
    };
    [t, t]
}

/// Sets atime and mtime of `name` in `dir` (not following a symlink).
pub(crate) fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    secs: i64,
    nsec: u32,
) -> io::Result<()> {
    let ts = timespecs(secs, nsec);
    // SAFETY: `ts` holds two timespecs; `name` is NUL-terminated.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub(crate) fn set_times_fd(fd: BorrowedFd<'_>, secs: i64, nsec: u32) -> io::Result<()> {
    let ts = timespecs(secs, nsec);
    // SAFETY: `ts` holds two timespecs.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) }).map(drop)
}

/// The target of the symlink `name` in `dir`.
pub(crate) fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is valid for `buf.len()` bytes; `name` is NUL-terminated.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub(crate) fn fset_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is valid for its length; `name` is NUL-terminated.
    cvt(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

/// `lsetxattr` on `name` in `dir` (the entry itself, even a symlink).
pub(crate) fn lset_xattr_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    xname: &CStr,
    value: &[u8],
) -> io::Result<()> {
    let p = path_cstr(&proc_path(dir, Some(name)))?;
    // SAFETY: `p` and `xname` are NUL-terminated; `value` is valid for its length.
    cvt(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            xname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

fn sized_read(mut f: impl FnMut(&mut [u8]) -> isize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = f(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// The value of extended attribute `name`, None if absent.
pub(crate) fn fget_xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    sized_read(|buf| {
        // SAFETY: `buf` is valid for `buf.len()` bytes; `name` is NUL-terminated.
        unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })
}

/// Names of the extended attributes of an open file.
pub(crate) fn flist_xattr(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let raw = sized_read(|buf| {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
    })?
    .unwrap_or_default();
    Ok(raw
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| CString::new(n).ok())
        .collect())
}

/// All extended attributes of an open file.
pub(crate) fn fget_all_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in flist_xattr(fd)? {
        if let Some(v) = fget_xattr(fd, &name)? {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// `lgetxattr(path, name)`; None if absent.
pub(crate) fn lget_xattr(path: &Path, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let p = path_cstr(path)?;
    sized_read(|buf| {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the strings are NUL-terminated.
        unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })
}

/// Flushes the filesystem holding `fd` to stable storage.
pub(crate) fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}
