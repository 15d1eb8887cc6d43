//! The guest's life in one minivm process: boot it, and with `--restart`
//! boot it again in a fresh VM (new KVM VM, memory, vCPUs, devices, kernel
//! load) each time it reboots, around the same [`Session`] (console, disk
//! and its copy-on-write layer, taps), until it ends some other way.

use std::time::Instant;

use devices::ExitReason;

use crate::config::VmConfig;
use crate::session::{HostHandles, Session};
use crate::shutdown::SHUTDOWN_SIGNAL;
use crate::signals;
use crate::usage::Usage;
use crate::vm::{self, BootEnd, VmError};

/// What to do after a boot.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Boot the guest again.
    Restart,
    /// minivm ends, for this reason.
    End(ExitReason),
}

/// Decides after a boot ended with `end`: `restart` is `--restart`,
/// `pending` a signal that came after the boot's loop stopped, and
/// `button` whether SIGTERM presses the power button (rather than stopping).
fn next(end: BootEnd, restart: bool, pending: Option<i32>, button: bool) -> Next {
    if end.reason != ExitReason::Reset || !restart {
        return Next::End(end.reason);
    }
    match pending {
        // The guest is down cleanly, which is all the request asked for.
        Some(sig) if sig == SHUTDOWN_SIGNAL && button => Next::End(ExitReason::PowerOff),
        Some(sig) => Next::End(ExitReason::HostSignal(sig)),
        // A guest that reboots when asked to shut down has shut down.
        None if end.shutdown_requested => Next::End(ExitReason::Reset),
        None => Next::Restart,
    }
}

/// How a run ended, and when the guest first ran and last stopped.
#[derive(Debug, Clone, Copy)]
pub struct RunEnd {
    /// Why minivm ends.
    pub reason: ExitReason,
    /// When the first boot's guest was about to run its first instruction.
    pub first_entry: Option<Instant>,
    /// When the last boot's end was requested.
    pub last_exit: Option<Instant>,
}

/// Runs the guest `config` describes, with the handles opened for it,
/// until it ends; with `restart`, a reboot starts it again. `start`: when
/// minivm started.
pub fn run(
    config: &VmConfig,
    host: HostHandles,
    restart: bool,
    start: Instant,
) -> Result<RunEnd, VmError> {
    let mut session = Session::open(config, restart, host)?;
    crate::phases::mark("session: KVM and seccomp filters");
    // Only read when logged: /proc costs a fraction of a millisecond.
    if let Some(u) = tracing::enabled!(tracing::Level::INFO)
        .then(Usage::now)
        .flatten()
    {
        tracing::info!("before the first boot: {u}");
    }
    let deadline = config.timeout.map(|t| start + t);
    let result = boots(config, restart, &mut session, start, deadline);
    crate::phases::mark("VM closed");
    session.finish();
    crate::phases::mark("session closed");
    result
}

fn boots(
    config: &VmConfig,
    restart: bool,
    session: &mut Session,
    mut start: Instant,
    deadline: Option<Instant>,
) -> Result<RunEnd, VmError> {
    let button = !config.shutdown_timeout.is_zero();
    let mut first_entry = None;
    for n in 1u64.. {
        let end = vm::boot(config, session, start, deadline)?;
        first_entry = first_entry.or(end.entered);
        if let Some(u) = tracing::enabled!(tracing::Level::INFO)
            .then(Usage::now)
            .flatten()
        {
            tracing::info!("boot {n} ended ({:?}): {u}", end.reason);
        }
        match next(end, restart, signals::pending(), button) {
            Next::End(reason) => {
                return Ok(RunEnd {
                    reason,
                    first_entry,
                    last_exit: end.exited,
                })
            }
            Next::Restart if !session.devices_back() => return Err(VmError::DevicesInUse),
            Next::Restart => {
                eprintln!("minivm: the guest rebooted; starting it again (--restart)");
                start = Instant::now();
            }
        }
    }
    unreachable!("boots are counted in u64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(reason: ExitReason, shutdown_requested: bool) -> BootEnd {
        BootEnd {
            reason,
            shutdown_requested,
            entered: None,
            exited: None,
        }
    }

    #[test]
    fn a_reboot_restarts_only_with_the_flag() {
        let reset = end(ExitReason::Reset, false);
        assert_eq!(next(reset, true, None, true), Next::Restart);
        assert_eq!(next(reset, false, None, true), Next::End(ExitReason::Reset));
    }

    #[test]
    fn other_ends_end_minivm() {
        for r in [
            ExitReason::PowerOff,
            ExitReason::UserQuit,
            ExitReason::GuestExit(4),
            ExitReason::GuestPanic,
            ExitReason::Crash,
            ExitReason::HostSignal(libc::SIGTERM),
        ] {
            assert_eq!(next(end(r, false), true, None, true), Next::End(r));
        }
    }

    #[test]
    fn a_shutdown_request_is_not_answered_with_a_restart() {
        // The button was pressed, and the guest rebooted instead of powering off.
        assert_eq!(
            next(end(ExitReason::Reset, true), true, None, true),
            Next::End(ExitReason::Reset)
        );
        // SIGTERM came while the VM stopped: the guest is already down.
        let reset = end(ExitReason::Reset, false);
        assert_eq!(
            next(reset, true, Some(libc::SIGTERM), true),
            Next::End(ExitReason::PowerOff)
        );
        // Without a power button SIGTERM stops minivm, like SIGINT always does.
        assert_eq!(
            next(reset, true, Some(libc::SIGTERM), false),
            Next::End(ExitReason::HostSignal(libc::SIGTERM))
        );
        assert_eq!(
            next(reset, true, Some(libc::SIGINT), true),
            Next::End(ExitReason::HostSignal(libc::SIGINT))
        );
    }
}
