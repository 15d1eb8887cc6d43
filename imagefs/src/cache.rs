//! The content-addressed cache of converted disks.
//!
//! ```text
//! <root>/disks/<key>/disk.raw    the ext4 image
//! <root>/disks/<key>/meta.json   reference, manifest digest, size, creation time
//! <root>/tmp/<key>.<pid>.<n>/    a conversion in progress
//! ```
//! `key` hashes the manifest digest, the requested size and the converter
//! version. An entry is built in `tmp/` and published with one rename(2) of its
//! directory, so a kill -9 at any point leaves either no entry or a whole one.
//! A conversion holds its `tmp/` directory as a [`WorkDir`]; one nobody holds
//! is a leftover of a dead process, removed by [`Cache::gc`] and before each
//! conversion.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::host::WorkDir;

/// Bumped whenever the converter's output changes, so old entries are not reused.
pub const CONVERTER_VERSION: &str = "minivm-ext4-1";

/// Errors from the cache; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A filesystem operation failed.
    #[error("image cache: {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// An entry's metadata is unreadable (the entry is skipped by listings).
    #[error("image cache: bad metadata {}: {detail}", .path.display())]
    BadMeta { path: PathBuf, detail: String },
    /// `rm` matched nothing.
    #[error("no cached image matches {0:?} (see `minivm images`)")]
    NoMatch(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What is known about a cached disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryMeta {
    /// The reference it was converted from (as given).
    pub reference: String,
    /// Digest of the image manifest.
    pub manifest_digest: String,
    /// Disk size in bytes.
    pub size: u64,
    /// "auto" or the requested size in bytes.
    pub size_request: String,
    /// Converter that wrote it.
    pub converter: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// What the image runs (absent in entries written before it was kept).
    #[serde(default)]
    pub process: Option<crate::process::ImageProcess>,
}

/// A published entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Cache key.
    pub key: String,
    /// Entry directory.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: EntryMeta,
}

impl Entry {
    /// The disk image.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.raw")
    }

    /// Bytes the disk really occupies on the host (it is sparse).
    pub fn disk_usage(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(self.disk())
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    }
}

/// An entry being built; dropped without [`Pending::publish`], it is removed.
pub struct Pending {
    key: String,
    /// Held until the entry is published or dropped, so no other process
    /// takes it for a leftover.
    work: WorkDir,
    entries: PathBuf,
    published: bool,
}

impl Pending {
    /// Where to write the disk.
    pub fn disk_path(&self) -> PathBuf {
        self.dir().join("disk.raw")
    }

    /// The working directory (for spooled blobs and the like).
    pub fn dir(&self) -> &Path {
        self.work.path()
    }

    /// Writes the metadata and publishes the entry atomically. If another
    /// process published the same key meanwhile, that entry is kept.
    pub fn publish(mut self, meta: &EntryMeta) -> Result<Entry, CacheError> {
        let dir = self.work.path().to_path_buf();
        let meta_path = dir.join("meta.json");
        let json = serde_json::to_vec_pretty(meta).expect("metadata serializes");
        let mut f = fs::File::create(&meta_path).map_err(io("create", &meta_path))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(io("write", &meta_path))?;
        let disk = self.disk_path();
        fs::File::open(&disk)
            .and_then(|f| f.sync_all())
            .map_err(io("sync", &disk))?;
        // Nothing but the disk and its metadata goes into the cache.
        for e in fs::read_dir(&dir).map_err(io("read", &dir))? {
            let p = e.map_err(io("read", &dir))?.path();
            if p != disk && p != meta_path {
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        let target = self.entries.join(&self.key);
        match fs::rename(&dir, &target) {
            Ok(()) => {
                self.published = true;
                sync_dir(&self.entries);
            }
            Err(e) if target.join("meta.json").is_file() => {
                tracing::debug!(
                    "entry {} was published concurrently ({e}); keeping that one",
                    self.key
                );
            }
            Err(e) => {
                return Err(CacheError::Io {
                    what: "publish",
                    path: target,
                    source: e,
                })
            }
        }
        Ok(Entry {
            key: self.key.clone(),
            dir: target,
            meta: meta.clone(),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(self.work.path());
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The cache at one root directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// The cache's default root: minivm's cache root.
pub use crate::host::cache_root as default_root;

/// The cache key for a manifest digest and size request.
pub fn key_for(manifest_digest: &str, size_request: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(format!(
        "{CONVERTER_VERSION}\n{manifest_digest}\n{size_request}\n"
    ));
    let out = h.finalize();
    out.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    /// A cache rooted at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entries_dir(&self) -> PathBuf {
        self.root.join("disks")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The published entry for `key`, if any (and marks it used).
    pub fn get(&self, key: &str) -> Option<Entry> {
        let dir = self.entries_dir().join(key);
        let meta = read_meta(&dir.join("meta.json")).ok()?;
        if !dir.join("disk.raw").is_file() {
            return None;
        }
        // The directory's mtime records the last use, for gc.
        let _ = fs::File::open(&dir).and_then(|f| f.set_modified(SystemTime::now()));
        Some(Entry {
            key: key.to_string(),
            dir,
            meta,
        })
    }

    /// Starts building the entry for `key` in a private temporary directory.
    pub fn begin(&self, key: &str) -> Result<Pending, CacheError> {
        let entries = self.entries_dir();
        let tmp = self.tmp_dir();
        fs::create_dir_all(&entries).map_err(io("create", &entries))?;
        self.clean_tmp();
        let work = WorkDir::create(&tmp, key).map_err(io("create", &tmp))?;
        Ok(Pending {
            key: key.to_string(),
            work,
            entries,
            published: false,
        })
    }

    /// Removes temporary directories no live process holds (leftovers of
    /// killed conversions). Returns how many were removed.
    pub fn clean_tmp(&self) -> usize {
        WorkDir::remove_abandoned(&self.tmp_dir())
    }

    /// All published entries, oldest first.
    pub fn list(&self) -> Vec<Entry> {
        let Ok(rd) = fs::read_dir(self.entries_dir()) else {
            return vec![];
        };
        let mut out: Vec<Entry> = rd
            .flatten()
            .filter_map(|e| {
                let dir = e.path();
                let meta = read_meta(&dir.join("meta.json")).ok()?;
                Some(Entry {
                    key: e.file_name().to_string_lossy().into_owned(),
                    dir,
                    meta,
                })
            })
            .collect();
        out.sort_by_key(|e| e.meta.created);
        out
    }

    /// Removes entries whose key starts with `pattern` (at least 4 characters)
    /// or whose reference equals it. Returns the removed entries.
    pub fn remove(&self, pattern: &str) -> Result<Vec<Entry>, CacheError> {
        let matched: Vec<Entry> = self
            .list()
            .into_iter()
            .filter(|e| {
                e.meta.reference == pattern || (pattern.len() >= 4 && e.key.starts_with(pattern))
            })
            .collect();
        if matched.is_empty() {
            return Err(CacheError::NoMatch(pattern.to_string()));
        }
        for e in &matched {
            remove_entry(e)?;
        }
        Ok(matched)
    }

    /// Removes leftovers of interrupted conversions and entries unused for
    /// longer than `unused_for` (all entries when `None`). Returns the removed entries.
    pub fn gc(&self, unused_for: Option<Duration>) -> Result<(usize, Vec<Entry>), CacheError> {
        let tmp = self.clean_tmp();
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for e in self.list() {
            let last_use = fs::metadata(&e.dir)
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            let stale = match unused_for {
                None => true,
                Some(d) => now.duration_since(last_use).unwrap_or_default() > d,
            };
            if stale {
                remove_entry(&e)?;
                removed.push(e);
            }
        }
        Ok((tmp, removed))
    }
}

fn remove_entry(e: &Entry) -> Result<(), CacheError> {
    // Unpublish first (one rename), then delete at leisure: no half entry is ever visible.
    let parent = e
        .dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"))
        .join("tmp");
    fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let doomed = parent.join(format!("{}.0.rm", e.key));
    fs::rename(&e.dir, &doomed).map_err(io("remove", &e.dir))?;
    fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))
}

fn read_meta(path: &Path) -> Result<EntryMeta, CacheError> {
    let data = fs::read(path).map_err(io("read", path))?;
    serde_json::from_slice(&data).map_err(|e| CacheError::BadMeta {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(r: &str) -> EntryMeta {
        EntryMeta {
            reference: r.into(),
            manifest_digest: "sha256:00".into(),
            size: 4096,
            size_request: "auto".into(),
            converter: CONVERTER_VERSION.into(),
            created: now_secs(),
            process: None,
        }
    }

    fn cache(name: &str) -> Cache {
        let d =
            std::env::temp_dir().join(format!("minivm-cache-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        Cache::new(d)
    }

    #[test]
    fn publish_get_list_remove() {
        let c = cache("basic");
        let key = key_for("sha256:abc", "auto");
        assert_ne!(key, key_for("sha256:abc", "1048576"));
        assert!(c.get(&key).is_none());
        let p = c.begin(&key).unwrap();
        fs::write(p.disk_path(), b"disk").unwrap();
        fs::write(p.dir().join("spooled-blob"), b"x").unwrap();
        let e = p.publish(&meta("oci:x")).unwrap();
        assert_eq!(fs::read(e.disk()).unwrap(), b"disk");
        assert!(!e.dir.join("spooled-blob").exists());
        assert_eq!(
            c.get(&key).unwrap().meta,
            meta("oci:x").clone_with_created(e.meta.created)
        );
        assert_eq!(c.list().len(), 1);
        assert!(matches!(c.remove("nope"), Err(CacheError::NoMatch(_))));
        assert_eq!(c.remove("oci:x").unwrap().len(), 1);
        assert!(c.list().is_empty());
        assert_eq!(fs::read_dir(c.root().join("tmp")).unwrap().count(), 0);
        let _ = fs::remove_dir_all(c.root());
    }

    #[test]
    fn abandoned_builds_leave_nothing() {
        let c = cache("abandon");
        let p = c.begin("k1").unwrap();
        fs::write(p.disk_path(), b"half").unwrap();
        drop(p);
        assert!(c.get("k1").is_none());
        assert_eq!(fs::read_dir(c.root().join("tmp")).unwrap().count(), 0);
        // A leftover of a killed process (a directory nobody holds) is
        // cleaned; a conversion in progress is not.
        let dead = c.root().join("tmp").join("k2.4294967.0");
        fs::create_dir_all(&dead).unwrap();
        let live = c.begin("k3").unwrap();
        assert_eq!(c.clean_tmp(), 0, "begin cleaned it already");
        assert!(!dead.exists() && live.dir().is_dir());
        fs::create_dir_all(&dead).unwrap();
        assert_eq!(c.gc(Some(Duration::from_secs(60))).unwrap().0, 1);
        assert!(!dead.exists() && live.dir().is_dir());
        drop(live);
        let _ = fs::remove_dir_all(c.root());
    }

    #[test]
    fn gc_removes_unused_entries() {
        let c = cache("gc");
        for k in ["a1", "b2"] {
            let p = c.begin(k).unwrap();
            fs::write(p.disk_path(), b"d").unwrap();
            p.publish(&meta(k)).unwrap();
        }
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::open(c.root().join("disks/a1"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (_, removed) = c.gc(Some(Duration::from_secs(60))).unwrap();
        assert_eq!(
            removed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            vec!["a1"]
        );
        let (_, removed) = c.gc(None).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(c.list().is_empty());
        let _ = fs::remove_dir_all(c.root());
    }

    impl EntryMeta {
        fn clone_with_created(mut self, created: u64) -> Self {
            self.created = created;
            self
        }
    }
}
