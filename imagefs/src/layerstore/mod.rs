//! The content-addressed layer store: every OCI layer unpacked once into its
//! own directory, for booting images over virtio-fs through a merged view of
//! those directories (minivm's `LayeredFs` in the devices crate: one
//! fuse-backend-rs `PassthroughFs` per layer, plus a per-VM upper directory).
//!
//! ```text
//! <root>/sha256/<hex>/rootfs/     the unpacked layer (hex: its compressed blob's digest)
//! <root>/sha256/<hex>/meta.json   digest, media type, sizes, how it was unpacked
//! <root>/tmp/<hex>.<pid>.<n>/     an unpack in progress (same two names inside)
//! <root>/tmp/rm.<pid>.<n>/        an entry being removed
//! ```
//! An entry is built in `tmp/` and published with one rename(2) of its
//! directory, after a syncfs(2) (see [`StoreOptions::durable`]): a kill -9 (or
//! a power loss) at any point leaves either no entry or a whole one. The
//! directories in `tmp/` are [`crate::host::WorkDir`]s, held by their process;
//! those no live process holds are removed by [`LayerStore::gc_tmp`] and
//! before each unpack.
//! When two processes unpack the same layer at once, the first rename wins and
//! the other discards its copy. `<root>` is kept mode 0700: layers hold
//! setuid-root binaries and device nodes that other users must not reach.
//!
//! # On-disk format (what overlays read)
//! The layer's entries come from [`crate::walk`], as for [`crate::flatten`],
//! and are unpacked with the same semantics (whiteouts
//! and opaque markers hide lower layers only, later entries win), written in
//! the form kernel overlayfs, fuse-overlayfs and fuse-backend-rs 0.14 read:
//! - OCI `DIR/.wh.NAME` becomes a **character device 0:0** named `NAME` (the
//!   only whiteout form fuse-backend-rs recognises: `Layer::is_whiteout`
//!   checks `S_IFCHR` with rdev 0:0; creating one unprivileged needs Linux >= 5.8).
//! - OCI `DIR/.wh..wh..opq` becomes xattr **`user.overlay.opaque` = `y`** on
//!   `DIR`. fuse-backend-rs's `Layer::is_opaque` accepts a one-byte `y`/`Y` in
//!   `user.fuseoverlayfs.opaque`, `trusted.overlay.opaque` or
//!   `user.overlay.opaque`; the last is the one that can be written without
//!   root and is also read by kernel overlayfs (`-o userxattr`) and
//!   fuse-overlayfs, so both modes write the same thing. A directory that
//!   replaces a whiteout or a non-directory of the same layer is also made
//!   opaque (the lower entry was already hidden).
//! - Those xattr names (and `user.minivm.*`) in a tar are dropped, so an image
//!   cannot forge them.
//! - Hardlinks within a layer are hardlinks. A hardlink to a file of a
//!   *lower* layer cannot cross layer directories: the file is **copied**
//!   (contents, owner, mode, xattrs, mtime), so the two names no longer share
//!   an inode in the merged view.
//! - Directories a tar needs but does not list take the metadata of the
//!   directory the lower layers show there (0755 root if none), so the merged
//!   view keeps it, as flattening does; paths through a symlink or file of a
//!   lower layer are refused, as flattening does. A layer's content thus
//!   depends on the layers below it in these two cases: meta.json records
//!   them. Layers are keyed by blob digest alone, as containerd and docker do.
//!
//! # Ownership, modes, xattrs
//! As root: owner, mode (setuid/setgid/sticky included), nanosecond mtimes,
//! devices, FIFOs and all xattrs (`security.capability` included) are set for
//! real; directory mtimes are set last. Unprivileged (or with
//! [`StoreOptions::force_unprivileged`]): files and directories belong to the
//! user, with modes `perm | 0600` (`| 0700` for directories) and no
//! setuid/setgid/sticky bits; the image's values are kept in xattr
//! [`layerfmt::OVERRIDE_XATTR`] (see [`Override`]), as fuse-overlayfs does; devices are
//! empty regular files carrying it; xattrs outside `user.` are stored as
//! `user.minivm.xattr.NAME`. Symlinks and FIFOs cannot carry user xattrs, so
//! their owners are lost. minivm's `LayeredFs` presents them to the guest in
//! its mapped mode (fuse-backend-rs alone does not read them).
//!
//! # Serving the layers
//! The devices crate's `LayeredFs` serves them: one `PassthroughFs` per
//! layer (which reads lower layers with the server's own credentials and
//! switches euid/egid only to create files), merged top-down. It reads
//! `user.overlay.opaque` on every directory it looks up, so `xattr: true` is
//! required and the store must be on a filesystem with xattrs (ext4, xfs,
//! btrfs; tmpfs >= 6.6); an unprivileged server must be able to read every
//! file and search every directory, which is why the unprivileged mode keeps
//! `u+rw`/`u+rwx` (a root server needs nothing). The root directory's
//! attributes come from the upper layer: make the upper with
//! [`prepare_upper`]. Names are bytes throughout. The layer directories are
//! shared by every VM: serve them only as lowers.
//!
//! [`LayerStore::remove`] must not be used on layers that running VMs serve.

mod apply;
mod store;
mod sys;
#[cfg(test)]
mod tests;
mod unpack;

pub use store::prepare_upper;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use unpack::Unpacker;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestError, VerifyError};
use crate::layer::LayerError;
use crate::source::SourceError;
use crate::walk::WalkError;

pub use layerfmt::Override;
use layerfmt::OVERRIDE_XATTR;

/// Default cap on the bytes one layer unpacks to (decompressed tar stream).
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 64 << 30;

/// Errors from the layer store. Unpacking errors name the layer (its digest)
/// and the tar entry.
#[derive(Debug, thiserror::Error)]
pub enum LayerStoreError {
    /// A store directory or file could not be read or written.
    #[error("layer store: {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The layer descriptor's digest is not a sha256 digest.
    #[error("layer {layer}: {source}")]
    Digest { layer: String, source: DigestError },
    /// The blob could not be opened.
    #[error("layer {layer}: {source}")]
    Source { layer: String, source: SourceError },
    /// The media type or compression is not supported.
    #[error("layer {layer}: {source}")]
    Format { layer: String, source: LayerError },
    /// The blob does not match its digest or size.
    #[error("layer {layer}: {source}")]
    Verify { layer: String, source: VerifyError },
    /// Reading the blob failed (network, file).
    #[error("layer {layer}: reading the blob: {detail}")]
    Blob { layer: String, detail: String },
    /// The tar stream or an entry breaks the layer rules (see [`WalkError`]).
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// The layer unpacks to more than the byte limit (a decompression bomb?).
    #[error("layer {layer}: unpacks to more than {limit} bytes")]
    TooLarge { layer: String, limit: u64 },
    /// Creating an entry failed.
    #[error("layer {layer}: entry {path:?}: {op}: {source}")]
    Entry {
        layer: String,
        path: String,
        op: String,
        source: io::Error,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LayerStoreError + 'a {
    move |source| LayerStoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the [`Override`] of a file of an unprivileged store (without
/// following a symlink); None if it has none (or one not in the format).
pub fn read_override(path: &Path) -> io::Result<Option<Override>> {
    let v = sys::lget_xattr(path, &sys::cstr(OVERRIDE_XATTR.as_bytes())?)?;
    Ok(v.and_then(|v| Override::parse(&v)))
}

/// What `meta.json` records about an entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerMeta {
    /// [`layerfmt::LAYER_FORMAT`] when written.
    pub format: String,
    /// The blob digest (`sha256:...`).
    pub digest: String,
    /// The blob's media type.
    pub media_type: String,
    /// The blob's size.
    pub compressed_size: u64,
    /// Bytes of file data unpacked.
    pub unpacked_bytes: u64,
    /// Tar entries read.
    pub entries: u64,
    /// True when unpacked as root (real owners); false when owners, modes and
    /// devices are in [`layerfmt::OVERRIDE_XATTR`].
    pub privileged: bool,
    /// The image it was unpacked for first.
    pub image: String,
    /// Layers it was unpacked over (digests, bottom-most first).
    pub lowers: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
}

/// A published layer.
#[derive(Debug, Clone)]
pub struct LayerEntry {
    /// The blob digest.
    pub digest: Digest,
    /// The unpacked layer (the directory to serve).
    pub rootfs: PathBuf,
    /// Its metadata.
    pub meta: LayerMeta,
}

impl LayerEntry {
    /// Bytes of file data in the layer.
    pub fn bytes(&self) -> u64 {
        self.meta.unpacked_bytes
    }
}

/// What [`LayerStore::ensure_image`] reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerEvent<'a> {
    /// Layer `index` (of `count`, bottom-most first) starts; `cached` when it is already unpacked.
    Start {
        index: usize,
        count: usize,
        digest: &'a str,
        size: u64,
        cached: bool,
    },
    /// `read` bytes of the current layer's blob were read so far.
    Read { read: u64 },
    /// The current layer is done.
    Done { index: usize },
}

/// Limits and mode of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Cap on the decompressed bytes of one layer.
    pub max_layer_bytes: u64,
    /// Cap on the tar entries of one layer.
    pub max_entries: u64,
    /// Unpack as an unprivileged user would even when root (for tests, and
    /// for stores served by an unprivileged VMM).
    pub force_unprivileged: bool,
    /// Flush the filesystem (syncfs) before publishing each layer, so that
    /// not even a power loss can publish a half-written one. On by default;
    /// off only for throwaway stores (tests).
    pub durable: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_layer_bytes: DEFAULT_MAX_LAYER_BYTES,
            max_entries: crate::walk::DEFAULT_MAX_ENTRIES,
            force_unprivileged: false,
            durable: true,
        }
    }
}

/// The layer store at one root directory (usually `<cache root>/layers`).
#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
    opts: StoreOptions,
}
