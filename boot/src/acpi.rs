//! ACPI tables for a hardware-reduced x86 platform, built with rust-vmm's
//! `acpi_tables` crate (as Cloud Hypervisor does):
//!
//! ```text
//! RSDP (0xe0000) -> XSDT -> FADT -> DSDT  (\_S5_, COM1, power button, virtio-mmio devices)
//!                        -> MADT          (one Local APIC per vCPU, the IOAPIC)
//! ```
//!
//! They give Linux what it otherwise lacks: the vCPUs to bring up (MADT) and
//! a way to power off (FADT sleep registers + `\_S5_`). The sleep control,
//! sleep status and reset registers are the ports of [`ports::ACPI_PM`],
//! served by `devices::acpi::AcpiPmDevice`; their offsets and values here must
//! match it (a unit test checks that they do).
//!
//! The power button: a hardware-reduced platform has no fixed-feature
//! button, so (as in Cloud Hypervisor) a Generic Event Device (`ACPI0013`)
//! owns an edge interrupt, [`ports::GED_GSI`], whose `_EVT` method notifies
//! the power button device (`PNP0C0C`) with 0x80, "button pressed". Linux's
//! evged runs `_EVT` on each edge (no status register to read: there is one
//! event), the ACPI button driver turns the notification into KEY_POWER on
//! an input device, and systemd-logind or acpid shut the guest down.
//!
//! On a hardware-reduced platform Linux drops the legacy PIC and pre-allocates
//! no ISA IRQs, so a device that is not described here gets no interrupt: the
//! serial port and the virtio-mmio devices must be in the DSDT (a
//! `virtio_mmio.device=4K@base:5` command-line device fails with -EINVAL).
//!
//! Everything lives in the BIOS area 0xe0000..1 MiB, which the e820 map leaves
//! out of RAM and which Linux also scans for an RSDP. [`write_rsdp_pointer`]
//! additionally stores the RSDP address in the zero page, so no scan is needed.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use linux_loader::loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{EBDA_START, HIMEM_START, VIRTIO_MMIO_SIZE, ZERO_PAGE_ADDR};
use crate::ports::{self, COM1, COM1_GSI, GED_GSI};
use crate::GuestMemory;

/// Where the RSDP goes: the start of the BIOS read-only area Linux scans.
pub const RSDP_ADDR: u64 = 0x000e_0000;
/// End (exclusive) of the area the tables may fill.
pub const ACPI_TABLES_END: u64 = HIMEM_START;
/// Sleep control register (ACPI 6, hardware-reduced): SLP_TYP and SLP_EN.
pub const SLEEP_CONTROL_PORT: u16 = ports::ACPI_PM.at(0);
/// Sleep status register: WAK_STS.
pub const SLEEP_STATUS_PORT: u16 = ports::ACPI_PM.at(1);
/// Reset register.
pub const RESET_PORT: u16 = ports::ACPI_PM.at(2);
/// What the guest writes to [`RESET_PORT`] to reset the machine.
pub const RESET_VALUE: u8 = 1;
/// The sleep type `\_S5_` announces; the guest writes it to SLP_TYP to power off.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The notification a power button device gets when pressed (ACPI 6.5, 5.6.6).
const POWER_BUTTON_PRESSED: u8 = 0x80;
/// The local APICs' address as seen by every vCPU.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The in-kernel IOAPIC's address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// IOAPIC id: KVM's IOAPIC ID register resets to 0, so say the same.
pub const IOAPIC_ID: u8 = 0;
/// The UART's ports, as an AML I/O descriptor counts them.
const COM1_PORTS_LEN: u8 = COM1.len as u8;
const _: () = assert!(COM1.len <= u8::MAX as u16);

const OEM_ID: [u8; 6] = *b"MINIVM";
const OEM_REVISION: u32 = 1;
/// FADT "Hypervisor Vendor Identity".
const HYPERVISOR_VENDOR: [u8; 8] = *b"MINIVM  ";
/// Tables are placed at this alignment after the RSDP.
const TABLE_ALIGN: u64 = 16;
/// MADT header fields after the 36-byte SDT header.
const MADT_LAPIC_ADDR_OFFSET: usize = 36;
const MADT_FLAGS_OFFSET: usize = 40;
const MADT_HEADER_LEN: u32 = 44;
/// MADT flag: dual 8259 PICs are present as well (KVM's in-kernel PIC is;
/// Linux ignores the PIC anyway when the FADT says hardware-reduced).
const MADT_PCAT_COMPAT: u32 = 1;
/// FADT IA-PC boot architecture flags: no VGA, no MSI, no ASPM, no CMOS RTC.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5);
/// Names of DSDT devices are "V" plus three hex digits.
const MAX_DSDT_DEVICES: usize = 0x1000;

// The tables sit in the BIOS hole between the EBDA and 1 MiB, which the e820
// map keeps out of RAM and nothing else in layout.rs uses.
const _: () = assert!(RSDP_ADDR >= EBDA_START && RSDP_ADDR < ACPI_TABLES_END);
const _: () = assert!(RSDP_ADDR & 0xf == 0);

/// Errors from building the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// A table could not be written to guest memory.
    #[error("cannot write the ACPI {table} at guest address {addr:#x}: {source}")]
    Write {
        table: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    /// The zero page could not be read or written back.
    #[error("cannot {op} the zero page at guest address {addr:#x}: {source}")]
    ZeroPage {
        op: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    /// The tables do not fit below 1 MiB.
    #[error(
        "the ACPI {table} ({len} bytes at {addr:#x}) would end past the ACPI area's end {end:#x}"
    )]
    TooLarge {
        table: &'static str,
        addr: u64,
        len: usize,
        end: u64,
    },
    /// A VM without vCPUs has nothing to put in the MADT.
    #[error("the MADT needs at least one vCPU")]
    NoCpus,
    /// `Memory32Fixed` resources cannot describe MMIO above 4 GiB.
    #[error("virtio-mmio device {index} at {base:#x} is not below 4 GiB, so the DSDT cannot describe it")]
    DeviceAbove4G { index: usize, base: u64 },
    /// More devices than DSDT names.
    #[error("{count} virtio-mmio devices are too many for the DSDT (at most {MAX_DSDT_DEVICES})")]
    TooManyDevices { count: usize },
}

/// AML that is already bytes, so it can sit in a `Scope` next to builder objects.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// One virtio-mmio device as a `LNRO0005` device (the ACPI id Linux's
/// virtio_mmio driver matches) with its register window and edge interrupt.
fn virtio_device_aml(index: usize, base: u64, gsi: u32) -> Result<RawAml, AcpiError> {
    let base32 = u32::try_from(base)
        .ok()
        .filter(|b| b.checked_add(VIRTIO_MMIO_SIZE as u32).is_some())
        .ok_or(AcpiError::DeviceAbove4G { index, base })?;
    let name = format!("V{index:03X}");
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &(index as u32));
    let mmio = aml::Memory32Fixed::new(true, base32, VIRTIO_MMIO_SIZE as u32);
    let irq = aml::Interrupt::new(true, true, false, false, gsi);
    let crs = aml::Name::new(
        "_CRS".into(),
        &aml::ResourceTemplate::new(vec![&mmio, &irq]),
    );
    Ok(RawAml(to_bytes(&aml::Device::new(
        name.as_str().into(),
        vec![&hid, &uid, &crs],
    ))))
}

/// The UART, so that Linux's 8250_pnp driver gets its interrupt mapped.
fn com1_aml() -> RawAml {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &0u8);
    let io = aml::IO::new(COM1.base, COM1.base, 1, COM1_PORTS_LEN);
    let irq = aml::Interrupt::new(true, true, false, false, COM1_GSI);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&io, &irq]));
    RawAml(to_bytes(&aml::Device::new(
        "COM1".into(),
        vec![&hid, &uid, &crs],
    )))
}

/// The power button (`\_SB_.PWRB`) and the Generic Event Device that
/// notifies it when [`GED_GSI`] fires.
fn power_button_aml() -> [RawAml; 2] {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    let uid = aml::Name::new("_UID".into(), &0u8);
    let pwrb = RawAml(to_bytes(&aml::Device::new("PWRB".into(), vec![&hid, &uid])));
    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let irq = aml::Interrupt::new(true, true, false, false, GED_GSI);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&irq]));
    let button = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&button, &POWER_BUTTON_PRESSED);
    let evt = aml::Method::new("_EVT".into(), 1, false, vec![&notify]);
    let ged = RawAml(to_bytes(&aml::Device::new(
        "GED_".into(),
        vec![&hid, &uid, &crs, &evt],
    )));
    [ged, pwrb]
}

/// The DSDT: `\_S5_` (so Linux powers off through the sleep registers), and
/// under `\_SB_` the UART, the power button and the virtio-mmio devices.
fn dsdt(virtio_devices: &[(u64, u32)]) -> Result<Vec<u8>, AcpiError> {
    if virtio_devices.len() > MAX_DSDT_DEVICES {
        return Err(AcpiError::TooManyDevices {
            count: virtio_devices.len(),
        });
    }
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"MINIVMDS", OEM_REVISION);
    // SLP_TYPa, SLP_TYPb (unused when hardware-reduced), two reserved.
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]),
    );
    table.append_slice(&to_bytes(&s5));
    let mut devices = vec![com1_aml()];
    devices.extend(power_button_aml());
    for (i, &(base, gsi)) in virtio_devices.iter().enumerate() {
        devices.push(virtio_device_aml(i, base, gsi)?);
    }
    let children: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
    table.append_slice(&to_bytes(&aml::Scope::new("\\_SB_".into(), children)));
    Ok(table.as_slice().to_vec())
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The FADT: hardware-reduced ACPI, with sleep control/status and reset
/// registers and no fixed-feature buttons.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"MINIVMFA", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Set means "no fixed power/sleep button" (there is none to press).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    f.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    f.reset_reg = io_register(RESET_PORT);
    f.reset_value = RESET_VALUE;
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    to_bytes(&f.finalize())
}

/// The MADT: local APIC ids 0..cpus (KVM's default: APIC id = vCPU id), all
/// enabled, and the IOAPIC with GSIs from 0.
///
/// ISA IRQs map 1:1 to IOAPIC pins, so there is no interrupt source
/// override: KVM's default GSI routing sends the PIT's IRQ 0 to pin 0, not to
/// pin 2 as on PC chipsets (QEMU installs its own routing to make 0->2 true).
fn madt(cpus: u8) -> Vec<u8> {
    let mut table = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        5,
        OEM_ID,
        *b"MINIVMAP",
        OEM_REVISION,
    );
    table.write_u32(MADT_LAPIC_ADDR_OFFSET, LAPIC_ADDR);
    table.write_u32(MADT_FLAGS_OFFSET, MADT_PCAT_COMPAT);
    for id in 0..cpus {
        table.append_slice(&to_bytes(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    table.append_slice(&to_bytes(&IoApic::new(IOAPIC_ID, IOAPIC_ADDR, 0)));
    table.as_slice().to_vec()
}

/// Places tables one after another in the ACPI area.
struct Placer<'a> {
    mem: &'a GuestMemory,
    next: u64,
}

impl Placer<'_> {
    fn place(&mut self, table: &'static str, bytes: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.next;
        let end = addr + bytes.len() as u64;
        if end > ACPI_TABLES_END {
            return Err(AcpiError::TooLarge {
                table,
                addr,
                len: bytes.len(),
                end: ACPI_TABLES_END,
            });
        }
        write(self.mem, table, bytes, addr)?;
        self.next = end.next_multiple_of(TABLE_ALIGN);
        Ok(addr)
    }
}

fn write(mem: &GuestMemory, table: &'static str, bytes: &[u8], addr: u64) -> Result<(), AcpiError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| AcpiError::Write {
            table,
            addr,
            source,
        })
}

/// Writes RSDP, XSDT, FADT, DSDT and MADT for `cpus` vCPUs and returns the
/// RSDP's address (for [`write_rsdp_pointer`]).
///
/// `virtio_devices` (MMIO base, GSI; [`VIRTIO_MMIO_SIZE`] bytes each) are
/// described in the DSDT, which is how the guest must find them: do not also
/// put them on the kernel command line (`virtio_mmio.device=`), which cannot
/// work on a hardware-reduced platform and would claim the same registers.
pub fn create_acpi_tables(
    mem: &GuestMemory,
    cpus: u8,
    virtio_devices: &[(u64, u32)],
) -> Result<GuestAddress, AcpiError> {
    if cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let mut placer = Placer {
        mem,
        next: (RSDP_ADDR + Rsdp::len() as u64).next_multiple_of(TABLE_ALIGN),
    };
    let dsdt_addr = placer.place("DSDT", &dsdt(virtio_devices)?)?;
    let fadt_addr = placer.place("FADT", &fadt(dsdt_addr))?;
    let madt_addr = placer.place("MADT", &madt(cpus))?;
    let mut xsdt = XSDT::new(OEM_ID, *b"MINIVMXS", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = placer.place("XSDT", &to_bytes(&xsdt))?;
    write(
        mem,
        "RSDP",
        &to_bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
        RSDP_ADDR,
    )?;
    Ok(GuestAddress(RSDP_ADDR))
}

/// Stores `rsdp` in `acpi_rsdp_addr` of the zero page already written at
/// [`ZERO_PAGE_ADDR`] (boot protocol 2.14), so Linux need not scan for it.
pub fn write_rsdp_pointer(mem: &GuestMemory, rsdp: GuestAddress) -> Result<(), AcpiError> {
    let addr = GuestAddress(ZERO_PAGE_ADDR);
    let zero_page_err = |op| {
        move |source| AcpiError::ZeroPage {
            op,
            addr: ZERO_PAGE_ADDR,
            source,
        }
    };
    let mut params: boot_params = mem.read_obj(addr).map_err(zero_page_err("read"))?;
    params.acpi_rsdp_addr = rsdp.0;
    mem.write_obj(params, addr).map_err(zero_page_err("write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDT_HEADER_LEN: usize = 36;
    /// FADT field offsets (ACPI 6.5, table 5.9).
    const FADT_FLAGS: usize = 112;
    const FADT_RESET_REG: usize = 116;
    const FADT_RESET_VALUE: usize = 128;
    const FADT_X_DSDT: usize = 140;
    const FADT_SLEEP_CONTROL: usize = 244;
    const FADT_SLEEP_STATUS: usize = 256;

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn bytes(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    /// Reads the table at `addr`, checking its signature, length and checksum.
    fn table(mem: &GuestMemory, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = bytes(mem, addr, SDT_HEADER_LEN);
        assert_eq!(&header[0..4], signature, "signature at {addr:#x}");
        let len = u32_at(&header, 4) as usize;
        assert!(len >= SDT_HEADER_LEN);
        assert!(addr + len as u64 <= ACPI_TABLES_END);
        let t = bytes(mem, addr, len);
        assert!(
            checksum_ok(&t),
            "{} checksum",
            String::from_utf8_lossy(signature)
        );
        t
    }

    /// RSDP -> XSDT -> the tables it lists, by signature.
    fn walk(mem: &GuestMemory, rsdp: GuestAddress) -> Vec<(u64, Vec<u8>)> {
        let r = bytes(mem, rsdp.0, 36);
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]), "RSDP v1 checksum");
        assert!(checksum_ok(&r), "RSDP extended checksum");
        assert_eq!(r[15], 2, "RSDP revision");
        assert_eq!(u32_at(&r, 20), 36, "RSDP length");
        let xsdt = table(mem, u64_at(&r, 24), b"XSDT");
        xsdt[SDT_HEADER_LEN..]
            .chunks(8)
            .map(|c| {
                let addr = u64::from_le_bytes(c.try_into().unwrap());
                let sig: [u8; 4] = bytes(mem, addr, 4).try_into().unwrap();
                (addr, table(mem, addr, &sig))
            })
            .collect()
    }

    fn gas_port(b: &[u8], off: usize) -> (u8, u8, u8, u64) {
        (b[off], b[off + 1], b[off + 3], u64_at(b, off + 4))
    }

    #[test]
    fn tables_link_up_with_valid_checksums() {
        let mem = memory();
        let rsdp = create_acpi_tables(&mem, 4, &[]).unwrap();
        assert_eq!(rsdp, GuestAddress(RSDP_ADDR));
        let tables = walk(&mem, rsdp);
        let sigs: Vec<&[u8]> = tables.iter().map(|(_, t)| &t[0..4]).collect();
        assert_eq!(sigs, [b"FACP", b"APIC"]);

        let fadt = &tables[0].1;
        assert_eq!(fadt.len(), 276);
        let flags = u32_at(fadt, FADT_FLAGS);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // System I/O, 8 bits wide, byte access, at the device's ports.
        assert_eq!(
            gas_port(fadt, FADT_SLEEP_CONTROL),
            (1, 8, 1, u64::from(SLEEP_CONTROL_PORT))
        );
        assert_eq!(
            gas_port(fadt, FADT_SLEEP_STATUS),
            (1, 8, 1, u64::from(SLEEP_STATUS_PORT))
        );
        assert_eq!(
            gas_port(fadt, FADT_RESET_REG),
            (1, 8, 1, u64::from(RESET_PORT))
        );
        assert_eq!(fadt[FADT_RESET_VALUE], RESET_VALUE);

        let dsdt = table(&mem, u64_at(fadt, FADT_X_DSDT), b"DSDT");
        // NameOp "_S5_" PackageOp len=7 count=4 BytePrefix 5 Zero Zero Zero.
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 4, 0x0a, 5, 0, 0, 0,
        ];
        assert_eq!(&dsdt[SDT_HEADER_LEN..SDT_HEADER_LEN + s5.len()], &s5);
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn dsdt_always_has_com1() {
        let mem = memory();
        let tables = walk(&mem, create_acpi_tables(&mem, 1, &[]).unwrap());
        let dsdt = table(&mem, u64_at(&tables[0].1, FADT_X_DSDT), b"DSDT");
        assert!(contains(&dsdt, b"COM1"));
        // _HID: EISA id PNP0501, compressed.
        assert!(contains(&dsdt, &[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        // I/O descriptor: 16-bit decode, 0x3f8..0x3f8, align 1, 8 ports.
        assert!(contains(&dsdt, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]));
        // Extended IRQ descriptor: consumer, edge, active high, exclusive, GSI 4.
        assert!(contains(&dsdt, &[0x89, 6, 0, 0x03, 1, 4, 0, 0, 0]));
        assert!(!contains(&dsdt, b"LNRO0005"));
    }

    #[test]
    fn dsdt_has_the_power_button_and_its_event_device() {
        let mem = memory();
        let tables = walk(&mem, create_acpi_tables(&mem, 1, &[]).unwrap());
        let dsdt = table(&mem, u64_at(&tables[0].1, FADT_X_DSDT), b"DSDT");
        let find = |needle: &[u8]| contains(&dsdt, needle);
        // Device(PWRB) with _HID EISAID("PNP0C0C").
        assert!(find(b"PWRB"));
        assert!(find(&[
            0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0c, 0x0c
        ]));
        // Device(GED_) with _HID "ACPI0013".
        assert!(find(b"GED_"));
        assert!(find(b"ACPI0013\0"));
        // Extended IRQ descriptor: consumer, edge, active high, exclusive, GED_GSI.
        assert!(find(&[0x89, 6, 0, 0x03, 1, GED_GSI as u8, 0, 0, 0]));
        // Method(_EVT, 1) { Notify(\\_SB_.PWRB, 0x80) }: MethodOp, length,
        // name, flags = 1 argument, NotifyOp, RootChar, DualNamePrefix,
        // the two segments, BytePrefix 0x80.
        let mut evt = vec![0x14, 0x13, b'_', b'E', b'V', b'T', 0x01, 0x86, b'\\', 0x2e];
        evt.extend_from_slice(b"_SB_PWRB");
        evt.extend_from_slice(&[0x0a, 0x80]);
        assert!(find(&evt), "{:x?}", dsdt);
    }

    /// The MADT's interrupt controller structures as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut off = MADT_HEADER_LEN as usize;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2 && off + len <= madt.len());
            out.push((madt[off], &madt[off..off + len]));
            off += len;
        }
        out
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_ioapic() {
        for cpus in [1u8, 2, 32, 255] {
            let mem = memory();
            let tables = walk(&mem, create_acpi_tables(&mem, cpus, &[]).unwrap());
            let madt = &tables[1].1;
            assert_eq!(u32_at(madt, MADT_LAPIC_ADDR_OFFSET), LAPIC_ADDR);
            assert_eq!(u32_at(madt, MADT_FLAGS_OFFSET), MADT_PCAT_COMPAT);
            let entries = madt_entries(madt);
            let lapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 0).collect();
            assert_eq!(lapics.len(), usize::from(cpus));
            for (i, (_, e)) in lapics.iter().enumerate() {
                // uid, APIC id, flags = enabled.
                assert_eq!((e[2], e[3], u32_at(e, 4)), (i as u8, i as u8, 1));
            }
            let ioapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 1).collect();
            assert_eq!(ioapics.len(), 1);
            let io = ioapics[0].1;
            assert_eq!(
                (io[2], u32_at(io, 4), u32_at(io, 8)),
                (IOAPIC_ID, IOAPIC_ADDR, 0)
            );
            assert_eq!(entries.len(), usize::from(cpus) + 1);
        }
    }

    #[test]
    fn virtio_devices_go_into_the_dsdt() {
        let mem = memory();
        let devs = [(0xd000_0000, 5), (0xd000_1000, 6)];
        let tables = walk(&mem, create_acpi_tables(&mem, 1, &devs).unwrap());
        let dsdt = table(&mem, u64_at(&tables[0].1, FADT_X_DSDT), b"DSDT");
        let find = |needle: &[u8]| contains(&dsdt, needle);
        assert!(find(b"_SB_"));
        assert!(find(b"V000") && find(b"V001") && !find(b"V002"));
        assert!(find(b"LNRO0005\0"));
        // Memory32Fixed descriptor: read-write, base, length.
        let mut m = vec![0x86, 9, 0, 1];
        m.extend_from_slice(&0xd000_1000u32.to_le_bytes());
        m.extend_from_slice(&(VIRTIO_MMIO_SIZE as u32).to_le_bytes());
        assert!(find(&m));
        // Extended IRQ descriptor: consumer, edge, active high, exclusive, GSI 6.
        assert!(find(&[0x89, 6, 0, 0x03, 1, 6, 0, 0, 0]));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mem = memory();
        assert!(matches!(
            create_acpi_tables(&mem, 0, &[]),
            Err(AcpiError::NoCpus)
        ));
        let e = create_acpi_tables(&mem, 1, &[(0x1_0000_0000, 5)]).unwrap_err();
        assert!(matches!(e, AcpiError::DeviceAbove4G { index: 0, .. }));
        // Guest memory that ends before the BIOS area.
        let small = GuestMemory::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        let e = create_acpi_tables(&small, 1, &[]).unwrap_err();
        assert!(matches!(e, AcpiError::Write { table: "DSDT", .. }), "{e}");
        assert!(
            e.to_string().contains("DSDT at guest address 0xe0030"),
            "{e}"
        );
        // More devices than fit below 1 MiB.
        let many = vec![(0xd000_0000, 5); MAX_DSDT_DEVICES];
        assert!(matches!(
            create_acpi_tables(&mem, 1, &many),
            Err(AcpiError::TooLarge { table: "DSDT", .. })
        ));
    }

    #[test]
    fn rsdp_pointer_lands_in_the_zero_page() {
        let mem = memory();
        let mut params = boot_params::default();
        params.hdr.boot_flag = 0xaa55;
        mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        write_rsdp_pointer(&mem, GuestAddress(RSDP_ADDR)).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ p.acpi_rsdp_addr }, RSDP_ADDR);
        // The rest of the zero page is untouched.
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
    }

    #[test]
    fn ports_match_the_devices() {
        use devices::acpi as dev;
        let pm = ports::ACPI_PM.base;
        assert_eq!(SLEEP_CONTROL_PORT, pm + dev::SLEEP_CONTROL_OFFSET as u16);
        assert_eq!(SLEEP_STATUS_PORT, pm + dev::SLEEP_STATUS_OFFSET as u16);
        assert_eq!(RESET_PORT, pm + dev::RESET_OFFSET as u16);
        assert_eq!(RESET_VALUE, dev::RESET_VALUE);
        assert_eq!(S5_SLEEP_TYPE, dev::S5_SLEEP_TYPE);
        assert_eq!(u64::from(ports::ACPI_PM.len), dev::ACPI_PM_PORTS_LEN);
        assert_eq!(u64::from(COM1.len), devices::serial::SERIAL_PORTS_LEN);
        assert_eq!(u64::from(ports::I8042.len), devices::i8042::I8042_PORTS_LEN);
        use devices::harness as h;
        assert_eq!(u64::from(ports::HARNESS.len), h::HARNESS_PORTS_LEN);
        assert_eq!(
            (ports::EXIT_PORT, ports::BOOT_MARKER_PORT, ports::PANIC_PORT),
            (
                ports::HARNESS.base + h::EXIT_OFFSET as u16,
                ports::HARNESS.base + h::BOOT_MARKER_OFFSET as u16,
                ports::HARNESS.base + h::PANIC_OFFSET as u16
            )
        );
    }
}
