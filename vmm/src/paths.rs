//! Where minivm keeps its files, all under [`imagefs::host::cache_root`]
//! (`${XDG_CACHE_HOME:-~/.cache}/minivm`):
//!
//! ```text
//! disks/, tmp/        the converted-disk cache (imagefs::cache)
//! layers/             the layer store (imagefs::layerstore)
//! vms/                the running VMs' private writable layers (crate::upper)
//! kernel/default/     the kernel kernel/build.sh builds
//! ```

use std::path::PathBuf;

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
