//! [`LayerStore`]'s operations: looking up, unpacking and publishing
//! entries, listing, removing, and cleaning up after killed processes.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use oci_spec::image::Descriptor;

use super::{
    io_err, sys, unpack, LayerEntry, LayerEvent, LayerMeta, LayerStore, LayerStoreError,
    StoreOptions,
};
use crate::digest::{Digest, VerifyError};
use crate::host::WorkDir;
use crate::source::{ImageSource, ResolvedImage};
use crate::walk::WalkError;
use layerfmt::LAYER_FORMAT;

/// Fails reads once more than `limit` bytes went through.
struct Limited<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded = true;
            return Err(io::Error::other("the layer exceeds the size limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts blob bytes and keeps the blob's own read error, already as the
/// error to report: a digest mismatch reaches the unpacker through the
/// decompressor and the tar reader, which may rewrap it.
struct BlobReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    layer: String,
    read: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<LayerStoreError>>>,
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.inner.read(buf);
        match &r {
            Ok(n) => {
                self.read.fetch_add(*n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                let layer = self.layer.clone();
                let failure = match e.get_ref().and_then(|i| i.downcast_ref::<VerifyError>()) {
                    Some(v) => LayerStoreError::Verify {
                        layer,
                        source: v.clone(),
                    },
                    None => LayerStoreError::Blob {
                        layer,
                        detail: e.to_string(),
                    },
                };
                let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(failure);
            }
        }
        r
    }
}

/// An entry being built in `tmp/`, held (so that no other process collects
/// it) until it is published or dropped; removed when dropped unpublished.
struct Pending {
    work: WorkDir,
    published: bool,
}

impl Pending {
    fn dir(&self) -> &Path {
        self.work.path()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(self.work.path());
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The digest a store path `<root>/sha256/<hex>/rootfs` stands for, else the path.
fn lower_name(p: &Path) -> String {
    p.parent()
        .and_then(|d| d.file_name())
        .and_then(|h| Digest::from_sha256_hex(&h.to_string_lossy()).ok())
        .map_or_else(|| p.display().to_string(), |d| d.to_string())
}

impl LayerStore {
    /// A store rooted at `root` (created on first use), with default options.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_options(root, StoreOptions::default())
    }

    /// A store with explicit limits and mode.
    pub fn with_options(root: impl Into<PathBuf>, opts: StoreOptions) -> Self {
        LayerStore {
            root: root.into(),
            opts,
        }
    }

    /// `<cache root>/layers`, beside the disk cache.
    pub fn default_root() -> PathBuf {
        crate::cache::default_root().join("layers")
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether layers get real owners and devices (root, not forced unprivileged).
    pub fn privileged(&self) -> bool {
        !self.opts.force_unprivileged && crate::host::is_root()
    }

    fn entry_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The published, usable entry for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<LayerEntry> {
        let dir = self.entry_dir(digest);
        let meta: LayerMeta =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()?;
        let rootfs = dir.join("rootfs");
        let usable =
            meta.format == LAYER_FORMAT && meta.privileged == self.privileged() && rootfs.is_dir();
        usable.then(|| LayerEntry {
            digest: digest.clone(),
            rootfs,
            meta,
        })
    }

    /// Unpacks (unless already there) every layer of `image`, each over the
    /// ones below it; returns the layer directories, bottom-most first.
    pub fn ensure_image(
        &self,
        src: &mut dyn ImageSource,
        image: &ResolvedImage,
        image_name: &str,
        progress: &mut dyn FnMut(LayerEvent<'_>),
    ) -> Result<Vec<PathBuf>, LayerStoreError> {
        let layers = image.manifest.layers();
        let mut dirs: Vec<PathBuf> = Vec::with_capacity(layers.len());
        for (index, desc) in layers.iter().enumerate() {
            let (dir, _) = self.ensure(
                src,
                desc,
                &dirs,
                image_name,
                (index, layers.len()),
                progress,
            )?;
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Unpacks one layer unless it is already there, over `lowers` (the layer
    /// directories below it, bottom-most first, as [`Self::ensure_image`]
    /// returns them). Returns its directory and whether it was already there.
    pub fn ensure_layer(
        &self,
        src: &mut dyn ImageSource,
        desc: &Descriptor,
        lowers: &[PathBuf],
        image_name: &str,
    ) -> Result<(PathBuf, bool), LayerStoreError> {
        self.ensure(src, desc, lowers, image_name, (0, 1), &mut |_| {})
    }

    fn ensure(
        &self,
        src: &mut dyn ImageSource,
        desc: &Descriptor,
        lowers: &[PathBuf],
        image_name: &str,
        (index, count): (usize, usize),
        progress: &mut dyn FnMut(LayerEvent<'_>),
    ) -> Result<(PathBuf, bool), LayerStoreError> {
        let digest = Digest::from_oci(desc.digest()).map_err(|source| LayerStoreError::Digest {
            layer: desc.digest().to_string(),
            source,
        })?;
        let shown = digest.to_string();
        let start = |cached| LayerEvent::Start {
            index,
            count,
            digest: &shown,
            size: desc.size(),
            cached,
        };
        let dir = self.entry_dir(&digest);
        // A second look: another process may have published it just now.
        let usable = self
            .get(&digest)
            .or_else(|| dir.exists().then(|| self.get(&digest)).flatten());
        if let Some(e) = usable {
            progress(start(true));
            progress(LayerEvent::Done { index });
            return Ok((e.rootfs, true));
        }
        if dir.exists() {
            // Entries are published whole, so this one has another format or
            // mode (or was damaged by hand): rebuild it.
            tracing::info!(
                "layer {shown}: replacing the unusable entry {}",
                dir.display()
            );
            self.unpublish(&dir)?;
        }
        progress(start(false));
        let pending = self.begin(&digest)?;
        let meta = self.unpack(
            src,
            desc,
            &digest,
            lowers,
            image_name,
            pending.dir(),
            progress,
        )?;
        let rootfs = self.publish(pending, &dir, &meta)?;
        progress(LayerEvent::Done { index });
        Ok((rootfs, false))
    }

    fn make_dirs(&self) -> Result<(), LayerStoreError> {
        for d in [self.root.clone(), self.root.join("sha256"), self.tmp_dir()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(io_err("create", &d))?;
        }
        let perms = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(&self.root, perms).map_err(io_err("chmod", &self.root))
    }

    fn begin(&self, digest: &Digest) -> Result<Pending, LayerStoreError> {
        self.make_dirs()?;
        self.gc_tmp();
        let tmp = self.tmp_dir();
        let work = WorkDir::create(&tmp, digest.hex()).map_err(io_err("create in", &tmp))?;
        Ok(Pending {
            work,
            published: false,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn unpack(
        &self,
        src: &mut dyn ImageSource,
        desc: &Descriptor,
        digest: &Digest,
        lowers: &[PathBuf],
        image_name: &str,
        work: &Path,
        progress: &mut dyn FnMut(LayerEvent<'_>),
    ) -> Result<LayerMeta, LayerStoreError> {
        let layer = digest.to_string();
        let rootfs = work.join("rootfs");
        std::fs::create_dir(&rootfs).map_err(io_err("create", &rootfs))?;
        let root_fd = sys::open_dir_path(&rootfs).map_err(io_err("open", &rootfs))?;
        let mut lower_fds = Vec::with_capacity(lowers.len());
        for l in lowers.iter().rev() {
            lower_fds.push(sys::open_dir_path(l).map_err(io_err("open the lower layer", l))?);
        }
        let blob = src
            .open_blob(desc)
            .map_err(|source| LayerStoreError::Source {
                layer: layer.clone(),
                source,
            })?;
        let read = Arc::new(AtomicU64::new(0));
        let failure = Arc::new(Mutex::new(None));
        let counted = BlobReader {
            inner: blob,
            layer: layer.clone(),
            read: read.clone(),
            failure: failure.clone(),
        };
        let tar = crate::layer::decompress(desc.media_type().as_ref(), Box::new(counted)).map_err(
            |source| LayerStoreError::Format {
                layer: layer.clone(),
                source,
            },
        )?;
        let mut limited = Limited {
            inner: tar,
            left: self.opts.max_layer_bytes,
            exceeded: false,
        };
        let mut report = || {
            progress(LayerEvent::Read {
                read: read.load(Ordering::Relaxed),
            })
        };
        let limits = (self.opts.max_layer_bytes, self.opts.max_entries);
        let result = unpack::Unpacker::new(
            &layer,
            root_fd,
            lower_fds,
            self.privileged(),
            limits,
            &mut report,
        )
        .and_then(|mut u| {
            u.run(&mut limited)?;
            // Read to EOF so that the blob's digest is verified.
            crate::layer::drain(&mut limited).map_err(|e| WalkError::tar(&layer, e))?;
            u.finish()
        });
        let stats = result.map_err(|e| {
            if limited.exceeded {
                return LayerStoreError::TooLarge {
                    layer: layer.clone(),
                    limit: self.opts.max_layer_bytes,
                };
            }
            // The blob's own failure is the cause of whatever the tar reader saw.
            let blob_failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
            blob_failure.unwrap_or(e)
        })?;
        Ok(LayerMeta {
            format: LAYER_FORMAT.to_string(),
            digest: layer.clone(),
            media_type: desc.media_type().to_string(),
            compressed_size: desc.size(),
            unpacked_bytes: stats.file_bytes,
            entries: stats.entries,
            privileged: self.privileged(),
            image: image_name.to_string(),
            lowers: lowers.iter().map(|l| lower_name(l)).collect(),
            created: crate::cache::now_secs(),
        })
    }

    fn publish(
        &self,
        mut pending: Pending,
        target: &Path,
        meta: &LayerMeta,
    ) -> Result<PathBuf, LayerStoreError> {
        let meta_path = pending.dir().join("meta.json");
        let json = serde_json::to_vec_pretty(meta).expect("metadata serializes");
        let mut f = std::fs::File::create(&meta_path).map_err(io_err("create", &meta_path))?;
        f.write_all(&json).map_err(io_err("write", &meta_path))?;
        if self.opts.durable {
            // One syncfs for all the files, so that a crash cannot publish a half-written layer.
            sys::syncfs(f.as_fd()).map_err(io_err("sync", pending.dir()))?;
        }
        let rootfs = target.join("rootfs");
        match std::fs::rename(pending.dir(), target) {
            Ok(()) => {
                pending.published = true;
                match target.parent() {
                    Some(parent) if self.opts.durable => sync_dir(parent),
                    _ => {}
                }
            }
            // Another process published it meanwhile: keep theirs, discard ours.
            Err(e) if target.join("meta.json").is_file() => {
                tracing::debug!(
                    "layer {} was published concurrently ({e}); keeping that one",
                    meta.digest
                );
            }
            Err(e) => return Err(io_err("publish", target)(e)),
        }
        Ok(rootfs)
    }

    /// Removes a published entry directory: one rename out of `sha256/`
    /// into a work directory held meanwhile, then deletion.
    fn unpublish(&self, dir: &Path) -> Result<(), LayerStoreError> {
        self.make_dirs()?;
        let tmp = self.tmp_dir();
        let work = WorkDir::create(&tmp, "rm").map_err(io_err("create in", &tmp))?;
        let doomed = work.path().join("entry");
        std::fs::rename(dir, &doomed).map_err(io_err("remove", dir))?;
        std::fs::remove_dir_all(work.path()).map_err(io_err("remove", work.path()))
    }

    /// All published entries (usable or not), oldest first.
    pub fn list(&self) -> Vec<LayerEntry> {
        let Ok(rd) = std::fs::read_dir(self.root.join("sha256")) else {
            return Vec::new();
        };
        let mut out: Vec<LayerEntry> = rd
            .flatten()
            .filter_map(|e| {
                let digest = Digest::from_sha256_hex(&e.file_name().to_string_lossy()).ok()?;
                let meta = serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).ok()?)
                    .ok()?;
                Some(LayerEntry {
                    rootfs: e.path().join("rootfs"),
                    digest,
                    meta,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.meta.created, &a.digest).cmp(&(b.meta.created, &b.digest)));
        out
    }

    /// Removes the entry for `digest`; false if there was none. Only for
    /// layers no running VM serves.
    pub fn remove(&self, digest: &Digest) -> Result<bool, LayerStoreError> {
        let dir = self.entry_dir(digest);
        if !dir.exists() {
            return Ok(false);
        }
        self.unpublish(&dir)?;
        Ok(true)
    }

    /// Removes leftovers of unpacks (and removals) of processes that no
    /// longer run (work directories no process holds, see [`WorkDir`]).
    /// Returns how many were removed.
    pub fn gc_tmp(&self) -> usize {
        WorkDir::remove_abandoned(&self.tmp_dir())
    }
}

/// Creates the per-VM upper directory (if missing) with the owner, mode,
/// times and encoded metadata of the image's root (the top-most layer's):
/// the merged view (like overlayfs) shows the root directory's attributes
/// from the upper layer, so an upper made with other attributes changes `/` in the
/// guest. `layers` is as [`LayerStore::ensure_image`] returns it.
pub fn prepare_upper(layers: &[PathBuf], upper: &Path) -> io::Result<()> {
    std::fs::create_dir_all(upper)?;
    let Some(top) = layers.last() else {
        return Ok(());
    };
    let from = std::fs::File::open(top)?;
    let to = std::fs::File::open(upper)?;
    let st = sys::fstat(from.as_fd())?;
    if crate::host::is_root() {
        sys::chown_fd(to.as_fd(), st.st_uid, st.st_gid)?;
    }
    sys::chmod_fd(to.as_fd(), st.st_mode & 0o7777)?;
    let name = sys::cstr(layerfmt::OVERRIDE_XATTR.as_bytes())?;
    if let Some(v) = sys::fget_xattr(from.as_fd(), &name)? {
        sys::fset_xattr(to.as_fd(), &name, &v)?;
    }
    sys::set_times_fd(to.as_fd(), st.st_mtime, st.st_mtime_nsec as u32)
}
