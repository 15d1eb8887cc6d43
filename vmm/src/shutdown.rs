//! Shutdown on request: SIGTERM presses the guest's ACPI power button (a
//! pulse on the Generic Event Device's interrupt, see `boot::acpi`), and the
//! guest's clean poweroff ends the VM. A second SIGTERM, or the shutdown
//! timeout passing after the first, stops the VM hard.
//!
//! The signal handler only counts: it writes the request event fd, which the
//! event loop watches through [`ShutdownRequest`]; the loop asks
//! [`ShutdownRequest::wait_ms`] how long it may block and calls
//! [`ShutdownRequest::check_deadline`] after each round.

use std::time::{Duration, Instant};

use devices::{ExitHandle, ExitReason};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

/// The signal that asks for a shutdown, and whose number a hard stop reports.
pub const SHUTDOWN_SIGNAL: i32 = libc::SIGTERM;

/// Turns shutdown requests into power button presses, then a hard stop.
pub struct ShutdownRequest {
    /// Written (1 per request) by the signal handler.
    requests: EventFd,
    /// The power button's interrupt (an irqfd on `boot::ports::GED_GSI`).
    button: EventFd,
    exit: ExitHandle,
    timeout: Duration,
    /// When the hard stop is due, once the button was pressed.
    deadline: Option<Instant>,
}

impl ShutdownRequest {
    /// Presses `button` on the first request, stops through `exit` on the
    /// second or `timeout` after the first.
    pub fn new(button: EventFd, exit: ExitHandle, timeout: Duration) -> std::io::Result<Self> {
        Ok(ShutdownRequest {
            requests: EventFd::new(libc::EFD_NONBLOCK)?,
            button,
            exit,
            timeout,
            deadline: None,
        })
    }

    /// The event fd the signal handler writes.
    pub fn request_fd(&self) -> &EventFd {
        &self.requests
    }

    /// Handles `count` new requests at `now`.
    fn on_requests(&mut self, count: u64, now: Instant) {
        if count == 0 {
            return;
        }
        if self.deadline.is_some() || count > 1 {
            self.exit.request(ExitReason::HostSignal(SHUTDOWN_SIGNAL));
            return;
        }
        match self.button.write(1) {
            Ok(()) => {
                eprintln!(
                    "minivm: asking the guest to shut down (power button); \
                     it is stopped in {}s or on a second SIGTERM",
                    self.timeout.as_secs()
                );
                self.deadline = Some(now + self.timeout);
            }
            Err(e) => {
                tracing::warn!("cannot press the power button: {e}");
                self.exit.request(ExitReason::HostSignal(SHUTDOWN_SIGNAL));
            }
        }
    }

    /// How long the event loop may block (-1: no limit), at `now`.
    pub fn wait_ms(&self, now: Instant) -> i32 {
        match self.deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(now).as_millis();
                // Round up, so the loop does not wake just before the deadline.
                i32::try_from(left + 1).unwrap_or(i32::MAX)
            }
        }
    }

    /// Whether a shutdown was asked for: the button was pressed, or a
    /// request came as the VM stopped and is still unread.
    pub fn requested(&self) -> bool {
        self.deadline.is_some() || self.requests.read().is_ok_and(|n| n > 0)
    }

    /// Stops the VM hard once the deadline has passed.
    pub fn check_deadline(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.exit.request(ExitReason::HostSignal(SHUTDOWN_SIGNAL));
        }
    }
}

impl MutEventSubscriber for ShutdownRequest {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.requests, EventSet::IN)) {
            tracing::error!("cannot watch shutdown requests: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        match self.requests.read() {
            Ok(n) => self.on_requests(n, Instant::now()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!("shutdown request event: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(timeout: u64) -> (ShutdownRequest, ExitHandle) {
        let exit = ExitHandle::new().unwrap();
        let button = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let s = ShutdownRequest::new(button, exit.clone(), Duration::from_secs(timeout)).unwrap();
        (s, exit)
    }

    #[test]
    fn first_request_presses_the_button_and_arms_the_deadline() {
        let (mut s, exit) = request(5);
        let t0 = Instant::now();
        assert_eq!(s.wait_ms(t0), -1);
        s.on_requests(1, t0);
        assert_eq!(s.button.read().unwrap(), 1, "button pressed once");
        assert!(exit.reason().is_none());
        assert_eq!(s.wait_ms(t0), 5001);
        s.check_deadline(t0 + Duration::from_millis(4999));
        assert!(exit.reason().is_none());
        s.check_deadline(t0 + Duration::from_secs(5));
        assert_eq!(exit.reason(), Some(ExitReason::HostSignal(libc::SIGTERM)));
    }

    #[test]
    fn second_request_stops_hard() {
        let (mut s, exit) = request(100);
        let t0 = Instant::now();
        s.on_requests(1, t0);
        assert!(exit.reason().is_none());
        s.on_requests(1, t0);
        assert_eq!(exit.reason(), Some(ExitReason::HostSignal(libc::SIGTERM)));
        // Two requests seen at once are two, too.
        let (mut s, exit) = request(100);
        s.on_requests(2, t0);
        assert_eq!(exit.reason(), Some(ExitReason::HostSignal(libc::SIGTERM)));
        assert!(s.button.read().is_err(), "no press");
    }

    #[test]
    fn a_press_or_an_unread_request_counts_as_requested() {
        let (mut s, _exit) = request(100);
        assert!(!s.requested());
        s.request_fd().write(1).unwrap();
        assert!(s.requested(), "unread request");
        assert!(!s.requested(), "read once");
        s.on_requests(1, Instant::now());
        assert!(s.requested(), "pressed");
    }

    #[test]
    fn requests_arrive_through_the_event_fd() {
        let (mut s, exit) = request(100);
        s.request_fd().write(1).unwrap();
        let n = s.requests.read().unwrap();
        s.on_requests(n, Instant::now());
        assert_eq!(s.button.read().unwrap(), 1);
        assert!(exit.reason().is_none());
    }
}
