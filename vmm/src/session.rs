//! What outlives one boot of the guest: the console and the terminal's raw
//! mode, and the devices that hold the VM's data or host state (the disk
//! with its private copy-on-write layer and image lock, the taps). With
//! `--restart` a rebooted guest gets a fresh VM around the same session, so
//! nothing it wrote before the reboot is lost.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use devices::serial::ConsoleOutput;
use devices::virtio::block::Block;
use devices::virtio::net::Net;
use devices::virtio::VirtioDevice;
use kvm_bindings::CpuId;
use kvm_ioctls::Kvm;
use sandbox::seccomp::{Denied, MainNeeds};

use crate::cli::SeccompMode;
use sandbox::{Policy, ThreadKind};

use crate::config::{self, VmConfig};
use crate::cpuid::SupportedCpuid;
use crate::io_reason::io_reason;
use crate::reaper::ParkedVm;
use crate::terminal::RawMode;
use crate::vm::VmError;

/// Why the root disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image cannot be opened.
    #[error("{}", io_reason(.0))]
    Open(#[source] std::io::Error),
    /// Another VM writes it.
    #[error("in use by another VM (locked); use --readonly to share it")]
    InUse,
    /// The lock itself failed.
    #[error("cannot lock: {0}")]
    Lock(#[source] std::io::Error),
    /// No nameless file for the copy-on-write layer beside the image.
    #[error("cannot create a private layer in {}: {}", .dir.display(), io_reason(.source))]
    PrivateLayer {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The block device refused the file.
    #[error(transparent)]
    Block(#[from] devices::virtio::block::BlockError),
}

/// The virtio devices kept from one boot to the next: a boot takes them and
/// gives them back (reset) when it ends.
#[derive(Default)]
pub struct KeptDevices {
    /// The root disk's virtio-blk device.
    pub disk: Option<Box<dyn VirtioDevice>>,
    /// One virtio-net device per `--net`, in order.
    pub nets: Vec<Box<dyn VirtioDevice>>,
}

impl KeptDevices {
    fn count(&self) -> usize {
        usize::from(self.disk.is_some()) + self.nets.len()
    }
}

/// What a run opens before any VM is built (and before a jail hides the
/// host): /dev/kvm, whether it is kvm-pvm, and the devices kept across boots.
pub struct HostHandles {
    kvm: Arc<Kvm>,
    pvm: bool,
    kept: KeptDevices,
}

impl HostHandles {
    /// Opens /dev/kvm and the devices `config` keeps across boots.
    pub fn open(config: &VmConfig) -> Result<HostHandles, VmError> {
        let kvm = Kvm::new()
            .map_err(|e| VmError::KvmOpen(std::io::Error::from_raw_os_error(e.errno())))?;
        Ok(HostHandles {
            kvm: Arc::new(kvm),
            pvm: crate::cpuid::is_pvm_host(),
            kept: open_kept(config)?,
        })
    }
}

/// The host side of a guest across its boots.
pub struct Session {
    /// /dev/kvm, opened once.
    kvm: Arc<Kvm>,
    /// Whether /dev/kvm is kvm-pvm's (see `cpuid::is_pvm_host`).
    pvm: bool,
    /// Always `Some` until [`Session::finish`].
    console: Option<ConsoleOutput>,
    /// Restores the terminal when dropped (after the console's last bytes).
    raw: Option<RawMode>,
    /// Devices between boots; empty while a boot holds them.
    kept: KeptDevices,
    /// How many devices [`Session::kept`] holds when complete.
    device_count: usize,
    /// The threads' seccomp filters.
    seccomp: Policy,
    /// Whether the main thread has installed its filter (once per process:
    /// filters stack and cannot be removed).
    main_confined: bool,
    /// The last boot's VM, left to its reaper.
    parked: Option<ParkedVm>,
    /// What every vCPU's CPUID starts from.
    supported_cpuid: SupportedCpuid,
}

impl Session {
    /// Takes the host handles opened before, starts the console and puts
    /// an interactive terminal in raw mode. `restart`: later boots are
    /// built by the main thread after it confined itself (`--restart`).
    pub fn open(config: &VmConfig, restart: bool, host: HostHandles) -> Result<Session, VmError> {
        // Beside the filters' compilation and the VM's set-up; a restored
        // VM's vCPUs bring their own CPUID.
        let supported_cpuid = match config.restore {
            None => SupportedCpuid::ask(&host.kvm),
            Some(_) => SupportedCpuid::later(&host.kvm),
        };
        let main = MainNeeds {
            // Saving a snapshot reads KVM state on the main thread and writes files.
            rebuild_vm: restart || config.snapshot_to.is_some(),
        };
        let seccomp = match config.seccomp {
            SeccompMode::On => Policy::new(main, Denied::Stop),
            SeccompMode::Log => Policy::new(main, Denied::Log),
            SeccompMode::Off => Ok(Policy::off()),
        }
        .map_err(VmError::Seccomp)?;
        let kept = host.kept;
        // With the command's own streams on stdout, the console (kernel and
        // agent messages) goes to stderr and the terminal stays as it is.
        let streams = !config.io.serial_on_stdio();
        let sink: Box<dyn std::io::Write + Send> = if streams {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        let console =
            ConsoleOutput::new(sink, seccomp.filter(ThreadKind::Console)).map_err(|source| {
                VmError::Host {
                    what: "console",
                    source,
                }
            })?;
        Ok(Session {
            kvm: host.kvm,
            pvm: host.pvm,
            console: Some(console),
            raw: (!streams).then(RawMode::enter),
            device_count: kept.count(),
            kept,
            seccomp,
            main_confined: false,
            parked: None,
            supported_cpuid,
        })
    }

    /// The kept devices (for a boot to take and give back) and where the
    /// guest's serial console writes.
    pub fn parts(&mut self) -> (&mut KeptDevices, &ConsoleOutput) {
        let console = self.console.as_ref().expect("console until finish");
        (&mut self.kept, console)
    }

    /// /dev/kvm.
    pub fn kvm(&self) -> Arc<Kvm> {
        self.kvm.clone()
    }

    /// Whether /dev/kvm is kvm-pvm's.
    pub fn pvm(&self) -> bool {
        self.pvm
    }

    /// The threads' seccomp filters.
    pub fn seccomp(&self) -> Policy {
        self.seccomp.clone()
    }

    /// Installs the main thread's filter, the first time only.
    pub fn confine_main(&mut self) -> Result<(), sandbox::Error> {
        if !self.main_confined {
            self.seccomp.filter(ThreadKind::Main).apply()?;
            self.main_confined = true;
        }
        Ok(())
    }

    /// Whether every kept device came back from the last boot (one that
    /// did not stop cleanly may still hold some).
    pub fn devices_back(&self) -> bool {
        self.kept.count() == self.device_count
    }

    /// KVM's supported CPUID (asked once per run).
    pub fn supported_cpuid(&mut self) -> Result<CpuId, kvm_ioctls::Error> {
        self.supported_cpuid.get()
    }

    /// Keeps a stopped VM until the next boot or minivm's exit.
    pub fn park(&mut self, vm: ParkedVm) {
        tracing::debug!("VM left to its reaper, pid {}", vm.reaper_pid());
        self.parked = Some(vm);
    }

    /// Releases the parked VM now (before a new one is built).
    pub fn release_parked(&mut self) {
        self.parked = None;
    }

    /// Writes out the console's last bytes and restores the terminal; a
    /// parked VM is left to minivm's exit.
    pub fn finish(mut self) {
        if let Some(vm) = self.parked.take() {
            vm.release_at_exit();
        }
        if let Some(console) = self.console.take() {
            let dropped = console.dropped();
            console.finish(Duration::from_secs(2));
            self.raw = None;
            if dropped > 0 {
                eprintln!(
                    "minivm: {dropped} bytes of guest console output were dropped (stdout too slow)"
                );
            }
        }
    }
}

/// Opens the root disk and the taps.
fn open_kept(config: &VmConfig) -> Result<KeptDevices, VmError> {
    let mut kept = KeptDevices::default();
    if let Some(disk) = &config.disk {
        let id: String = disk
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .take(20)
            .collect();
        let block = open_disk(disk, &id).map_err(|source| VmError::Disk {
            path: disk.path.clone(),
            source,
        })?;
        kept.disk = Some(Box::new(block));
    }
    for net in &config.nets {
        let dev = Net::new(&net.tap, net.mac).map_err(|source| VmError::Net {
            tap: net.tap.clone(),
            source,
        })?;
        let m = dev.mac();
        tracing::info!(
            "virtio-net on tap {}: guest MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            net.tap,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5]
        );
        kept.nets.push(Box::new(dev));
    }
    Ok(kept)
}

/// Opens the disk: the file itself, or a private copy-on-write view of it
/// (a reflink where the filesystem has them, else an overlay in the block backend).
fn open_disk(disk: &config::DiskConfig, id: &str) -> Result<Block, DiskError> {
    use std::os::unix::fs::OpenOptionsExt;
    let writable = !disk.read_only && !disk.copy_on_write;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&disk.path)
        .map_err(DiskError::Open)?;
    lock_image(&file, !writable)?;
    if !disk.copy_on_write {
        return Ok(Block::new(file, disk.read_only, id)?);
    }
    // A nameless file beside the image: nothing is left behind, even after kill -9.
    let dir = disk.path.parent().unwrap_or(Path::new("."));
    let private = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .map_err(|source| DiskError::PrivateLayer {
            dir: dir.to_path_buf(),
            source,
        })?;
    if imagefs::sparse::reflink(&file, &private).is_ok() {
        tracing::info!("disk {}: private reflink copy", disk.path.display());
        return Ok(Block::new(private, false, id)?);
    }
    tracing::info!("disk {}: copy-on-write overlay", disk.path.display());
    Ok(Block::new_overlay(file, private, id)?)
}

/// Takes an advisory lock so two VMs never write one image (shared when read-only).
fn lock_image(file: &File, read_only: bool) -> Result<(), DiskError> {
    use std::os::fd::AsRawFd;
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DiskError::InUse);
        }
        return Err(DiskError::Lock(e));
    }
    Ok(())
}
