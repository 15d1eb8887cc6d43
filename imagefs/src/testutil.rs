//! Test images written locally, with no downloads: layer tars built entry by
//! entry (including hostile and unusual entries), written as an OCI layout,
//! an OCI archive or a `docker save` archive.
//!
//! Used by imagefs's tests and by the workspace's integration tests.
//!
//! ```no_run
//! use imagefs::testutil::{Compression, TempDir, TestEntry, TestImage};
//! let dir = TempDir::new("example").unwrap();
//! let image = TestImage::new(vec![vec![
//!     TestEntry::dir("etc"),
//!     TestEntry::file("etc/hostname", "vm\n").mode(0o600),
//!     TestEntry::symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
//! ]]);
//! let digest = image.write_oci_layout(&dir.path().join("layout"), "latest", Compression::Gzip).unwrap();
//! ```

mod fixtures;
mod registry;
mod write;

pub use crate::layer::Compression;
pub use fixtures::{
    busybox_layer, hostile_image, long_names, tricky_expectations, tricky_image, Expect,
    BUSYBOX_APPLETS, CAP_NET_BIND_SERVICE_XATTR,
};
pub use registry::{
    bcrypt_htpasswd_line, free_port, skopeo_copy, TestRegistry, HTPASSWD_PASSWORD, HTPASSWD_USER,
};
pub use write::{
    blob_path, compress, layer_tar, set_index_entry, write_blob, write_docker_archive_images,
    BuiltImage, BuiltLayer, DockerFormat,
};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Errors writing test images.
#[derive(Debug, thiserror::Error)]
pub enum TestImageError {
    /// A file could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Anything else (a helper tool failed, bad input).
    #[error("{0}")]
    Other(String),
}

impl TestImageError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> TestImageError {
        let what = what.into();
        move |source| TestImageError::Io { what, source }
    }
}

/// Default modification time of entries: 2023-11-14T22:13:20Z.
pub const DEFAULT_MTIME: i64 = 1_700_000_000;

/// Ownership, permissions, times and xattrs of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, including setuid (0o4000), setgid (0o2000), sticky (0o1000).
    pub mode: u32,
    /// Owner; values past 2097151 are written base-256 plus a PAX `uid` record.
    pub uid: u64,
    /// Group; like `uid`.
    pub gid: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Nanoseconds; when non-zero, written as a PAX `mtime` record `secs.nnnnnnnnn`.
    pub mtime_nsec: u32,
    /// Extended attributes, written as PAX `SCHILY.xattr.NAME` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Write names (and link targets) longer than 100 bytes as PAX `path`
    /// (`linkpath`) records instead of GNU long-name entries.
    pub pax_names: bool,
}

impl Meta {
    fn with_mode(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            mtime_nsec: 0,
            xattrs: Vec::new(),
            pax_names: false,
        }
    }
}

/// A tar header written exactly as given: for hostile inputs (`../x`,
/// `/abs`, non-UTF-8 names, odd types). Names longer than 100 bytes go in a
/// PAX `path` record (`linkpath` for link names); nothing is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// Name bytes as stored.
    pub path: Vec<u8>,
    /// Tar type flag (`b'0'` file, `b'1'` hardlink, `b'2'` symlink, `b'5'` dir, ...).
    pub entry_type: u8,
    /// Link name bytes as stored.
    pub link_name: Vec<u8>,
    /// Contents (its length is the header size).
    pub data: Vec<u8>,
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Seconds.
    pub mtime: u64,
    /// Extra PAX records written before the header.
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Default for RawEntry {
    fn default() -> Self {
        RawEntry {
            path: Vec::new(),
            entry_type: b'0',
            link_name: Vec::new(),
            data: Vec::new(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME as u64,
            pax: Vec::new(),
        }
    }
}

/// One entry of a test layer. Paths are relative (`etc/passwd`); build
/// entries with the constructors and adjust them with the modifiers:
/// `TestEntry::file("bin/x", data).mode(0o4755).owner(1000, 1000)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestEntry {
    /// A directory.
    Dir {
        /// Path.
        path: String,
        /// Metadata.
        meta: Meta,
    },
    /// A regular file.
    File {
        /// Path.
        path: String,
        /// Contents.
        data: Vec<u8>,
        /// Metadata.
        meta: Meta,
    },
    /// A symbolic link.
    Symlink {
        /// Path.
        path: String,
        /// Target, stored verbatim.
        target: String,
        /// Metadata.
        meta: Meta,
    },
    /// A hard link to `target`, a path in this or a lower layer.
    Hardlink {
        /// Path.
        path: String,
        /// Path of the linked file.
        target: String,
        /// Metadata of the header (ignored by extractors).
        meta: Meta,
    },
    /// A character device.
    CharDev {
        /// Path.
        path: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
        /// Metadata.
        meta: Meta,
    },
    /// A block device.
    BlockDev {
        /// Path.
        path: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
        /// Metadata.
        meta: Meta,
    },
    /// A named pipe.
    Fifo {
        /// Path.
        path: String,
        /// Metadata.
        meta: Meta,
    },
    /// Deletes the lower layers' entry at this path: written as `DIR/.wh.NAME`.
    Whiteout(String),
    /// Hides the lower layers' contents of this directory: written as `DIR/.wh..wh..opq`.
    Opaque(String),
    /// A header written verbatim.
    Raw(RawEntry),
}

impl TestEntry {
    /// A directory, mode 0755.
    pub fn dir(path: impl Into<String>) -> TestEntry {
        TestEntry::Dir {
            path: path.into(),
            meta: Meta::with_mode(0o755),
        }
    }

    /// A regular file, mode 0644.
    pub fn file(path: impl Into<String>, data: impl Into<Vec<u8>>) -> TestEntry {
        TestEntry::File {
            path: path.into(),
            data: data.into(),
            meta: Meta::with_mode(0o644),
        }
    }

    /// A regular file, mode 0755.
    pub fn executable(path: impl Into<String>, data: impl Into<Vec<u8>>) -> TestEntry {
        TestEntry::File {
            path: path.into(),
            data: data.into(),
            meta: Meta::with_mode(0o755),
        }
    }

    /// A symlink, mode 0777.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> TestEntry {
        TestEntry::Symlink {
            path: path.into(),
            target: target.into(),
            meta: Meta::with_mode(0o777),
        }
    }

    /// A hard link to `target`.
    pub fn hardlink(path: impl Into<String>, target: impl Into<String>) -> TestEntry {
        TestEntry::Hardlink {
            path: path.into(),
            target: target.into(),
            meta: Meta::with_mode(0o644),
        }
    }

    /// A character device, mode 0666.
    pub fn char_dev(path: impl Into<String>, major: u32, minor: u32) -> TestEntry {
        TestEntry::CharDev {
            path: path.into(),
            major,
            minor,
            meta: Meta::with_mode(0o666),
        }
    }

    /// A block device, mode 0660.
    pub fn block_dev(path: impl Into<String>, major: u32, minor: u32) -> TestEntry {
        TestEntry::BlockDev {
            path: path.into(),
            major,
            minor,
            meta: Meta::with_mode(0o660),
        }
    }

    /// A FIFO, mode 0644.
    pub fn fifo(path: impl Into<String>) -> TestEntry {
        TestEntry::Fifo {
            path: path.into(),
            meta: Meta::with_mode(0o644),
        }
    }

    /// A whiteout deleting `path` from lower layers.
    pub fn whiteout(path: impl Into<String>) -> TestEntry {
        TestEntry::Whiteout(path.into())
    }

    /// An opaque marker for directory `dir`.
    pub fn opaque(dir: impl Into<String>) -> TestEntry {
        TestEntry::Opaque(dir.into())
    }

    /// A raw header with these name bytes and type flag (see [`RawEntry`]).
    pub fn raw(path: impl Into<Vec<u8>>, entry_type: u8) -> TestEntry {
        TestEntry::Raw(RawEntry {
            path: path.into(),
            entry_type,
            ..RawEntry::default()
        })
    }

    /// The name as written to the tar (for whiteouts, the `.wh.` file).
    pub fn tar_path(&self) -> Vec<u8> {
        let split = |p: &str| match p.trim_end_matches('/').rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n.to_string()),
            None => (String::new(), p.trim_end_matches('/').to_string()),
        };
        match self {
            TestEntry::Dir { path, .. }
            | TestEntry::File { path, .. }
            | TestEntry::Symlink { path, .. }
            | TestEntry::Hardlink { path, .. }
            | TestEntry::CharDev { path, .. }
            | TestEntry::BlockDev { path, .. }
            | TestEntry::Fifo { path, .. } => path.clone().into_bytes(),
            TestEntry::Whiteout(p) => {
                let (d, n) = split(p);
                format!("{d}.wh.{n}").into_bytes()
            }
            TestEntry::Opaque(d) => {
                format!("{}/.wh..wh..opq", d.trim_end_matches('/')).into_bytes()
            }
            TestEntry::Raw(r) => r.path.clone(),
        }
    }

    fn meta_mut(&mut self) -> Option<&mut Meta> {
        match self {
            TestEntry::Dir { meta, .. }
            | TestEntry::File { meta, .. }
            | TestEntry::Symlink { meta, .. }
            | TestEntry::Hardlink { meta, .. }
            | TestEntry::CharDev { meta, .. }
            | TestEntry::BlockDev { meta, .. }
            | TestEntry::Fifo { meta, .. } => Some(meta),
            TestEntry::Whiteout(_) | TestEntry::Opaque(_) | TestEntry::Raw(_) => None,
        }
    }

    /// Sets the permission bits (also for raw entries).
    pub fn mode(mut self, mode: u32) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            r.mode = mode;
        } else if let Some(m) = self.meta_mut() {
            m.mode = mode;
        }
        self
    }

    /// Sets owner and group (also for raw entries).
    pub fn owner(mut self, uid: u64, gid: u64) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            (r.uid, r.gid) = (uid, gid);
        } else if let Some(m) = self.meta_mut() {
            (m.uid, m.gid) = (uid, gid);
        }
        self
    }

    /// Sets the modification time.
    pub fn mtime(mut self, secs: i64, nsec: u32) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            r.mtime = secs.max(0) as u64;
        } else if let Some(m) = self.meta_mut() {
            (m.mtime, m.mtime_nsec) = (secs, nsec);
        }
        self
    }

    /// Adds an extended attribute.
    pub fn xattr(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            r.pax
                .push((format!("SCHILY.xattr.{}", name.into()), value.into()));
        } else if let Some(m) = self.meta_mut() {
            m.xattrs.push((name.into(), value.into()));
        }
        self
    }

    /// Writes a long name as a PAX `path` record rather than a GNU long name.
    pub fn pax_names(mut self) -> TestEntry {
        if let Some(m) = self.meta_mut() {
            m.pax_names = true;
        }
        self
    }

    /// For raw entries: sets the link name.
    pub fn link_name(mut self, link: impl Into<Vec<u8>>) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            r.link_name = link.into();
        }
        self
    }

    /// For raw entries: sets the contents.
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> TestEntry {
        if let TestEntry::Raw(r) = &mut self {
            r.data = data.into();
        }
        self
    }
}

/// An image to write: layers of entries plus the config's execution settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    /// Layers, lowest first.
    pub layers: Vec<Vec<TestEntry>>,
    /// `config.Env`.
    pub env: Vec<String>,
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `config.WorkingDir`.
    pub working_dir: Option<String>,
    /// `config.User`.
    pub user: Option<String>,
    /// `architecture` (default `amd64`).
    pub architecture: String,
    /// `os` (default `linux`).
    pub os: String,
}

impl Default for TestImage {
    fn default() -> Self {
        TestImage {
            layers: Vec::new(),
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ],
            entrypoint: None,
            cmd: None,
            working_dir: None,
            user: None,
            architecture: "amd64".to_string(),
            os: "linux".to_string(),
        }
    }
}

impl TestImage {
    /// An image with these layers and default settings.
    pub fn new(layers: Vec<Vec<TestEntry>>) -> TestImage {
        TestImage {
            layers,
            ..TestImage::default()
        }
    }

    /// Sets `Cmd`.
    pub fn with_cmd(mut self, cmd: &[&str]) -> TestImage {
        self.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Sets `Entrypoint`.
    pub fn with_entrypoint(mut self, ep: &[&str]) -> TestImage {
        self.entrypoint = Some(ep.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Adds an `Env` entry (`KEY=VALUE`).
    pub fn with_env(mut self, kv: &str) -> TestImage {
        self.env.push(kv.to_string());
        self
    }

    /// Writes an OCI image layout to `dir` (created if needed; an existing
    /// layout keeps its other tags) tagged `tag`. Returns the manifest digest.
    pub fn write_oci_layout(
        &self,
        dir: &Path,
        tag: &str,
        compression: Compression,
    ) -> Result<crate::digest::Digest, TestImageError> {
        let built = self.build(compression)?;
        built.write_layout(dir, Some(tag))?;
        Ok(built.manifest_digest)
    }

    /// Writes an OCI archive (a tar of an OCI layout, as `skopeo copy ...
    /// oci-archive:` does) tagged `tag`. Returns the manifest digest.
    pub fn write_oci_archive(
        &self,
        file: &Path,
        tag: &str,
        compression: Compression,
    ) -> Result<crate::digest::Digest, TestImageError> {
        let built = self.build(compression)?;
        built.write_layout_archive(file, Some(tag))?;
        Ok(built.manifest_digest)
    }

    /// Writes a `docker save` archive in the classic format (uncompressed
    /// `<id>/layer.tar` layers) with `repo_tag` (e.g. `busybox:latest`) in
    /// `RepoTags`. Returns the config digest (the Docker image ID).
    pub fn write_docker_archive(
        &self,
        file: &Path,
        repo_tag: &str,
    ) -> Result<crate::digest::Digest, TestImageError> {
        let ids = write_docker_archive_images(file, &[(self, &[repo_tag])], DockerFormat::Legacy)?;
        Ok(ids.into_iter().next().expect("one image written"))
    }
}

/// A directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/minivm-PREFIX-<pid>-<n>`.
    pub fn new(prefix: &str) -> io::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "minivm-{prefix}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Read;

    /// Reads a layer back with the tar crate: path -> (type, uid, mtime, pax records, data).
    #[allow(clippy::type_complexity)]
    fn read_back(
        tar: &[u8],
    ) -> HashMap<
        Vec<u8>,
        (
            tar::EntryType,
            u64,
            Vec<(String, Vec<u8>)>,
            Vec<u8>,
            Option<Vec<u8>>,
        ),
    > {
        let mut a = tar::Archive::new(tar);
        let mut out = HashMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let pax = match e.pax_extensions().unwrap() {
                Some(p) => p
                    .map(|x| x.unwrap())
                    .map(|x| (x.key().unwrap().to_string(), x.value_bytes().to_vec()))
                    .collect(),
                None => Vec::new(),
            };
            let link = e.link_name_bytes().map(|l| l.to_vec());
            let (t, uid, path) = (
                e.header().entry_type(),
                e.header().uid().unwrap(),
                e.path_bytes().to_vec(),
            );
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, (t, uid, pax, data, link));
        }
        out
    }

    #[test]
    fn tricky_layers_read_back() {
        let image = tricky_image();
        let l0 = read_back(&write::layer_tar(&image.layers[0]).unwrap());
        let get = |p: &str| {
            l0.get(p.as_bytes())
                .unwrap_or_else(|| panic!("{p} missing"))
        };
        assert_eq!(get(&long_names::pax_file()).3, b"pax long name\n");
        assert_eq!(get(&long_names::gnu_file()).3, b"gnu long name\n");
        assert_eq!(
            get("long/link").4.as_deref(),
            Some(long_names::gnu_target().as_bytes())
        );
        assert_eq!(
            get("long/paxlink").4.as_deref(),
            Some(long_names::pax_target().as_bytes())
        );
        assert_eq!(get("owned-huge").1, 3_000_000);
        assert!(get("owned-huge")
            .2
            .contains(&("uid".to_string(), b"3000000".to_vec())));
        assert!(get("mtime-ns")
            .2
            .contains(&("mtime".to_string(), b"1234567890.123456789".to_vec())));
        let caps = &get("caps").2;
        assert!(caps.contains(&(
            "SCHILY.xattr.security.capability".to_string(),
            CAP_NET_BIND_SERVICE_XATTR.to_vec()
        )));
        assert!(caps.contains(&("SCHILY.xattr.user.test".to_string(), b"hello".to_vec())));
        assert_eq!(get("a/hl2").0, tar::EntryType::Link);
        assert_eq!(get("dev/null").0, tar::EntryType::Char);
        assert!(l0.contains_key(&b"unicode/latin1-\xe9"[..]));
        let l1 = read_back(&write::layer_tar(&image.layers[1]).unwrap());
        for p in ["a/.wh.gone", "opq/.wh..wh..opq", ".wh.d", "b/.wh.x"] {
            assert!(l1.contains_key(p.as_bytes()), "{p}");
        }
        let l2 = read_back(&write::layer_tar(&image.layers[2]).unwrap());
        assert!(l2.contains_key(&b"./dotslash"[..]));
    }

    #[test]
    fn hostile_entries_are_written_verbatim() {
        let l = read_back(&write::layer_tar(&hostile_image().layers[0]).unwrap());
        for p in [
            "../escape",
            "/abs-file",
            "a/../../b",
            "link-out/pwned",
            "a/.wh...",
        ] {
            assert!(
                l.contains_key(p.as_bytes()),
                "{p}: {:?}",
                l.keys()
                    .map(|k| String::from_utf8_lossy(k))
                    .collect::<Vec<_>>()
            );
        }
        assert_eq!(l[&b"hl-out"[..]].4.as_deref(), Some(&b"/etc/passwd"[..]));
    }

    #[test]
    fn expectations_cover_the_doc_table() {
        let e = tricky_expectations();
        assert!(e.len() >= 40);
        let paths: Vec<&[u8]> = e.iter().map(|(p, _)| p.as_slice()).collect();
        let mut dedup = paths.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), paths.len(), "duplicate paths in expectations");
    }

    #[test]
    fn whiteout_names() {
        assert_eq!(TestEntry::whiteout("a/b/c").tar_path(), b"a/b/.wh.c");
        assert_eq!(TestEntry::whiteout("top").tar_path(), b".wh.top");
        assert_eq!(TestEntry::opaque("a/b/").tar_path(), b"a/b/.wh..wh..opq");
    }

    #[test]
    fn builds_are_deterministic() {
        let a = tricky_image().build(Compression::Gzip).unwrap();
        let b = tricky_image().build(Compression::Gzip).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
    }

    #[test]
    fn temp_dirs_are_removed() {
        let p = {
            let t = TempDir::new("unit").unwrap();
            std::fs::write(t.path().join("f"), "x").unwrap();
            t.path().to_path_buf()
        };
        assert!(!p.exists());
    }
}
