//! Who runs minivm in a boot test, and where its files are: the caller, or
//! (when the tests run as root) `nobody` in a private mount namespace with
//! its own /dev/kvm node.

use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::{default_kernel, minivm_bin, scratch_dir};

/// Who runs minivm in a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// The test's own user (root in CI: the layer store is native).
    Caller,
    /// Not root: when the test runs as root, minivm runs as [`NOBODY`] in a
    /// private mount namespace where /dev/kvm is a node that user owns (the
    /// host's /dev/kvm is not touched); otherwise as the caller.
    Unprivileged,
}

/// The unprivileged user and group root tests run minivm as.
pub const NOBODY: u32 = 65534;

/// Where a virtio-fs boot test keeps its files and how it starts minivm.
pub struct Runner {
    /// The test's directory (readable by the user minivm runs as).
    pub dir: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The minivm binary.
    pub bin: PathBuf,
    /// The /dev/kvm stand-in, when dropping from root to [`NOBODY`].
    pub kvm_node: Option<PathBuf>,
}

impl Runner {
    /// Prepares a run as `privilege` in a fresh directory named after `name`.
    pub fn new(name: &str, privilege: Privilege) -> Runner {
        let as_root = euid() == 0;
        if privilege == Privilege::Caller || !as_root {
            return Runner {
                dir: scratch_dir(name),
                kernel: default_kernel(),
                bin: minivm_bin(),
                kvm_node: None,
            };
        }
        use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
        // Under /tmp, with the kernel and binary copied in: the checkout and
        // the kernel cache may sit below directories only root can search.
        let base = std::env::temp_dir().join("minivm-tests-unprivileged");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = base.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
        let kernel = dir.join("vmlinux");
        std::fs::copy(default_kernel(), &kernel).unwrap();
        let bin = dir.join("minivm");
        std::fs::copy(minivm_bin(), &bin).unwrap();
        let kvm_node = dir.join("kvm");
        let rdev = std::fs::metadata("/dev/kvm").unwrap().rdev();
        let c = std::ffi::CString::new(kvm_node.to_str().unwrap()).unwrap();
        // SAFETY: a valid path; creates a device node, touching no memory.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, rdev) };
        assert_eq!(
            rc,
            0,
            "mknod {}: {}",
            kvm_node.display(),
            std::io::Error::last_os_error()
        );
        chown(&kvm_node, Some(NOBODY), Some(NOBODY)).unwrap();
        Runner {
            dir,
            kernel,
            bin,
            kvm_node: Some(kvm_node),
        }
    }

    /// A directory minivm may write in.
    pub fn writable(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        if self.kvm_node.is_some() {
            std::os::unix::fs::chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        d
    }

    /// `minivm` with its image cache in `cache`, as the chosen user.
    pub fn minivm(&self, cache: &Path) -> Command {
        let mut c = match &self.kvm_node {
            None => Command::new(&self.bin),
            Some(node) => {
                let mut c = Command::new("unshare");
                // sh -c SCRIPT NODE UID BIN ARGS...: $0 is the node, $1 the uid.
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(concat!(
                        "mount --bind \"$0\" /dev/kvm && id=$1 && shift && exec setpriv ",
                        "--reuid=\"$id\" --regid=\"$id\" --clear-groups --inh-caps=-all \"$@\""
                    ))
                    .arg(node)
                    .arg(NOBODY.to_string())
                    .arg(&self.bin);
                c
            }
        };
        c.env("XDG_CACHE_HOME", cache);
        c
    }

    /// The uid that owns what minivm creates.
    pub fn uid(&self) -> u32 {
        if self.kvm_node.is_some() {
            NOBODY
        } else {
            euid()
        }
    }
}

/// The effective uid of the test process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}
