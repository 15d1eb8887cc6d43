//! The KVM VM itself, in the order that keeps it cheap: the VM, its guest
//! memory, then the in-kernel interrupt controllers and PIT.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_pit_config, kvm_reinject_control, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use sandbox::ThreadFilter;
use vm_memory::{Address, GuestAddress, GuestMemory as _, GuestMemoryRegion};
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::config::VmConfig;
use crate::vm::{host_err, kvm_err, VmError};
use boot::GuestMemory;

/// Address of the TSS KVM needs on Intel (three pages just below the BIOS area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

// `KVM_REINJECT_CONTROL`, `_IO(KVMIO, 0x71)` in linux/kvm.h; kvm-ioctls has
// no wrapper for it.
vmm_sys_util::ioctl_io_nr!(KVM_REINJECT_CONTROL, kvm_bindings::KVMIO, 0x71);

/// A VM on `kvm`, which must have what minivm relies on.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    for (cap, name) in [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::Irqfd, "irqfd"),
        (Cap::UserMemory, "user memory"),
        (Cap::ImmediateExit, "immediate exit"),
        (Cap::ReinjectControl, "PIT re-injection control"),
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
/// before it), an order Firecracker keeps too.
pub fn create_irqchip(vm: &VmFd, filter: ThreadFilter) -> Result<PitSetup, VmError> {
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("set TSS address"))?;
    vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create PIT"))?;
    PitSetup::start(vm, filter)
}

/// Turning off the re-injection of missed PIT ticks (QEMU's
/// `lost_tick_policy=discard`; Linux keeps time by the TSC or kvmclock, not
/// by counting ticks), on a thread of its own under its own seccomp filter.
/// It makes KVM drop the PIT's IRQ-ack notifier now rather than in the VM's
/// teardown, where waiting out that interrupt-SRCU grace period cost up to
/// 16 ms of minivm's exit on a kvm-pvm host; here it sometimes costs as
/// much, but beside the guest instead of in line.
pub struct PitSetup(JoinHandle<Result<(), VmError>>);

impl PitSetup {
    fn start(vm: &VmFd, filter: ThreadFilter) -> Result<Self, VmError> {
        // The thread holds its own reference to the VM, so it stays valid
        // however the boot goes on.
        // SAFETY: `vm` owns this fd and keeps it open during the call.
        let fd: OwnedFd = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(host_err("duplicate the VM fd"))?;
        let thread = std::thread::Builder::new()
            .name("pit-setup".into())
            .spawn(move || {
                filter.apply().map_err(VmError::Seccomp)?;
                let control = kvm_reinject_control {
                    pit_reinject: 0,
                    ..Default::default()
                };
                // SAFETY: KVM_REINJECT_CONTROL reads a kvm_reinject_control,
                // which `control` is and outlives the call.
                let ret = unsafe { ioctl_with_ref(&fd, KVM_REINJECT_CONTROL(), &control) };
                if ret < 0 {
                    return Err(kvm_err("turn off PIT re-injection")(
                        kvm_ioctls::Error::last(),
                    ));
                }
                Ok(())
            })
            .map_err(host_err("PIT set-up thread"))?;
        Ok(Self(thread))
    }

    /// Waits for the set-up to end (the guest may be running already); an
    /// error leaves re-injection on, which costs only a slower teardown.
    pub fn finish(self) -> Result<(), VmError> {
        self.0.join().unwrap_or_else(|_| {
            Err(host_err("PIT set-up thread")(std::io::Error::other(
                "panicked",
            )))
        })
    }
}
