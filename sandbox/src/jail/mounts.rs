//! The jail's file system: a small read-only tmpfs as `/`, the VM's files
//! bind-mounted at their host paths, and a procfs of the jail's own PID
//! namespace (fuse-backend-rs reaches its inodes through `/proc/self/fd`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{cstr, os_check, Bind, JailError};

// linux/mount.h: mount_setattr(2), Linux 5.12.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Builds the jail's root at `dir` and makes it `/` (the mount namespace
/// must already be the jail's own).
pub(super) fn build_root(dir: &Path, binds: &[Bind]) -> Result<(), JailError> {
    // Nothing mounted from here on may reach the host's namespace.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|e| e.context("make / private"))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        Some(OsStr::new("tmpfs")),
        dir,
        Some("tmpfs"),
        flags,
        Some("mode=0755,size=1m,nr_inodes=4096"),
    )
    .map_err(|e| e.context("tmpfs root"))?;
    let mut binds: Vec<Bind> = binds.to_vec();
    // Parents before children, so a child's mount is not hidden.
    binds.sort_by(|a, b| a.path.cmp(&b.path));
    binds.dedup_by(|b, a| {
        let same = a.path == b.path;
        if same {
            a.writable |= b.writable;
        }
        same
    });
    for b in &binds {
        bind(dir, b)?;
    }
    let proc_dir = dir.join("proc");
    make_dirs(&proc_dir)?;
    // subset=pid: only the processes, no /proc/sys (Linux 5.8; else all).
    let proc = Some(OsStr::new("proc"));
    mount(proc, &proc_dir, Some("proc"), flags, Some("subset=pid"))
        .or_else(|_| mount(proc, &proc_dir, Some("proc"), flags, None))
        .map_err(|e| e.context("procfs"))?;
    pivot_into(dir)?;
    // The root itself is read-only: the VM writes only to its binds.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
        None,
    )
    .map_err(|e| e.context("make / read-only"))
}

/// Mount `b` at the same path under `dir`, without setuid, devices or exec,
/// and read-only unless writable (recursively: also its submounts).
fn bind(dir: &Path, b: &Bind) -> Result<(), JailError> {
    let target = under(dir, &b.path);
    let meta = std::fs::metadata(&b.path).map_err(JailError::step(format!(
        "{}: cannot share into the jail",
        b.path.display()
    )))?;
    if meta.is_dir() {
        make_dirs(&target)?;
    } else {
        if let Some(parent) = target.parent() {
            make_dirs(parent)?;
        }
        if !target.exists() {
            std::fs::File::create(&target)
                .map_err(JailError::step(format!("mount point {}", target.display())))?;
        }
    }
    mount(
        Some(b.path.as_os_str()),
        &target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|e| e.context(&format!("bind {}", b.path.display())))?;
    let mut set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    if !b.writable {
        set |= MOUNT_ATTR_RDONLY;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let path = cstr(&target)?;
    // SAFETY: a NUL-terminated path and a live struct of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    os_check(ret as libc::c_int, || {
        format!("restrict the mount of {}", b.path.display())
    })
}

/// Where host path `p` appears under `dir`.
fn under(dir: &Path, p: &Path) -> PathBuf {
    dir.join(p.strip_prefix("/").unwrap_or(p))
}

fn make_dirs(p: &Path) -> Result<(), JailError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(JailError::step(format!("mount point {}", p.display())))
}

/// `pivot_root(2)` into `dir` with the old root stacked under the new one,
/// then detached (man 2 pivot_root: `pivot_root(".", ".")`).
fn pivot_into(dir: &Path) -> Result<(), JailError> {
    let d = cstr(dir)?;
    let dot = c".";
    // SAFETY: NUL-terminated paths; these calls only change this process's
    // root and working directory.
    unsafe {
        os_check(libc::chdir(d.as_ptr()), || {
            "enter the jail directory".into()
        })?;
        os_check(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int,
            || "pivot_root".into(),
        )?;
        os_check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH), || {
            "detach the host's root".into()
        })?;
        os_check(libc::chdir(c"/".as_ptr()), || "chdir /".into())
    }
}

/// A failed mount; [`MountFailure::context`] names the step.
struct MountFailure(std::io::Error);

impl MountFailure {
    fn context(self, step: &str) -> JailError {
        JailError::Step {
            step: step.to_string(),
            source: self.0,
        }
    }
}

fn mount(
    source: Option<&OsStr>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), MountFailure> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(|_| MountFailure(bad_input()));
    let source = source
        .map(|s| std::ffi::CString::new(s.as_bytes()).map_err(|_| MountFailure(bad_input())))
        .transpose()?;
    let fstype = fstype.map(c).transpose()?;
    let data = data.map(c).transpose()?;
    let target = cstr(target).map_err(|_| MountFailure(bad_input()))?;
    let ptr = |s: &Option<std::ffi::CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: NUL-terminated strings or null, as mount(2) takes them.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(MountFailure(std::io::Error::last_os_error()))
    }
}

fn bad_input() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::InvalidInput)
}
