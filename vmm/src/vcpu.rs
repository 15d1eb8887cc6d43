//! A vCPU thread: runs KVM_RUN and turns exits into bus accesses or VM exits.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use devices::bus::Bus;
use devices::{ExitHandle, ExitReason};
use kvm_bindings::{kvm_lapic_state, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestAddress;

use crate::cpuid;
use boot::GuestMemory;

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {id}: {what}: {source}")]
    Kvm {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Boot structures could not be written.
    #[error("vCPU {id}: {source}")]
    Boot {
        id: u8,
        source: boot::cpu::CpuSetupError,
    },
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Handler of the signal that kicks a vCPU thread out of KVM_RUN. Setting
/// `immediate_exit` too closes the race of a kick landing just before the
/// thread enters KVM_RUN (Firecracker's approach).
pub extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IMMEDIATE_EXIT.with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: set by Vcpu::run on this thread to a field of the vCPU's
            // mmap'ed kvm_run, which outlives the pointer (cleared before the
            // VcpuFd is dropped).
            unsafe { p.write_volatile(1) };
        }
    });
}

/// The buses a vCPU dispatches to.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Arc<Bus>,
    /// Memory-mapped I/O.
    pub mmio: Arc<Bus>,
}

/// One vCPU, configured and ready to run on its own thread.
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    buses: Buses,
    exit: ExitHandle,
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn set_lvt_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let bytes: [u8; 4] = [
        lapic.regs[reg] as u8,
        lapic.regs[reg + 1] as u8,
        lapic.regs[reg + 2] as u8,
        lapic.regs[reg + 3] as u8,
    ];
    let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        lapic.regs[reg + i] = *b as i8;
    }
}

impl Vcpu {
    /// Creates vCPU `id` and sets CPUID (KVM's supported set `cpuid`, filtered
    /// for this vCPU), MSRs, LAPIC, FPU and (for the boot vCPU) the registers
    /// for the 64-bit kernel entry at `entry`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut cpuid: CpuId,
        vm: &VmFd,
        mem: &GuestMemory,
        id: u8,
        count: u8,
        entry: GuestAddress,
        pvm: bool,
        buses: Buses,
        exit: ExitHandle,
    ) -> Result<Self, VcpuError> {
        let err = |what| move |source| VcpuError::Kvm { id, what, source };
        let fd = vm.create_vcpu(u64::from(id)).map_err(err("create"))?;

        cpuid::filter(&mut cpuid, id, count, pvm).map_err(|_| VcpuError::Kvm {
            id,
            what: "build CPUID",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(err("set CPUID"))?;

        let msrs = Msrs::from_entries(&boot::cpu::boot_msrs()).map_err(|_| VcpuError::Kvm {
            id,
            what: "build MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        fd.set_msrs(&msrs).map_err(err("set MSRs"))?;

        let mut lapic = fd.get_lapic().map_err(err("get LAPIC"))?;
        set_lvt_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(err("set LAPIC"))?;

        fd.set_fpu(&boot::cpu::boot_fpu()).map_err(err("set FPU"))?;
        if id == 0 {
            let sregs = fd.get_sregs().map_err(err("get special registers"))?;
            let sregs = boot::cpu::setup_long_mode(mem, sregs)
                .map_err(|source| VcpuError::Boot { id, source })?;
            fd.set_sregs(&sregs).map_err(err("set special registers"))?;
            fd.set_regs(&boot::cpu::boot_regs(entry))
                .map_err(err("set registers"))?;
        }
        Ok(Vcpu {
            fd,
            id,
            buses,
            exit,
        })
    }

    /// A vCPU in the state `state` (of a snapshot), with no set-up of its own.
    pub fn restored(
        vm: &VmFd,
        id: u8,
        state: &crate::snapshot::VcpuState,
        buses: Buses,
        exit: ExitHandle,
    ) -> Result<Self, crate::snapshot::SnapshotError> {
        let fd = vm.create_vcpu(u64::from(id)).map_err(|source| {
            crate::snapshot::SnapshotError::Kvm {
                what: "create vCPU",
                source,
            }
        })?;
        state.restore(&fd)?;
        Ok(Vcpu {
            fd,
            id,
            buses,
            exit,
        })
    }

    /// The vCPU's KVM fd.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Completes an I/O exit the vCPU stopped on: one KVM_RUN with
    /// immediate exit, which finishes the pending access and returns EINTR
    /// without running guest code. Its state is then safe to save.
    pub fn settle(&mut self) -> Result<(), kvm_ioctls::Error> {
        self.fd.set_kvm_immediate_exit(1);
        let r = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(e),
            // An exit before the immediate exit took: nothing more pending.
            Ok(_) => Ok(()),
        };
        self.fd.set_kvm_immediate_exit(0);
        r
    }

    /// Runs until the VM should stop or `stop` is set (the thread is then
    /// kicked out of KVM_RUN with a signal); gives the vCPU back.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Self {
        let flag: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|p| p.set(flag));
        while !stop.load(Ordering::Acquire) && self.exit.reason().is_none() {
            if let Some(reason) = self.run_once() {
                self.exit.request(reason);
                break;
            }
        }
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
        self
    }

    fn run_once(&mut self) -> Option<ExitReason> {
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if !self.buses.pio.write(u64::from(port), data) {
                    tracing::trace!("unhandled port write {port:#x} {data:x?}");
                }
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.buses.pio.read(u64::from(port), data) {
                    // No device: the bus floats high.
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.buses.mmio.read(addr, data) {
                    tracing::debug!("unhandled MMIO read at {addr:#x}");
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.buses.mmio.write(addr, data) {
                    tracing::debug!("unhandled MMIO write at {addr:#x}");
                }
                None
            }
            Ok(VcpuExit::Shutdown) => {
                self.report_crash("triple fault (KVM_EXIT_SHUTDOWN)");
                Some(ExitReason::Crash)
            }
            Ok(VcpuExit::Hlt) => {
                // Only without an in-kernel irqchip; with one, HLT stays in KVM.
                self.report_crash("halted with no way to wake up");
                Some(ExitReason::Crash)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                _ => {
                    self.report_crash(&format!("system event {kind}"));
                    ExitReason::Crash
                }
            }),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                self.report_crash(&format!(
                    "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                ));
                Some(ExitReason::Crash)
            }
            Ok(VcpuExit::InternalError) => {
                self.report_crash(
                    "KVM internal error (often an instruction the host cannot emulate)",
                );
                Some(ExitReason::Crash)
            }
            Ok(other) => {
                tracing::debug!("vCPU {}: ignored exit {other:?}", self.id);
                None
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => {
                self.report_crash(&format!("KVM_RUN failed: {e}"));
                Some(ExitReason::Crash)
            }
        }
    }

    fn report_crash(&self, what: &str) {
        let rip = self
            .fd
            .get_regs()
            .map(|r| format!("{:#x}", r.rip))
            .unwrap_or_else(|_| "?".into());
        eprintln!(
            "minivm: guest crashed on vCPU {}: {what} at rip {rip}",
            self.id
        );
    }
}

/// Holds the vCPU threads, once each has confined itself, until the main
/// thread says whether the guest may run.
#[derive(Default)]
pub struct StartGate {
    go: Mutex<Option<bool>>,
    cond: Condvar,
}

impl StartGate {
    /// Lets the waiting threads run the guest (`true`) or end (`false`).
    pub fn open(&self, go: bool) {
        *self.go.lock().unwrap_or_else(|e| e.into_inner()) = Some(go);
        self.cond.notify_all();
    }

    /// Waits for [`StartGate::open`]; whether to run the guest.
    pub fn wait(&self) -> bool {
        let mut go = self.go.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(g) = *go {
                return g;
            }
            go = self.cond.wait(go).unwrap_or_else(|e| e.into_inner());
        }
    }
}
