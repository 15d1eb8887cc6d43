//! Flattening OCI layers (tar streams) into one [`Tree`], with OCI semantics:
//! `.wh.NAME` whiteouts and `.wh..wh..opq` opaque directories hide lower-layer
//! content only (an entry of the same layer always survives), later entries
//! replace earlier ones (file by directory and back), hardlinks share a node.
//!
//! File contents go straight to a [`DataSink`] (the filesystem writer) as the
//! tar streams by; when a later layer deletes or replaces a file, its data is
//! handed back with [`DataSink::free_data`]. Nothing touches the host
//! filesystem, so hostile paths (`..`, absolute, through symlinks) cannot
//! escape: they are refused with an error naming the layer and the entry.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use crate::tree::{DataId, Metadata, Node, NodeId, NodeKind, Tree};

/// An error from a data sink, kept as-is for the caller to inspect.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Where file contents go.
pub trait DataSink {
    /// Stores exactly `len` bytes read from `r`.
    fn write_data(&mut self, r: &mut dyn Read, len: u64) -> Result<DataId, SinkError>;
    /// Releases data of a file that is no longer in the tree.
    fn free_data(&mut self, id: DataId);
}

/// Errors from flattening; `layer` names the layer (its digest).
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
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
    /// An entry would be written through a symlink of the image.
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
    /// The data sink failed (e.g. the disk is full).
    #[error("layer {layer}: {path:?}: {source}")]
    Data {
        layer: String,
        path: String,
        source: SinkError,
    },
    /// An entry type minivm does not support (e.g. GNU sparse files).
    #[error("layer {layer}: entry {path:?}: unsupported tar entry type {kind}")]
    Unsupported {
        layer: String,
        path: String,
        kind: String,
    },
}

impl FlattenError {
    /// The data sink's error, if that is what failed.
    pub fn sink_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            FlattenError::Data { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// Counts of what the merged tree holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlattenStats {
    /// Tar entries read, all layers.
    pub entries: u64,
}

/// Default cap on tar entries per image.
pub const DEFAULT_MAX_ENTRIES: u64 = 4_000_000;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are aufs metadata (e.g. `.wh..wh.plnk`), not content.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Applies layers in order onto one tree.
pub struct Flattener<'s> {
    tree: Tree,
    /// Directory entries naming each node; 0 = gone.
    refs: Vec<u32>,
    sink: &'s mut dyn DataSink,
    /// Paths (joined by '/') created by the layer being applied.
    created: HashSet<Vec<u8>>,
    layer: String,
    stats: FlattenStats,
    max_entries: u64,
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Splits a tar path into components: `./` and empty components dropped;
/// absolute paths and `..` refused.
pub fn normalize(path: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
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
            c => out.push(c),
        }
    }
    Ok(out)
}

impl<'s> Flattener<'s> {
    /// Starts from an empty root directory (mode 0755, owned by root).
    pub fn new(sink: &'s mut dyn DataSink) -> Self {
        Flattener {
            tree: Tree::new(),
            refs: vec![1],
            sink,
            created: HashSet::new(),
            layer: String::new(),
            stats: FlattenStats::default(),
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }

    /// Caps the number of tar entries over all layers.
    pub fn with_max_entries(mut self, max: u64) -> Self {
        self.max_entries = max;
        self
    }

    /// The merged tree and statistics.
    pub fn finish(self) -> (Tree, FlattenStats) {
        (self.tree, self.stats)
    }

    /// Applies one layer's (decompressed) tar stream; `name` is used in errors.
    pub fn apply_layer(&mut self, name: &str, tar: &mut dyn Read) -> Result<(), FlattenError> {
        self.layer = name.to_string();
        self.created.clear();
        let mut archive = tar::Archive::new(tar);
        let entries = archive.entries().map_err(|source| self.tar_err(source))?;
        for entry in entries {
            let mut entry = entry.map_err(|source| self.tar_err(source))?;
            self.stats.entries += 1;
            if self.stats.entries > self.max_entries {
                return Err(FlattenError::TooManyEntries {
                    layer: self.layer.clone(),
                    limit: self.max_entries,
                });
            }
            self.apply_entry(&mut entry)?;
        }
        Ok(())
    }

    fn tar_err(&self, source: std::io::Error) -> FlattenError {
        FlattenError::Tar {
            layer: self.layer.clone(),
            source,
        }
    }

    fn bad_path(&self, path: &[u8], problem: &'static str) -> FlattenError {
        FlattenError::BadPath {
            layer: self.layer.clone(),
            path: show(path),
            problem,
        }
    }

    fn apply_entry(
        &mut self,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
    ) -> Result<(), FlattenError> {
        use tar::EntryType as T;
        let raw_path = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let comps = normalize(&raw_path).map_err(|p| self.bad_path(&raw_path, p))?;
        let Some((&name, parents)) = comps.split_last() else {
            // "./": the root directory's own metadata.
            if kind == T::Directory {
                self.tree.nodes[self.tree.root].meta = self.metadata(entry)?;
                return Ok(());
            }
            return Err(self.bad_path(&raw_path, "a non-directory entry for the root"));
        };
        let full = comps.join(&b'/');

        if name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&raw_path, parents, name);
        }

        let meta = self.metadata(entry)?;
        let parent = self
            .parent_dir(&raw_path, parents, true)?
            .expect("created when missing");
        let node_kind = match kind {
            T::Directory => {
                let existing = self
                    .tree
                    .children(parent)
                    .and_then(|c| c.get(name))
                    .copied();
                if let Some(id) = existing {
                    if matches!(self.tree.nodes[id].kind, NodeKind::Dir(_)) {
                        // A directory over a directory merges: only its metadata changes.
                        self.tree.nodes[id].meta = meta;
                        self.created.insert(full);
                        return Ok(());
                    }
                }
                NodeKind::Dir(BTreeMap::new())
            }
            T::Regular | T::Continuous => {
                let size = entry.size();
                // Unlink first: a replaced file's blocks can be reused for the new one.
                self.unlink(parent, name);
                let data = if size == 0 {
                    None
                } else {
                    let id =
                        self.sink
                            .write_data(entry, size)
                            .map_err(|source| FlattenError::Data {
                                layer: self.layer.clone(),
                                path: show(&raw_path),
                                source,
                            })?;
                    Some(id)
                };
                NodeKind::File { size, data }
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(self.bad_path(&raw_path, "symlink with an empty target"));
                }
                NodeKind::Symlink(target)
            }
            T::Link => return self.hardlink(entry, &raw_path, parent, name, full),
            T::Char | T::Block => {
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                if kind == T::Char {
                    NodeKind::CharDev { major, minor }
                } else {
                    NodeKind::BlockDev { major, minor }
                }
            }
            T::Fifo => NodeKind::Fifo,
            other => {
                return Err(FlattenError::Unsupported {
                    layer: self.layer.clone(),
                    path: show(&raw_path),
                    kind: format!("{other:?}"),
                })
            }
        };
        self.unlink(parent, name);
        let id = self.tree.add(Node {
            kind: node_kind,
            meta,
        });
        self.refs.push(0);
        self.link(parent, name, id);
        self.created.insert(full);
        Ok(())
    }

    fn hardlink(
        &mut self,
        entry: &tar::Entry<'_, &mut dyn Read>,
        raw_path: &[u8],
        parent: NodeId,
        name: &[u8],
        full: Vec<u8>,
    ) -> Result<(), FlattenError> {
        let target_raw = entry
            .link_name_bytes()
            .map(|c| c.into_owned())
            .unwrap_or_default();
        let layer = self.layer.clone();
        let err = |problem| FlattenError::Hardlink {
            layer: layer.clone(),
            path: show(raw_path),
            target: show(&target_raw),
            problem,
        };
        let target_comps =
            normalize(&target_raw).map_err(|_| err("target is outside the image"))?;
        let Some((&tname, tparents)) = target_comps.split_last() else {
            return Err(err("target is the root directory"));
        };
        let tparent = self
            .parent_dir(&target_raw, tparents, false)?
            .ok_or_else(|| err("target not (yet) in the image"))?;
        let target = self
            .tree
            .children(tparent)
            .and_then(|c| c.get(tname))
            .copied()
            .ok_or_else(|| err("target not (yet) in the image"))?;
        if matches!(self.tree.nodes[target].kind, NodeKind::Dir(_)) {
            return Err(err("target is a directory"));
        }
        let existing = self
            .tree
            .children(parent)
            .and_then(|c| c.get(name))
            .copied();
        if existing != Some(target) {
            // Link before unlinking: the old entry may hold the target's only other reference.
            self.refs[target] += 1;
            self.unlink(parent, name);
            self.refs[target] -= 1;
            self.link(parent, name, target);
        }
        self.created.insert(full);
        Ok(())
    }

    fn whiteout(
        &mut self,
        raw_path: &[u8],
        parents: &[&[u8]],
        name: &[u8],
    ) -> Result<(), FlattenError> {
        if name == OPAQUE_MARKER {
            let dir = self
                .parent_dir(raw_path, parents, true)?
                .expect("created when missing");
            let prefix = parents.join(&b'/');
            self.prune_lower(dir, &prefix);
            return Ok(());
        }
        if name.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(self.bad_path(raw_path, "whiteout of an empty, '.' or '..' name"));
        }
        let mut full = parents.join(&b'/');
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(target);
        // Whiteouts only hide lower layers: this layer's own entry stays.
        if self.created.contains(&full) {
            return Ok(());
        }
        if let Some(parent) = self.parent_dir(raw_path, parents, false)? {
            self.unlink(parent, target);
        }
        Ok(())
    }

    /// Removes everything under `dir` that this layer did not create.
    fn prune_lower(&mut self, dir: NodeId, prefix: &[u8]) {
        let children: Vec<(Vec<u8>, NodeId)> = self
            .tree
            .children(dir)
            .map(|c| c.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        for (name, id) in children {
            let mut full = prefix.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(&name);
            if !self.created.contains(&full) {
                self.unlink(dir, &name);
            } else if matches!(self.tree.nodes[id].kind, NodeKind::Dir(_)) {
                self.prune_lower(id, &full);
            }
        }
    }

    /// Finds (or, with `create`, makes) the directory holding an entry.
    /// Returns None when it does not exist and `create` is false.
    fn parent_dir(
        &mut self,
        raw_path: &[u8],
        parents: &[&[u8]],
        create: bool,
    ) -> Result<Option<NodeId>, FlattenError> {
        let mut dir = self.tree.root;
        for (i, &c) in parents.iter().enumerate() {
            let next = self.tree.children(dir).and_then(|ch| ch.get(c)).copied();
            dir = match next {
                Some(id) => match &self.tree.nodes[id].kind {
                    NodeKind::Dir(_) => id,
                    NodeKind::Symlink(_) => {
                        return Err(FlattenError::ThroughSymlink {
                            layer: self.layer.clone(),
                            path: show(raw_path),
                            symlink: show(&parents[..=i].join(&b'/')),
                        })
                    }
                    _ => {
                        return Err(FlattenError::NotADirectory {
                            layer: self.layer.clone(),
                            path: show(raw_path),
                            component: show(&parents[..=i].join(&b'/')),
                        })
                    }
                },
                None if create => {
                    // Parents missing from the tar are made as docker does: 0755 root.
                    let meta = Metadata {
                        perm: 0o755,
                        ..Default::default()
                    };
                    let id = self.tree.add(Node {
                        kind: NodeKind::Dir(BTreeMap::new()),
                        meta,
                    });
                    self.refs.push(0);
                    self.link(dir, c, id);
                    self.created.insert(parents[..=i].join(&b'/'));
                    id
                }
                None => return Ok(None),
            };
        }
        Ok(Some(dir))
    }

    fn link(&mut self, dir: NodeId, name: &[u8], id: NodeId) {
        if let Some(c) = self.tree.children_mut(dir) {
            c.insert(name.to_vec(), id);
            self.refs[id] += 1;
        }
    }

    fn unlink(&mut self, dir: NodeId, name: &[u8]) {
        let removed = self.tree.children_mut(dir).and_then(|c| c.remove(name));
        if let Some(id) = removed {
            self.release(id);
        }
    }

    /// Drops one reference; a node without references frees its data and children.
    fn release(&mut self, id: NodeId) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            self.refs[id] -= 1;
            if self.refs[id] > 0 {
                continue;
            }
            match &mut self.tree.nodes[id].kind {
                NodeKind::File { data, .. } => {
                    if let Some(d) = data.take() {
                        self.sink.free_data(d);
                    }
                }
                NodeKind::Dir(children) => stack.extend(std::mem::take(children).into_values()),
                _ => {}
            }
        }
    }

    fn metadata(
        &self,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
    ) -> Result<Metadata, FlattenError> {
        let h = entry.header();
        let path = entry.path_bytes().into_owned();
        let bad = |what: &'static str| self.bad_path(&path, what);
        let mut meta = Metadata {
            perm: (h.mode().map_err(|_| bad("unreadable mode"))? & 0o7777) as u16,
            uid: u32::try_from(h.uid().map_err(|_| bad("unreadable uid"))?)
                .map_err(|_| bad("uid out of range"))?,
            gid: u32::try_from(h.gid().map_err(|_| bad("unreadable gid"))?)
                .map_err(|_| bad("gid out of range"))?,
            mtime: h.mtime().map(|t| t as i64).unwrap_or(0),
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
        };
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|source| self.tar_err(source))?
        {
            for ext in exts {
                let ext = ext.map_err(|source| self.tar_err(source))?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs.insert(name.to_vec(), value.to_vec());
                } else if key == b"uid" {
                    meta.uid = parse_num(value).ok_or_else(|| bad("bad PAX uid"))?;
                } else if key == b"gid" {
                    meta.gid = parse_num(value).ok_or_else(|| bad("bad PAX gid"))?;
                } else if key == b"mtime" {
                    let (s, ns) = parse_pax_time(value).ok_or_else(|| bad("bad PAX mtime"))?;
                    meta.mtime = s;
                    meta.mtime_nsec = ns;
                }
            }
        }
        Ok(meta)
    }
}

fn parse_num(v: &[u8]) -> Option<u32> {
    std::str::from_utf8(v).ok()?.parse().ok()
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

/// A sink that keeps nothing: for sizing an image before writing it.
#[derive(Debug, Default)]
pub struct CountingSink {
    sizes: BTreeMap<u64, u64>,
    next: u64,
    /// Bytes of live file data.
    pub live_bytes: u64,
    /// Live data rounded up to 4 KiB blocks.
    pub live_blocks_bytes: u64,
}

impl DataSink for CountingSink {
    fn write_data(&mut self, _r: &mut dyn Read, len: u64) -> Result<DataId, SinkError> {
        // The tar reader skips unread data itself, still verifying the blob.
        self.next += 1;
        self.sizes.insert(self.next, len);
        self.live_bytes += len;
        self.live_blocks_bytes += len.div_ceil(4096) * 4096;
        Ok(DataId(self.next))
    }

    fn free_data(&mut self, id: DataId) {
        if let Some(len) = self.sizes.remove(&id.0) {
            self.live_bytes -= len;
            self.live_blocks_bytes -= len.div_ceil(4096) * 4096;
        }
    }
}

#[cfg(test)]
#[path = "flatten_tests.rs"]
mod tests;
