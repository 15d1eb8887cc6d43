//! The boot vCPU's starting state for Linux's 64-bit entry: long mode with
//! identity-mapped page tables, flat segments, `rsi` pointing at the zero page.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{
    BOOT_STACK_POINTER, GDT_ADDR, IDENTITY_MAPPED_GIB, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR,
    ZERO_PAGE_ADDR,
};
use crate::GuestMemory;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Errors from writing boot structures.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the {what} at guest address {addr:#x}: {source}")]
pub struct CpuSetupError {
    what: &'static str,
    addr: u64,
    source: vm_memory::GuestMemoryError,
}

/// A GDT entry from its parts (the layout is historical: base and limit are split).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
}

/// The boot GDT: null, 64-bit code (selector 0x08), data (0x10), TSS (0x18).
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The KVM segment that GDT entry `index` describes.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: (((entry >> 32) & 0xf_0000) | (entry & 0xffff)) as u32,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemory,
    val: T,
    addr: u64,
    what: &'static str,
) -> Result<(), CpuSetupError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| CpuSetupError { what, addr, source })
}

/// Writes the GDT, an empty IDT and identity page tables for the first
/// [`IDENTITY_MAPPED_GIB`] GiB, and returns the special registers for long mode.
pub fn setup_long_mode(
    mem: &GuestMemory,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, CpuSetupError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        write(mem, *e, GDT_ADDR + 8 * i as u64, "GDT")?;
    }
    write(mem, 0u64, IDT_ADDR, "IDT")?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    // PML4[0] -> PDPT; PDPT[i] -> PD i; PD entries map 2 MiB pages.
    write(mem, PDPT_ADDR | 0x03, PML4_ADDR, "PML4")?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PD_ADDR + gib * 0x1000;
        write(mem, pd | 0x03, PDPT_ADDR + gib * 8, "PDPT")?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            write(mem, addr | 0x83, pd + i * 8, "page directory")?;
        }
    }
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(sregs)
}

/// General registers for entering the kernel at `entry`.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    }
}

/// FPU state as after FNINIT, with SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSRs Linux expects zeroed or set at entry (as Firecracker and vmm-reference do).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip_into_segments() {
        let cs = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.s, cs.type_),
            (0x08, 1, 0, 1, 1, 0xb)
        );
        assert_eq!((cs.limit, cs.g, cs.unusable), (0xfffff, 1, 0));
        let ds = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((ds.selector, ds.l, ds.db, ds.type_), (0x10, 0, 1, 0x3));
        let null = segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
        assert_eq!(gdt_entry(0xa09b, 0x1234_5678, 0xfffff) >> 56, 0x12);
    }

    #[test]
    fn page_tables_identity_map_with_2mib_pages() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let s = setup_long_mode(&mem, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, PML4_ADDR);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 24)).unwrap();
        assert_eq!(pdpt3 & !0xfff, PD_ADDR + 3 * 0x1000);
        // The 2 MiB page covering 3 GiB + 4 MiB.
        let pde: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + 3 * 0x1000 + 2 * 8))
            .unwrap();
        assert_eq!(pde, ((3 << 30) + (4 << 20)) | 0x83);
        let gdt1: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(gdt1, BOOT_GDT[1]);
    }

    #[test]
    fn regs_point_at_zero_page() {
        let r = boot_regs(GuestAddress(0x100_0000));
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE_ADDR, 2));
        assert!(boot_msrs().iter().all(|m| m.index != 0x10a));
    }
}
