//! The machine's I/O port map: which device answers at which ports, and the
//! legacy interrupt line of the one that has one. One place, like the memory
//! map in the `layout` module: the ACPI tables (the `acpi` module) announce these
//! ports and the VMM puts the devices on its port bus at them; the devices
//! (crate `devices`) only decode offsets from the base they are given.

/// A block of consecutive I/O ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub len: u16,
}

impl PortRange {
    /// The port at `offset` from the base.
    pub const fn at(self, offset: u16) -> u16 {
        assert!(offset < self.len, "offset outside the range");
        self.base + offset
    }

    /// Whether `port` is in the range.
    pub const fn contains(self, port: u16) -> bool {
        port >= self.base && port - self.base < self.len
    }
}

/// The i8042 keyboard controller (`devices::i8042`): data at +0,
/// command/status at +4; only there for the reset line `reboot=k` pulses.
pub const I8042: PortRange = PortRange { base: 0x60, len: 5 };

/// The test-harness ports (`devices::harness`): exit, boot marker, panic.
/// Guests and users write them by number (README, `minivm run --help`).
pub const HARNESS: PortRange = PortRange { base: 0xf4, len: 3 };
/// The byte written here becomes minivm's exit status.
pub const EXIT_PORT: u16 = HARNESS.at(0);
/// A write here logs "boot finished".
pub const BOOT_MARKER_PORT: u16 = HARNESS.at(1);
/// minivm's guest kernel writes here when it panics (`minivm_panic_port=`).
pub const PANIC_PORT: u16 = HARNESS.at(2);

/// The ACPI power-management registers of the hardware-reduced platform
/// (`devices::acpi`): sleep control at +0, sleep status at +1, reset at +2.
pub const ACPI_PM: PortRange = PortRange {
    base: 0x3c0,
    len: 3,
};

/// COM1, the 8250 UART every VM has (`devices::serial`).
pub const COM1: PortRange = PortRange {
    base: 0x3f8,
    len: 8,
};
/// COM1's interrupt line (GSI), its ISA IRQ.
pub const COM1_GSI: u32 = 4;

/// The interrupt line (GSI) of the power button's ACPI Generic Event Device
/// (`boot::acpi`): minivm pulses it, through an irqfd, to ask the guest to
/// shut down. ISA IRQ 3 (COM2's), which nothing else here uses.
pub const GED_GSI: u32 = 3;

/// Every range, for the overlap check.
pub const ALL: [PortRange; 4] = [I8042, HARNESS, ACPI_PM, COM1];

const _: () = assert!(COM1_GSI < crate::layout::VIRTIO_FIRST_IRQ);
const _: () = assert!(GED_GSI < crate::layout::VIRTIO_FIRST_IRQ && GED_GSI != COM1_GSI);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_do_not_overlap() {
        let mut r = ALL;
        r.sort_by_key(|r| r.base);
        for w in r.windows(2) {
            assert!(
                u32::from(w[0].base) + u32::from(w[0].len) <= u32::from(w[1].base),
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn the_harness_ports_are_the_documented_ones() {
        // README and `minivm run --help` name them: they must not move.
        assert_eq!(
            (EXIT_PORT, BOOT_MARKER_PORT, PANIC_PORT),
            (0xf4, 0xf5, 0xf6)
        );
        assert!(HARNESS.contains(PANIC_PORT) && !HARNESS.contains(0xf7));
    }
}
