//! The zero page (`struct boot_params`): setup header, e820 map, command line
//! and initrd location, as the Linux x86 boot protocol wants them.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, GuestMemoryRegion};

use crate::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE, EBDA_START, HIMEM_START, ZERO_PAGE_ADDR};
use crate::loader::{KernelFormat, LoadedInitrd, LoadedKernel};
use crate::GuestMemory;

const E820_RAM: u32 = 1;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id: leaving it 0 made kernels treat us as LILO.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// `loadflags` bit: protected-mode code is loaded at 1 MiB.
const LOADED_HIGH: u8 = 1;
/// `loadflags` bit: the heap_end_ptr field is valid.
const CAN_USE_HEAP: u8 = 0x80;

/// Errors from writing the zero page or command line.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Guest memory is too small for the fixed boot structures.
    #[error("cannot write {what} at guest address {addr:#x}: {source}")]
    Write {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    /// More RAM ranges than e820 entries.
    #[error("too many memory ranges for the e820 table")]
    TooManyRanges,
}

/// The e820 map: RAM below the EBDA, then every RAM range from 1 MiB on.
pub fn e820_entries(mem: &GuestMemory) -> Vec<boot_e820_entry> {
    let mut out = vec![boot_e820_entry {
        addr: 0,
        size: EBDA_START,
        type_: E820_RAM,
    }];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(HIMEM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            out.push(boot_e820_entry {
                addr: start,
                size: end - start,
                type_: E820_RAM,
            });
        }
    }
    out
}

/// Writes the command line and the zero page for `kernel`.
pub fn write_boot_params(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<&LoadedInitrd>,
) -> Result<(), BootParamsError> {
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(BootParamsError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    if cmdline.contains('\0') {
        return Err(BootParamsError::CmdlineNul);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| BootParamsError::Write {
            what: "command line",
            addr: CMDLINE_ADDR,
            source,
        })?;

    let mut params = boot_params::default();
    if let KernelFormat::BzImage(hdr) = kernel.format {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
        params.hdr.loadflags = LOADED_HIGH;
    }
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = bytes.len() as u32;
    if let Some(i) = initrd {
        // Below 4 GiB by construction (load_initrd).
        params.hdr.ramdisk_image = i.addr.raw_value() as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    let e820 = e820_entries(mem);
    if e820.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyRanges);
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&e820) {
        *slot = *e;
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|source| BootParamsError::Write {
            what: "zero page",
            addr: ZERO_PAGE_ADDR,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

    fn kernel() -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(0x100_0000),
            end: 0x200_0000,
            format: KernelFormat::Elf,
        }
    }

    #[test]
    fn zero_page_has_magic_cmdline_and_e820() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let initrd = LoadedInitrd {
            addr: GuestAddress(0x300_0000),
            size: 1234,
        };
        write_boot_params(&mem, &kernel(), "console=ttyS0 quiet", Some(&initrd)).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 1234);
        assert_eq!(p.e820_entries, 2);
        assert_eq!({ p.e820_table[0].size }, EBDA_START);
        assert_eq!({ p.e820_table[1].addr }, HIMEM_START);
        assert_eq!({ p.e820_table[1].size }, (64 << 20) - HIMEM_START);
        let mut buf = [0u8; 20];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 quiet\0");
    }

    #[test]
    fn e820_follows_the_mmio_hole() {
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), 1 << 30),
        ])
        .unwrap();
        let e = e820_entries(&mem);
        assert_eq!(e.len(), 3);
        assert_eq!({ e[1].addr } + { e[1].size }, MMIO_GAP_START);
        assert_eq!(({ e[2].addr }, { e[2].size }), (MMIO_GAP_END, 1 << 30));
    }

    #[test]
    fn bad_cmdlines_are_rejected() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_boot_params(&mem, &kernel(), &long, None),
            Err(BootParamsError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            write_boot_params(&mem, &kernel(), "a\0b", None),
            Err(BootParamsError::CmdlineNul)
        ));
    }
}
