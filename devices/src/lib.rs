//! minivm's emulated devices.
//!
//! Devices are plain state machines behind [`bus::BusDevice`]: the VMM decodes
//! KVM exits into bus accesses and dispatches them here. Guest memory is only
//! touched through vm-memory's checked accessors, and nothing a guest writes
//! may panic the VMM: bad input gets an error status or is ignored.

pub mod acpi;
pub mod bus;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod harness;
pub mod i8042;
pub mod log;
pub mod serial;
pub mod virtio;

/// Guest memory as every device sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Why the VM should stop, as decided by a device or a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 pulse, for `reboot`).
    Reset,
    /// The guest powered off (ACPI sleep state S5).
    PowerOff,
    /// The guest wrote its own exit status to the exit port.
    GuestExit(u8),
    /// The guest kernel reported a panic through the panic port.
    GuestPanic,
    /// The guest crashed: triple fault, or a state KVM could not run.
    Crash,
    /// The user quit from the console (Ctrl-A x).
    UserQuit,
    /// minivm received this signal (SIGTERM, SIGINT, SIGHUP).
    HostSignal(i32),
    /// `--timeout` passed before the guest ended.
    Timeout,
    /// The guest reached the snapshot point (`--snapshot-to`: it wrote the
    /// boot-finished port): save the VM.
    Snapshot,
}

/// Where devices report that the VM should stop.
///
/// Cheap to clone; the first reason recorded wins, later ones are ignored so a
/// guest cannot overwrite e.g. a crash with a clean exit.
#[derive(Clone)]
pub struct ExitHandle {
    inner: std::sync::Arc<ExitInner>,
}

struct ExitInner {
    /// The first reason and when it came.
    reason: std::sync::Mutex<Option<(ExitReason, std::time::Instant)>>,
    evt: vmm_sys_util::eventfd::EventFd,
}

impl ExitHandle {
    /// Creates a handle whose event fd becomes readable once an exit is requested.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitHandle {
            inner: std::sync::Arc::new(ExitInner {
                reason: std::sync::Mutex::new(None),
                evt: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)?,
            }),
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.inner.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some((reason, std::time::Instant::now()));
        }
        drop(r);
        // A full counter still leaves the fd readable, which is all that matters.
        let _ = self.inner.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.requested().map(|(r, _)| r)
    }

    /// The recorded reason and when it was requested (for a guest's own
    /// exit: just after its last instruction).
    pub fn requested(&self) -> Option<(ExitReason, std::time::Instant)> {
        *self.inner.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes back a [`ExitReason::Snapshot`] request once the snapshot is
    /// saved, so that the VM can go on (`--snapshot-and-continue`); whether
    /// there was one. Other reasons stay.
    pub fn resume_after_snapshot(&self) -> bool {
        let mut r = self.inner.reason.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*r, Some((ExitReason::Snapshot, _))) {
            return false;
        }
        *r = None;
        // Drain the wake-up so the event loop waits again.
        let _ = self.inner.evt.read();
        true
    }

    /// The event fd that becomes readable on the first request.
    pub fn event_fd(&self) -> &vmm_sys_util::eventfd::EventFd {
        &self.inner.evt
    }
}
