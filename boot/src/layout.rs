//! Where everything lives in guest physical memory. One place, so that
//! overlaps are visible at a glance.

/// GDT (4 entries) used for the 64-bit entry.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT: any exception before the kernel loads its own is a triple fault.
pub const IDT_ADDR: u64 = 0x520;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer (grows down, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT, then one PD per GiB mapped.
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First page directory (2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// GiB identity-mapped for the entry (the kernel builds its own tables at once).
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest command line we pass (the kernel's COMMAND_LINE_SIZE on x86_64).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of high memory, where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole: RAM above it is moved past 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device; each device gets [`VIRTIO_MMIO_SIZE`] bytes.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Register window of one virtio-mmio device.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI handed to virtio-mmio devices (0-4 are legacy ISA devices).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// Last usable GSI of the in-kernel IOAPIC.
pub const LAST_IRQ: u32 = 23;

// Checked when compiling: the stack sits between the zero page and the page
// tables, the command line below the EBDA, the devices inside the MMIO hole.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_ADDR && BOOT_STACK_POINTER > ZERO_PAGE_ADDR + 0x1000);
const _: () = assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
const _: () =
    assert!(VIRTIO_MMIO_BASE >= MMIO_GAP_START && VIRTIO_MMIO_BASE + 0x10_0000 < MMIO_GAP_END);

/// The guest RAM ranges for `mem_size` bytes of memory, skipping the MMIO hole.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_areas_do_not_overlap() {
        // (start, len) of each structure written at boot.
        let mut areas = [
            (GDT_ADDR, 4 * 8),
            (IDT_ADDR, 8),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPT_ADDR, 0x1000),
            (PD_ADDR, 0x1000 * IDENTITY_MAPPED_GIB),
            (CMDLINE_ADDR, CMDLINE_MAX_SIZE as u64),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn ram_skips_mmio_hole() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }
}
