//! The image commands (`convert`, `pull`, `images`, `rm`, `gc`) and what
//! `run --oci` boots: a disk, or the image's layers for virtio-fs.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imagefs::cache::CacheError;
use imagefs::convert::{self, human, ConvertError, ConvertOptions, Converted, Progress};
use imagefs::layerstore::{LayerEvent, LayerStoreError};
use imagefs::process::ImageProcess;
use imagefs::reference::{ImageRef, ReferenceError};
use imagefs::source::{self, SourceError, SourceOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::ImageOpts;
use crate::paths;

/// Why an image command (or the image part of `run --oci`) failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is malformed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The image could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The image could not be converted to a disk (or the disk copied).
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// The image's layers could not be unpacked.
    #[error(transparent)]
    LayerStore(#[from] LayerStoreError),
    /// The disk cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// `rm`: the targets that could not be removed, one line each.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Remove(Vec<CacheError>),
    /// `run --oci --persist FILE` where FILE is not a regular file.
    #[error("--persist {}: not a regular file", .0.display())]
    PersistNotFile(PathBuf),
}

/// Progress on stderr: a bar per layer on a terminal, plain lines otherwise.
struct CliProgress {
    quiet: bool,
    tty: bool,
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl CliProgress {
    fn new(quiet: bool) -> Self {
        CliProgress {
            quiet,
            tty: std::io::stderr().is_terminal(),
            bar: Default::default(),
        }
    }
}

impl Progress for CliProgress {
    fn layer(&self, what: &str, index: usize, count: usize, digest: &str, bytes: u64) {
        if self.quiet {
            return;
        }
        let short = digest
            .strip_prefix("sha256:")
            .unwrap_or(digest)
            .get(..12)
            .unwrap_or(digest);
        let msg = format!("{what} layer {}/{count} {short}", index + 1);
        if self.tty {
            let bar = ProgressBar::new(bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(msg);
            *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
        } else {
            eprintln!("minivm: {msg} ({})", human(bytes));
        }
    }

    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            b.inc(n);
        }
    }

    fn layer_done(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            b.finish_and_clear();
        }
    }

    fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("minivm: {msg}");
        }
    }
}

fn source_options(opts: &ImageOpts) -> SourceOptions {
    SourceOptions {
        tls_verify: opts.tls_verify,
        credentials: None,
    }
}

/// Converts `reference` into the cache (or finds it there).
pub fn ensure(reference: &str, opts: &ImageOpts) -> Result<Converted, ImageError> {
    let r: ImageRef = reference.parse()?;
    let progress = CliProgress::new(opts.quiet);
    let copts = ConvertOptions {
        size: opts.size,
        max_auto_size: convert::DEFAULT_MAX_AUTO_SIZE,
        source: source_options(opts),
        progress: &progress,
    };
    let cache = paths::disk_cache();
    let started = std::time::Instant::now();
    let c = convert::ensure_cached(&cache, &r, reference, &copts)?;
    if !c.was_cached {
        progress.note(&format!(
            "converted {reference} into a {} disk in {:.1} s",
            human(c.entry.meta.size),
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(c)
}

/// `minivm convert REF -o OUT`.
pub fn convert_cmd(reference: &str, out: &Path, opts: &ImageOpts) -> Result<(), ImageError> {
    let c = ensure(reference, opts)?;
    convert::copy_disk(&c.entry.disk(), out)?;
    if !opts.quiet {
        eprintln!(
            "minivm: wrote {} ({} disk)",
            out.display(),
            human(c.entry.meta.size)
        );
    }
    Ok(())
}

/// `minivm pull REF`.
pub fn pull_cmd(reference: &str, opts: &ImageOpts) -> Result<(), ImageError> {
    let c = ensure(reference, opts)?;
    println!("{} {}", c.entry.key, c.entry.disk().display());
    Ok(())
}

/// `minivm images`.
pub fn images_cmd() {
    let entries = paths::disk_cache().list();
    println!(
        "{:<12}  {:>9}  {:>9}  {:<19}  REFERENCE",
        "KEY", "SIZE", "ON DISK", "MANIFEST"
    );
    for e in entries {
        let digest = e
            .meta
            .manifest_digest
            .strip_prefix("sha256:")
            .unwrap_or(&e.meta.manifest_digest);
        println!(
            "{:<12}  {:>9}  {:>9}  sha256:{:<12}  {}",
            &e.key[..12.min(e.key.len())],
            human(e.meta.size),
            human(e.disk_usage()),
            &digest[..12.min(digest.len())],
            e.meta.reference
        );
    }
}

/// `minivm rm TARGET...`.
pub fn rm_cmd(targets: &[String]) -> Result<(), ImageError> {
    let cache = paths::disk_cache();
    let mut failed = Vec::new();
    for t in targets {
        match cache.remove(t) {
            Ok(removed) => {
                for e in removed {
                    println!(
                        "removed {} {}",
                        &e.key[..12.min(e.key.len())],
                        e.meta.reference
                    );
                }
            }
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ImageError::Remove(failed))
    }
}

/// `minivm gc`.
pub fn gc_cmd(unused_days: u64, all: bool) -> Result<(), ImageError> {
    let cache = paths::disk_cache();
    let age = if all {
        None
    } else {
        Some(Duration::from_secs(unused_days * 86400))
    };
    let (tmp, removed) = cache.gc(age)?;
    for e in &removed {
        println!(
            "removed {} {}",
            &e.key[..12.min(e.key.len())],
            e.meta.reference
        );
    }
    println!(
        "removed {} cached disk(s) and {tmp} leftover(s) of interrupted conversions",
        removed.len()
    );
    Ok(())
}

/// The disk for `run --oci`: the cached image (which the VM must not write),
/// or the persistent copy in `persist` (made from the image the first time);
/// and what the image runs, when the cache entry recorded it.
pub fn disk_for_run(
    reference: &str,
    persist: Option<&Path>,
    opts: &ImageOpts,
) -> Result<(PathBuf, Option<ImageProcess>), ImageError> {
    let c = ensure(reference, opts)?;
    let process = c.entry.meta.process.clone();
    let disk = match persist {
        Some(p) if p.exists() => {
            if !p.is_file() {
                return Err(ImageError::PersistNotFile(p.to_path_buf()));
            }
            p.to_path_buf()
        }
        Some(p) => {
            convert::copy_disk(&c.entry.disk(), p)?;
            p.to_path_buf()
        }
        None => c.entry.disk(),
    };
    Ok((disk, process))
}

/// The layers for `run --oci --virtiofs`: each unpacked into the layer store
/// unless it is there already; bottom-most first; and what the image runs.
pub fn layers_for_run(
    reference: &str,
    opts: &ImageOpts,
) -> Result<(Vec<PathBuf>, ImageProcess), ImageError> {
    let r: ImageRef = reference.parse()?;
    let progress = CliProgress::new(opts.quiet);
    let mut src = source::open(&r, &source_options(opts))?;
    let image = src.resolve()?;
    let store = paths::layer_store();
    let started = std::time::Instant::now();
    let mut unpacked = 0usize;
    let mut read_so_far = 0u64;
    let dirs = store.ensure_image(src.as_mut(), &image, reference, &mut |ev| match ev {
        LayerEvent::Start {
            index,
            count,
            digest,
            size,
            cached: false,
        } => {
            unpacked += 1;
            read_so_far = 0;
            progress.layer("unpacking", index, count, digest, size);
        }
        LayerEvent::Start { cached: true, .. } => {}
        LayerEvent::Read { read } => {
            progress.advance(read.saturating_sub(read_so_far));
            read_so_far = read;
        }
        LayerEvent::Done { .. } => progress.layer_done(),
    })?;
    if unpacked > 0 {
        progress.note(&format!(
            "unpacked {unpacked} of {} layer(s) of {reference} in {:.1} s",
            dirs.len(),
            started.elapsed().as_secs_f64()
        ));
    }
    Ok((dirs, ImageProcess::from_config(&image.config)))
}
