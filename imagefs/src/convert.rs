//! From an image reference to a cached, bootable ext4 disk.
//!
//! Resolve the manifest (cheap) -> cache hit? done, no layer is read.
//! Otherwise: (registry images: download each layer once, verified, into the
//! pending entry) -> without `--size`, a sizing pass that flattens the layers
//! without writing anything -> the writing pass that streams file data into
//! the ext4 image -> publish the entry atomically.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;

use crate::cache::{self, Cache, CacheError, Entry, EntryMeta};
use crate::ext4::{self, Ext4Builder, Ext4Error, Ext4Options};
use crate::flatten::{CountingSink, DataSink, FlattenError, Flattener, SinkError};
use crate::process::ImageProcess;
use crate::reference::ImageRef;
use crate::source::{self, ImageSource, ResolvedImage, SourceError, SourceOptions};
use crate::tree::{DataId, NodeKind, Tree};

/// Largest disk made without an explicit `--size`.
pub const DEFAULT_MAX_AUTO_SIZE: u64 = 64 << 30;
/// Free space added to the content of an automatically sized disk, at least.
pub const MIN_HEADROOM: u64 = 1 << 30;

/// Errors from converting; each names the image.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the image failed (reference, manifest, blob, registry).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A layer could not be decompressed or read.
    #[error("image {image}: layer {layer}: {detail}")]
    Layer {
        image: String,
        layer: String,
        detail: String,
    },
    /// A layer's content is malformed or hostile.
    #[error("image {image}: {source}")]
    Flatten { image: String, source: FlattenError },
    /// The content does not fit in the requested disk size.
    #[error(
        "image {image}: its content needs {} but the disk size is {}: use a larger --size{}",
        human(*.content), human(*.size), if *.at_least { " (at least that much; reading stopped early)" } else { "" }
    )]
    TooBig {
        image: String,
        content: u64,
        size: u64,
        at_least: bool,
    },
    /// Writing the filesystem failed.
    #[error("image {image}: writing the ext4 filesystem: {source}")]
    Ext4 { image: String, source: Ext4Error },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Copying the result out failed.
    #[error("cannot write {}: {source}", .path.display())]
    Output { path: PathBuf, source: io::Error },
}

/// Formats bytes for people: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Receives progress reports (the CLI shows bars or lines).
pub trait Progress: Sync {
    /// A phase starts (`what` e.g. "downloading", "sizing", "writing"), for layer `index` of `count`.
    fn layer(&self, what: &str, index: usize, count: usize, digest: &str, bytes: u64);
    /// `n` more bytes of the current layer's blob were read.
    fn advance(&self, n: u64);
    /// The current layer is done.
    fn layer_done(&self);
    /// A one-line note.
    fn note(&self, msg: &str);
}

/// Progress that reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn layer(&self, _: &str, _: usize, _: usize, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn layer_done(&self) {}
    fn note(&self, _: &str) {}
}

/// Conversion settings.
pub struct ConvertOptions<'p> {
    /// Disk size in bytes; `None` sizes it from the content plus headroom.
    pub size: Option<u64>,
    /// Cap for automatic sizing (and for what the sizing pass will read).
    pub max_auto_size: u64,
    /// How to reach the image.
    pub source: SourceOptions,
    /// Where progress goes.
    pub progress: &'p dyn Progress,
}

/// The result of [`ensure_cached`].
#[derive(Debug)]
pub struct Converted {
    /// The cache entry.
    pub entry: Entry,
    /// True when it was already in the cache (no layer was read).
    pub was_cached: bool,
}

/// Counts blob bytes for progress.
struct Counting<'p, R> {
    inner: R,
    progress: &'p dyn Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Makes sure the disk for `reference` is in `cache` and returns it.
pub fn ensure_cached(
    cache: &Cache,
    reference: &ImageRef,
    reference_text: &str,
    opts: &ConvertOptions<'_>,
) -> Result<Converted, ConvertError> {
    let mut src = source::open(reference, &opts.source)?;
    let resolved = src.resolve()?;
    let size_request = opts
        .size
        .map(|s| s.to_string())
        .unwrap_or_else(|| "auto".into());
    let digest = resolved.manifest_digest.to_string();
    let key = cache::key_for(&digest, &size_request);
    if let Some(entry) = cache.get(&key) {
        return Ok(Converted {
            entry,
            was_cached: true,
        });
    }
    let pending = cache.begin(&key)?;
    let image = reference_text.to_string();
    let layers: Vec<Descriptor> = resolved.manifest.layers().clone();

    // Remote layers are fetched once and read locally by both passes.
    let spooled = if matches!(reference, ImageRef::Registry { .. }) {
        Some(spool_layers(
            src.as_mut(),
            &layers,
            pending.dir(),
            opts.progress,
            &image,
        )?)
    } else {
        None
    };
    let mut blobs = Blobs {
        src: src.as_mut(),
        spooled: spooled.as_deref(),
        image: &image,
        progress: opts.progress,
    };

    let size = match opts.size {
        Some(s) => s,
        None => {
            let (content, tree) = measure(&mut blobs, &layers, opts.max_auto_size)?;
            let need = content_size(&tree, content);
            let size = (need + (need / 2).max(MIN_HEADROOM)).next_multiple_of(1 << 20);
            if size > opts.max_auto_size {
                return Err(ConvertError::TooBig {
                    image,
                    content: need,
                    size: opts.max_auto_size,
                    at_least: false,
                });
            }
            size
        }
    };

    let disk_path = pending.disk_path();
    let file = File::create(&disk_path).map_err(|source| ConvertError::Output {
        path: disk_path.clone(),
        source,
    })?;
    let ext_opts = Ext4Options {
        size,
        inodes: None,
        label: label_for(&resolved),
        uuid: uuid_from_digest(&digest),
        timestamp: cache::now_secs() as i64,
    };
    let mut builder = Ext4Builder::new(file, ext_opts).map_err(|source| ConvertError::Ext4 {
        image: image.clone(),
        source,
    })?;
    let written = {
        let mut sink = Ext4Sink(&mut builder);
        flatten_all(&mut blobs, &layers, &mut sink, "writing")
    };
    let tree = match written {
        Ok(t) => t,
        Err(ConvertError::Flatten { source, .. }) if is_no_space(&source) => {
            // Name both sizes: measure the content (bounded) for the message.
            let at_least;
            let content = match measure(&mut blobs, &layers, opts.max_auto_size) {
                Ok((c, t)) => {
                    at_least = false;
                    content_size(&t, c)
                }
                Err(ConvertError::TooBig { content, .. }) => {
                    at_least = true;
                    content
                }
                Err(e) => return Err(e),
            };
            return Err(ConvertError::TooBig {
                image,
                content: content.max(size + 1),
                size,
                at_least,
            });
        }
        Err(e) => return Err(e),
    };
    builder.finish(&tree).map_err(|source| ConvertError::Ext4 {
        image: image.clone(),
        source,
    })?;
    let meta = EntryMeta {
        reference: reference_text.to_string(),
        manifest_digest: digest,
        size,
        size_request,
        converter: cache::CONVERTER_VERSION.to_string(),
        created: cache::now_secs(),
        process: Some(ImageProcess::from_config(&resolved.config)),
    };
    let entry = pending.publish(&meta)?;
    Ok(Converted {
        entry,
        was_cached: false,
    })
}

fn is_no_space(e: &FlattenError) -> bool {
    e.sink_error()
        .and_then(|s| s.downcast_ref::<Ext4Error>())
        .is_some_and(|e| matches!(e, Ext4Error::NoSpace { .. }))
        || e.sink_error()
            .and_then(|s| s.downcast_ref::<Budget>())
            .is_some()
}

/// Bytes the tree needs on disk: data blocks plus ext4 metadata.
fn content_size(tree: &Tree, data_bytes: u64) -> u64 {
    let (mut files, mut dirs) = (0u64, 0u64);
    for (id, _) in tree.reachable() {
        match tree.nodes[id].kind {
            NodeKind::Dir(_) => dirs += 1,
            _ => files += 1,
        }
    }
    ext4::estimate_size(files, dirs, data_bytes)
}

fn label_for(r: &ResolvedImage) -> String {
    let _ = r;
    "minivm-image".to_string()
}

fn uuid_from_digest(digest: &str) -> [u8; 16] {
    use sha2::{Digest as _, Sha256};
    let h = Sha256::digest(digest.as_bytes());
    let mut u = [0u8; 16];
    u.copy_from_slice(&h[..16]);
    // RFC 4122 variant, version 5 style (name-based): reproducible per image.
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Where layer blobs are read from in each pass.
struct Blobs<'a> {
    src: &'a mut dyn ImageSource,
    spooled: Option<&'a [PathBuf]>,
    image: &'a str,
    progress: &'a dyn Progress,
}

impl Blobs<'_> {
    fn open(
        &mut self,
        index: usize,
        desc: &Descriptor,
    ) -> Result<Box<dyn Read + Send + '_>, ConvertError> {
        let blob: Box<dyn Read + Send + '_> = match self.spooled {
            Some(files) => {
                let f = File::open(&files[index]).map_err(|e| ConvertError::Layer {
                    image: self.image.to_string(),
                    layer: desc.digest().to_string(),
                    detail: e.to_string(),
                })?;
                Box::new(io::BufReader::with_capacity(1 << 20, f))
            }
            None => self.src.open_blob(desc)?,
        };
        let counted = Box::new(Counting {
            inner: blob,
            progress: self.progress,
        });
        crate::layer::decompress(desc.media_type().as_ref(), counted).map_err(|e| {
            ConvertError::Layer {
                image: self.image.to_string(),
                layer: desc.digest().to_string(),
                detail: e.to_string(),
            }
        })
    }
}

fn spool_layers(
    src: &mut dyn ImageSource,
    layers: &[Descriptor],
    dir: &Path,
    progress: &dyn Progress,
    image: &str,
) -> Result<Vec<PathBuf>, ConvertError> {
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|source| ConvertError::Output {
        path: blobs.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, d) in layers.iter().enumerate() {
        progress.layer(
            "downloading",
            i,
            layers.len(),
            d.digest().as_ref(),
            d.size(),
        );
        let path = blobs.join(format!("{i}"));
        let mut f = File::create(&path).map_err(|source| ConvertError::Output {
            path: path.clone(),
            source,
        })?;
        let blob = src.open_blob(d)?;
        let mut counted = Counting {
            inner: blob,
            progress,
        };
        io::copy(&mut counted, &mut f).map_err(|e| ConvertError::Layer {
            image: image.to_string(),
            layer: d.digest().to_string(),
            detail: e.to_string(),
        })?;
        progress.layer_done();
        out.push(path);
    }
    Ok(out)
}

/// A sizing pass: flattens without writing; fails once live data exceeds `budget`.
fn measure(
    blobs: &mut Blobs<'_>,
    layers: &[Descriptor],
    budget: u64,
) -> Result<(u64, Tree), ConvertError> {
    let mut sink = BudgetSink {
        inner: CountingSink::default(),
        budget,
    };
    match flatten_all(blobs, layers, &mut sink, "sizing") {
        Ok(tree) => Ok((sink.inner.live_blocks_bytes, tree)),
        Err(ConvertError::Flatten { source, image }) if is_no_space(&source) => {
            Err(ConvertError::TooBig {
                image,
                content: budget,
                size: budget,
                at_least: true,
            })
        }
        Err(e) => Err(e),
    }
}

/// The sizing pass's budget ran out.
#[derive(Debug, thiserror::Error)]
#[error("content exceeds {0} bytes")]
struct Budget(u64);

struct BudgetSink {
    inner: CountingSink,
    budget: u64,
}

impl DataSink for BudgetSink {
    fn write_data(&mut self, r: &mut dyn Read, len: u64) -> Result<DataId, SinkError> {
        if self.inner.live_blocks_bytes.saturating_add(len) > self.budget {
            return Err(Box::new(Budget(self.budget)));
        }
        self.inner.write_data(r, len)
    }
    fn free_data(&mut self, id: DataId) {
        self.inner.free_data(id)
    }
}

/// Flattened file data written straight into the ext4 image.
pub(crate) struct Ext4Sink<'b>(pub(crate) &'b mut Ext4Builder);

impl DataSink for Ext4Sink<'_> {
    fn write_data(&mut self, r: &mut dyn Read, len: u64) -> Result<DataId, SinkError> {
        self.0
            .write_data(r, len)
            .map_err(|e| Box::new(e) as SinkError)
    }
    fn free_data(&mut self, id: DataId) {
        self.0.free_data(id)
    }
}

fn flatten_all(
    blobs: &mut Blobs<'_>,
    layers: &[Descriptor],
    sink: &mut dyn DataSink,
    what: &str,
) -> Result<Tree, ConvertError> {
    let image = blobs.image.to_string();
    let progress = blobs.progress;
    let mut f = Flattener::new(sink);
    for (i, d) in layers.iter().enumerate() {
        let digest = d.digest().to_string();
        progress.layer(what, i, layers.len(), &digest, d.size());
        let mut r = blobs.open(i, d)?;
        f.apply_layer(&digest, &mut r)
            .map_err(|source| ConvertError::Flatten {
                image: image.clone(),
                source,
            })?;
        // Read to the end, so the blob's digest and size are verified even past
        // the tar end-of-archive marker.
        io::copy(&mut r, &mut io::sink()).map_err(|e| ConvertError::Layer {
            image: image.clone(),
            layer: digest.clone(),
            detail: e.to_string(),
        })?;
        progress.layer_done();
    }
    Ok(f.finish().0)
}

/// Copies a (sparse) disk image to `out` atomically: a reflink where the
/// filesystem supports it, otherwise a copy of the data regions only.
pub fn copy_disk(from: &Path, out: &Path) -> Result<(), ConvertError> {
    let err = |source| ConvertError::Output {
        path: out.to_path_buf(),
        source,
    };
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let src = File::open(from)?;
        let dst = File::create(&tmp)?;
        crate::sparse::clone_or_copy(&src, &dst)?;
        dst.sync_all()?;
        std::fs::rename(&tmp, out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn uuid_is_stable_and_versioned() {
        let a = uuid_from_digest("sha256:aa");
        assert_eq!(a, uuid_from_digest("sha256:aa"));
        assert_ne!(a, uuid_from_digest("sha256:ab"));
        assert_eq!(a[6] >> 4, 5);
        assert_eq!(a[8] >> 6, 2);
    }
}
