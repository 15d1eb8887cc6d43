//! ACPI power management registers of a hardware-reduced platform: the FADT's
//! sleep control, sleep status and reset registers (`boot::acpi` announces
//! them at the ports `boot::ports::ACPI_PM` gives).
//!
//! | offset | register      | guest write                            | effect                |
//! |--------|---------------|----------------------------------------|-----------------------|
//! | 0      | sleep control | SLP_EN (bit 5) with SLP_TYP (bits 2-4) = 5 | power off (S5)    |
//! | 1      | sleep status  | WAK_STS (bit 7), to clear it           | none                  |
//! | 2      | reset         | [`RESET_VALUE`]                        | reset                 |
//!
//! Linux's `poweroff` writes 0x80 to sleep status, then 0x34 to sleep control.
//! Reads return 0.

use crate::bus::BusDevice;
use crate::{ExitHandle, ExitReason};

/// Ports the register block spans.
pub const ACPI_PM_PORTS_LEN: u64 = 3;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;
/// The FADT's RESET_VALUE: writing it to the reset register resets the VM.
pub const RESET_VALUE: u8 = 1;
/// The sleep type the DSDT's `\_S5_` package announces.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Sleep control: SLP_EN starts the transition to the state in SLP_TYP.
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// The register block as one bus device.
pub struct AcpiPmDevice {
    exit: ExitHandle,
}

impl AcpiPmDevice {
    /// A device that requests [`ExitReason::PowerOff`] on S5 and
    /// [`ExitReason::Reset`] on a reset-register write.
    pub fn new(exit: ExitHandle) -> Self {
        AcpiPmDevice { exit }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // The registers are 8 bits wide; a wider write carries them in its low byte.
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == S5_SLEEP_TYPE {
                    self.exit.request(ExitReason::PowerOff);
                } else {
                    // Only \_S5_ is announced; other states are a confused guest.
                    tracing::warn!("guest asked for unsupported ACPI sleep type {sleep_type}");
                }
            }
            RESET_OFFSET if value == RESET_VALUE => self.exit.request(ExitReason::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Linux's acpi_hw_extended_sleep writes for S5.
    const S5_WRITE: u8 = (S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let exit = ExitHandle::new().unwrap();
        let mut d = AcpiPmDevice::new(exit.clone());
        assert_eq!(S5_WRITE, 0x34);
        // Clearing WAK_STS, S5 without SLP_EN, and other sleep types do nothing.
        d.write(SLEEP_STATUS_OFFSET, &[0x80]);
        d.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]);
        d.write(SLEEP_CONTROL_OFFSET, &[(3 << SLP_TYP_SHIFT) | SLP_EN]);
        d.write(SLEEP_CONTROL_OFFSET, &[]);
        d.write(SLEEP_STATUS_OFFSET, &[S5_WRITE]);
        assert_eq!(exit.reason(), None);
        d.write(SLEEP_CONTROL_OFFSET, &[S5_WRITE]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn wide_write_uses_the_low_byte() {
        let exit = ExitHandle::new().unwrap();
        let mut d = AcpiPmDevice::new(exit.clone());
        d.write(SLEEP_CONTROL_OFFSET, &[S5_WRITE, 0xff]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_value_resets_and_reads_are_zero() {
        let exit = ExitHandle::new().unwrap();
        let mut d = AcpiPmDevice::new(exit.clone());
        d.write(RESET_OFFSET, &[RESET_VALUE + 1]);
        d.write(SLEEP_CONTROL_OFFSET, &[RESET_VALUE]);
        assert_eq!(exit.reason(), None);
        let mut b = [0xaau8; 2];
        for off in 0..ACPI_PM_PORTS_LEN {
            d.read(off, &mut b[..1]);
            assert_eq!(b[0], 0);
        }
        d.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
        assert_eq!(exit.event_fd().read().unwrap(), 1);
    }
}
