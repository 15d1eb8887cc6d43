//! minivm's signal handlers: SIGINT and SIGHUP stop the running VM, SIGTERM
//! asks its guest to shut down (or stops it, without a power button). The
//! handlers only store and write(2) event fds that each boot installs and
//! withdraws; a signal that comes between two boots stays pending for
//! the restart loop to see.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use devices::ExitHandle;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::shutdown::SHUTDOWN_SIGNAL;

/// Signal that ended (or is to end) minivm, set by the handler below.
static HOST_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The exit event fd the handler wakes.
static EXIT_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// The shutdown request event fd SIGTERM writes instead, when set.
static SHUTDOWN_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_host_signal(sig: libc::c_int) {
    let shutdown_fd = SHUTDOWN_EVENT_FD.load(Ordering::SeqCst);
    let fd = if sig == SHUTDOWN_SIGNAL && shutdown_fd >= 0 {
        shutdown_fd
    } else {
        HOST_SIGNAL.store(sig, Ordering::SeqCst);
        EXIT_EVENT_FD.load(Ordering::SeqCst)
    };
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is a local u64.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Installs the handlers of SIGTERM, SIGINT and SIGHUP for one boot: they
/// stop the VM through `exit`, except SIGTERM, which writes `shutdown` when
/// given. The fds must stay open until [`withdraw`].
pub fn install(exit: &ExitHandle, shutdown: Option<RawFd>) {
    EXIT_EVENT_FD.store(exit.event_fd().as_raw_fd(), Ordering::SeqCst);
    SHUTDOWN_EVENT_FD.store(shutdown.unwrap_or(-1), Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only touches atomics and calls write(2).
        unsafe { libc::signal(sig, on_host_signal as *const () as libc::sighandler_t) };
    }
    // The kick signal only needs to interrupt KVM_RUN.
    if let Err(e) = register_signal_handler(SIGRTMIN(), crate::vcpu::kick_handler) {
        tracing::warn!("cannot install the vCPU kick handler: {e}");
    }
}

/// Forgets the boot's event fds (before they are closed): from now on every
/// signal, SIGTERM too, is only recorded for [`pending`].
pub fn withdraw() {
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
