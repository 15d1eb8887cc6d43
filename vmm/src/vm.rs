//! Building and running one VM: KVM VM with in-kernel irqchip and PIT, guest
//! memory, devices on their buses, vCPU threads, and the device event loop.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::acpi::AcpiPmDevice;
use devices::bus::{Bus, BusDevice};
use devices::harness::HarnessPorts;
use devices::i8042::I8042;
use devices::serial::{InputEvents, SerialDevice};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::rng::Rng;
use devices::virtio::{Interrupt, VirtioDevice};
use devices::{ExitHandle, ExitReason};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use sandbox::ThreadKind;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{self, ShareSource, VmConfig};
use crate::io_reason::io_reason;
use crate::machine;
use crate::phases;
use crate::reaper::{ParkedVm, Reaper};
use crate::session::{DiskError, KeptDevices, Session};
use crate::shutdown::ShutdownRequest;
use crate::signals;
use crate::terminal::{ExitWatcher, StdinForwarder};
use crate::vcpu::{Buses, Vcpu, VcpuError};
use boot::layout::{VIRTIO_FIRST_IRQ, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use boot::ports::{self, PortRange};
use boot::GuestMemory;

/// Where /dev/kvm lives.
const KVM_DEV: &str = "/dev/kvm";
/// virtio-mmio QueueNotify register offset (routed through ioeventfds).
const MMIO_QUEUE_NOTIFY: u64 = 0x50;

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm missing or not usable.
    #[error("cannot use {KVM_DEV}: {} (is KVM available and are you allowed to use it?)", io_reason(.0))]
    KvmOpen(#[source] std::io::Error),
    /// Writing or restoring a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// `--exec-socket` could not be set up.
    #[error(transparent)]
    Exec(#[from] crate::exec::relay::RelayError),
    /// The host's KVM lacks something minivm needs.
    #[error("KVM lacks a required capability: {0}")]
    KvmCapability(&'static str),
    /// A VM-level KVM ioctl failed.
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error("cannot allocate {size} bytes of guest memory: {source}")]
    Memory {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    /// Kernel or initrd loading failed.
    #[error(transparent)]
    Load(#[from] boot::loader::LoadError),
    /// Zero page or command line.
    #[error(transparent)]
    BootParams(#[from] boot::bootparams::BootParamsError),
    /// vCPU set-up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A host resource for a device (event fd, console, thread) could not be made.
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
        source: std::io::Error,
    },
    /// Two devices claim the same bus range.
    #[error("bus: {0}")]
    Bus(#[from] devices::bus::BusError),
    /// The root disk could not be opened.
    #[error("disk image {}: {source}", .path.display())]
    Disk { path: PathBuf, source: DiskError },
    /// A virtio-fs share could not be set up.
    #[error("{what}: {source}")]
    Share {
        /// What is shared, as [`ShareSource::describe`] says it.
        what: String,
        source: devices::virtio::fs::FsError,
    },
    /// A virtio-net device could not be set up.
    #[error("--net tap={tap}: {source}")]
    Net {
        tap: String,
        source: devices::virtio::net::NetError,
    },
    /// More virtio devices than GSIs.
    #[error("{what}: too many virtio devices")]
    TooManyDevices { what: &'static str },
    /// ACPI tables or the zero page's RSDP pointer.
    #[error(transparent)]
    Acpi(#[from] boot::acpi::AcpiError),
    /// The event loop failed.
    #[error("event loop: {0}")]
    EventLoop(#[from] event_manager::Error),
    /// The event loop's exit watcher could not be made.
    #[error("event loop: {0}")]
    ExitWatcher(#[source] std::io::Error),
    /// A rebooted guest cannot start again: a device of the stopped VM is still held.
    #[error("cannot restart the guest: a vCPU of the stopped VM still holds its devices")]
    DevicesInUse,
    /// A thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(sandbox::Error),
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The power button's interrupt and what presses it on SIGTERM; `None`
/// (SIGTERM stops the VM at once) when the timeout is zero.
fn power_button(
    vm: &VmFd,
    exit: &ExitHandle,
    timeout: Duration,
) -> Result<Option<Arc<Mutex<ShutdownRequest>>>, VmError> {
    if timeout.is_zero() {
        return Ok(None);
    }
    let button = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("power button irq"))?;
    vm.register_irqfd(&button, ports::GED_GSI)
        .map_err(kvm_err("register the power button irqfd"))?;
    let s = ShutdownRequest::new(button, exit.clone(), timeout)
        .map_err(host_err("shutdown request event"))?;
    Ok(Some(Arc::new(Mutex::new(s))))
}

pub(crate) fn host_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Host { what, source }
}

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A running VM's pieces that must outlive the vCPU threads.
struct Devices {
    /// The transports holding the session's kept devices, to take them back.
    kept: KeptTransports,
    pio: Bus,
    mmio: Bus,
    subscribers: Vec<Subscriber>,
    /// Every virtio-mmio transport, in slot order (a snapshot's order).
    transports: Vec<Transport>,
    serial: Arc<Mutex<SerialDevice>>,
    serial_input: Arc<InputEvents>,
    cmdline_extra: Vec<String>,
    /// (MMIO base, GSI) of each virtio-mmio device, for the DSDT.
    virtio_mmio: Vec<(u64, u32)>,
    /// Each virtio-fs share's tag and request counts.
    fs_stats: Vec<(String, Arc<devices::virtio::fs::FsStats>)>,
    /// The agent's console (`crate::streams`) and the write end of its
    /// control port.
    streams: Option<(Transport, OwnedFd)>,
    /// `--exec-socket`'s relay, stopped when the VM's devices go.
    _exec: Option<crate::exec::relay::Relay>,
}

fn setup_devices(
    vm: &VmFd,
    mem: &Arc<GuestMemory>,
    config: &VmConfig,
    session: &mut Session,
    exit: &ExitHandle,
    start: Instant,
) -> Result<Devices, VmError> {
    let policy = session.seccomp();
    let (kept, console) = session.parts();
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let mut subscribers: Vec<Subscriber> = Vec::new();
    let mut cmdline_extra = Vec::new();

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("serial irq"))?;
    vm.register_irqfd(&serial_irq, ports::COM1_GSI)
        .map_err(kvm_err("register serial irqfd"))?;
    let serial_input = Arc::new(InputEvents {
        in_buffer_empty: EventFd::new(libc::EFD_NONBLOCK)
            .map_err(host_err("serial input event"))?,
    });
    let serial = match &config.restore {
        None => SerialDevice::new(serial_irq, serial_input.clone(), console.writer()),
        Some(l) => SerialDevice::from_state(
            &l.snapshot.devices.serial,
            serial_irq,
            serial_input.clone(),
            console.writer(),
        )
        .map_err(|e| VmError::Snapshot(crate::snapshot::SnapshotError::Serial(e)))?,
    };
    let serial = Arc::new(Mutex::new(serial));
    let mut harness = HarnessPorts::new(exit.clone(), start);
    if config.snapshot_to.is_some() {
        harness = harness.snapshot_at_marker();
    }
    // The port map is boot::ports, which the ACPI tables announce too.
    let port_devices: [(Arc<Mutex<dyn BusDevice>>, PortRange); 4] = [
        (serial.clone(), ports::COM1),
        (Arc::new(Mutex::new(I8042::new(exit.clone()))), ports::I8042),
        (Arc::new(Mutex::new(harness)), ports::HARNESS),
        (
            Arc::new(Mutex::new(AcpiPmDevice::new(exit.clone()))),
            ports::ACPI_PM,
        ),
    ];
    for (device, range) in port_devices {
        pio.insert(device, u64::from(range.base), u64::from(range.len))?;
    }

    let mut slots = Slots::default();
    let mut kept_transports = KeptTransports::default();
    if let Some(block) = kept.disk.take() {
        kept_transports.disk = Some(add_virtio(vm, mem, block, "virtio-blk", &mut slots)?);
    }
    let mut fs_stats = Vec::new();
    for share in &config.shares {
        let what = share.source.describe();
        let fail = |source| VmError::Share {
            what: what.clone(),
            source,
        };
        let vfs = match (&share.source, share.size_cap) {
            (ShareSource::Dir(dir), Some(cap)) if !share.read_only => {
                devices::virtio::fs::disk_cap(dir, cap)
            }
            (ShareSource::Dir(dir), _) => devices::virtio::fs::passthrough(dir, share.read_only),
            (ShareSource::Layers { layers, upper }, cap) => {
                devices::virtio::fs::overlay(layers, upper.as_deref(), cap)
            }
        }
        .map_err(fail)?;
        let fs = devices::virtio::fs::Fs::new(&share.tag, vfs, policy.filter(ThreadKind::FsWorker))
            .map_err(fail)?;
        fs_stats.push((share.tag.clone(), fs.stats()));
        add_virtio(vm, mem, Box::new(fs), "virtio-fs", &mut slots)?;
    }
    for net in std::mem::take(&mut kept.nets) {
        let t = add_virtio(vm, mem, net, "virtio-net", &mut slots)?;
        kept_transports.nets.push(t);
    }
    // Last, so the disk and shares keep their slots with or without it.
    if config.rng {
        add_virtio(vm, mem, Box::new(Rng::new()), "virtio-rng", &mut slots)?;
    }
    let mut exec = None;
    let console = crate::streams::console(config.io, config.exec_socket.is_some())
        .map_err(host_err("the agent's console ports"))?;
    let streams = match console {
        Some((console, control, exec_port)) => {
            if let (Some(path), Some(port)) = (&config.exec_socket, exec_port) {
                exec = Some(crate::exec::relay::Relay::start(
                    path,
                    port.to_guest,
                    port.from_guest,
                    policy.filter(ThreadKind::Exec),
                )?);
            }
            let t = add_virtio(vm, mem, Box::new(console), "virtio-console", &mut slots)?;
            // A restored agent reads its job first thing.
            if let (Some(job), Some(_)) = (&config.agent_job, &config.restore) {
                crate::streams::send_job(&control, job).map_err(host_err("the agent's job"))?;
            }
            Some((t, control))
        }
        None => None,
    };
    let mut transports = Vec::new();
    for (transport, base) in slots.transports {
        mmio.insert(transport.clone(), base, VIRTIO_MMIO_SIZE)?;
        transports.push(transport.clone());
        subscribers.push(transport);
    }
    // The devices are announced in the DSDT: with hardware-reduced ACPI a
    // `virtio_mmio.device=` command-line device gets no IRQ. Without ACPI
    // (acpi=off) the command line is the only way.
    if config.cmdline.split_whitespace().any(|w| w == "acpi=off") {
        cmdline_extra.extend(slots.cmdline);
    }
    let virtio_mmio = slots.devices;
    Ok(Devices {
        kept: kept_transports,
        pio,
        mmio,
        subscribers,
        transports,
        serial,
        serial_input,
        cmdline_extra,
        virtio_mmio,
        fs_stats,
        streams,
        _exec: exec,
    })
}

/// A virtio-mmio transport shared by the MMIO bus and the event loop.
pub type Transport = Arc<Mutex<MmioTransport>>;

/// virtio-mmio devices placed so far: one 4 KiB window and one GSI each.
#[derive(Default)]
struct Slots {
    transports: Vec<(Transport, u64)>,
    cmdline: Vec<String>,
    devices: Vec<(u64, u32)>,
}

/// Puts a virtio device behind a virtio-mmio transport at the next free slot,
/// with its irqfd and one ioeventfd per queue registered with KVM.
fn add_virtio(
    vm: &VmFd,
    mem: &Arc<GuestMemory>,
    device: Box<dyn VirtioDevice>,
    what: &'static str,
    slots: &mut Slots,
) -> Result<Transport, VmError> {
    let index = slots.transports.len() as u64;
    let gsi = VIRTIO_FIRST_IRQ + index as u32;
    if gsi > boot::layout::LAST_IRQ {
        return Err(VmError::TooManyDevices { what });
    }
    let base = VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_SIZE;
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err(what))?;
    vm.register_irqfd(&irqfd, gsi)
        .map_err(kvm_err("register a virtio irqfd"))?;
    let transport = MmioTransport::new(device, mem.clone(), Arc::new(Interrupt::new(irqfd)))
        .map_err(host_err(what))?;
    for (q, evt) in transport.queue_events().iter().enumerate() {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(base + MMIO_QUEUE_NOTIFY),
            q as u32,
        )
        .map_err(kvm_err("register a virtio ioeventfd"))?;
    }
    let transport = Arc::new(Mutex::new(transport));
    slots.transports.push((transport.clone(), base));
    slots
        .cmdline
        .push(format!("virtio_mmio.device=4K@{base:#x}:{gsi}"));
    slots.devices.push((base, gsi));
    Ok(transport)
}

/// The transports of one boot that hold the session's kept devices.
#[derive(Default)]
struct KeptTransports {
    disk: Option<Transport>,
    nets: Vec<Transport>,
}

impl KeptTransports {
    /// Gives the devices back to `kept`, once nothing else holds their
    /// transports; a device still held (by a vCPU thread that did not stop)
    /// is left out.
    fn give_back(self, kept: &mut KeptDevices) {
        let take = |t: Transport| match Arc::try_unwrap(t) {
            Ok(m) => Some(
                m.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .into_device(),
            ),
            Err(_) => {
                tracing::warn!("a virtio device is still in use after the VM stopped");
                None
            }
        };
        kept.disk = self.disk.and_then(take);
        kept.nets = self.nets.into_iter().filter_map(take).collect();
    }
}

/// The final kernel command line: the configured one plus what minivm adds.
fn full_cmdline(config: &VmConfig, extra: &[String], pvm: bool) -> String {
    let mut c = config.cmdline.clone();
    let mut add = |s: &str| {
        c.push(' ');
        c.push_str(s);
    };
    for e in extra {
        add(e);
    }
    // Makes minivm's guest kernel report panics on the panic port (devices::harness).
    if !config.cmdline.contains("minivm_panic_port=") {
        add(&format!("minivm_panic_port={:#x}", ports::PANIC_PORT));
    }
    if pvm && !config.cmdline.contains("minivm_pvm_quirks") {
        add(config::PVM_CMDLINE);
    }
    c
}

/// How one boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEnd {
    /// Why the VM stopped.
    pub reason: ExitReason,
    /// Whether SIGTERM had asked the guest to shut down (power button).
    pub shutdown_requested: bool,
    /// When vCPU 0 was about to run the guest's first instruction.
    pub entered: Option<Instant>,
    /// When the VM's end was requested (a guest's own exit: right after
    /// its last instruction).
    pub exited: Option<Instant>,
}

/// Boots a fresh VM described by `config` around `session` (its console and
/// kept devices, given back when the VM stops) and runs it to the end.
/// `start`: when this boot began, for the boot-finished log line.
/// `deadline`: when `--timeout` stops the VM.
pub fn boot(
    config: &VmConfig,
    session: &mut Session,
    start: Instant,
    deadline: Option<Instant>,
) -> Result<BootEnd, VmError> {
    // The previous boot's VM (`--restart`) goes before this one is built.
    session.release_parked();
    let kvm = session.kvm();
    let vm = machine::create_vm(&kvm)?;
    phases::mark("VM created");
    // Made now, before the VM's first device or thread, so it is cloned
    // with few fds (and it closes those at once).
    let reaper = Reaper::spawn(
        vm.as_raw_fd(),
        &session.seccomp().filter(ThreadKind::Reaper),
    )
    .inspect_err(|e| tracing::info!("{e}: the VM is released before minivm exits"))
    .ok();
    phases::mark("reaper started");
    let mem = machine::create_memory(&vm, config)?;
    phases::mark("guest memory");
    machine::create_irqchip(&vm)?;
    phases::mark("irqchip and PIT");
    let pvm = session.pvm();
    if pvm {
        tracing::info!("kvm-pvm host: hiding unsupported CPU features and enabling the guest kernel's work-arounds");
    }

    // A restored VM's memory holds its kernel already.
    let kernel = match config.restore {
        None => Some(boot::loader::load_kernel(
            &mem,
            &config.kernel,
            config.kernel_pages,
        )?),
        Some(_) => None,
    };
    phases::mark("kernel loaded");
    let initrd = match &kernel {
        Some(k) if !config.initrd.is_empty() => {
            let parts: Vec<_> = config
                .initrd
                .iter()
                .map(|p| (p.path.as_path(), p.pages))
                .collect();
            Some(boot::loader::load_initrd(&mem, &parts, k)?)
        }
        _ => None,
    };
    phases::mark("initrd loaded");

    let exit = ExitHandle::new().map_err(host_err("exit event"))?;
    let shutdown = power_button(&vm, &exit, config.shutdown_timeout)?;
    let armed = signals::install(
        &exit,
        shutdown
            .as_ref()
            .map(|s| s.lock().unwrap().request_fd().as_raw_fd()),
    );
    let devs = setup_devices(&vm, &mem, config, session, &exit, start)?;
    if let Some((_, control)) = &devs.streams {
        signals::set_control(control.as_raw_fd());
    }
    phases::mark("devices");

    if let Some(kernel) = &kernel {
        let cmdline = full_cmdline(config, &devs.cmdline_extra, pvm);
        tracing::info!("kernel {} command line: {cmdline}", config.kernel.display());
        boot::bootparams::write_boot_params(&mem, kernel, &cmdline, initrd.as_ref())?;
        let rsdp = boot::acpi::create_acpi_tables(&mem, config.cpus, &devs.virtio_mmio)?;
        boot::acpi::write_rsdp_pointer(&mem, rsdp)?;
        phases::mark("boot parameters and ACPI tables");
    }

    let buses = Buses {
        pio: Arc::new(devs.pio),
        mmio: Arc::new(devs.mmio),
    };
    let mut vcpus = Vec::new();
    for id in 0..config.cpus {
        vcpus.push(match (&kernel, &config.restore) {
            (Some(kernel), _) => Vcpu::new(
                session.supported_cpuid().map_err(|source| VcpuError::Kvm {
                    id,
                    what: "get supported CPUID",
                    source,
                })?,
                &vm,
                &mem,
                id,
                config.cpus,
                kernel.entry,
                pvm,
                buses.clone(),
                exit.clone(),
            )?,
            (None, Some(l)) => {
                let state = &l.snapshot.vcpus[usize::from(id)];
                let v = Vcpu::restored(&vm, id, state, buses.clone(), exit.clone())
                    .map_err(VmError::Snapshot)?;
                crate::snapshot::match_tsc(l, v.fd()).map_err(VmError::Snapshot)?;
                v
            }
            (None, None) => unreachable!("a VM without a kernel is a restored one"),
        });
    }
    phases::mark("vCPUs created");
    // The VM's own state goes in after its vCPUs', the devices' last.
    if let Some(l) = &config.restore {
        l.snapshot.vm.restore(&vm).map_err(VmError::Snapshot)?;
        crate::snapshot::restore_devices(l, &devs.transports).map_err(VmError::Snapshot)?;
    }

    let mut em: EventManager<Subscriber> = EventManager::new()?;
    for s in &devs.subscribers {
        em.add_subscriber(s.clone());
    }
    if let Some(s) = &shutdown {
        em.add_subscriber(s.clone());
    }
    em.add_subscriber(Arc::new(Mutex::new(
        ExitWatcher::new(&exit).map_err(VmError::ExitWatcher)?,
    )));
    // With the command's streams, stdin (if anyone's) is the console port's.
    if config.io.serial_on_stdio() {
        let interactive = crate::terminal::stdin_is_tty();
        em.add_subscriber(Arc::new(Mutex::new(StdinForwarder::new(
            devs.serial.clone(),
            devs.serial_input.clone(),
            exit.clone(),
            interactive,
        ))));
    }

    let entered = Arc::new(std::sync::OnceLock::new());
    phases::mark("event loop");
    let mut running = crate::running::start_vcpus(vcpus, session, &entered)?;
    phases::mark("vCPU threads started");
    let result = loop {
        let result = run_event_loop(&mut em, &exit, shutdown.as_ref(), deadline);
        let mut stopped = running.stop();
        phases::mark("vCPU threads stopped");
        let result = match result {
            Ok(ExitReason::Snapshot) => snapshot(
                config,
                (&kvm, &vm, &mut stopped, &mem),
                (&devs.serial, &devs.transports, devs.kept.disk.as_ref()),
                pvm,
            ),
            other => other,
        };
        if !(config.snapshot_continue && result.is_ok() && exit.resume_after_snapshot()) {
            break result;
        }
        // --snapshot-and-continue: the same vCPUs go on, and the agent gets
        // this run's job only now, so that no copy of the snapshot has it.
        if let (Some(job), Some((_, control))) = (&config.agent_job, &devs.streams) {
            crate::streams::send_job(control, job).map_err(host_err("the agent's job"))?;
        }
        running = crate::running::start_vcpus(stopped, session, &entered)?;
    };
    // Armed through a snapshot too: a signal during the save is acted on
    // when the VM goes on, or is left pending for the run's end.
    drop(armed);
    // Read only now that the handlers are withdrawn (a later SIGTERM is
    // recorded for `signals::pending`): a press that came while the vCPUs
    // stopped is in the event fd and counts, instead of being lost with it.
    let shutdown_requested = shutdown
        .as_ref()
        .is_some_and(|s| s.lock().unwrap().requested());
    if let Some((t, _)) = &devs.streams {
        t.lock().unwrap().vcpus_stopped();
    }
    if config.fs_stats {
        for (tag, stats) in &devs.fs_stats {
            eprint!("minivm: {}", stats.report(tag));
        }
    }

    // Release this VM's hold on the kept devices' transports before taking
    // the devices back; the rest (memory, KVM fds) goes with the locals.
    drop(em);
    drop(buses);
    drop(devs.subscribers);
    drop(devs.transports);
    drop(devs.streams);
    drop(devs._exec);
    devs.kept.give_back(session.parts().0);
    phases::mark("devices released");
    let end = BootEnd {
        reason: result?,
        shutdown_requested,
        entered: entered.get().copied(),
        exited: exit.requested().map(|(_, at)| at),
    };
    // The VM before its memory: unmapping memory that a VM still maps makes
    // KVM zap its own mappings page by page first (about a third of
    // minivm's exit on a kvm-pvm host).
    drop(vm);
    match reaper {
        Some(reaper) => {
            // Only this process's copy of the VM's file was closed.
            session.park(ParkedVm::new(reaper, mem));
            phases::mark("VM left to its reaper");
        }
        None => {
            phases::mark("KVM VM closed");
            if Arc::strong_count(&mem) > 1 {
                tracing::debug!("guest memory still held after the VM closed");
            }
            drop(mem);
            phases::mark("guest memory unmapped");
        }
    }
    Ok(end)
}

/// Runs the device event loop until an exit is requested.
fn run_event_loop(
    em: &mut EventManager<Subscriber>,
    exit: &ExitHandle,
    shutdown: Option<&Arc<Mutex<ShutdownRequest>>>,
    deadline: Option<Instant>,
) -> Result<ExitReason, VmError> {
    loop {
        if let Some(r) = exit.reason() {
            return Ok(r);
        }
        if let Some(sig) = signals::pending() {
            exit.request(ExitReason::HostSignal(sig));
            continue;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            exit.request(ExitReason::Timeout);
            continue;
        }
        let shutdown_ms = shutdown.map_or(-1, |s| s.lock().unwrap().wait_ms(now));
        let wait_ms = min_wait(shutdown_ms, deadline.map(|d| d - now));
        if let Err(e) = em.run_with_timeout(wait_ms) {
            if let event_manager::Error::Epoll(ref err) = e {
                if err.errno() == libc::EINTR {
                    continue;
                }
            }
            return Err(VmError::EventLoop(e));
        }
        if let Some(s) = shutdown {
            s.lock().unwrap().check_deadline(Instant::now());
        }
    }
}

/// The sooner of an epoll wait (`-1`: none) and `until` (rounded up, so the
/// loop wakes at or after it).
fn min_wait(wait_ms: i32, until: Option<Duration>) -> i32 {
    let Some(d) = until else { return wait_ms };
    let ms = i32::try_from(d.as_millis() + 1).unwrap_or(i32::MAX);
    if wait_ms < 0 {
        ms
    } else {
        wait_ms.min(ms)
    }
}

/// Kicks the vCPUs out of KVM_RUN until all have stopped (a kick can land
/// just before a thread enters KVM_RUN, hence the repeats), then joins them.
/// Writes the snapshot of the stopped VM (`--snapshot-to`); the run then
/// ends as if the guest had exited with 0.
fn snapshot(
    config: &VmConfig,
    (kvm, vm, vcpus, mem): (&Kvm, &VmFd, &mut [Vcpu], &GuestMemory),
    (serial, transports, disk): (&Mutex<SerialDevice>, &[Transport], Option<&Transport>),
    pvm: bool,
) -> Result<ExitReason, VmError> {
    let dir = config
        .snapshot_to
        .as_deref()
        .expect("a snapshot point only with --snapshot-to");
    if vcpus.len() != usize::from(config.cpus) {
        return Err(VmError::Snapshot(crate::snapshot::SnapshotError::Invalid {
            what: "a vCPU thread did not stop".into(),
        }));
    }
    for v in vcpus.iter_mut() {
        v.settle()
            .map_err(kvm_err("complete the vCPU's last exit"))?;
    }
    let devices =
        crate::snapshot::DeviceStates::save(serial, transports).map_err(VmError::Snapshot)?;
    let fds: Vec<&kvm_ioctls::VcpuFd> = vcpus.iter().map(Vcpu::fd).collect();
    let disk = disk.map(|t| t.lock().unwrap_or_else(|e| e.into_inner()));
    let read_only = config.disk.as_ref().is_some_and(|d| d.read_only);
    let parts = crate::snapshot::SaveParts {
        devices,
        rng: config.rng,
        disk: disk
            .as_ref()
            .and_then(|t| t.device().disk_backend())
            .map(|b| (b, read_only)),
        agent: config
            .image_process
            .clone()
            .map(|process| crate::snapshot::AgentRecord { process }),
    };
    crate::snapshot::save(dir, kvm, vm, &fds, mem, parts, pvm).map_err(VmError::Snapshot)?;
    eprintln!("minivm: snapshot written to {}", dir.display());
    // Ends the run unless it goes on (--snapshot-and-continue).
    Ok(ExitReason::Snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_loop_wakes_for_the_sooner_deadline() {
        let s = Duration::from_secs;
        assert_eq!(min_wait(-1, None), -1);
        assert_eq!(min_wait(500, None), 500);
        assert_eq!(min_wait(-1, Some(s(2))), 2001);
        assert_eq!(min_wait(500, Some(s(2))), 500);
        assert_eq!(min_wait(5000, Some(Duration::ZERO)), 1);
        assert_eq!(min_wait(-1, Some(s(1 << 40))), i32::MAX);
    }

    #[test]
    fn minivm_adds_the_panic_port_unless_given() {
        let mut config = VmConfig {
            kernel: "/vmlinux".into(),
            kernel_pages: boot::loader::Pages::Copied,
            initrd: Vec::new(),
            disk: None,
            shares: vec![],
            nets: vec![],
            mem_size: 64 << 20,
            cpus: 1,
            cmdline: "console=ttyS0".into(),
            rng: true,
            shutdown_timeout: Duration::ZERO,
            timeout: None,
            fs_stats: false,
            seccomp: crate::cli::SeccompMode::Off,
            io: config::GuestIo::Console,
            exec_socket: None,
            snapshot_to: None,
            restore: None,
            image_process: None,
            snapshot_continue: false,
            agent_job: None,
        };
        let extra = ["virtio_mmio.device=4K@0xd0000000:5".to_string()];
        assert_eq!(
            full_cmdline(&config, &extra, false),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 minivm_panic_port=0xf6"
        );
        config.cmdline = "minivm_panic_port=0x80".into();
        assert_eq!(full_cmdline(&config, &[], false), "minivm_panic_port=0x80");
        assert!(full_cmdline(&config, &[], true).ends_with(config::PVM_CMDLINE));
    }
}
