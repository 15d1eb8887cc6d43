//! What `vm::run` builds: the VM's files, devices and command line, all
//! checked and prepared (by the `spec` and `root` modules).

use std::path::PathBuf;
use std::time::Duration;

/// The command line a Linux guest gets unless `--cmdline` replaces it.
/// `pci=off`: there is no PCI bus; `8250.nr_uarts=1`: one UART, no probing of absent ones;
/// `panic=-1`: a panicking kernel restarts at once instead of hanging.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off 8250.nr_uarts=1 cryptomgr.notests";
/// Work-arounds for kvm-pvm hosts (see the README): the kernel patch's switch,
/// plus instructions the host's emulator cannot run hidden from the guest.
/// Guest user space reads the host's CPUID directly and would use AVX, whose
/// registers a `noxsave` kernel does not preserve across context switches
/// (random crashes): the glibc tunable, which the kernel hands to init as an
/// environment variable, keeps glibc's string and memory functions off AVX.
pub const PVM_CMDLINE: &str = "minivm_pvm_quirks noxsave \
    clearcpuid=popcnt,cx16,fsgsbase,smap,pcid,invpcid,rdrand,rdseed,pku,rdtscp,clwb,clflushopt \
    GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512BW,-AVX512VL,-AVX512DQ,\
    -AVX512CD,-FMA,-F16C,-AVX_Fast_Unaligned_Load";

/// Everything needed to build the VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel file.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Optional root disk.
    pub disk: Option<DiskConfig>,
    /// virtio-fs shares; with --rootfs the first is the root.
    pub shares: Vec<ShareConfig>,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Kernel command line, without the device and host parameters minivm adds.
    pub cmdline: String,
    /// How long a SIGTERM'd guest has to power off after its power button is
    /// pressed; zero: SIGTERM stops the VM at once.
    pub shutdown_timeout: Duration,
}

/// A file system served over virtio-fs.
#[derive(Debug, Clone)]
pub struct ShareConfig {
    /// What is served.
    pub source: ShareSource,
    /// Mount tag.
    pub tag: String,
    /// Read-only for the guest.
    pub read_only: bool,
    /// Cap on what the guest may write through it.
    pub size_cap: Option<u64>,
}

/// What a virtio-fs share serves.
#[derive(Debug, Clone)]
pub enum ShareSource {
    /// A host directory.
    Dir(PathBuf),
    /// An OCI image's unpacked layers (bottom-most first), merged, with a
    /// writable upper directory unless read-only.
    Layers {
        layers: Vec<PathBuf>,
        upper: Option<PathBuf>,
    },
}

impl ShareSource {
    /// What to call it in messages.
    pub fn describe(&self) -> String {
        match self {
            ShareSource::Dir(p) => format!("shared directory {}", p.display()),
            ShareSource::Layers { layers, .. } => {
                format!(
                    "image layers ({} layer(s) from the layer store)",
                    layers.len()
                )
            }
        }
    }
}

/// Tag of the virtio-fs root filesystem: not a number or device-like name,
/// which the kernel would take for a block device, and not "rootfs", which
/// busybox `df` and others skip as the initramfs' name.
pub const ROOTFS_TAG: &str = "minivm-root";

/// A virtio-blk disk.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
    /// Never write the file: the VM writes to a private copy-on-write layer.
    pub copy_on_write: bool,
}
