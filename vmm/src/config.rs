//! What `vm::run` builds: the VM's files, devices and command line, all
//! checked and prepared (by the `spec` and `root` modules).

use std::path::PathBuf;
use std::time::Duration;

use boot::loader::Pages;

/// The command line a Linux guest gets unless `--cmdline` replaces it.
/// `pci=off`: there is no PCI bus; `8250.nr_uarts=1`: one UART, no probing of absent ones;
/// `panic=-1`: a panicking kernel restarts at once instead of hanging.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off 8250.nr_uarts=1 cryptomgr.notests";
/// The glibc tunable of [`PVM_CMDLINE`], spelled once.
macro_rules! glibc_no_avx {
    () => {
        "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512BW,-AVX512VL,-AVX512DQ,\
         -AVX512CD,-FMA,-F16C,-AVX_Fast_Unaligned_Load"
    };
}

/// Work-arounds for kvm-pvm hosts (see the README): the kernel patch's switch,
/// plus instructions the host's emulator cannot run hidden from the guest.
/// Guest user space reads the host's CPUID directly and would use AVX, whose
/// registers a `noxsave` kernel does not preserve across context switches
/// (random crashes): the glibc tunable keeps glibc's string and memory
/// functions off AVX. The kernel hands it to init as an environment
/// variable; `systemd.setenv=` makes systemd pass it on to every unit, since
/// systemd starts services with a clean environment.
pub const PVM_CMDLINE: &str = concat!(
    "minivm_pvm_quirks noxsave ",
    "clearcpuid=popcnt,cx16,fsgsbase,smap,pcid,invpcid,rdrand,rdseed,pku,rdtscp,clwb,clflushopt ",
    "GLIBC_TUNABLES=",
    glibc_no_avx!(),
    " systemd.setenv=GLIBC_TUNABLES=",
    glibc_no_avx!()
);

/// One archive of the initrd, and how its bytes reach guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitrdPart {
    /// The file.
    pub path: PathBuf,
    /// Mapped only for files never rewritten (the agent's cached archive).
    pub pages: Pages,
}

/// Everything needed to build the VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel file.
    pub kernel: PathBuf,
    /// Whether the kernel's pages may be mapped instead of copied: set by
    /// [`VmConfig::canonicalize_paths`] for a kernel in minivm's kernel cache.
    pub kernel_pages: Pages,
    /// The initrd: archives loaded one after the other (none: no initrd).
    pub initrd: Vec<InitrdPart>,
    /// Optional root disk.
    pub disk: Option<DiskConfig>,
    /// virtio-fs shares; with --rootfs the first is the root.
    pub shares: Vec<ShareConfig>,
    /// virtio-net devices, one per `--net`, in order (eth0 first).
    pub nets: Vec<NetConfig>,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Kernel command line, without the device and host parameters minivm adds.
    pub cmdline: String,
    /// Attach a virtio-rng entropy device.
    pub rng: bool,
    /// How long a SIGTERM'd guest has to power off after its power button is
    /// pressed; zero: SIGTERM stops the VM at once.
    pub shutdown_timeout: Duration,
    /// `--timeout`: the whole run's time limit, from minivm's start.
    pub timeout: Option<Duration>,
    /// Print each virtio-fs share's request counts when a boot ends.
    pub fs_stats: bool,
    /// `--seccomp`: confine minivm's threads with their seccomp filters.
    pub seccomp: crate::cli::SeccompMode,
    /// How the guest meets minivm's stdin, stdout and stderr.
    pub io: GuestIo,
    /// `--exec-socket`: where `minivm exec` reaches the agent (which then
    /// has the exec port).
    pub exec_socket: Option<PathBuf>,
    /// `--snapshot-to`: where to save the VM at its snapshot point.
    pub snapshot_to: Option<PathBuf>,
    /// `minivm restore`: the snapshot to start from instead of a kernel.
    pub restore: Option<std::sync::Arc<crate::snapshot::Loaded>>,
    /// With `--snapshot-to` and a root image: the image's process, which the
    /// snapshot records for the agent that waits in it.
    pub image_process: Option<imagefs::process::ImageProcess>,
    /// `--snapshot-and-continue`: the VM goes on once it is saved.
    pub snapshot_continue: bool,
    /// The job for an agent that waits for it on its control port: a
    /// restored one's (sent before the guest runs), or with
    /// `--snapshot-and-continue` this run's (sent once the VM is saved).
    pub agent_job: Option<crate::agent::Job>,
}

impl VmConfig {
    /// Makes every host path absolute and canonical, once, before the VM is
    /// built: a jail changes `/`, and with `--restart` the main thread's
    /// seccomp filter has no `getcwd`. A path that does not resolve stays
    /// as given, for the error where it is opened; `/proc` paths (the
    /// agent's initramfs is a memfd) stay too.
    pub fn canonicalize_paths(&mut self) {
        let fix = |p: &mut PathBuf| {
            if !p.starts_with("/proc") {
                if let Ok(c) = std::fs::canonicalize(&*p) {
                    *p = c;
                }
            }
        };
        fix(&mut self.kernel);
        if crate::paths::is_published_kernel(&self.kernel) {
            self.kernel_pages = Pages::Mapped;
        }
        self.initrd.iter_mut().for_each(|p| fix(&mut p.path));
        for s in &mut self.shares {
            match &mut s.source {
                ShareSource::Dir(d) => fix(d),
                ShareSource::Layers { layers, upper } => {
                    layers.iter_mut().for_each(fix);
                    upper.iter_mut().for_each(fix);
                }
            }
        }
    }

    /// The host paths the VM opens by name each time it boots, and whether
    /// it may write there (what a jail must show it). The disk and taps are
    /// opened once, before, and are not among them.
    pub fn host_paths(&self) -> Vec<(PathBuf, bool)> {
        let mut out = vec![(self.kernel.clone(), false)];
        out.extend(
            self.initrd
                .iter()
                .filter(|p| !p.path.starts_with("/proc"))
                .map(|p| (p.path.clone(), false)),
        );
        for s in &self.shares {
            match &s.source {
                ShareSource::Dir(d) => out.push((d.clone(), !s.read_only)),
                ShareSource::Layers { layers, upper } => {
                    out.extend(layers.iter().map(|l| (l.clone(), false)));
                    out.extend(upper.iter().map(|u| (u.clone(), !s.read_only)));
                }
            }
        }
        out
    }
}

/// How the guest meets minivm's stdin, stdout and stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestIo {
    /// The serial console on stdout, with an interactive terminal (raw
    /// mode) forwarded to it: a whole system.
    #[default]
    Console,
    /// `run -t -- CMD`: [`GuestIo::Console`] as the command's terminal, and
    /// a control port that tells the agent of window size changes and of
    /// signals to pass on.
    Terminal {
        /// Whether the console also has the [`GuestIo::Streams`] ports
        /// (unused): a restored agent opened them when it was saved.
        stream_ports: bool,
    },
    /// `run -- CMD`: the command's stdout and stderr on minivm's own, over
    /// virtio-console ports, and with `stdin` (`-i`) minivm's stdin to the
    /// command; the serial console (kernel and agent messages) on stderr.
    Streams {
        /// Whether minivm's stdin goes to the command.
        stdin: bool,
    },
}

impl GuestIo {
    /// Whether the serial console is minivm's stdin and stdout (a terminal
    /// in raw mode, when it is one).
    pub fn serial_on_stdio(self) -> bool {
        matches!(self, GuestIo::Console | GuestIo::Terminal { .. })
    }
}

/// Names of the virtio-console ports of [`GuestIo::Streams`] (the guest
/// agent looks them up by name).
pub const STDOUT_PORT: &str = "minivm.stdout";
/// See [`STDOUT_PORT`].
pub const STDERR_PORT: &str = "minivm.stderr";
/// See [`STDOUT_PORT`].
pub const STDIN_PORT: &str = "minivm.stdin";
/// The port of `minivm exec`'s frames (`crate::exec`), with `--exec-socket`.
pub const EXEC_PORT: &str = "minivm.exec";
/// The port of minivm's messages to the agent (`crate::control`), with the
/// command's streams and with `-t`.
pub const CONTROL_PORT: &str = "minivm.control";

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

/// A virtio-net device over a host tap (`--net tap=NAME[,mac=MAC]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Tap interface name: an existing tap, or one minivm creates.
    pub tap: String,
    /// Guest MAC; by default a locally administered one derived from the tap name.
    pub mac: Option<[u8; 6]>,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_glibc_tunable_reaches_init_and_every_systemd_unit() {
        let words: Vec<&str> = PVM_CMDLINE.split_whitespace().collect();
        let init = words
            .iter()
            .find_map(|w| w.strip_prefix("GLIBC_TUNABLES="))
            .expect("GLIBC_TUNABLES for init");
        let units = words
            .iter()
            .find_map(|w| w.strip_prefix("systemd.setenv=GLIBC_TUNABLES="))
            .expect("systemd.setenv for units");
        assert_eq!(init, units);
        assert!(init.starts_with("glibc.cpu.hwcaps=-AVX,") && !init.contains(' '));
    }
}
