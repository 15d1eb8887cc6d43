//! minivm's signal handlers: SIGINT and SIGHUP stop the running VM, SIGTERM
//! asks its guest to shut down (or stops it, without a power button). With
//! the guest agent's control port, SIGINT is passed on to the command
//! instead, as `docker run` does, up to [`INTERRUPTS_PASSED`] times (so a
//! command that ignores it still cannot hold minivm), and SIGWINCH sends
//! the terminal's new size. The handlers only store and write(2) fds that
//! each boot installs and withdraws; a signal that comes between two boots
//! stays pending for the restart loop to see.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use devices::ExitHandle;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::shutdown::SHUTDOWN_SIGNAL;

/// Signal that ended (or is to end) minivm, set by the handler below.
static HOST_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The exit event fd the handler wakes.
static EXIT_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// The shutdown request event fd SIGTERM writes instead, when set.
static SHUTDOWN_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// The write end of the agent's control port (`crate::control`), when set.
static CONTROL_FD: AtomicI32 = AtomicI32::new(-1);
/// SIGINTs seen while a control port was set.
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);
/// How many SIGINTs go to the command; the next one stops the VM.
pub const INTERRUPTS_PASSED: u32 = 2;

/// write(2) of all of `bytes`, or as much as goes (the fds are pipes and
/// event fds, written in one go or not at all).
fn write_fd(fd: RawFd, bytes: &[u8]) {
    // SAFETY: write(2) is async-signal-safe; the buffer is valid for its length.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// Passes SIGINT on to the command, unless there is no control port or it
/// came too often.
fn pass_on_interrupt() -> bool {
    let fd = CONTROL_FD.load(Ordering::SeqCst);
    if fd < 0 {
        return false;
    }
    let n = INTERRUPTS.fetch_add(1, Ordering::SeqCst) + 1;
    if n > INTERRUPTS_PASSED {
        return false;
    }
    write_fd(fd, crate::control::Line::signal(libc::SIGINT).as_bytes());
    if n == INTERRUPTS_PASSED {
        write_fd(
            libc::STDERR_FILENO,
            b"minivm: SIGINT passed on to the command again; one more stops the VM\n",
        );
    }
    true
}

extern "C" fn on_window_change(_sig: libc::c_int) {
    let fd = CONTROL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        if let Some((rows, cols)) = crate::terminal::window_size() {
            write_fd(fd, crate::control::Line::winsize(rows, cols).as_bytes());
        }
    }
}

extern "C" fn on_host_signal(sig: libc::c_int) {
    if sig == libc::SIGINT && pass_on_interrupt() {
        return;
    }
    let shutdown_fd = SHUTDOWN_EVENT_FD.load(Ordering::SeqCst);
    let fd = if sig == SHUTDOWN_SIGNAL && shutdown_fd >= 0 {
        shutdown_fd
    } else {
        HOST_SIGNAL.store(sig, Ordering::SeqCst);
        EXIT_EVENT_FD.load(Ordering::SeqCst)
    };
    if fd >= 0 {
        write_fd(fd, &1u64.to_ne_bytes());
    }
}

/// Installs the handlers of SIGTERM, SIGINT and SIGHUP for one boot: they
/// stop the VM through `exit`, except SIGTERM, which writes `shutdown` when
/// given. The fds must stay open while the returned guard lives: dropping it
/// calls [`withdraw`], on every way out of the boot.
#[must_use = "dropping the guard withdraws the handlers' fds at once"]
pub fn install(exit: &ExitHandle, shutdown: Option<RawFd>) -> Armed {
    EXIT_EVENT_FD.store(exit.event_fd().as_raw_fd(), Ordering::SeqCst);
    SHUTDOWN_EVENT_FD.store(shutdown.unwrap_or(-1), Ordering::SeqCst);
    // A SIGTERM recorded between two boots (`--restart`) asks this one to
    // shut down, as it would have asked the last; taken once, atomically.
    if let Some(fd) = shutdown {
        if HOST_SIGNAL
            .compare_exchange(SHUTDOWN_SIGNAL, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            write_fd(fd, &1u64.to_ne_bytes());
        }
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only touches atomics and calls write(2).
        unsafe { libc::signal(sig, on_host_signal as *const () as libc::sighandler_t) };
    }
    // The kick signal only needs to interrupt KVM_RUN.
    if let Err(e) = register_signal_handler(SIGRTMIN(), crate::vcpu::kick_handler) {
        tracing::warn!("cannot install the vCPU kick handler: {e}");
    }
    Armed(())
}

/// The boot's fds are in the handlers' hands until this is dropped.
pub struct Armed(());

impl Drop for Armed {
    fn drop(&mut self) {
        withdraw();
    }
}

/// Passes SIGINT and window size changes to the guest agent through
/// `control` (the non-blocking write end of its control port), which must
/// stay open until [`withdraw`].
pub fn set_control(control: RawFd) {
    CONTROL_FD.store(control, Ordering::SeqCst);
    // SAFETY: the handler only reads an atomic and calls ioctl(2) and write(2).
    unsafe {
        libc::signal(
            libc::SIGWINCH,
            on_window_change as *const () as libc::sighandler_t,
        )
    };
    // A resize before the handler was there went unseen (SIGWINCH is
    // ignored by default; the job has the size from minivm's start, and a
    // containerd shim sizes minivm's terminal only once it runs): send the
    // size as it is now.
    on_window_change(libc::SIGWINCH);
}

/// Forgets the boot's event fds (before they are closed): from now on every
/// signal, SIGTERM too, is only recorded for [`pending`].
pub fn withdraw() {
    CONTROL_FD.store(-1, Ordering::SeqCst);
    SHUTDOWN_EVENT_FD.store(-1, Ordering::SeqCst);
    EXIT_EVENT_FD.store(-1, Ordering::SeqCst);
}

/// The signal that asks minivm to stop, if one came.
pub fn pending() -> Option<i32> {
    match HOST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}
