//! Building the [`Vfs`] that serves an OCI image from its unpacked layers:
//! [`LayeredFs`] over one read-only `PassthroughFs` per layer of the layer
//! store, plus a per-VM writable upper directory.
//!
//! The layers must be in the form `imagefs::layerstore` writes, which the
//! `layerfmt` crate defines (whiteouts as 0:0 character devices, opaque
//! directories marked with `user.overlay.opaque`); unpacked as root, the
//! owners and modes the guest sees are the host's (unprivileged: see below). The upper directory is where every change lands:
//! copy-up on write, a 0:0 whiteout when a lower entry is deleted, so the
//! lower layers are never written and can be shared by any number of VMs.
//!
//! Configuration and why:
//! * Each layer is a `PassthroughFs` configured as for a plain share (see
//!   `passthrough.rs`): inodes are `O_PATH` fds opened one name at a time,
//!   no file handles, xattrs on (the merge reads the opaque markers).
//! * [`GuardFs`] wraps the merge as it wraps a plain share: containment
//!   checks on every LOOKUP, EROFS without an upper, and the size cap, which
//!   charges what each change adds; `LayeredFs` charges its copy-ups to the
//!   same cap (ENOSPC when a copy would not fit).
//! * Entry and attribute timeouts of a day, as virtiofsd's `cache=always`:
//!   only this VM writes its upper and the lower layers never change, so the
//!   guest's own caches are never stale (see `layered`'s "Caching").
//! * An unprivileged VMM: the layer store kept the image's owners, modes,
//!   devices and non-`user.` xattrs in `user.minivm.*` xattrs; `LayeredFs`
//!   presents those to the guest and records the guest's own in the same
//!   form in the upper ("mapped" mode).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::Vfs;

use super::cap::{disk_usage, SizeCap};
use super::error::FsError;
use super::guard::{GuardFs, Policy};
use super::layered::{clear_work_dir, LayeredFs};
use super::passthrough::{canonical_dir, mount_vfs, passthrough_fs};

/// How long the guest may cache entries and attributes.
const TIMEOUT: Duration = Duration::from_secs(86_400);

/// Serves the merged view of `lowers` (layer directories, bottom-most first,
/// as `LayerStore::ensure_image` returns them) with `upper` as the writable
/// layer. Without `upper` the view is read-only (EROFS). `cap_bytes` caps what
/// the guest may add to the upper directory (ENOSPC beyond; `statfs` reports
/// the cap).
pub fn overlay(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    cap_bytes: Option<u64>,
) -> Result<Arc<Vfs>, FsError> {
    // An unprivileged VMM serves a store unpacked unprivileged (the same rule
    // as the layer store's), whose owners, modes and devices live in xattrs.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let mapped = unsafe { libc::geteuid() } != 0;
    let mut fs = layered_fs(lowers, upper, mapped)?;
    let size_cap = match (upper, cap_bytes) {
        (Some(dir), Some(limit)) => {
            let dir = canonical_dir(dir)?;
            let used = disk_usage(&dir).map_err(|source| FsError::Usage {
                path: dir.clone(),
                source,
            })?;
            Some(Arc::new(SizeCap::new(limit, used)))
        }
        _ => None,
    };
    if let Some(cap) = &size_cap {
        fs.charge_copy_ups_to(cap.clone());
    }
    mount_vfs(GuardFs::new(
        fs,
        Policy {
            read_only: upper.is_none(),
            size_cap,
            backend_maps_ids: mapped,
        },
    ))
}

/// The merged file system [`overlay`] serves, without the guard around it
/// (for tools and tests that query it directly). `mapped` selects
/// [`LayeredFs`]'s mapped mode, for a store unpacked unprivileged.
pub fn layered_fs(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    mapped: bool,
) -> Result<LayeredFs, FsError> {
    if lowers.is_empty() {
        return Err(FsError::NoLayers);
    }
    // LayeredFs wants the top-most lower layer first.
    let lower_layers = lowers
        .iter()
        .rev()
        .map(|d| passthrough_fs(d))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(u) = upper {
        // A --persist upper may hold what a crashed run left mid-copy-up.
        clear_work_dir(u).map_err(|source| FsError::WorkDir {
            path: u.to_path_buf(),
            source,
        })?;
    }
    let upper_layer = upper.map(passthrough_fs).transpose()?;
    LayeredFs::new(upper_layer, lower_layers, TIMEOUT, mapped).map_err(FsError::Overlay)
}
