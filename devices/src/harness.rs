//! Ports for test harnesses and boot measurement.
//!
//! | offset | port | write      | effect                                          |
//! |--------|------|------------|-------------------------------------------------|
//! | 0      | 0xf4 | one byte N | the VM ends and minivm exits with status N      |
//! | 1      | 0xf5 | any byte   | "boot finished": minivm logs the time since its own start (with `--snapshot-to`, the first one is the snapshot point) |
//! | 2      | 0xf6 | any byte   | the guest kernel panicked (minivm's kernel writes it when booted with `minivm_panic_port=0xf6`) |
//!
//! The device decodes offsets; the ports are where `boot::ports::HARNESS`
//! puts it, and users write them by number (README, `minivm run --help`).
//!
//! Reads return 0xff, like an absent ISA device. From a guest shell:
//! `printf '\007' | dd of=/dev/port bs=1 seek=244 count=1` exits with status 7.

use std::time::Instant;

use crate::bus::BusDevice;
use crate::{ExitHandle, ExitReason};

/// Offset of the exit port: the value written becomes minivm's exit status.
pub const EXIT_OFFSET: u64 = 0;
/// Offset of the boot-finished port.
pub const BOOT_MARKER_OFFSET: u64 = 1;
/// Offset of the kernel-panic port.
pub const PANIC_OFFSET: u64 = 2;
/// Number of consecutive ports the device spans.
pub const HARNESS_PORTS_LEN: u64 = 3;

/// The three harness ports as one bus device.
pub struct HarnessPorts {
    exit: ExitHandle,
    start: Instant,
    boot_marked: bool,
    snapshot_at_marker: bool,
}

impl HarnessPorts {
    /// `start` is minivm's process start, the origin of the boot time it logs.
    pub fn new(exit: ExitHandle, start: Instant) -> Self {
        HarnessPorts {
            exit,
            start,
            boot_marked: false,
            snapshot_at_marker: false,
        }
    }

    /// Makes the first boot-finished write the snapshot point
    /// ([`ExitReason::Snapshot`]).
    pub fn snapshot_at_marker(mut self) -> Self {
        self.snapshot_at_marker = true;
        self
    }
}

impl BusDevice for HarnessPorts {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            EXIT_OFFSET => self.exit.request(ExitReason::GuestExit(value)),
            // Only the first marker is a boot time; later writes are noise.
            BOOT_MARKER_OFFSET if !self.boot_marked => {
                self.boot_marked = true;
                let ms = self.start.elapsed().as_secs_f64() * 1000.0;
                eprintln!("minivm: guest boot finished {ms:.1} ms after start");
                if self.snapshot_at_marker {
                    self.exit.request(ExitReason::Snapshot);
                }
            }
            PANIC_OFFSET => self.exit.request(ExitReason::GuestPanic),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_port_records_status_and_first_wins() {
        let exit = ExitHandle::new().unwrap();
        let mut p = HarnessPorts::new(exit.clone(), Instant::now());
        assert_eq!(exit.reason(), None);
        p.write(0, &[7]);
        p.write(0, &[9]);
        p.write(2, &[1]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestExit(7)));
        assert_eq!(exit.event_fd().read().unwrap(), 3);
    }

    #[test]
    fn boot_marker_does_not_exit_and_panic_port_does() {
        let exit = ExitHandle::new().unwrap();
        let mut p = HarnessPorts::new(exit.clone(), Instant::now());
        p.write(1, &[1]);
        p.write(1, &[]);
        assert_eq!(exit.reason(), None);
        let mut b = [0u8; 1];
        p.read(0, &mut b);
        assert_eq!(b, [0xff]);
        p.write(2, &[1]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanic));
    }

    #[test]
    fn the_snapshot_point_is_the_first_marker_and_can_be_resumed() {
        let exit = ExitHandle::new().unwrap();
        let mut p = HarnessPorts::new(exit.clone(), Instant::now()).snapshot_at_marker();
        p.write(1, &[1]);
        assert_eq!(exit.reason(), Some(ExitReason::Snapshot));
        assert!(exit.resume_after_snapshot());
        assert_eq!(exit.reason(), None);
        assert!(exit.event_fd().read().is_err(), "the wake-up was drained");
        p.write(1, &[1]);
        assert_eq!(exit.reason(), None, "only the first marker is the point");
        p.write(0, &[5]);
        assert!(!exit.resume_after_snapshot(), "other reasons stay");
        assert_eq!(exit.reason(), Some(ExitReason::GuestExit(5)));
    }
}
