//! Where minivm keeps its files, all under [`imagefs::host::cache_root`]
//! (`${XDG_CACHE_HOME:-~/.cache}/minivm`):
//!
//! ```text
//! disks/, tmp/        the converted-disk cache (imagefs::cache)
//! layers/             the layer store (imagefs::layerstore)
//! vms/                the running VMs' private writable layers (crate::upper)
//! kernel/default/     the kernel kernel/build.sh builds
//! agent/<hash>.cpio   the guest agent's initramfs archive
//! ```

use std::path::{Path, PathBuf};

use imagefs::cache::Cache;
use imagefs::layerstore::LayerStore;

/// The cache of converted disks.
pub fn disk_cache() -> Cache {
    Cache::new(imagefs::host::cache_root())
}

/// The layer store `run --oci --virtiofs` unpacks into.
pub fn layer_store() -> LayerStore {
    LayerStore::new(LayerStore::default_root())
}

/// The parent of the VMs' work directories.
pub fn vms_dir() -> PathBuf {
    imagefs::host::cache_root().join("vms")
}

/// Where the kernel built by `kernel/build.sh` is looked for.
pub fn default_kernel_dir() -> PathBuf {
    imagefs::host::cache_root().join("kernel/default")
}

/// Where the guest agent's own initramfs archive is cached (`agent::initrd`).
pub fn agent_archive_dir() -> PathBuf {
    imagefs::host::cache_root().join("agent")
}

/// Whether the (canonical) `kernel` is a build in minivm's kernel cache,
/// `kernel/<hash>/`: `kernel/build.sh` publishes each build by renaming its
/// finished directory there and never writes it again, so the file's pages
/// can be mapped into guest memory rather than copied.
pub fn is_published_kernel(kernel: &Path) -> bool {
    std::fs::canonicalize(imagefs::host::cache_root().join("kernel"))
        .is_ok_and(|cache| is_build_in(&cache, kernel))
}

/// `kernel` is a file directly in a `<hex hash>` directory of `cache`
/// (not in a `.build-*` work directory, not the `default` link).
fn is_build_in(cache: &Path, kernel: &Path) -> bool {
    let Some(build) = kernel.parent() else {
        return false;
    };
    build.parent() == Some(cache)
        && build
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_of_published_kernel_builds_count() {
        let cache = Path::new("/c/minivm/kernel");
        assert!(is_build_in(
            cache,
            Path::new("/c/minivm/kernel/50c3042c9f4f2559/vmlinux")
        ));
        for other in [
            "/c/minivm/kernel/.build-123/out/vmlinux",
            "/c/minivm/kernel/default/vmlinux",
            "/c/minivm/kernel/vmlinux",
            "/c/minivm/kernel/50c3042c9f4f2559/sub/vmlinux",
            "/elsewhere/50c3042c9f4f2559/vmlinux",
            "/",
        ] {
            assert!(!is_build_in(cache, Path::new(other)), "{other}");
        }
    }
}
