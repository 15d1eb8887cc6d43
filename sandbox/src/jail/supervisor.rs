//! The fork into the jail, and the parent that stays outside: it waits for
//! the jailed child, passes on the signals sent to it, restores the terminal
//! if the child was killed, and reports the child's exit status.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::JailError;

/// Signals the supervisor waits for instead of handling them.
const WAITED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGWINCH,
    libc::SIGCHLD,
];

/// The parent outside the jail.
pub struct Supervisor {
    child: libc::pid_t,
    waited: libc::sigset_t,
    old_mask: libc::sigset_t,
    termios: Option<libc::termios>,
    /// Its end of the pipe whose closing tells the child the parent is gone.
    _alive: OwnedFd,
}

/// The two sides of [`fork`].
pub(super) enum Forked {
    Parent(Box<Supervisor>),
    /// The child, with the read end of the parent's liveness pipe.
    Child(OwnedFd),
}

/// Forks; the child gets the signal mask back and loses every inherited
/// directory fd (a directory fd leads back to the host tree through `..`
/// from any mount namespace; the parent keeps its copies, and the flocks on
/// them).
pub(super) fn fork() -> Result<Forked, JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::step("pipe")(io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let termios = saved_termios();
    // SAFETY: sigset operations on local sets; sigprocmask on this (the
    // only) thread.
    let (waited, old_mask) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in WAITED {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        (set, old)
    };
    // SAFETY: the process has a single thread (checked), so the child may
    // go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            // SAFETY: restores the mask saved above.
            unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
            Err(JailError::step("fork")(e))
        }
        0 => {
            drop(w);
            // SAFETY: as above.
            unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
            close_directory_fds();
            Ok(Forked::Child(r))
        }
        child => Ok(Forked::Parent(Box::new(Supervisor {
            child,
            waited,
            old_mask,
            termios,
            _alive: w,
        }))),
    }
}

impl Supervisor {
    /// The jailed child's pid (in the supervisor's PID namespace).
    pub fn child(&self) -> u32 {
        self.child as u32
    }

    /// Waits until the child ends and returns its exit status (128 + the
    /// signal that killed it). SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to
    /// the supervisor with kill(2) go on to the child; those from the
    /// terminal already reach the child, which is in the same process group.
    pub fn wait(self) -> i32 {
        let status = loop {
            // SAFETY: a zeroed siginfo is valid for sigwaitinfo to fill.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waits for one of the blocked signals of `waited`.
            let sig = unsafe { libc::sigwaitinfo(&self.waited, &mut info) };
            if sig == libc::SIGCHLD {
                if let Some(status) = self.reap() {
                    break status;
                }
            } else if sig > 0 && sig != libc::SIGWINCH && info.si_code <= 0 {
                // SAFETY: kill with the child's pid, which is not yet reaped.
                unsafe { libc::kill(self.child, sig) };
            }
        };
        // SAFETY: restores the mask saved at the fork.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
        if libc::WIFSIGNALED(status) {
            // The child had no chance to put the terminal back.
            if let Some(t) = &self.termios {
                // SAFETY: tcsetattr reads the struct saved before the fork.
                unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
            }
            return 128 + libc::WTERMSIG(status);
        }
        libc::WEXITSTATUS(status)
    }

    fn reap(&self) -> Option<libc::c_int> {
        let mut status = 0;
        // SAFETY: waitpid writes the status of our own child.
        let pid = unsafe { libc::waitpid(self.child, &mut status, libc::WNOHANG) };
        (pid == self.child).then_some(status)
    }
}

/// The terminal settings of stdin, when it is a terminal.
fn saved_termios() -> Option<libc::termios> {
    // SAFETY: a zeroed termios is valid for tcgetattr to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes the struct we pass.
    (unsafe { libc::tcgetattr(0, &mut t) } == 0).then_some(t)
}

fn close_directory_fds() {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(d) => d
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // SAFETY: a zeroed stat is valid for fstat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on a number that may or may not be an open fd.
        if unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            // SAFETY: closes an inherited directory fd; nothing in this
            // process uses it after the fork.
            unsafe { libc::close(fd) };
        }
    }
}

/// Makes the child die with the supervisor: the parent-death signal (set
/// after the credential change, which clears it), and a check that the
/// parent did not end before it was set.
pub(super) fn die_with_parent(alive: OwnedFd) -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    super::os_check(ret, || "parent-death signal".into())?;
    let mut pfd = libc::pollfd {
        fd: alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes one pollfd we own, without waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n > 0 && pfd.revents & libc::POLLHUP != 0 {
        // SAFETY: the supervisor is gone; end without running any more code.
        unsafe { libc::_exit(super::SETUP_FAILED) };
    }
    Ok(())
}
