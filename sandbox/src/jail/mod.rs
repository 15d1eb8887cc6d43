//! The jail: minivm confines its whole process before the VM is built, with
//! no second program (Firecracker's jailer achieves the same with one).
//!
//! [`enter`] is called once, while the process has a single thread, after
//! everything that needs the host's view was opened (/dev/kvm, the disk,
//! taps) and before any seccomp filter. It forks: the parent stays outside
//! as a [`Supervisor`] that waits for the VM, passes on signals sent to it
//! and cleans up after it; the child, PID 1 of new PID, mount, IPC, UTS,
//! network and cgroup namespaces, sees only a read-only tmpfs root holding
//! the files the VM needs, bind-mounted at their host paths, and a procfs of
//! its own PID namespace. It then sets resource limits, drops every
//! capability it does not need (all of them unless it stays root to serve
//! virtio-fs shares), switches to the jail's user and group, and sets
//! no_new_privs. Without root it does the same in a user namespace of its
//! own that maps only the caller's ids (unprivileged user namespaces must be
//! enabled); the VM keeps the caller's file access and no capability.
//!
//! Order of the steps (each needs the one before): namespaces; mounts;
//! pivot_root; rlimits; securebits (needs CAP_SETPCAP); the bounding set;
//! groups and ids; capabilities; no_new_privs; parent-death signal (a
//! credential change clears it).

mod caps;
mod mounts;
mod supervisor;
#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

pub use supervisor::Supervisor;

/// What the jail holds and how tightly it confines the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// An existing directory of the host; a tmpfs is mounted over it in the
    /// jail's own mount namespace only, so the host's copy stays empty.
    pub dir: PathBuf,
    /// The user and group the process runs as in the jail.
    pub uid: u32,
    /// See [`Jail::uid`].
    pub gid: u32,
    /// Host files and directories to make visible, each at its own path.
    pub binds: Vec<Bind>,
    /// The resource limits (soft = hard).
    pub limits: Limits,
    /// Keep the capabilities a root file server needs (virtio-fs serving
    /// files of other owners as root); without it every capability goes.
    pub keep_file_caps: bool,
}

/// One host path visible in the jail at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Absolute, canonical host path (a file or a directory).
    pub path: PathBuf,
    /// Whether the jail may write to it.
    pub writable: bool,
}

/// Resource limits of the jailed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_NOFILE`: open files.
    pub open_files: u64,
    /// `RLIMIT_AS`: address space (guest memory and a margin), if bounded.
    pub address_space: Option<u64>,
}

/// Errors setting up the jail; each names the step and the path involved.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail directory is missing, relative or not a directory.
    #[error("jail directory {}: {reason}", .dir.display())]
    Dir { dir: PathBuf, reason: String },
    /// A bind source is not absolute.
    #[error("{}: jail paths must be absolute", .0.display())]
    RelativePath(PathBuf),
    /// Other threads exist: namespaces and credentials are per thread, so
    /// they would stay outside.
    #[error("the jail must be entered while minivm has a single thread ({0} now)")]
    Threads(usize),
    /// Without root, the jail runs in a user namespace that maps only the
    /// caller's own ids.
    #[error("a jail entered without root runs as the user who starts it ({own}), not {uid}:{gid}")]
    ForeignUser { own: String, uid: u32, gid: u32 },
    /// A step failed.
    #[error("jail: {step}: {source}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
}

impl JailError {
    fn step(step: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
        let step = step.into();
        move |source| JailError::Step { step, source }
    }
}

/// Which side of the fork the caller is on after [`enter`].
pub enum Role {
    /// The parent, outside the jail: wait for the child with
    /// [`Supervisor::wait`], then clean up what the VM left on the host.
    Supervisor(Box<Supervisor>),
    /// The child, inside the jail: build and run the VM.
    Jailed,
}

/// Enters `jail` (see the module docs). On error no process was forked, or
/// the child has already exited with [`SETUP_FAILED`] after printing why.
pub fn enter(jail: &Jail) -> Result<Role, JailError> {
    check(jail)?;
    // SAFETY: geteuid has no preconditions.
    let userns = unsafe { libc::geteuid() } != 0;
    let flags = if userns {
        libc::CLONE_NEWUSER | libc::CLONE_NEWPID
    } else {
        libc::CLONE_NEWPID
    };
    // SAFETY: unshare with flags only; the next fork's child is the new
    // namespace's PID 1.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(JailError::step("new user and PID namespaces")(
            io::Error::last_os_error(),
        ));
    }
    if userns {
        map_own_ids(jail.uid, jail.gid)?;
    }
    let parent_alive = match supervisor::fork()? {
        supervisor::Forked::Parent(s) => return Ok(Role::Supervisor(s)),
        supervisor::Forked::Child(alive) => alive,
    };
    // The child: any failure from here is reported and ends it.
    match confine(jail, parent_alive) {
        Ok(()) => Ok(Role::Jailed),
        Err(e) => {
            eprintln!("minivm: {e}");
            // SAFETY: _exit ends this process without running the parent's
            // atexit handlers or destructors twice.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
    }
}

/// Exit status of a child that could not finish setting up the jail.
pub const SETUP_FAILED: i32 = 1;

fn check(jail: &Jail) -> Result<(), JailError> {
    let dir_err = |reason: &str| JailError::Dir {
        dir: jail.dir.clone(),
        reason: reason.to_string(),
    };
    if !jail.dir.is_absolute() {
        return Err(dir_err("must be an absolute path"));
    }
    match std::fs::metadata(&jail.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(dir_err("not a directory")),
        Err(e) => return Err(dir_err(&e.to_string())),
    }
    if let Some(b) = jail.binds.iter().find(|b| !b.path.is_absolute()) {
        return Err(JailError::RelativePath(b.path.clone()));
    }
    // SAFETY: the id getters have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 && (jail.uid, jail.gid) != (euid, egid) {
        return Err(JailError::ForeignUser {
            own: format!("{euid}:{egid}"),
            uid: jail.uid,
            gid: jail.gid,
        });
    }
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    if threads != 1 {
        return Err(JailError::Threads(threads));
    }
    Ok(())
}

/// The child's side: everything after the fork, in the module docs' order.
fn confine(jail: &Jail, parent_alive: std::os::fd::OwnedFd) -> Result<(), JailError> {
    let ns = libc::CLONE_NEWNS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    // SAFETY: unshare with flags only.
    if unsafe { libc::unshare(ns) } != 0 {
        return Err(JailError::step("new namespaces")(io::Error::last_os_error()));
    }
    let name = b"minivm";
    // SAFETY: a pointer and length of a live buffer.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(JailError::step("hostname")(io::Error::last_os_error()));
    }
    mounts::build_root(&jail.dir, &jail.binds)?;
    set_limits(&jail.limits)?;
    // In a user namespace the supplementary groups are fixed ("deny").
    let userns = std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny");
    caps::drop_privileges(jail.uid, jail.gid, jail.keep_file_caps, !userns)?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(JailError::step("no_new_privs")(io::Error::last_os_error()));
    }
    supervisor::die_with_parent(parent_alive)?;
    caps::verify(jail.uid, jail.gid, jail.keep_file_caps)
}

/// Maps the caller's own user and group, and nothing else, into the new
/// user namespace: the jail keeps the ids (and so the file access) it had,
/// and gains capabilities only over what the namespace owns.
fn map_own_ids(uid: u32, gid: u32) -> Result<(), JailError> {
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(JailError::step(format!("user namespace: write {file}")))
    };
    write("uid_map", format!("{uid} {uid} 1"))?;
    write("setgroups", "deny".to_string())?;
    write("gid_map", format!("{gid} {gid} 1"))
}

fn set_limits(l: &Limits) -> Result<(), JailError> {
    let mut set = vec![
        (libc::RLIMIT_NOFILE, l.open_files, "open files"),
        // A core dump would hold guest memory.
        (libc::RLIMIT_CORE, 0, "core size"),
    ];
    if let Some(a) = l.address_space {
        set.push((libc::RLIMIT_AS, a, "address space"));
    }
    for (resource, value, what) in set {
        let rl = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(resource, &rl) } != 0 {
            return Err(JailError::step(format!("limit of {what} to {value}"))(
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// A path as a C string (paths with NUL cannot come from the file system).
fn cstr(p: &Path) -> Result<CString, JailError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::RelativePath(p.to_path_buf()))
}

/// Ok, or the last OS error as the failure of `step`.
fn os_check(ret: libc::c_int, step: impl FnOnce() -> String) -> Result<(), JailError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(JailError::Step {
            step: step(),
            source: io::Error::last_os_error(),
        })
    }
}
