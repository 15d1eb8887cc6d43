//! [`LayeredFs`]: an OCI image's unpacked layers merged into one tree, with
//! a per-VM writable upper directory, as overlayfs merges them.
//!
//! Every layer (the upper one too) is a fuse-backend-rs `PassthroughFs`:
//! that is where host paths are opened, one name at a time relative to a
//! directory fd, never following symlinks. This module only decides which
//! layer answers which request:
//!
//! * **Lookup** walks the parent's directories top-down. A 0:0 character
//!   device (a whiteout) hides the name below; a non-directory hides
//!   everything below it; directories merge until one carries
//!   `user.overlay.opaque=y`.
//! * **Names are bytes**: nothing is converted to UTF-8.
//! * **Inode numbers** follow the host's: a node's id is the host inode
//!   number of its top-most file (with the host device's index in the high
//!   bits), so hardlinks in a layer are one inode in the guest, and the same
//!   file keeps its number across forget and lookup.
//! * **Copy-up** happens when a file is opened for writing or its data,
//!   metadata or xattrs change: parents first (as directories with the
//!   lower directory's owner, mode, times and xattrs), then the file into
//!   the upper's work directory (`.minivm-copyup.work`, never shown to the
//!   guest), with its data (holes kept), owner, mode, xattrs and times, and
//!   renamed into place, so a crash never leaves a half-copied file in the
//!   tree; what a crash leaves in the work directory is removed at the next
//!   start ([`clear_work_dir`]).
//!   Other names of a hardlinked file the guest knows are linked to the copy.
//! * With a size cap, each copy-up is charged what the copy occupies, and
//!   refused with ENOSPC when it would not fit.
//! * **Deletion** of a name a lower layer has writes a whiteout in the upper;
//!   a directory created where a lower one was hidden is made opaque.
//!   Renaming a directory that has lower parts fails with EXDEV, as on
//!   overlayfs without `redirect_dir` (mv then copies); RENAME_EXCHANGE and
//!   RENAME_WHITEOUT are refused with EINVAL.
//! * The `user.overlay.*` and `user.minivm.*` xattrs are bookkeeping: the
//!   guest neither sees nor sets them.
//! * **Mapped mode** (an unprivileged VMM serving a layer store unpacked
//!   unprivileged, as fuse-overlayfs does): the image's owner, mode and device
//!   number are in `user.minivm.override` (`uid:gid:mode[:major:minor]`,
//!   mode in octal with the file type) and xattrs outside `user.` are stored
//!   as `user.minivm.xattr.NAME`. The guest sees the image's values; what it
//!   sets (chown, chmod, set-id bits, devices, `security.*`/`trusted.*`
//!   xattrs) is recorded the same way in the upper, whose real files stay the
//!   VMM's with `u+rw` (`u+rwx` for directories). Symlinks, FIFOs and sockets
//!   cannot carry user xattrs: they show the host's owner.
//!
//! * **Caching**: the guest is the only writer of this tree (the lower
//!   layers never change, the upper is this VM's), and every change it makes
//!   goes through its own FUSE connection, which keeps its caches coherent.
//!   So the guest may cache for the VM's life: entries and attributes (the
//!   timeout [`LayeredFs::new`] takes), names that do not exist (a LOOKUP
//!   miss is a negative entry), file pages across opens (KEEP_CACHE) and
//!   directory listings (CACHE_DIR). Without that, each exec of a program
//!   re-reads its pages and each open re-asks for every path component.
//!
//! A file opened read-only before a copy-up keeps reading the lower copy (as
//! on overlayfs before Linux 4.19). Lower layers are only ever opened
//! read-only. Namespace changes are serialised by one lock; reads and writes
//! on open files are not.
//!
//! Host references into the layers (inode references, open handles) are held
//! by owning types (`refs.rs`) that give them back on drop, so no error path
//! can leak one; the node tree keeps those the guest holds until it forgets
//! them.
//!
//! Layout: this file has the type and its construction; `ops.rs` the
//! `FileSystem` requests, each dispatched to one of: `lookup.rs` (the layer
//! stack: what a name is), `tree.rs` (the nodes the guest holds),
//! `readdir.rs` (merged listings), `copyup.rs` (and `chunk.rs`, its data
//! buffer), `create.rs` (new names), `remove.rs` (unlink, rmdir, rename and
//! whiteouts) and `mapped.rs` (the unprivileged mapping of owners, modes,
//! devices and xattrs). The on-disk format is `layerfmt`'s.

mod chunk;
mod copyup;
mod create;
mod lookup;
mod mapped;
mod ops;
mod readdir;
mod refs;
mod remove;
mod tree;

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::stat64;
use fuse_backend_rs::api::filesystem::{Entry, FileSystem, SetattrValid};

#[cfg(test)]
pub(in crate::virtio::fs) use self::chunk::Chunk;
pub use self::refs::Layer;
use self::refs::{ctx0, OpenFile, Real, RealRef};
use self::tree::{is_dir, DirItem, Tree, ROOT};
use super::cap::SizeCap;
use super::guard::errno;

/// Where scratch files are made, in the upper's root (hidden: it has the
/// copy-up prefix). Renames from it into the tree stay on one file system.
pub const WORK_DIR: &CStr = c".minivm-copyup.work";
/// Largest xattr value or name list read from a layer.
const XATTR_MAX: u32 = 65536;

/// The merged view of layer directories (see the module docs).
pub struct LayeredFs {
    /// The upper layer first when there is one, then the lower layers,
    /// top-most first.
    layers: Vec<Layer>,
    has_upper: bool,
    /// Host device of each layer's root.
    layer_dev: Vec<u64>,
    tree: Mutex<Tree>,
    files: Mutex<HashMap<u64, OpenFile>>,
    dirs: Mutex<HashMap<u64, Option<Arc<Vec<DirItem>>>>>,
    next_handle: AtomicU64,
    timeout: Duration,
    privileged: bool,
    /// Owners, modes, devices and system xattrs live in xattrs (see the
    /// module docs).
    mapped: bool,
    /// What copy-ups may add to the upper, shared with the guard.
    cap: Option<Arc<SizeCap>>,
    /// The upper's [`WORK_DIR`], when there is an upper.
    work: Option<Real>,
}

/// Removes what a crashed VM left in `upper`'s [`WORK_DIR`] (half-made
/// copies, replaced entries): only minivm makes names there, and the guest
/// can neither see nor create them. Symlinks in it are removed, not
/// followed.
pub fn clear_work_dir(upper: &std::path::Path) -> io::Result<()> {
    let work = upper.join(std::ffi::OsStr::from_bytes(WORK_DIR.to_bytes()));
    match std::fs::remove_dir_all(&work) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the file system down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An entry with no inode (nothing to link), for the kernel to keep as a
/// name that does not exist for `entry_timeout`.
fn no_inode_entry(entry_timeout: Duration) -> Entry {
    Entry {
        inode: 0,
        generation: 0,
        // SAFETY: stat64 is plain old data; all-zero is valid.
        attr: unsafe { std::mem::zeroed() },
        attr_flags: 0,
        attr_timeout: Duration::ZERO,
        entry_timeout,
    }
}

/// A `layerfmt` xattr name as the layers take it.
fn xattr_name(name: &str) -> CString {
    CString::new(name).expect("layerfmt names have no NUL")
}

impl LayeredFs {
    /// Merges `lowers` (top-most first) under `upper`. The layers must be
    /// imported already. Without an upper the tree cannot change. `mapped`
    /// selects mapped mode (see the module docs).
    pub fn new(
        upper: Option<Layer>,
        lowers: Vec<Layer>,
        timeout: Duration,
        mapped: bool,
    ) -> io::Result<Self> {
        if lowers.is_empty() {
            return Err(errno(libc::EINVAL));
        }
        let has_upper = upper.is_some();
        let layers: Vec<Layer> = upper.into_iter().chain(lowers).collect();
        let mut layer_dev = Vec::with_capacity(layers.len());
        for l in &layers {
            layer_dev.push(l.getattr(&ctx0(), ROOT, None)?.0.st_dev);
        }
        let attr = layers[0].getattr(&ctx0(), ROOT, None)?.0;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let privileged = unsafe { libc::geteuid() } == 0;
        let mut fs = LayeredFs {
            layers,
            has_upper,
            layer_dev,
            tree: Mutex::new(Tree::new(Vec::new(), (attr.st_dev, attr.st_ino))),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            timeout,
            privileged,
            mapped,
            cap: None,
            work: None,
        };
        // The root merges every layer's root down to an opaque one.
        let mut reals = Vec::new();
        for layer in 0..fs.layers.len() {
            let r = Real { layer, ino: ROOT };
            reals.push(r);
            if fs.is_opaque(r) {
                break;
            }
        }
        if let Some(root) = lock(&fs.tree).nodes.get_mut(&ROOT) {
            root.reals = reals;
        }
        if fs.has_upper {
            fs.work = Some(fs.work_dir()?);
        }
        Ok(fs)
    }

    /// The upper's work directory, made if missing.
    fn work_dir(&self) -> io::Result<Real> {
        let upper_root = Real {
            layer: 0,
            ino: ROOT,
        };
        let (work, st) = match self.layer_lookup(upper_root, WORK_DIR)? {
            Some(found) => found,
            None => {
                // The root's times are the image's (prepare_upper): keep them.
                let upper = &self.layers[0];
                let root = upper.getattr(&ctx0(), ROOT, None)?.0;
                let e = upper.mkdir(&ctx0(), ROOT, WORK_DIR, 0o700, 0)?;
                let made = self.hold(0, e.inode);
                let times = SetattrValid::ATIME | SetattrValid::MTIME;
                upper.setattr(&ctx0(), ROOT, root, None, times)?;
                (made, e.attr)
            }
        };
        if !is_dir(&st) {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(work.keep())
    }

    /// Charges copy-ups to `cap`: a copy that would pass it fails with
    /// ENOSPC, so opening lower files for writing cannot fill the host.
    pub fn charge_copy_ups_to(&mut self, cap: Arc<SizeCap>) {
        self.cap = Some(cap);
    }

    fn layer(&self, r: Real) -> &Layer {
        &self.layers[r.layer]
    }

    /// Takes over the reference a lookup or create in `layer` returned.
    fn hold(&self, layer: usize, ino: u64) -> RealRef<'_> {
        RealRef::new(&self.layers[layer], Real { layer, ino })
    }

    fn work(&self) -> io::Result<Real> {
        self.work.ok_or_else(|| errno(libc::EROFS))
    }

    fn upper(&self) -> io::Result<&Layer> {
        if self.has_upper {
            Ok(&self.layers[0])
        } else {
            Err(errno(libc::EROFS))
        }
    }

    /// Whether `r` is the upper layer's (which the guest may change).
    fn in_upper(&self, r: Real) -> bool {
        r.layer == 0 && self.has_upper
    }

    fn entry(&self, id: u64, mut attr: stat64) -> Entry {
        attr.st_ino = id;
        Entry {
            inode: id,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: self.timeout,
            entry_timeout: self.timeout,
        }
    }

    /// A LOOKUP miss the guest may cache: only it can create the name.
    fn negative_entry(&self) -> Entry {
        no_inode_entry(self.timeout)
    }

    fn getattr_real(&self, r: Real) -> io::Result<stat64> {
        Ok(self.layer(r).getattr(&ctx0(), r.ino, None)?.0)
    }

    fn top(&self, id: u64) -> io::Result<Real> {
        Ok(lock(&self.tree).node_reals(id)?[0])
    }
}
