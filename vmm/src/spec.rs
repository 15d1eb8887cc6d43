//! `run`'s arguments validated into one value: which root to boot and how
//! (read-only, persistent, size-capped: each decided here, once), the kernel
//! resolved, every named file checked and the kernel command line built.
//! Nothing is created or converted yet; that is the `root` module's job.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::agent::Overrides;
use crate::cli::{ImageOpts, RunArgs};
use crate::config::{NetConfig, ShareConfig, ShareSource, DEFAULT_CMDLINE, ROOTFS_TAG};
use crate::io_reason::io_reason;
use crate::target::{self, Target, TargetError};

/// A `run` argument that names a missing or unusable file.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// No --kernel and no default kernel built.
    #[error(
        "no kernel to boot: --kernel was not given and the default kernel {} does not exist.\n\
         Build it with `kernel/build.sh` (about 10 minutes the first time), or pass --kernel PATH.",
        .default.display()
    )]
    NoDefaultKernel { default: PathBuf },
    /// A file or directory given on the command line cannot be opened.
    #[error("{what} {}: {}", .path.display(), io_reason(.source))]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A directory where a file is wanted.
    #[error("{what} {}: is a directory", .path.display())]
    IsADirectory { what: &'static str, path: PathBuf },
    /// A file where a directory is wanted.
    #[error("{what} {}: is not a directory", .path.display())]
    NotADirectory { what: &'static str, path: PathBuf },
    /// Two virtio-fs shares with one tag.
    #[error("share tag {tag}: used twice")]
    DuplicateTag { tag: String },
    /// Two `--net` on one tap.
    #[error("tap {tap}: given to --net twice")]
    DuplicateTap { tap: String },
    /// More vCPUs than the host has CPUs.
    #[error(
        "--cpus {cpus}: the host has only {host} CPU(s); more vCPUs than host CPUs only slow \
         the guest down (and on kvm-pvm hosts break it)"
    )]
    TooManyCpus { cpus: u8, host: usize },
    /// IMAGE is not an image reference, yet an image-only flag was given.
    #[error("{flag} needs an OCI image, and {target:?} is a disk or a directory")]
    NeedsImage { flag: &'static str, target: String },
    /// IMAGE names nothing bootable.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// `--snapshot-to` with a device or set-up it cannot save yet.
    #[error("--snapshot-to: {0}")]
    Snapshot(String),
    /// `--jail-user` other than root with an image over virtio-fs.
    #[error(
        "--jail-user {uid}: an image over --virtiofs is served from layers unpacked for the user \
         running minivm, which the jail's user may not read; use --jail without --jail-user, or \
         boot the image's disk"
    )]
    JailUserLayers { uid: u32 },
}

/// `--jail` and `--jail-user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// The jail's root directory (absolute).
    pub dir: PathBuf,
    /// The user minivm runs as in the jail.
    pub uid: u32,
    /// The group minivm runs as in the jail.
    pub gid: u32,
}

/// `--snapshot-to`: a new directory, and a VM whose state can be saved:
/// a kernel with its initramfs, or a root disk (an image converted to one,
/// or `--image`) with minivm's agent waiting for the command that
/// `minivm restore DIR -- CMD` gives it.
fn snapshot_spec(args: &RunArgs, root: &RootSpec) -> Result<Option<PathBuf>, SpecError> {
    let Some(dir) = &args.snapshot_to else {
        return Ok(None);
    };
    let refuse = |why: &str| Err(SpecError::Snapshot(why.to_string()));
    if matches!(root, RootSpec::Dir { .. } | RootSpec::OciLayers { .. }) {
        return refuse(
            "a virtio-fs root (--rootfs, --virtiofs) cannot be saved: its file server's open \
             host files are not part of a snapshot; boot the image from a disk (--oci \
             without --virtiofs, or --image)",
        );
    }
    if !args.share.is_empty() || !args.net.is_empty() {
        return refuse(
            "saving shares (virtio-fs) and networks (virtio-net) is not supported: \
             their host state is not part of a snapshot",
        );
    }
    let job_options = !args.job.command.is_empty()
        || args.job.entrypoint.is_some()
        || !args.job.env.is_empty()
        || args.job.workdir.is_some()
        || args.job.user.is_some();
    if args.job.tty || args.job.interactive {
        return refuse(
            "-i and -t cannot go with it: the saved agent has the command's ports, and input \
             read before the snapshot point would be in it (give -i to `minivm restore`)",
        );
    }
    if job_options && !args.snapshot_and_continue {
        return refuse(
            "the command and its options (-- CMD, --entrypoint, -e, --workdir, --user) go to \
             `minivm restore DIR`, whose agent waits for them (or add --snapshot-and-continue)",
        );
    }
    if !matches!(root, RootSpec::None) && args.initrd.is_some() {
        return refuse(
            "--initrd cannot go with a root image: the snapshot holds minivm's guest agent",
        );
    }
    if args.restart || args.jail.is_some() {
        return Err(SpecError::Snapshot(
            "goes with neither --restart nor --jail yet".into(),
        ));
    }
    if dir.exists() {
        return Err(SpecError::Snapshot(format!(
            "{}: already exists (snapshots are new directories)",
            dir.display()
        )));
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    check_dir("--snapshot-to's parent directory", parent)?;
    Ok(Some(
        std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
    ))
}

fn jail_spec(args: &RunArgs, root: &RootSpec) -> Result<Option<JailSpec>, SpecError> {
    let Some(dir) = &args.jail else {
        return Ok(None);
    };
    check_dir("jail directory", dir)?;
    let dir = std::fs::canonicalize(dir).map_err(|source| SpecError::Unreadable {
        what: "jail directory",
        path: dir.clone(),
        source,
    })?;
    // SAFETY: the id getters have no preconditions.
    let own = unsafe { (libc::geteuid(), libc::getegid()) };
    let (uid, gid) = args.jail_user.unwrap_or(own);
    if uid != own.0 && matches!(root, RootSpec::OciLayers { .. }) {
        return Err(SpecError::JailUserLayers { uid });
    }
    Ok(Some(JailSpec { dir, uid, gid }))
}

/// What the guest's root filesystem is, with every choice about it made.
#[derive(Debug, Clone)]
pub enum RootSpec {
    /// No root device: the kernel (and initrd) alone.
    None,
    /// `--image`: a raw disk, written in place unless read-only.
    Disk { path: PathBuf, read_only: bool },
    /// `--rootfs`: a host directory over virtio-fs.
    Dir {
        path: PathBuf,
        read_only: bool,
        size_cap: Option<u64>,
    },
    /// `--oci`: the image converted to a cached disk.
    OciDisk {
        image: OciImage,
        /// Boot this copy of the disk (made from the image if missing).
        persist: Option<PathBuf>,
        /// Boot the disk read-only instead of a private copy-on-write view.
        read_only: bool,
    },
    /// `--oci --virtiofs`: the image's unpacked layers, merged over virtio-fs.
    OciLayers {
        image: OciImage,
        upper: UpperSpec,
        size_cap: Option<u64>,
    },
}

/// An OCI image to boot and how to fetch it.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The reference as given.
    pub reference: String,
    /// Size, TLS and progress options.
    pub opts: ImageOpts,
}

/// The writable layer over an image's layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpperSpec {
    /// `--readonly`: none, the guest cannot write.
    None,
    /// A private layer, removed when the VM ends.
    Private,
    /// `--persist DIR`: kept in DIR.
    Persist(PathBuf),
}

impl RootSpec {
    /// Whether the guest gets its root read-only.
    pub fn read_only(&self) -> bool {
        match self {
            RootSpec::None => false,
            RootSpec::Disk { read_only, .. }
            | RootSpec::Dir { read_only, .. }
            | RootSpec::OciDisk { read_only, .. } => *read_only,
            RootSpec::OciLayers { upper, .. } => *upper == UpperSpec::None,
        }
    }

    /// The kernel parameters that mount it as `/`.
    fn kernel_params(&self) -> Option<String> {
        let ro = if self.read_only() { "ro" } else { "rw" };
        match self {
            RootSpec::None => None,
            RootSpec::Disk { .. } | RootSpec::OciDisk { .. } => Some(format!("root=/dev/vda {ro}")),
            RootSpec::Dir { .. } | RootSpec::OciLayers { .. } => {
                Some(format!("root={ROOTFS_TAG} rootfstype=virtiofs {ro}"))
            }
        }
    }

    /// Whether it is served over virtio-fs under [`ROOTFS_TAG`].
    fn is_share(&self) -> bool {
        matches!(self, RootSpec::Dir { .. } | RootSpec::OciLayers { .. })
    }
}

/// A validated `run`: everything the VM needs except the prepared root.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The root filesystem.
    pub root: RootSpec,
    /// Kernel file.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// The `--share` directories (the root's share comes first when it is one).
    pub shares: Vec<ShareConfig>,
    /// The `--net` devices.
    pub nets: Vec<NetConfig>,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Kernel command line, without the device and host parameters minivm adds.
    pub cmdline: String,
    /// Attach a virtio-rng entropy device (unless `--no-rng`).
    pub rng: bool,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: std::time::Duration,
    /// `--restart`: a guest reboot boots it again instead of ending minivm.
    pub restart: bool,
    /// `--timeout`.
    pub timeout: Option<std::time::Duration>,
    /// Whether `cmdline` is the user's whole own (`--cmdline`), not minivm's default.
    pub own_cmdline: bool,
    /// `--fs-stats`.
    pub fs_stats: bool,
    /// `--seccomp`.
    pub seccomp: crate::cli::SeccompMode,
    /// `--jail`, `--jail-user`.
    pub jail: Option<JailSpec>,
    /// `--snapshot-to`.
    pub snapshot_to: Option<PathBuf>,
    /// `--snapshot-and-continue`.
    pub snapshot_continue: bool,
    /// `-- CMD`, `--entrypoint`, `-e`, `--workdir`, `--user`.
    pub overrides: Overrides,
    /// `--exec-socket`.
    pub exec_socket: Option<PathBuf>,
}

impl RunSpec {
    /// Validates `run` arguments. The kernel comes first: a missing kernel is
    /// reported before anything else (and before a possibly long conversion).
    pub fn from_args(args: &RunArgs) -> Result<RunSpec, SpecError> {
        let kernel = resolve_kernel(args.kernel.as_deref())?;
        check_cpus(args.cpus, host_cpus())?;
        let root = root_spec(args)?;
        let mut shares: Vec<ShareConfig> = Vec::new();
        for s in &args.share {
            check_dir("shared directory", &s.path)?;
            let root_tag = root.is_share() && s.tag == ROOTFS_TAG;
            if root_tag || shares.iter().any(|x| x.tag == s.tag) {
                return Err(SpecError::DuplicateTag { tag: s.tag.clone() });
            }
            shares.push(ShareConfig {
                source: ShareSource::Dir(s.path.clone()),
                tag: s.tag.clone(),
                read_only: s.read_only,
                size_cap: None,
            });
        }
        for (i, n) in args.net.iter().enumerate() {
            if args.net[..i].iter().any(|m| m.tap == n.tap) {
                return Err(SpecError::DuplicateTap { tap: n.tap.clone() });
            }
        }
        if let Some(i) = &args.initrd {
            check_readable("initrd", i)?;
        }
        let jail = jail_spec(args, &root)?;
        let snapshot_to = snapshot_spec(args, &root)?;
        let cmdline = match &args.cmdline {
            Some(c) => c.clone(),
            None => {
                let mut c = DEFAULT_CMDLINE.to_string();
                for p in root.kernel_params().iter().chain(&args.append) {
                    c.push(' ');
                    c.push_str(p);
                }
                c
            }
        };
        Ok(RunSpec {
            root,
            kernel,
            initrd: args.initrd.clone(),
            shares,
            nets: args.net.clone(),
            mem_size: args.mem,
            cpus: args.cpus,
            cmdline,
            rng: !args.no_rng,
            shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
            restart: args.restart,
            timeout: args.timeout.map(std::time::Duration::from_secs),
            own_cmdline: args.cmdline.is_some(),
            fs_stats: args.fs_stats,
            seccomp: args.seccomp,
            jail,
            snapshot_to,
            snapshot_continue: args.snapshot_and_continue,
            overrides: Overrides::from(&args.job),
            exec_socket: args.exec_socket.clone(),
        })
    }
}

/// The one place `--readonly`, `--persist` and `--upper-size` are read.
fn root_spec(args: &RunArgs) -> Result<RootSpec, SpecError> {
    let read_only = args.readonly;
    let (image, rootfs, oci) = match args.target.as_deref().map(target::resolve).transpose()? {
        None => (args.image.clone(), args.rootfs.clone(), args.oci.clone()),
        Some(Target::Disk(p)) => (Some(p), None, None),
        Some(Target::Dir(p)) => (None, Some(p), None),
        Some(Target::Image(r)) => (None, None, Some(r)),
    };
    if oci.is_none() {
        // clap saw IMAGE, which named a disk or a directory.
        let flag = if args.virtiofs {
            "--virtiofs"
        } else {
            "--persist"
        };
        if args.virtiofs || args.persist.is_some() {
            return Err(SpecError::NeedsImage {
                flag,
                target: args.target.clone().unwrap_or_default(),
            });
        }
    }
    if let Some(path) = &image {
        check_readable("disk image", path)?;
        return Ok(RootSpec::Disk {
            path: path.clone(),
            read_only,
        });
    }
    if let Some(path) = &rootfs {
        check_dir("root filesystem", path)?;
        return Ok(RootSpec::Dir {
            path: path.clone(),
            read_only,
            size_cap: args.upper_size,
        });
    }
    let Some(reference) = &oci else {
        return Ok(RootSpec::None);
    };
    let image = OciImage {
        reference: reference.clone(),
        opts: args.image_opts.clone(),
    };
    if !args.virtiofs {
        return Ok(RootSpec::OciDisk {
            image,
            persist: args.persist.clone(),
            read_only,
        });
    }
    // Read-only: no writable layer at all, so --persist has nothing to keep.
    let upper = match (&args.persist, read_only) {
        (_, true) => UpperSpec::None,
        (Some(dir), false) => UpperSpec::Persist(dir.clone()),
        (None, false) => UpperSpec::Private,
    };
    Ok(RootSpec::OciLayers {
        image,
        upper,
        size_cap: args.upper_size,
    })
}

/// The host's online CPUs (1 if it cannot tell).
fn host_cpus() -> usize {
    // SAFETY: sysconf only reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Refuses more vCPUs than `host` CPUs: each vCPU is a thread that wants a CPU of its own.
fn check_cpus(cpus: u8, host: usize) -> Result<(), SpecError> {
    if usize::from(cpus) > host {
        return Err(SpecError::TooManyCpus { cpus, host });
    }
    Ok(())
}

/// `--kernel`, or the kernel `kernel/build.sh` built.
fn resolve_kernel(explicit: Option<&Path>) -> Result<PathBuf, SpecError> {
    if let Some(p) = explicit {
        check_readable("kernel", p)?;
        return Ok(p.to_path_buf());
    }
    let dir = crate::paths::default_kernel_dir();
    // vmlinux first: a bzImage decompresses itself inside the guest, which is slow.
    for name in ["vmlinux", "bzImage"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(SpecError::NoDefaultKernel {
        default: dir.join("vmlinux"),
    })
}

fn unreadable<'a>(what: &'static str, path: &'a Path) -> impl Fn(io::Error) -> SpecError + 'a {
    move |source| SpecError::Unreadable {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn check_dir(what: &'static str, path: &Path) -> Result<(), SpecError> {
    let unreadable = unreadable(what, path);
    let meta = std::fs::metadata(path).map_err(&unreadable)?;
    if !meta.is_dir() {
        return Err(SpecError::NotADirectory {
            what,
            path: path.to_path_buf(),
        });
    }
    std::fs::read_dir(path).map_err(unreadable)?;
    Ok(())
}

fn check_readable(what: &'static str, path: &Path) -> Result<(), SpecError> {
    let unreadable = unreadable(what, path);
    let meta = std::fs::metadata(path).map_err(&unreadable)?;
    if meta.is_dir() {
        return Err(SpecError::IsADirectory {
            what,
            path: path.to_path_buf(),
        });
    }
    File::open(path).map_err(unreadable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn args(image: Option<&str>, kernel: Option<&str>) -> RunArgs {
        RunArgs {
            image: image.map(PathBuf::from),
            kernel: kernel.map(PathBuf::from),
            oci: None,
            persist: None,
            virtiofs: false,
            image_opts: crate::cli::ImageOpts {
                size: None,
                tls_verify: true,
                quiet: true,
            },
            initrd: None,
            rootfs: None,
            target: None,
            share: vec![],
            net: vec![],
            upper_size: None,
            no_rng: false,
            cmdline: None,
            append: Some("quiet".into()),
            mem: 64 << 20,
            cpus: 1,
            readonly: true,
            shutdown_timeout: 0,
            restart: false,
            snapshot_to: None,
            exec_socket: None,
            snapshot_and_continue: false,
            timeout: None,
            fs_stats: false,
            seccomp: crate::cli::SeccompMode::On,
            jail: None,
            jail_user: None,
            job: Default::default(),
            timings: false,
        }
    }

    #[test]
    fn cpus_up_to_the_host_count() {
        assert!(check_cpus(1, 1).is_ok());
        assert!(check_cpus(4, 4).is_ok());
        let e = check_cpus(5, 4).unwrap_err();
        assert!(matches!(e, SpecError::TooManyCpus { cpus: 5, host: 4 }));
        assert!(e.to_string().contains("only 4 CPU(s)"), "{e}");
        assert!(host_cpus() >= 1);
    }

    #[test]
    fn missing_files_are_named() {
        let e =
            RunSpec::from_args(&args(Some("/nonexistent/disk.raw"), Some("/bin/sh"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "disk image /nonexistent/disk.raw: no such file"
        );
        let e = RunSpec::from_args(&args(None, Some("/nonexistent/vmlinux"))).unwrap_err();
        assert_eq!(e.to_string(), "kernel /nonexistent/vmlinux: no such file");
        let e = RunSpec::from_args(&args(None, Some("/tmp"))).unwrap_err();
        assert_eq!(e.to_string(), "kernel /tmp: is a directory");
        let mut a = args(None, Some("/bin/sh"));
        a.rootfs = Some("/bin/sh".into());
        let e = RunSpec::from_args(&a).unwrap_err();
        assert_eq!(e.to_string(), "root filesystem /bin/sh: is not a directory");
    }

    #[test]
    fn default_cmdline_has_root_readonly_and_append() {
        let c = RunSpec::from_args(&args(Some("/bin/sh"), Some("/bin/sh"))).unwrap();
        assert!(c.cmdline.starts_with("console=ttyS0 "));
        assert!(
            c.cmdline.ends_with("root=/dev/vda ro quiet"),
            "{}",
            c.cmdline
        );
        let mut a = args(None, Some("/bin/sh"));
        a.cmdline = Some("custom".into());
        assert_eq!(RunSpec::from_args(&a).unwrap().cmdline, "custom");
    }

    #[test]
    fn rng_is_on_unless_no_rng() {
        let mut a = args(None, Some("/bin/sh"));
        assert!(RunSpec::from_args(&a).unwrap().rng);
        a.no_rng = true;
        assert!(!RunSpec::from_args(&a).unwrap().rng);
    }

    #[test]
    fn readonly_is_decided_once_for_each_root() {
        let mut a = args(None, Some("/bin/sh"));
        a.oci = Some("oci:x".into());
        a.virtiofs = true;
        a.persist = Some("/keep".into());
        a.upper_size = Some(16 << 20);
        // --readonly leaves the writable layer out, even with --persist.
        let s = RunSpec::from_args(&a).unwrap();
        assert!(matches!(
            s.root,
            RootSpec::OciLayers {
                upper: UpperSpec::None,
                size_cap: Some(_),
                ..
            }
        ));
        assert!(
            s.cmdline.contains("rootfstype=virtiofs ro"),
            "{}",
            s.cmdline
        );
        a.readonly = false;
        let s = RunSpec::from_args(&a).unwrap();
        assert!(
            matches!(&s.root, RootSpec::OciLayers { upper: UpperSpec::Persist(p), .. } if p == Path::new("/keep"))
        );
        assert!(
            s.cmdline
                .ends_with("root=minivm-root rootfstype=virtiofs rw quiet"),
            "{}",
            s.cmdline
        );
        a.virtiofs = false;
        let s = RunSpec::from_args(&a).unwrap();
        assert!(matches!(
            s.root,
            RootSpec::OciDisk {
                read_only: false,
                ..
            }
        ));
        assert!(
            s.cmdline.ends_with("root=/dev/vda rw quiet"),
            "{}",
            s.cmdline
        );
    }

    #[test]
    fn a_share_cannot_take_the_root_tag() {
        let mut a = args(None, Some("/bin/sh"));
        a.rootfs = Some("/tmp".into());
        a.share = vec![crate::cli::Share {
            path: "/tmp".into(),
            tag: ROOTFS_TAG.into(),
            read_only: false,
        }];
        let e = RunSpec::from_args(&a).unwrap_err();
        assert_eq!(e.to_string(), "share tag minivm-root: used twice");
        a.rootfs = None;
        assert_eq!(RunSpec::from_args(&a).unwrap().shares.len(), 1);
    }
}
