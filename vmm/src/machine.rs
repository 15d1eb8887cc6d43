//! The KVM VM itself, in the order that keeps it cheap: the VM, its guest
//! memory, then the in-kernel interrupt controllers and PIT.

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestAddress, GuestMemory as _, GuestMemoryRegion};

use crate::config::VmConfig;
use crate::vm::{kvm_err, VmError};
use boot::GuestMemory;

/// Address of the TSS KVM needs on Intel (three pages just below the BIOS area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// A VM on `kvm`, which must have what minivm relies on.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    for (cap, name) in [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::Irqfd, "irqfd"),
        (Cap::UserMemory, "user memory"),
        (Cap::ImmediateExit, "immediate exit"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::KvmCapability(name));
        }
    }
    kvm.create_vm().map_err(kvm_err("create VM"))
}

/// The guest's memory (fresh, or mapped from a snapshot), registered with
/// `vm` one slot per region.
pub fn create_memory(vm: &VmFd, config: &VmConfig) -> Result<Arc<GuestMemory>, VmError> {
    let size = config.mem_size;
    let mem = match &config.restore {
        Some(l) => crate::snapshot::map_memory(l).map_err(VmError::Snapshot)?,
        None => {
            let ranges: Vec<(GuestAddress, usize)> = boot::layout::ram_ranges(size)
                .into_iter()
                .map(|(s, l)| (GuestAddress(s), l as usize))
                .collect();
            GuestMemory::from_ranges(&ranges).map_err(|source| VmError::Memory { size, source })?
        }
    };
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the VM
        // keeps alive (Arc) for as long as any vCPU can run.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("register guest memory"))?;
    }
    Ok(Arc::new(mem))
}

/// The in-kernel interrupt controllers and PIT. They come after the guest
/// memory is registered: registering memory once an irqchip exists costs
/// KVM a slow memslot update (6 ms for 16 MiB on a kvm-pvm host, 0.03 ms
/// before it), an order Firecracker keeps too. The PIT keeps KVM's default
/// of re-injecting missed ticks (as QEMU's and Firecracker's do): turning
/// it off (`KVM_REINJECT_CONTROL`) waits out an interrupt-SRCU grace period
/// that held up the guest's first `KVM_RUN` by 8-12 ms in two runs of
/// three on a kvm-pvm host; the same wait in the VM's teardown is the
/// reaper's (`crate::reaper`), after minivm's exit.
pub fn create_irqchip(vm: &VmFd) -> Result<(), VmError> {
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("set TSS address"))?;
    vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create PIT"))
}
