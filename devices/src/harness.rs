//! Ports for test harnesses and boot measurement.
//!
//! | port  | write                  | effect                                          |
//! |-------|------------------------|-------------------------------------------------|
//! | 0xf4  | one byte N             | the VM ends and minivm exits with status N      |
//! | 0xf5  | any byte               | "boot finished": minivm logs the time since its own start |
//! | 0xf6  | any byte               | the guest kernel panicked (minivm's kernel writes it when booted with `minivm_panic_port=0xf6`) |
//!
//! Reads return 0xff, like an absent ISA device. From a guest shell:
//! `printf '\007' | dd of=/dev/port bs=1 seek=244 count=1` exits with status 7.

use std::time::Instant;

use crate::bus::BusDevice;
use crate::{ExitHandle, ExitReason};

/// Exit port: the value written becomes minivm's exit status.
pub const EXIT_PORT: u16 = 0xf4;
/// Boot-finished port.
pub const BOOT_MARKER_PORT: u16 = 0xf5;
/// Kernel-panic port.
pub const PANIC_PORT: u16 = 0xf6;
/// Number of consecutive ports starting at [`EXIT_PORT`].
pub const HARNESS_PORTS_LEN: u64 = 3;

/// The three harness ports as one bus device at [`EXIT_PORT`].
pub struct HarnessPorts {
    exit: ExitHandle,
    start: Instant,
    boot_marked: bool,
}

impl HarnessPorts {
    /// `start` is minivm's process start, the origin of the boot time it logs.
    pub fn new(exit: ExitHandle, start: Instant) -> Self {
        HarnessPorts {
            exit,
            start,
            boot_marked: false,
        }
    }
}

impl BusDevice for HarnessPorts {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 => self.exit.request(ExitReason::GuestExit(value)),
            // Only the first marker is a boot time; later writes are noise.
            1 if !self.boot_marked => {
                self.boot_marked = true;
                let ms = self.start.elapsed().as_secs_f64() * 1000.0;
                eprintln!("minivm: guest boot finished {ms:.1} ms after start");
            }
            2 => self.exit.request(ExitReason::GuestPanic),
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
}
