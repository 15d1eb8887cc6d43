//! KVM state of a VM: each vCPU's and the VM's own (interrupt controllers,
//! PIT, clock), read and written in the orders KVM needs (Firecracker's,
//! checked on kvm-pvm hosts: every ioctl below works there).

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// `IA32_TSC_DEADLINE`: written after `IA32_TSC`, or KVM arms the LAPIC
/// timer against the old TSC and the guest loses its timer interrupts.
const MSR_TSC_DEADLINE: u32 = 0x6e0;
const MSR_TSC: u32 = 0x10;
/// `IA32_MCG_CTL`: KVM lists it but refuses most writes.
const MSR_MCG_CTL: u32 = 0x17b;

/// One vCPU's state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    cpuid: Vec<kvm_cpuid_entry2>,
    mp_state: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debug_regs: kvm_debugregs,
    lapic: kvm_lapic_state,
    msrs: Vec<kvm_msr_entry>,
    events: kvm_vcpu_events,
}

/// The VM's in-kernel devices and clock.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
    pic_master: kvm_irqchip,
    pic_slave: kvm_irqchip,
    ioapic: kvm_irqchip,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |e| SnapshotError::Kvm { what, source: e }
}

impl VcpuState {
    /// Reads a stopped vCPU's state. MP state first (reading it runs
    /// pending APIC events), vCPU events last.
    pub fn save(kvm: &Kvm, fd: &VcpuFd) -> Result<VcpuState, SnapshotError> {
        let mp_state = fd.get_mp_state().map_err(kvm_err("get MP state"))?;
        let regs = fd.get_regs().map_err(kvm_err("get registers"))?;
        let sregs = fd.get_sregs().map_err(kvm_err("get special registers"))?;
        // KVM_GET_FPU does not report the guest's real FPU state; XSAVE does.
        let xsave = fd.get_xsave().map_err(kvm_err("get XSAVE"))?;
        let xcrs = fd.get_xcrs().map_err(kvm_err("get XCRs"))?;
        let debug_regs = fd
            .get_debug_regs()
            .map_err(kvm_err("get debug registers"))?;
        let lapic = fd.get_lapic().map_err(kvm_err("get LAPIC"))?;
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get CPUID"))?;
        // KVM_GET_CPUID2 leaves the unused tail zeroed.
        let cpuid: Vec<kvm_cpuid_entry2> = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function != 0 || e.index != 0 || e.eax != 0 || e.ebx != 0)
            .copied()
            .collect();
        let msrs = save_msrs(kvm, fd)?;
        let events = fd.get_vcpu_events().map_err(kvm_err("get vCPU events"))?;
        Ok(VcpuState {
            cpuid,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            events,
        })
    }

    /// Writes the state into a fresh vCPU. CPUID first (the rest depends on
    /// it), registers before events (setting them clears pending
    /// exceptions), special registers before the LAPIC (they hold the APIC
    /// base), the LAPIC before the MSRs (the TSC deadline needs it), events last.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), SnapshotError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| SnapshotError::Invalid {
            what: format!("{} CPUID entries", self.cpuid.len()),
        })?;
        fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(kvm_err("set MP state"))?;
        fd.set_regs(&self.regs).map_err(kvm_err("set registers"))?;
        fd.set_sregs(&self.sregs)
            .map_err(kvm_err("set special registers"))?;
        // SAFETY: the buffer is a whole `kvm_xsave` read from KVM on a host
        // whose XSAVE size was checked to match.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(kvm_err("set XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(kvm_err("set XCRs"))?;
        fd.set_debug_regs(&self.debug_regs)
            .map_err(kvm_err("set debug registers"))?;
        fd.set_lapic(&self.lapic).map_err(kvm_err("set LAPIC"))?;
        let tsc = self
            .msrs
            .iter()
            .find(|m| m.index == MSR_TSC)
            .map(|m| m.data);
        let (deadline, rest): (Vec<kvm_msr_entry>, Vec<kvm_msr_entry>) =
            self.msrs.iter().partition(|m| m.index == MSR_TSC_DEADLINE);
        // A deadline of 0 would leave the LAPIC timer disarmed for good.
        let deadline: Vec<kvm_msr_entry> = deadline
            .into_iter()
            .map(|mut m| {
                if m.data == 0 {
                    m.data = tsc.unwrap_or(0);
                }
                m
            })
            .collect();
        for chunk in [rest, deadline] {
            set_msrs(fd, &chunk)?;
        }
        fd.set_vcpu_events(&self.events)
            .map_err(kvm_err("set vCPU events"))?;
        // Tells a guest using kvmclock that it was paused (EINVAL without kvmclock).
        let _ = fd.kvmclock_ctrl();
        Ok(())
    }
}

/// Every MSR KVM lists that reads back, but `MCG_CTL`.
fn save_msrs(kvm: &Kvm, fd: &VcpuFd) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("get MSR index list"))?;
    let mut entries: Vec<kvm_msr_entry> = list
        .as_slice()
        .iter()
        .filter(|&&i| i != MSR_MCG_CTL)
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    // KVM_GET_MSRS stops at the first MSR it cannot read: drop it, go on.
    loop {
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::Invalid {
            what: format!("{} MSRs", entries.len()),
        })?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm_err("get MSRs"))?;
        if n == entries.len() {
            return Ok(msrs.as_slice().to_vec());
        }
        tracing::debug!(
            "snapshot: MSR {:#x} does not read back; left out",
            entries[n].index
        );
        entries.remove(n);
    }
}

fn set_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), SnapshotError> {
    if entries.is_empty() {
        return Ok(());
    }
    let msrs = Msrs::from_entries(entries).map_err(|_| SnapshotError::Invalid {
        what: format!("{} MSRs", entries.len()),
    })?;
    let n = fd.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
    if n != entries.len() {
        return Err(SnapshotError::Msr {
            index: entries[n].index,
        });
    }
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(kvm_err("get irqchip"))?;
    Ok(c)
}

impl VmState {
    /// Reads the VM's interrupt controllers, PIT and clock (after the vCPUs).
    pub fn save(vm: &VmFd) -> Result<VmState, SnapshotError> {
        Ok(VmState {
            pit: vm.get_pit2().map_err(kvm_err("get PIT"))?,
            clock: vm.get_clock().map_err(kvm_err("get clock"))?,
            pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        })
    }

    /// Writes them into a fresh VM, after its vCPUs' state. The clock goes
    /// back to the saved value (flags 0): the guest sees no time pass while
    /// it was saved.
    pub fn restore(&self, vm: &VmFd) -> Result<(), SnapshotError> {
        vm.set_pit2(&self.pit).map_err(kvm_err("set PIT"))?;
        let clock = kvm_clock_data {
            flags: 0,
            ..self.clock
        };
        vm.set_clock(&clock).map_err(kvm_err("set clock"))?;
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip).map_err(kvm_err("set irqchip"))?;
        }
        Ok(())
    }
}
