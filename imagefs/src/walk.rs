//! One layer's tar stream as a sequence of checked operations: the OCI layer
//! rules and the hostile-input checks, in one place, for both consumers (the
//! flattener, [`crate::flatten`], and the layer-store unpacker,
//! [`crate::layerstore`]).
//!
//! The walker decides what each entry *is*: `.wh.NAME` is a whiteout of
//! `NAME`, `.wh..wh..opq` makes its directory opaque, other `.wh..wh.*`
//! names are aufs metadata and skipped; paths are normalised (`./` and empty
//! components dropped) and absolute paths, `..`, NUL and over-long
//! components refused; PAX owners, times and `SCHILY.xattr.*` are read;
//! unsupported entry types and more entries than the limit are refused.
//! What needs the consumer's state (a path through a symlink, a hardlink
//! target not yet seen, whiteouts hiding lower layers only) stays with the
//! consumer, which reports it with the constructors of [`WalkError`].

use std::io::Read;

/// Default cap on tar entries per image.
pub const DEFAULT_MAX_ENTRIES: u64 = 4_000_000;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are aufs metadata (e.g. `.wh..wh.plnk`), not content.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Errors about a layer's tar stream or one of its entries; `layer` names
/// the layer (its digest), `path` the entry as the tar gives it.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The tar stream is corrupt or truncated, or its blob failed verification.
    #[error("layer {layer}: cannot read the tar stream: {source}")]
    Tar {
        layer: String,
        source: std::io::Error,
    },
    /// An entry path is absolute, contains `..`, or is otherwise unusable.
    #[error("layer {layer}: entry {path:?}: {problem}")]
    BadPath {
        layer: String,
        path: String,
        problem: &'static str,
    },
    /// An entry would be written through a symlink (of this or a lower layer).
    #[error("layer {layer}: entry {path:?} would be written through the symlink {symlink:?}")]
    ThroughSymlink {
        layer: String,
        path: String,
        symlink: String,
    },
    /// A path component is a file, not a directory.
    #[error("layer {layer}: entry {path:?}: {component:?} is not a directory")]
    NotADirectory {
        layer: String,
        path: String,
        component: String,
    },
    /// A hardlink whose target is missing, a directory, or outside the image.
    #[error("layer {layer}: hardlink {path:?} -> {target:?}: {problem}")]
    Hardlink {
        layer: String,
        path: String,
        target: String,
        problem: &'static str,
    },
    /// More entries than the limit (a tar bomb of tiny files).
    #[error("layer {layer}: more than {limit} entries")]
    TooManyEntries { layer: String, limit: u64 },
    /// An entry type minivm does not support (e.g. GNU sparse files).
    #[error("layer {layer}: entry {path:?}: unsupported tar entry type {kind}")]
    Unsupported {
        layer: String,
        path: String,
        kind: String,
    },
}

impl WalkError {
    /// The tar stream of `layer` could not be read.
    pub fn tar(layer: &str, source: std::io::Error) -> WalkError {
        WalkError::Tar {
            layer: layer.to_string(),
            source,
        }
    }

    /// Entry `path` is unusable.
    pub fn bad_path(layer: &str, path: &[u8], problem: &'static str) -> WalkError {
        WalkError::BadPath {
            layer: layer.to_string(),
            path: show(path),
            problem,
        }
    }

    /// Hardlink `path` -> `target` cannot be made.
    pub fn hardlink(layer: &str, path: &[u8], target: &[u8], problem: &'static str) -> WalkError {
        WalkError::Hardlink {
            layer: layer.to_string(),
            path: show(path),
            target: show(target),
            problem,
        }
    }

    /// Entry `path` cannot be applied: component `component` of a path is a
    /// symlink (`symlink`) or another non-directory.
    pub fn blocked(layer: &str, path: &[u8], component: &[u8], symlink: bool) -> WalkError {
        let (layer, path, component) = (layer.to_string(), show(path), show(component));
        if symlink {
            WalkError::ThroughSymlink {
                layer,
                path,
                symlink: component,
            }
        } else {
            WalkError::NotADirectory {
                layer,
                path,
                component,
            }
        }
    }
}

/// A byte string for messages.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Splits a tar path into components: `./` and empty components dropped;
/// absolute paths, `..`, NUL and components over 255 bytes refused.
pub fn normalize(path: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    if path.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            c if c.contains(&0) => return Err("NUL in path"),
            c if c.len() > 255 => return Err("a path component is longer than 255 bytes"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// Parses a PAX time, e.g. `1700000000.123456789` or `-1.5` (1.5 s before the epoch).
pub fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let ns: u32 = digits.parse().ok()?;
    if int.starts_with('-') && ns > 0 {
        // -1.5 is 2 seconds before the epoch plus 0.5 s.
        Some((secs - 1, 1_000_000_000 - ns))
    } else {
        Some((secs, ns))
    }
}

/// Owner, mode, time and xattrs of an entry, from its header and PAX records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch (may be negative).
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub nsec: u32,
    /// Extended attributes (`SCHILY.xattr.NAME`), each name once, the last
    /// record winning, all of them: the consumer drops what it reserves.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The kind of a device node or FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe (major and minor are 0).
    Fifo,
}

/// A device node or FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// Which kind.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

/// What an entry does to the tree, at its path.
enum Op<'e> {
    /// `./`: the root directory's metadata (the path is empty).
    Root(Meta),
    /// The directory at the path (the root when empty) hides the layers
    /// below (`.wh..wh..opq`).
    Opaque,
    /// The name at the path is deleted from the layers below (`.wh.NAME`).
    Whiteout,
    /// Something is put at the path (never the root), replacing what is there.
    Create(Create<'e>),
}

/// What an entry creates.
pub enum Create<'e> {
    /// A directory: created, or merged with a directory already there (only
    /// the metadata changes).
    Dir(Meta),
    /// A regular file of `size` bytes, read from `data`.
    File {
        /// Owner, mode, time, xattrs.
        meta: Meta,
        /// Length of the contents.
        size: u64,
        /// The contents (the tar stream; unread bytes are skipped).
        data: &'e mut dyn Read,
    },
    /// A symbolic link (target never empty; kept verbatim).
    Symlink {
        /// Owner, mode, time, xattrs.
        meta: Meta,
        /// The link's target.
        target: Vec<u8>,
    },
    /// A hardlink to an earlier entry (of this layer or a lower one).
    Hardlink {
        /// The target, normalised; never the root.
        target: Vec<Vec<u8>>,
        /// The target as the tar gives it, for messages.
        target_raw: Vec<u8>,
    },
    /// A device node or FIFO.
    Device {
        /// Owner, mode, time, xattrs.
        meta: Meta,
        /// Kind and number.
        dev: Device,
    },
}

/// One checked entry of a layer.
struct Entry<'e> {
    raw: Vec<u8>,
    path: Vec<Vec<u8>>,
    op: Op<'e>,
}

/// Where an operation applies.
#[derive(Debug, Clone, Copy)]
pub struct At<'e> {
    /// The layer, for messages.
    pub layer: &'e str,
    /// The entry's path as the tar gives it, for messages.
    pub raw: &'e [u8],
    /// The normalised path (empty: the root).
    pub path: &'e [Vec<u8>],
}

impl<'e> At<'e> {
    /// The path joined by `/` (empty for the root).
    pub fn full(&self) -> Vec<u8> {
        self.path.join(&b'/')
    }

    /// The parent directory's components and the last name; only for
    /// [`LayerOps::whiteout`] and [`LayerOps::create`], never the root.
    pub fn split(&self) -> (&'e [Vec<u8>], &'e [u8]) {
        let (name, parents) = self.path.split_last().expect("never the root");
        (parents, name)
    }
}

/// What a layer's operations are applied to: the flattener's tree or the
/// layer store's directory. Called in the order of the tar's entries.
pub trait LayerOps {
    /// The consumer's error, which carries the walker's.
    type Error: From<WalkError>;
    /// `./`: the root directory's metadata.
    fn root(&mut self, at: &At<'_>, meta: Meta) -> Result<(), Self::Error>;
    /// The directory at `at.path` (the root when empty) hides the layers
    /// below (`.wh..wh..opq`); it is made when missing.
    fn opaque(&mut self, at: &At<'_>) -> Result<(), Self::Error>;
    /// The name at `at.path` is deleted from the layers below (`.wh.NAME`).
    fn whiteout(&mut self, at: &At<'_>) -> Result<(), Self::Error>;
    /// Something is put at `at.path`, replacing what is there.
    fn create(&mut self, at: &At<'_>, what: Create<'_>) -> Result<(), Self::Error>;
    /// Called after each tar entry (for progress reports).
    fn entry_done(&mut self) {}
}

/// Counts entries against a cap; one counter may span several layers.
#[derive(Debug, Clone, Copy)]
pub struct EntryCount {
    /// Entries read so far.
    pub entries: u64,
    /// The cap.
    pub max: u64,
}

/// Reads one layer's (decompressed) tar stream up to its end-of-archive
/// marker and applies each entry, checked, to `ops`, in order.
pub fn walk_layer<O: LayerOps + ?Sized>(
    layer: &str,
    tar: &mut dyn Read,
    count: &mut EntryCount,
    ops: &mut O,
) -> Result<(), O::Error> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(|e| WalkError::tar(layer, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| WalkError::tar(layer, e))?;
        count.entries += 1;
        if count.entries > count.max {
            return Err(WalkError::TooManyEntries {
                layer: layer.to_string(),
                limit: count.max,
            }
            .into());
        }
        if let Some(Entry { raw, path, op }) = check(layer, &mut entry)? {
            let at = At {
                layer,
                raw: &raw,
                path: &path,
            };
            match op {
                Op::Root(meta) => ops.root(&at, meta)?,
                Op::Opaque => ops.opaque(&at)?,
                Op::Whiteout => ops.whiteout(&at)?,
                Op::Create(what) => ops.create(&at, what)?,
            }
        }
        ops.entry_done();
    }
    Ok(())
}

/// Turns one tar entry into its operation; None for entries without one.
fn check<'e>(
    layer: &'e str,
    entry: &'e mut tar::Entry<'_, &mut dyn Read>,
) -> Result<Option<Entry<'e>>, WalkError> {
    use tar::EntryType as T;
    let raw = entry.path_bytes().into_owned();
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
    ) {
        return Ok(None);
    }
    let bad = |problem| WalkError::bad_path(layer, &raw, problem);
    let mut path = normalize(&raw).map_err(bad)?;
    let Some(name) = path.last() else {
        // "./": the root directory's own metadata.
        if kind != T::Directory {
            return Err(bad("a non-directory entry for the root"));
        }
        let meta = metadata(layer, &raw, entry)?;
        return Ok(Some(Entry {
            raw,
            path,
            op: Op::Root(meta),
        }));
    };
    if name.starts_with(WHITEOUT_PREFIX) {
        let op = if name == OPAQUE_MARKER {
            path.pop();
            Op::Opaque
        } else if name.starts_with(AUFS_META_PREFIX) {
            return Ok(None);
        } else {
            let target = name[WHITEOUT_PREFIX.len()..].to_vec();
            if target.is_empty() || target == b"." || target == b".." {
                return Err(bad("whiteout of an empty, '.' or '..' name"));
            }
            *path.last_mut().expect("not the root") = target;
            Op::Whiteout
        };
        return Ok(Some(Entry { raw, path, op }));
    }
    let meta = metadata(layer, &raw, entry)?;
    let link = || {
        entry
            .link_name_bytes()
            .map(|c| c.into_owned())
            .unwrap_or_default()
    };
    let h = entry.header();
    let device = || {
        (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        )
    };
    let op = match kind {
        T::Directory => Create::Dir(meta),
        T::Symlink => {
            let target = link();
            if target.is_empty() {
                return Err(bad("symlink with an empty target"));
            }
            Create::Symlink { meta, target }
        }
        T::Link => {
            let target_raw = link();
            let err = |problem| WalkError::hardlink(layer, &raw, &target_raw, problem);
            let target = normalize(&target_raw).map_err(|_| err("target is outside the image"))?;
            if target.is_empty() {
                return Err(err("target is the root directory"));
            }
            Create::Hardlink { target, target_raw }
        }
        T::Char | T::Block | T::Fifo => {
            let (major, minor) = device();
            let kind = match kind {
                T::Char => DeviceKind::Char,
                T::Block => DeviceKind::Block,
                _ => DeviceKind::Fifo,
            };
            let dev = Device { kind, major, minor };
            Create::Device { meta, dev }
        }
        T::Regular | T::Continuous => Create::File {
            meta,
            size: entry.size(),
            data: entry,
        },
        other => {
            return Err(WalkError::Unsupported {
                layer: layer.to_string(),
                path: show(&raw),
                kind: format!("{other:?}"),
            })
        }
    };
    Ok(Some(Entry {
        raw,
        path,
        op: Op::Create(op),
    }))
}

/// The entry's owner, mode, time and xattrs: the header's, then PAX records'.
fn metadata(
    layer: &str,
    raw: &[u8],
    entry: &mut tar::Entry<'_, &mut dyn Read>,
) -> Result<Meta, WalkError> {
    let h = entry.header();
    let bad = |problem| WalkError::bad_path(layer, raw, problem);
    let mut meta = Meta {
        mode: h.mode().map_err(|_| bad("unreadable mode"))? & 0o7777,
        uid: u32::try_from(h.uid().map_err(|_| bad("unreadable uid"))?)
            .map_err(|_| bad("uid out of range"))?,
        gid: u32::try_from(h.gid().map_err(|_| bad("unreadable gid"))?)
            .map_err(|_| bad("gid out of range"))?,
        mtime: h.mtime().map(|t| t as i64).unwrap_or(0),
        nsec: 0,
        xattrs: Vec::new(),
    };
    let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| WalkError::tar(layer, e))?
    else {
        return Ok(meta);
    };
    for ext in exts {
        let ext = ext.map_err(|e| WalkError::tar(layer, e))?;
        let (key, value) = (ext.key_bytes(), ext.value_bytes());
        let num = || std::str::from_utf8(value).ok()?.parse::<u32>().ok();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            meta.xattrs.retain(|(n, _)| n != name);
            meta.xattrs.push((name.to_vec(), value.to_vec()));
        } else if key == b"uid" {
            meta.uid = num().ok_or_else(|| bad("bad PAX uid"))?;
        } else if key == b"gid" {
            meta.gid = num().ok_or_else(|| bad("bad PAX gid"))?;
        } else if key == b"mtime" {
            (meta.mtime, meta.nsec) = parse_pax_time(value).ok_or_else(|| bad("bad PAX mtime"))?;
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }

    /// Records each operation as a line.
    #[derive(Default)]
    struct Record(Vec<String>, u64);

    impl LayerOps for Record {
        type Error = WalkError;
        fn root(&mut self, _: &At<'_>, m: Meta) -> Result<(), WalkError> {
            self.0.push(format!("root {:o}", m.mode));
            Ok(())
        }
        fn opaque(&mut self, at: &At<'_>) -> Result<(), WalkError> {
            self.0.push(format!("opaque {:?}", show(&at.full())));
            Ok(())
        }
        fn whiteout(&mut self, at: &At<'_>) -> Result<(), WalkError> {
            self.0.push(format!("whiteout {:?}", show(&at.full())));
            Ok(())
        }
        fn create(&mut self, at: &At<'_>, what: Create<'_>) -> Result<(), WalkError> {
            let what = match what {
                Create::Dir(m) => format!("dir {:o}", m.mode),
                Create::File { size, data, .. } => {
                    let mut v = Vec::new();
                    data.read_to_end(&mut v).unwrap();
                    format!("file {size} {}", show(&v))
                }
                Create::Symlink { target, .. } => format!("symlink {}", show(&target)),
                Create::Hardlink { target, .. } => {
                    format!("hardlink {}", show(&target.join(&b'/')))
                }
                Create::Device { dev, .. } => format!("{:?} {}:{}", dev.kind, dev.major, dev.minor),
            };
            self.0.push(format!("{} {what}", show(&at.full())));
            Ok(())
        }
        fn entry_done(&mut self) {
            self.1 += 1;
        }
    }

    fn header(kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o750);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h
    }

    fn entry(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, data: &[u8]) {
        let mut h = header(kind);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn walk(tar: &[u8], max: u64) -> Result<Record, WalkError> {
        let mut r = Record::default();
        let mut count = EntryCount { entries: 0, max };
        walk_layer("L", &mut &tar[..], &mut count, &mut r)?;
        assert_eq!(count.entries, r.1);
        Ok(r)
    }

    #[test]
    fn entries_become_operations() {
        use tar::EntryType as T;
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, "./", T::Directory, b"");
        entry(&mut b, "./a//b/", T::Directory, b"");
        entry(&mut b, "a/b/f", T::Regular, b"xy");
        entry(&mut b, "a/.wh.gone", T::Regular, b"");
        entry(&mut b, "a/b/.wh..wh..opq", T::Regular, b"");
        entry(&mut b, ".wh..wh..opq", T::Regular, b"");
        entry(&mut b, "a/.wh..wh.plnk", T::Regular, b"");
        entry(&mut b, "p", T::Fifo, b"");
        b.append_link(&mut header(T::Symlink), "s", "a/b/f")
            .unwrap();
        b.append_link(&mut header(T::Link), "h", "./a/b/f").unwrap();
        let tar = b.into_inner().unwrap();
        let r = walk(&tar, 100).unwrap();
        assert_eq!(
            r.0,
            [
                "root 750",
                "a/b dir 750",
                "a/b/f file 2 xy",
                "whiteout \"a/gone\"",
                "opaque \"a/b\"",
                "opaque \"\"",
                "p Fifo 0:0",
                "s symlink a/b/f",
                "h hardlink a/b/f",
            ]
        );
        assert!(matches!(
            walk(&tar, 3),
            Err(WalkError::TooManyEntries { limit: 3, .. })
        ));
    }

    #[test]
    fn hostile_entries_are_refused() {
        use tar::EntryType as T;
        for (path, kind, want) in [
            ("/abs", T::Regular, "absolute path"),
            ("a/../../x", T::Regular, "'..'"),
            ("./", T::Regular, "non-directory entry for the root"),
            ("a/.wh...", T::Regular, "'..' name"),
            ("s", T::Symlink, "empty target"),
            ("g", T::new(b'Z'), "unsupported tar entry type"),
        ] {
            let mut h = header(kind);
            // set_path refuses what a hostile tar holds: write the name raw.
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            let mut b = tar::Builder::new(Vec::new());
            b.append(&h, &b""[..]).unwrap();
            let err = walk(&b.into_inner().unwrap(), 100).err().expect(path);
            let msg = err.to_string();
            assert!(
                msg.contains(want) && msg.contains("layer L"),
                "{path}: {msg}"
            );
        }
    }
}
