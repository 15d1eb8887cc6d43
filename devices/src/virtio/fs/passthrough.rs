//! Building the [`Vfs`] a virtio-fs device serves from one host directory.
//!
//! PassthroughFs configuration and why:
//! * `cache_policy: Auto` (close-to-open consistency, plus the Vfs's
//!   AUTO_INVAL_DATA): the host user may edit a shared directory while the VM
//!   runs, and `Always` would let the guest keep serving stale pages forever.
//!   Attribute and entry timeouts stay at the 5 s default.
//! * `writeback: false` (and the Vfs never offers WRITEBACK_CACHE): writes
//!   reach the host when the guest issues them, and the size cap sees each.
//! * `xattr: true`: guests need it for file capabilities, SELinux labels,
//!   ACLs and overlayfs markers.
//! * `inode_file_handles: false`: handles need `open_by_handle_at`, i.e.
//!   CAP_DAC_READ_SEARCH, which an unprivileged VMM lacks and which can open
//!   any inode on the file system; inodes stay `O_PATH` fds instead.
//! * `do_import: false`, then `import()` here: with `do_import` PassthroughFs
//!   would ignore the options the Vfs negotiated with the guest and re-import
//!   on every FUSE_INIT. `import()` sets the umask to 0, so we run it on a
//!   helper thread with a private umask, and give the worker thread its own
//!   umask of 0: the VMM process keeps its umask.
//! * Vfs: `no_open`/`no_opendir` off, so every open reaches the server (where
//!   read-only mode checks the flags) and PassthroughFs keeps real handles;
//!   no WRITEBACK_CACHE, no killpriv_v2 (the guest kernel clears set-id bits
//!   itself), no per-file DAX.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::FsOptions;
use fuse_backend_rs::api::{BackendFileSystem, Vfs, VfsOptions};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::cap::{disk_usage, SizeCap};
use super::error::FsError;
use super::guard::{GuardFs, Policy};
use super::worker::with_private_umask;

/// Shares the host directory `root` (symlinks in the path itself are
/// resolved now; inside the share they are never followed by the host).
/// With `read_only` every modification fails with EROFS.
pub fn passthrough(root: &Path, read_only: bool) -> Result<Arc<Vfs>, FsError> {
    let fs = passthrough_fs(root)?;
    mount_vfs(GuardFs::new(
        fs,
        Policy {
            read_only,
            size_cap: None,
            backend_maps_ids: false,
        },
    ))
}

/// Shares `root` writable, refusing growth past `cap_bytes` of allocated
/// space (ENOSPC). Space already used under `root` is measured first (see
/// [`disk_usage`]) and counts against the cap; the guest's
/// `statfs` reports the cap as the file system size.
pub fn disk_cap(root: &Path, cap_bytes: u64) -> Result<Arc<Vfs>, FsError> {
    let dir = canonical_dir(root)?;
    let used = disk_usage(&dir).map_err(|source| FsError::Usage {
        path: dir.clone(),
        source,
    })?;
    let fs = passthrough_fs(&dir)?;
    mount_vfs(GuardFs::new(
        fs,
        Policy {
            read_only: false,
            size_cap: Some(Arc::new(SizeCap::new(cap_bytes, used))),
            backend_maps_ids: false,
        },
    ))
}

/// Mounts `fs` at the root of a new [`Vfs`] configured for virtio-fs (see
/// the module docs). Wrap backends in a [`GuardFs`] first.
pub fn mount_vfs<F>(fs: F) -> Result<Arc<Vfs>, FsError>
where
    F: BackendFileSystem<Inode = u64, Handle = u64> + Send + Sync + 'static,
{
    let vfs = Vfs::new(vfs_options());
    vfs.mount(Box::new(fs), "/").map_err(FsError::Mount)?;
    Ok(Arc::new(vfs))
}

fn vfs_options() -> VfsOptions {
    let defaults = VfsOptions::default();
    VfsOptions {
        no_open: false,
        no_opendir: false,
        no_writeback: true,
        killpriv_v2: false,
        out_opts: defaults.out_opts - FsOptions::PERFILE_DAX,
        ..defaults
    }
}

pub(super) fn canonical_dir(root: &Path) -> Result<PathBuf, FsError> {
    let err = |source| FsError::Root {
        path: root.to_path_buf(),
        source,
    };
    let dir = std::fs::canonicalize(root).map_err(err)?;
    if !std::fs::metadata(&dir).map_err(err)?.is_dir() {
        return Err(err(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    Ok(dir)
}

pub(super) fn passthrough_fs(root: &Path) -> Result<PassthroughFs<()>, FsError> {
    let dir = canonical_dir(root)?;
    let root_dir = dir
        .to_str()
        .ok_or_else(|| FsError::RootNotUtf8(dir.clone()))?
        .to_string();
    let cfg = Config {
        root_dir,
        do_import: false,
        xattr: true,
        cache_policy: CachePolicy::Auto,
        writeback: false,
        inode_file_handles: false,
        no_open: false,
        no_opendir: false,
        killpriv_v2: false,
        ..Default::default()
    };
    let fs = PassthroughFs::<()>::new(cfg).map_err(FsError::Passthrough)?;
    with_private_umask(|| fs.import()).map_err(FsError::Passthrough)?;
    Ok(fs)
}
