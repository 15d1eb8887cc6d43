//! Command-line interface.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::NetConfig;

/// minivm: a small, fast, secure KVM virtual machine monitor.
///
/// minivm boots a Linux kernel directly (no bootloader, no firmware) with a
/// raw disk image as its root filesystem and the guest's serial console on
/// your terminal.
#[derive(Debug, Parser)]
#[command(
    name = "minivm",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// More log output on stderr (-v: info, -vv: debug). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
// Parsed once per process: the size of `RunArgs` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a virtual machine from a raw disk (--image) or an OCI image (--oci).
    #[command(after_long_help = RUN_HELP)]
    Run(RunArgs),
    /// Convert an OCI image into a bootable raw ext4 disk.
    #[command(after_long_help = REF_HELP)]
    Convert(ConvertArgs),
    /// Start a VM from a snapshot made with `run --snapshot-to DIR`.
    Restore(RestoreArgs),
    /// Run one more process in a VM that `run --exec-socket SOCKET` runs
    /// (exit status: the process's; 255 when the VM ended first).
    Exec(crate::exec::client::ExecArgs),
    /// Fetch and convert an OCI image into the cache, ready for `run --oci`.
    #[command(after_long_help = REF_HELP)]
    Pull(PullArgs),
    /// List the converted disks in the cache.
    Images,
    /// Remove cached disks by reference or key (prefix of at least 4 characters).
    Rm {
        /// References (as given to pull/run) or keys shown by `minivm images`.
        #[arg(required = true, value_name = "REF|KEY")]
        targets: Vec<String>,
    },
    /// Remove leftovers of interrupted conversions and disks unused for a while.
    Gc {
        /// Remove disks not used for this many days (default 30).
        #[arg(
            long,
            value_name = "DAYS",
            default_value_t = 30,
            conflicts_with = "all"
        )]
        unused_days: u64,
        /// Remove every cached disk.
        #[arg(long)]
        all: bool,
    },
}

const REF_HELP: &str = "\
IMAGE REFERENCES (skopeo's conventions):
  oci:DIR[:TAG]                       an OCI image layout directory
  oci-archive:FILE[:TAG]              a tar of an OCI image layout
  docker-archive:FILE[:REPO:TAG]      what `docker save` writes
  docker://HOST[:PORT]/REPO[:TAG|@DIGEST]   a registry (OCI distribution API);
                                      credentials from MINIVM_REGISTRY_USER/_PASSWORD

Converted disks are cached under ${XDG_CACHE_HOME:-~/.cache}/minivm/disks, keyed by the image's
manifest digest and the disk size: converting or running the same image again reads no layer.
";

/// How to reach and size an image.
#[derive(Debug, Args, Clone)]
pub struct ImageOpts {
    /// Disk size, e.g. 2G; by default the content plus headroom (at least 1 GiB free).
    #[arg(long, value_name = "SIZE", value_parser = parse_disk_size)]
    pub size: Option<u64>,
    /// Verify TLS for registries; `--tls-verify=false` also allows plain HTTP.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Options of `minivm convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The image (see below).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Where to write the raw disk (replaced atomically).
    #[arg(short, long, value_name = "OUT.raw")]
    pub output: PathBuf,
    #[command(flatten)]
    pub image: ImageOpts,
}

/// Options of `minivm pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image (see below).
    #[arg(value_name = "REF")]
    pub reference: String,
    #[command(flatten)]
    pub image: ImageOpts,
}

const RUN_HELP: &str = "\
EXAMPLES:
  minivm run --image debian.raw                  boot a raw ext4 disk with the default kernel
  minivm --image debian.raw                      the same (`run` is implied before an option)
  minivm run debian.raw                          the same: IMAGE is a file, so a disk
  minivm run ./rootfs                            a directory: the root over virtio-fs
  minivm run alpine:3.20 --virtiofs              a short name: docker://docker.io/library/alpine:3.20
  minivm run --image disk.raw --readonly --append 'init=/bin/sh'
  minivm run --kernel ./vmlinux --mem 1G --image disk.raw
  minivm run --oci oci:./layout:latest           boot an OCI image (converted once, then cached)
  minivm run --oci docker://localhost:5000/app --tls-verify=false --persist app.raw
  minivm run --oci oci:./layout --virtiofs --upper-size 1G   the image's layers over virtio-fs
  minivm run --rootfs ./rootfs --share /srv/data:data:ro   a host directory as root, plus a share

OCI IMAGES:
  --oci REF converts the image to an ext4 disk in the cache (see `minivm convert --help` for
  references) and boots a private copy-on-write view of it: the cached disk never changes and
  VMs never see each other's writes. --persist PATH keeps the VM's disk in PATH (created from
  the image the first time, booted as it is afterwards).
  --oci REF --virtiofs boots without a disk: each layer is unpacked once into the layer store
  (${XDG_CACHE_HOME:-~/.cache}/minivm/layers, shared by every image that has it) and the guest's
  root is their merged view over virtio-fs, with OCI whiteouts honoured. The VM's changes go to
  a private writable layer, removed when it ends (kept in the directory --persist names);
  --upper-size caps it, --readonly leaves it out.

CONSOLE:
  The guest's serial console (ttyS0) is this terminal. When stdin is a terminal it is put
  in raw mode (restored on exit); press Ctrl-A then x to quit, Ctrl-A Ctrl-A to send Ctrl-A.

EXIT STATUS:
  0      the guest rebooted or powered off, or you quit with Ctrl-A x; with --restart a
         reboot boots the guest again instead (nothing it wrote is lost), and only its
         other ends end minivm
  N      the guest wrote N to the exit port (I/O port 0xf4), e.g. from a shell:
         printf '\\007' | dd of=/dev/port bs=1 seek=244 count=1     (exits 7)
  1      minivm failed (bad arguments, missing files, KVM errors)
  2      command-line usage error (also an ambiguous IMAGE, or --virtiofs with a disk)
  3      the guest crashed: triple fault, kernel panic, or an instruction KVM cannot run
  124    --timeout passed
  125-7  run -- CMD: the guest agent could not set up (125), cannot run (126) or find
         (127) the command; any other status is the command's own
  128+S  minivm was stopped by signal S
  159    a minivm thread made a system call outside its seccomp filter (--seccomp)

  SIGTERM asks the guest to shut down (ACPI power button); a second SIGTERM, or
  --shutdown-timeout seconds passing, stops it hard (exit 143). With --restart, a guest
  that reboots after SIGTERM, or a SIGTERM that comes while it reboots, ends minivm with 0.

  A write to port 0xf5 logs \"boot finished\" with the time since minivm started.

KERNEL:
  Without --kernel, minivm boots the kernel built by kernel/build.sh, found under
  ${XDG_CACHE_HOME:-~/.cache}/minivm/kernel/default/ (vmlinux preferred over bzImage).
";

/// Options of `minivm run`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("fs_root").args(["rootfs", "virtiofs"]))]
// --persist and --virtiofs need an image: --oci or IMAGE (which spec.rs checks is one).
#[command(group = clap::ArgGroup::new("oci_image").args(["oci", "target"]))]
pub struct RunArgs {
    /// What to boot: an existing file is a raw disk (as --image), an existing
    /// directory a root directory (as --rootfs), anything else an image
    /// reference (as --oci; a short NAME[:TAG] means docker://NAME[:TAG]).
    #[arg(value_name = "IMAGE", conflicts_with_all = ["image", "oci", "rootfs"])]
    pub target: Option<String>,

    /// Raw disk image attached as the first virtio-blk disk (/dev/vda) and used as root.
    #[arg(long, value_name = "DISK.raw", conflicts_with = "oci")]
    pub image: Option<PathBuf>,

    /// Boot an OCI image: converted to a cached ext4 disk, booted copy-on-write.
    #[arg(long, value_name = "REF")]
    pub oci: Option<String>,

    /// With --oci: keep the VM's disk in this file (made from the image if missing);
    /// with --virtiofs, keep the VM's writable layer in this directory.
    #[arg(long, value_name = "PATH", requires = "oci_image")]
    pub persist: Option<PathBuf>,

    /// With --oci: serve the image's layers over virtio-fs (each unpacked once into the
    /// layer store, merged, plus a private writable layer) instead of converting to a disk.
    #[arg(long, requires = "oci_image", conflicts_with = "size")]
    pub virtiofs: bool,

    #[command(flatten)]
    pub image_opts: ImageOpts,

    /// Kernel to boot: an uncompressed ELF vmlinux (fastest) or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk loaded next to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Replace the whole default kernel command line.
    #[arg(long, value_name = "STR", conflicts_with = "append")]
    pub cmdline: Option<String>,

    /// Add to the default kernel command line.
    #[arg(long, value_name = "STR")]
    pub append: Option<String>,

    /// Guest memory, e.g. 512M, 2G, 1536 (MiB when no unit is given).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_mem_size)]
    pub mem: u64,

    /// Number of vCPUs, at most the host's CPU count.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_CPUS)))]
    pub cpus: u8,

    /// SIGTERM presses the guest's ACPI power button; if the guest has not
    /// powered off this many seconds later (or on a second SIGTERM) it is
    /// stopped hard. 0: SIGTERM stops it at once.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT)]
    pub shutdown_timeout: u64,

    /// Stop the VM after this many seconds from minivm's start (exit status 124).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,

    /// When the guest reboots, boot it again in the same process (a fresh VM
    /// with the same disk, writable layer, taps and console) instead of ending
    /// with 0.
    #[arg(long)]
    pub restart: bool,

    /// Save the VM to DIR (a new directory), then end with 0; `minivm
    /// restore DIR [-- CMD]` starts copies of it. With a root image, the VM
    /// is saved once minivm's guest agent has set it up and waits for the
    /// command `restore` gives it; without one, when the guest first writes
    /// the boot-finished port (0xf5). Not with virtio-fs, shares or networks.
    #[arg(long, value_name = "DIR")]
    pub snapshot_to: Option<PathBuf>,

    /// With --snapshot-to: once the VM is saved, go on running it (with a
    /// root image: its command, given here as for a plain run; not -i).
    #[arg(long, requires = "snapshot_to")]
    pub snapshot_and_continue: bool,

    /// Attach the root (disk or --rootfs directory) read-only: guest writes fail and nothing changes.
    #[arg(long)]
    pub readonly: bool,

    /// Boot with this host directory as the root filesystem, over virtio-fs.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["image", "oci"])]
    pub rootfs: Option<PathBuf>,

    /// Share a host directory with the guest over virtio-fs, mounted there with
    /// `mount -t virtiofs TAG /mnt` (repeatable; `:ro` makes it read-only).
    #[arg(long, value_name = "HOSTDIR:TAG[:ro]", value_parser = parse_share)]
    pub share: Vec<Share>,

    /// A virtio-net device on host tap NAME (an existing tap, or created when minivm
    /// has CAP_NET_ADMIN); the guest sees eth0, eth1, ... in order (repeatable).
    /// MAC defaults to a locally administered address derived from NAME.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]", value_parser = parse_net)]
    pub net: Vec<NetConfig>,

    /// With --rootfs or --virtiofs: cap what the guest may write (ENOSPC beyond; statfs
    /// shows the cap).
    #[arg(long, value_name = "SIZE", value_parser = parse_disk_size, requires = "fs_root")]
    pub upper_size: Option<u64>,

    /// Leave out the virtio-rng entropy device (on by default: the guest's
    /// /dev/hwrng, filled from the host's getrandom).
    #[arg(long)]
    pub no_rng: bool,

    #[command(flatten)]
    pub job: JobArgs,

    /// Listen on this Unix socket (a new path, this user only) for `minivm
    /// exec SOCKET -- CMD`, which runs more processes beside the command.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["restart", "snapshot_to", "jail"])]
    pub exec_socket: Option<PathBuf>,

    /// At exit, print on stderr minivm's own share of the run: from its start
    /// to the guest's first instruction, and from the guest's end to its own.
    #[arg(long)]
    pub timings: bool,

    /// At exit, print on stderr the FUSE requests each virtio-fs share served,
    /// by opcode, with the server time they took.
    #[arg(long)]
    pub fs_stats: bool,

    /// Confine every minivm thread with its seccomp filter; a system call
    /// outside it stops minivm (exit 159) with a line naming the call and the
    /// thread. `log` lets such calls through and has the kernel log them
    /// (dmesg: "audit: type=1326"); `log` and `off` are for debugging only.
    #[arg(long, value_enum, value_name = "on|log|off", default_value_t = SeccompMode::On)]
    pub seccomp: SeccompMode,

    /// Run the VM in a jail rooted at DIR (an existing directory, left
    /// untouched): new PID, mount, IPC, UTS, network and cgroup namespaces
    /// (and a user namespace when not root), a read-only root holding only
    /// the VM's files, dropped capabilities, no_new_privs and resource
    /// limits. minivm stays outside as a small supervisor that passes
    /// signals on and cleans up.
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,

    /// The user and group minivm runs as in the jail (root only; default:
    /// the user running minivm, as root with only the capabilities its
    /// virtio-fs server needs). Shared directories must be usable by that user.
    #[arg(long, value_name = "UID[:GID]", requires = "jail", value_parser = parse_ids)]
    pub jail_user: Option<(u32, u32)>,
}

/// The command for the guest agent and its options (`run`, `restore`).
#[derive(Debug, Default, Args)]
pub struct JobArgs {
    /// Run this command (replacing the image's Cmd) through minivm's guest
    /// agent, and exit with its status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,

    /// Replace the image's Entrypoint (and drop its Cmd); "" for none.
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,

    /// Set a variable for the command: KEY=VALUE, or KEY to pass minivm's own.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,

    /// The command's working directory (replaces the image's WorkingDir).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// The command's user: name or uid, optionally :group or :gid (replaces the image's User).
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,

    /// Give the command minivm's stdin (EOF included).
    #[arg(short = 'i', long)]
    pub interactive: bool,

    /// Give the command a terminal: the guest's serial console, with minivm's
    /// terminal in raw mode and its size (Ctrl-C goes to the command; Ctrl-A x
    /// quits). Without it, SIGINT to minivm is passed on; the third stops the VM.
    #[arg(short = 't', long)]
    pub tty: bool,

    /// The guest's hostname (default: minivm; each restored VM gets a fresh
    /// minivm-XXXXXXXX).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
}

/// `minivm restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The snapshot directory (`run --snapshot-to DIR`).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// With a snapshot of an image: the command for its waiting agent (the
    /// image's own without `-- CMD`), as for `run`; `-t` is not supported.
    #[command(flatten)]
    pub job: JobArgs,

    /// Stop the VM after this many seconds (exit 124).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// As for `run`.
    #[arg(long, value_enum, value_name = "on|log|off", default_value_t = SeccompMode::On)]
    pub seccomp: SeccompMode,

    /// As for `run`: minivm's own share of the run.
    #[arg(long)]
    pub timings: bool,
}

/// `UID[:GID]` (numbers; GID defaults to UID).
fn parse_ids(s: &str) -> Result<(u32, u32), String> {
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{v:?} is not a numeric user or group id"))
    };
    match s.split_once(':') {
        Some((u, g)) => Ok((num(u)?, num(g)?)),
        None => num(s).map(|u| (u, u)),
    }
}

/// `--seccomp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    On,
    Log,
    Off,
}

/// Most vCPUs: the MADT gives them xAPIC ids 0..N-1, below the broadcast id 0xff.
pub const MAX_CPUS: u8 = 254;
/// Seconds a guest has to power off after SIGTERM pressed its power button.
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 30;

/// Smallest guest memory accepted.
pub const MIN_MEM: u64 = 4 << 20;
/// Largest guest memory accepted.
pub const MAX_MEM: u64 = 1 << 40;

/// A `--share` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Host directory.
    pub path: PathBuf,
    /// Mount tag the guest uses.
    pub tag: String,
    /// Read-only for the guest.
    pub read_only: bool,
}

/// Why a command-line value was rejected (clap prints it after the argument).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// A `--share` without a tag.
    #[error("'{0}': expected HOSTDIR:TAG or HOSTDIR:TAG:ro")]
    ShareSyntax(String),
    /// A `--share` with an empty host directory.
    #[error("'{0}': empty host directory")]
    ShareNoDir(String),
    /// A `--share` tag the guest could not mount.
    #[error("'{0}': the tag must be 1 to 36 characters, without '/' or spaces")]
    ShareBadTag(String),
    /// A `--net` not of the form `tap=NAME[,mac=MAC]`.
    #[error("'{0}': expected tap=NAME or tap=NAME,mac=MAC")]
    NetSyntax(String),
    /// A `--net` tap name Linux would refuse.
    #[error("'{0}': the tap name must be 1 to 15 characters, without '/', ',' or spaces")]
    NetBadTap(String),
    /// A `--net` MAC that is malformed or multicast.
    #[error("'{0}': the MAC must be six hex octets like 02:00:00:00:00:01, and unicast")]
    NetBadMac(String),
    /// No number in front.
    #[error("'{0}' is not a size: expected a number with an optional unit (K, M, G, T)")]
    NotASize(String),
    /// More than 64 bits.
    #[error("'{0}' is too large")]
    TooLarge(String),
    /// A unit other than K, M, G, T.
    #[error("'{arg}': unknown unit '{unit}' (use K, M, G or T)")]
    UnknownUnit { arg: String, unit: String },
    /// A disk under 8 MiB.
    #[error("'{0}' is too small for a disk: at least 8 MiB")]
    DiskTooSmall(String),
    /// A disk over 16 TiB.
    #[error("'{0}' is too large for a disk: at most 16 TiB")]
    DiskTooLarge(String),
    /// Guest memory under [`MIN_MEM`].
    #[error("'{0}' is too little memory: at least {min} MiB", min = MIN_MEM >> 20)]
    TooLittleMemory(String),
    /// Guest memory over [`MAX_MEM`].
    #[error("'{0}' is too much memory: at most {max} GiB", max = MAX_MEM >> 30)]
    TooMuchMemory(String),
    /// Guest memory not made of whole pages.
    #[error("'{0}' is not a multiple of 4 KiB")]
    NotPageMultiple(String),
}

/// The arguments with `run` put in where the user left it out: `minivm
/// [-v]... --OPTION ...` (the card's `minivm --image arch.raw`) is `minivm
/// [-v]... run --OPTION ...`. Only an option leads to it (not --help or
/// --version); a subcommand or nothing at all is left as it is.
pub fn with_implicit_run(mut args: Vec<OsString>) -> Vec<OsString> {
    let first = args
        .iter()
        .skip(1)
        .position(|a| !is_verbose_flag(&a.to_string_lossy()))
        .map(|i| i + 1);
    if let Some(i) = first {
        let a = args[i].to_string_lossy();
        let leaves = ["-h", "--help", "-V", "--version"];
        if a.starts_with('-') && a != "-" && !leaves.contains(&a.as_ref()) {
            args.insert(i, "run".into());
        }
    }
    args
}

fn is_verbose_flag(a: &str) -> bool {
    a == "--verbose" || (a.len() > 1 && a.starts_with('-') && a[1..].bytes().all(|b| b == b'v'))
}

fn parse_share(s: &str) -> Result<Share, ArgError> {
    let (rest, read_only) = match s.strip_suffix(":ro") {
        Some(r) => (r, true),
        None => (s.strip_suffix(":rw").unwrap_or(s), false),
    };
    let (path, tag) = rest
        .rsplit_once(':')
        .ok_or_else(|| ArgError::ShareSyntax(s.into()))?;
    if path.is_empty() {
        return Err(ArgError::ShareNoDir(s.into()));
    }
    if tag.is_empty() || tag.len() > 36 || tag.contains(['/', ' ', '\0']) {
        return Err(ArgError::ShareBadTag(s.into()));
    }
    Ok(Share {
        path: PathBuf::from(path),
        tag: tag.to_string(),
        read_only,
    })
}

fn parse_net(s: &str) -> Result<NetConfig, ArgError> {
    let mut tap = None;
    let mut mac = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tap", v)) if tap.is_none() => tap = Some(v),
            Some(("mac", v)) if mac.is_none() => mac = Some(parse_mac(v, s)?),
            _ => return Err(ArgError::NetSyntax(s.into())),
        }
    }
    let tap = tap.ok_or_else(|| ArgError::NetSyntax(s.into()))?;
    if tap.is_empty() || tap.len() > 15 || tap.contains(['/', ' ', '\0', '\t', '\n']) {
        return Err(ArgError::NetBadTap(s.into()));
    }
    Ok(NetConfig {
        tap: tap.to_string(),
        mac,
    })
}

fn parse_mac(v: &str, arg: &str) -> Result<[u8; 6], ArgError> {
    let bad = || ArgError::NetBadMac(arg.into());
    let mut mac = [0u8; 6];
    let mut parts = v.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 {
        return Err(bad());
    }
    Ok(mac)
}

fn parse_disk_size(s: &str) -> Result<u64, ArgError> {
    let v = parse_size(s, 1 << 20)?;
    if v < 8 << 20 {
        return Err(ArgError::DiskTooSmall(s.into()));
    }
    if v > 16 << 40 {
        return Err(ArgError::DiskTooLarge(s.into()));
    }
    Ok(v)
}

/// Parses sizes like `512M`, `2G`, `2GiB`, `1048576K`; a bare number is MiB.
pub fn parse_size(s: &str, default_unit: u64) -> Result<u64, ArgError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(ArgError::NotASize(s.into()));
    }
    let n: u64 = num.parse().map_err(|_| ArgError::TooLarge(s.into()))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" => default_unit,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => {
            return Err(ArgError::UnknownUnit {
                arg: s.into(),
                unit: u.into(),
            })
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| ArgError::TooLarge(s.into()))
}

fn parse_mem_size(s: &str) -> Result<u64, ArgError> {
    let v = parse_size(s, 1 << 20)?;
    if v < MIN_MEM {
        return Err(ArgError::TooLittleMemory(s.into()));
    }
    if v > MAX_MEM {
        return Err(ArgError::TooMuchMemory(s.into()));
    }
    if v % 4096 != 0 {
        return Err(ArgError::NotPageMultiple(s.into()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    fn with_run(args: &[&str]) -> Vec<String> {
        let v = args.iter().map(OsString::from).collect();
        with_implicit_run(v)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn run_is_implied_before_a_leading_option() {
        assert_eq!(
            with_run(&["minivm", "--image", "arch.raw"]),
            ["minivm", "run", "--image", "arch.raw"]
        );
        assert_eq!(
            with_run(&["minivm", "-vv", "--mem", "1G", "--image", "a.raw"]),
            ["minivm", "-vv", "run", "--mem", "1G", "--image", "a.raw"]
        );
        for unchanged in [
            &["minivm"][..],
            &["minivm", "-v"],
            &["minivm", "--help"],
            &["minivm", "-V"],
            &["minivm", "run", "--image", "a.raw"],
            &["minivm", "-v", "images"],
        ] {
            assert_eq!(with_run(unchanged), unchanged, "{unchanged:?}");
        }
        let c = Cli::try_parse_from(with_implicit_run(
            ["minivm", "--image", "arch.raw", "--cpus", "2"]
                .map(OsString::from)
                .to_vec(),
        ))
        .unwrap();
        let Command::Run(r) = c.command else {
            panic!("not run: {:?}", c.command)
        };
        assert_eq!(r.image.as_deref(), Some(std::path::Path::new("arch.raw")));
        assert_eq!(r.cpus, 2);
    }

    #[test]
    fn image_is_positional_and_exclusive() {
        let r = |args: &[&str]| Cli::try_parse_from(["minivm", "run"].iter().chain(args));
        let Command::Run(a) = r(&["alpine:3.20", "--virtiofs"]).unwrap().command else {
            panic!()
        };
        assert_eq!(a.target.as_deref(), Some("alpine:3.20"));
        assert!(a.virtiofs);
        assert!(r(&["x.raw", "--image", "y.raw"]).is_err());
        assert!(r(&["x", "--oci", "oci:y"]).is_err());
        // --virtiofs and --persist need an image, given either way.
        assert!(r(&["--virtiofs"]).is_err());
        assert!(r(&["--oci", "oci:y", "--persist", "p"]).is_ok());
    }

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes() {
        assert_eq!(parse_mem_size("512M"), Ok(512 << 20));
        assert_eq!(parse_mem_size("512"), Ok(512 << 20));
        assert_eq!(parse_mem_size("2G"), Ok(2 << 30));
        assert_eq!(parse_mem_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_mem_size("65536k"), Ok(64 << 20));
        assert!(parse_mem_size("1M")
            .unwrap_err()
            .to_string()
            .contains("too little"));
        assert!(parse_mem_size("12X")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_mem_size("M")
            .unwrap_err()
            .to_string()
            .contains("not a size"));
        assert!(parse_mem_size("-5M")
            .unwrap_err()
            .to_string()
            .contains("not a size"));
        assert!(parse_mem_size("99999999999999999999")
            .unwrap_err()
            .to_string()
            .contains("too large"));
        assert!(parse_mem_size("4T")
            .unwrap_err()
            .to_string()
            .contains("too much"));
        assert!(parse_mem_size("4097K")
            .unwrap_err()
            .to_string()
            .contains("multiple"));
    }

    #[test]
    fn seccomp_flag() {
        let mode = |extra: &[&str]| {
            let mut a = vec!["minivm", "run", "--image", "d.raw"];
            a.extend_from_slice(extra);
            match Cli::try_parse_from(a).map(|c| c.command) {
                Ok(Command::Run(r)) => Ok(r.seccomp),
                Ok(_) => panic!("not run"),
                Err(e) => Err(e.kind()),
            }
        };
        assert_eq!(mode(&[]), Ok(SeccompMode::On));
        assert_eq!(mode(&["--seccomp", "off"]), Ok(SeccompMode::Off));
        assert_eq!(parse_ids("65534"), Ok((65534, 65534)));
        assert_eq!(parse_ids("1000:100"), Ok((1000, 100)));
        assert!(parse_ids("nobody")
            .unwrap_err()
            .contains("\"nobody\" is not a numeric"));
        assert!(parse_ids("1:x").is_err());
        assert_eq!(mode(&["--seccomp=log"]), Ok(SeccompMode::Log));
        assert_eq!(
            mode(&["--seccomp", "maybe"]),
            Err(clap::error::ErrorKind::InvalidValue)
        );
    }

    #[test]
    fn shutdown_timeout_flag() {
        let run = |extra: &[&str]| {
            let mut a = vec!["minivm", "run"];
            a.extend_from_slice(extra);
            Cli::try_parse_from(a).map(|c| match c.command {
                Command::Run(r) => r.shutdown_timeout,
                _ => panic!(),
            })
        };
        assert_eq!(run(&[]).unwrap(), DEFAULT_SHUTDOWN_TIMEOUT);
        assert_eq!(run(&["--shutdown-timeout", "5"]).unwrap(), 5);
        assert_eq!(run(&["--shutdown-timeout", "0"]).unwrap(), 0);
        assert!(run(&["--shutdown-timeout", "-1"]).is_err());
        assert!(run(&["--shutdown-timeout", "5s"]).is_err());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "minivm",
            "run",
            "--image",
            "a.raw",
            "--mem",
            "1G",
            "--readonly",
        ])
        .unwrap();
        let Command::Run(r) = c.command else { panic!() };
        assert_eq!(r.mem, 1 << 30);
        assert!(r.readonly);
        assert!(!r.no_rng, "virtio-rng is on by default");
        let c = Cli::try_parse_from(["minivm", "run", "--no-rng"]).unwrap();
        let Command::Run(r) = c.command else { panic!() };
        assert!(r.no_rng);
        assert!(Cli::try_parse_from(["minivm", "run", "--cmdline", "a", "--append", "b"]).is_err());
        assert!(Cli::try_parse_from(["minivm", "run", "--cpus", "0"]).is_err());
        assert!(Cli::try_parse_from(["minivm", "run", "--cpus", "255"]).is_err());
        assert!(Cli::try_parse_from(["minivm", "run", "--cpus", "32"]).is_ok());
        assert!(Cli::try_parse_from(["minivm", "run", "--image", "a", "--oci", "oci:x"]).is_err());
        assert!(Cli::try_parse_from(["minivm", "run", "--persist", "p.raw"]).is_err());
        assert!(Cli::try_parse_from(["minivm", "run", "--rootfs", "d", "--image", "i"]).is_err());
        assert!(Cli::try_parse_from(["minivm", "run", "--upper-size", "1G"]).is_err());
        let run = |args: &[&str]| {
            let mut v = vec!["minivm", "run"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v)
        };
        assert!(run(&["--virtiofs"]).is_err(), "--virtiofs needs --oci");
        assert!(run(&["--oci", "oci:x", "--virtiofs", "--size", "1G"]).is_err());
        assert!(run(&["--oci", "oci:x", "--upper-size", "1G"]).is_err());
        assert!(run(&["--rootfs", "d", "--virtiofs"]).is_err());
        match run(&["--oci", "oci:x", "--virtiofs", "--upper-size", "16M"]) {
            Ok(Cli {
                command: Command::Run(a),
                ..
            }) => assert!(a.virtiofs && a.upper_size == Some(16 << 20)),
            other => panic!("{other:?}"),
        }
        assert!(run(&["--rootfs", "d", "--upper-size", "16M"]).is_ok());
        assert_eq!(
            parse_share("/srv/data:data:ro"),
            Ok(Share {
                path: "/srv/data".into(),
                tag: "data".into(),
                read_only: true
            })
        );
        assert_eq!(parse_share("/a:b:c").unwrap().path, PathBuf::from("/a:b"));
        assert!(parse_share("nodir").is_err());
        assert!(parse_share("/x:").is_err());
        assert_eq!(
            parse_net("tap=tap0"),
            Ok(NetConfig {
                tap: "tap0".into(),
                mac: None
            })
        );
        assert_eq!(
            parse_net("mac=02:aB:00:00:00:ff,tap=t").unwrap().mac,
            Some([2, 0xab, 0, 0, 0, 0xff])
        );
        for bad in [
            "",
            "tap=",
            "tap0",
            "tap=a,tap=b",
            "tap=a,x=1",
            "mac=02:00:00:00:00:01",
        ] {
            assert!(
                matches!(
                    parse_net(bad),
                    Err(ArgError::NetSyntax(_) | ArgError::NetBadTap(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_net("tap=0123456789abcdef"),
            Err(ArgError::NetBadTap(_))
        ));
        for bad in [
            "01:00:00:00:00:01",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:0:0:0:0:1",
            "zz:00:00:00:00:01",
        ] {
            assert!(
                matches!(
                    parse_net(&format!("tap=t,mac={bad}")),
                    Err(ArgError::NetBadMac(_))
                ),
                "{bad}"
            );
        }
        let c = Cli::try_parse_from([
            "minivm",
            "convert",
            "oci:x",
            "-o",
            "o.raw",
            "--size",
            "2G",
            "--tls-verify=false",
        ])
        .unwrap();
        let Command::Convert(a) = c.command else {
            panic!()
        };
        assert_eq!((a.image.size, a.image.tls_verify), (Some(2 << 30), false));
        assert!(
            Cli::try_parse_from(["minivm", "convert", "oci:x", "-o", "o.raw", "--size", "1M"])
                .is_err()
        );
    }
}
