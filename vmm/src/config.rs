//! A validated VM configuration: files checked, kernel resolved, command line built.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::cli::RunArgs;

/// The command line a Linux guest gets unless `--cmdline` replaces it.
/// `pci=off`: there is no PCI bus; `8250.nr_uarts=1`: one UART, no probing of absent ones;
/// `panic=-1`: a panicking kernel restarts at once instead of hanging.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off 8250.nr_uarts=1 cryptomgr.notests";
/// Makes minivm's guest kernel report panics on the panic port (see devices::harness).
pub const PANIC_PORT_PARAM: &str = "minivm_panic_port=0xf6";
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

/// Errors in the configuration; each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No --kernel and no default kernel built.
    #[error(
        "no kernel to boot: --kernel was not given and the default kernel {} does not exist.\n\
         Build it with `kernel/build.sh` (about 10 minutes the first time), or pass --kernel PATH.",
        .default.display()
    )]
    NoDefaultKernel { default: PathBuf },
    /// A file given on the command line is missing or unreadable.
    #[error("{what} {}: {reason}", .path.display())]
    BadFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

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

/// The root `run --oci` prepared: a disk, or the image's layers for virtio-fs.
#[derive(Debug, Clone)]
pub enum OciRoot {
    /// A converted disk (cached, copy-on-write, or persistent).
    Disk(DiskConfig),
    /// The unpacked layers, bottom-most first, and the VM's writable layer.
    Layers {
        layers: Vec<PathBuf>,
        upper: Option<PathBuf>,
    },
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

/// The default kernel directory: `${XDG_CACHE_HOME:-~/.cache}/minivm/kernel/default`.
pub fn default_kernel_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    cache.join("minivm/kernel/default")
}

pub fn resolve_kernel(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        check_readable("kernel", p)?;
        return Ok(p.to_path_buf());
    }
    let dir = default_kernel_dir();
    // vmlinux first: a bzImage decompresses itself inside the guest, which is slow.
    for name in ["vmlinux", "bzImage"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(ConfigError::NoDefaultKernel {
        default: dir.join("vmlinux"),
    })
}

fn check_dir(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::BadFile {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(io_reason(&e)))?;
    if !meta.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    std::fs::read_dir(path).map_err(|e| bad(io_reason(&e)))?;
    Ok(())
}

fn check_readable(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::BadFile {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(io_reason(&e)))?;
    if meta.is_dir() {
        return Err(bad("is a directory".into()));
    }
    File::open(path).map_err(|e| bad(io_reason(&e)))?;
    Ok(())
}

/// A short reason for an I/O error, without Rust's "(os error N)" noise.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

impl VmConfig {
    /// Validates `run` arguments; `oci` is the root prepared for `--oci`.
    pub fn from_args(args: &RunArgs, oci: Option<OciRoot>) -> Result<Self, ConfigError> {
        let (oci_disk, oci_layers) = match oci {
            Some(OciRoot::Disk(d)) => (Some(d), None),
            Some(OciRoot::Layers { layers, upper }) => (None, Some((layers, upper))),
            None => (None, None),
        };
        let disk = match (&args.image, oci_disk) {
            (Some(p), _) => {
                check_readable("disk image", p)?;
                Some(DiskConfig {
                    path: p.clone(),
                    read_only: args.readonly,
                    copy_on_write: false,
                })
            }
            (None, Some(mut d)) => {
                if args.readonly {
                    d.read_only = true;
                    d.copy_on_write = false;
                }
                Some(d)
            }
            (None, None) => None,
        };
        let mut shares = Vec::new();
        if let Some(dir) = &args.rootfs {
            check_dir("root filesystem", dir)?;
            shares.push(ShareConfig {
                source: ShareSource::Dir(dir.clone()),
                tag: ROOTFS_TAG.into(),
                read_only: args.readonly,
                size_cap: args.upper_size,
            });
        }
        let fs_root = args.rootfs.is_some() || oci_layers.is_some();
        if let Some((layers, upper)) = oci_layers {
            let upper = upper.filter(|_| !args.readonly);
            shares.push(ShareConfig {
                read_only: upper.is_none(),
                source: ShareSource::Layers { layers, upper },
                tag: ROOTFS_TAG.into(),
                size_cap: args.upper_size,
            });
        }
        for s in &args.share {
            check_dir("shared directory", &s.path)?;
            if shares.iter().any(|x| x.tag == s.tag) {
                return Err(ConfigError::BadFile {
                    what: "share tag",
                    path: s.tag.clone().into(),
                    reason: "used twice".into(),
                });
            }
            shares.push(ShareConfig {
                source: ShareSource::Dir(s.path.clone()),
                tag: s.tag.clone(),
                read_only: s.read_only,
                size_cap: None,
            });
        }
        let kernel = resolve_kernel(args.kernel.as_deref())?;
        if let Some(i) = &args.initrd {
            check_readable("initrd", i)?;
        }
        let cmdline = match &args.cmdline {
            Some(c) => c.clone(),
            None => {
                let mut c = DEFAULT_CMDLINE.to_string();
                let ro = if args.readonly { "ro" } else { "rw" };
                if disk.is_some() {
                    c.push_str(&format!(" root=/dev/vda {ro}"));
                } else if fs_root {
                    c.push_str(&format!(" root={ROOTFS_TAG} rootfstype=virtiofs {ro}"));
                }
                if let Some(a) = &args.append {
                    c.push(' ');
                    c.push_str(a);
                }
                c
            }
        };
        Ok(VmConfig {
            kernel,
            initrd: args.initrd.clone(),
            disk,
            shares,
            mem_size: args.mem,
            cpus: args.cpus,
            cmdline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(image: Option<&str>, kernel: Option<&str>) -> RunArgs {
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
            share: vec![],
            upper_size: None,
            cmdline: None,
            append: Some("quiet".into()),
            mem: 64 << 20,
            cpus: 1,
            readonly: true,
        }
    }

    #[test]
    fn missing_files_are_named() {
        let e = VmConfig::from_args(&args(Some("/nonexistent/disk.raw"), Some("/bin/sh")), None)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "disk image /nonexistent/disk.raw: no such file"
        );
        let e = VmConfig::from_args(&args(None, Some("/nonexistent/vmlinux")), None).unwrap_err();
        assert_eq!(e.to_string(), "kernel /nonexistent/vmlinux: no such file");
        let e = VmConfig::from_args(&args(None, Some("/tmp")), None).unwrap_err();
        assert_eq!(e.to_string(), "kernel /tmp: is a directory");
    }

    #[test]
    fn default_cmdline_has_root_readonly_and_append() {
        let c = VmConfig::from_args(&args(Some("/bin/sh"), Some("/bin/sh")), None).unwrap();
        assert!(c.cmdline.starts_with("console=ttyS0 "));
        assert!(
            c.cmdline.ends_with("root=/dev/vda ro quiet"),
            "{}",
            c.cmdline
        );
        let mut a = args(None, Some("/bin/sh"));
        a.cmdline = Some("custom".into());
        assert_eq!(VmConfig::from_args(&a, None).unwrap().cmdline, "custom");
    }

    #[test]
    fn image_layers_become_the_virtiofs_root() {
        let layers = vec![PathBuf::from("/store/l0"), PathBuf::from("/store/l1")];
        let root = |upper: Option<&str>| OciRoot::Layers {
            layers: layers.clone(),
            upper: upper.map(PathBuf::from),
        };
        let mut a = args(None, Some("/bin/sh"));
        a.readonly = false;
        a.upper_size = Some(16 << 20);
        let c = VmConfig::from_args(&a, Some(root(Some("/vm/upper")))).unwrap();
        assert!(c.disk.is_none());
        assert_eq!(c.shares.len(), 1);
        let s = &c.shares[0];
        assert_eq!(
            (s.tag.as_str(), s.read_only, s.size_cap),
            (ROOTFS_TAG, false, Some(16 << 20))
        );
        match &s.source {
            ShareSource::Layers { layers: l, upper } => {
                assert_eq!(l, &layers);
                assert_eq!(upper.as_deref(), Some(Path::new("/vm/upper")));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            c.cmdline
                .ends_with("root=minivm-root rootfstype=virtiofs rw quiet"),
            "{}",
            c.cmdline
        );
        // --readonly drops the writable layer.
        a.readonly = true;
        let c = VmConfig::from_args(&a, Some(root(Some("/vm/upper")))).unwrap();
        let s = &c.shares[0];
        assert!(s.read_only);
        assert!(matches!(&s.source, ShareSource::Layers { upper: None, .. }));
        assert!(
            c.cmdline.contains("rootfstype=virtiofs ro"),
            "{}",
            c.cmdline
        );
    }
}
