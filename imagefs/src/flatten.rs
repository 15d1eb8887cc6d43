//! Flattening OCI layers (tar streams) into one [`Tree`], with OCI semantics:
//! `.wh.NAME` whiteouts and `.wh..wh..opq` opaque directories hide lower-layer
//! content only (an entry of the same layer always survives), later entries
//! replace earlier ones (file by directory and back), hardlinks share a node.
//!
//! File contents go straight to a [`DataSink`] (the filesystem writer) as the
//! tar streams by; when a later layer deletes or replaces a file, its data is
//! handed back with [`DataSink::free_data`]. The entries come checked from
//! [`crate::walk`] (which refuses `..`, absolute paths and the like); this
//! module applies them to the tree and refuses paths through a symlink of
//! the image. Nothing touches the host filesystem, so no path can escape;
//! errors name the layer and the entry.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use crate::tree::{DataId, Metadata, Node, NodeId, NodeKind, Tree};
use crate::walk::{
    show, walk_layer, At, Create, Device, DeviceKind, EntryCount, LayerOps, Meta, WalkError,
};

/// An error from a data sink, kept as-is for the caller to inspect.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Where file contents go.
pub trait DataSink {
    /// Stores exactly `len` bytes read from `r`.
    fn write_data(&mut self, r: &mut dyn Read, len: u64) -> Result<DataId, SinkError>;
    /// Releases data of a file that is no longer in the tree.
    fn free_data(&mut self, id: DataId);
}

/// Errors from flattening; they name the layer (its digest) and the entry.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    /// The tar stream or an entry breaks the layer rules (see [`WalkError`]).
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// The data sink failed (e.g. the disk is full).
    #[error("layer {layer}: {path:?}: {source}")]
    Data {
        layer: String,
        path: String,
        source: SinkError,
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

pub use crate::walk::DEFAULT_MAX_ENTRIES;

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
        let mut count = EntryCount {
            entries: self.stats.entries,
            max: self.max_entries,
        };
        let r = walk_layer(name, tar, &mut count, self);
        self.stats.entries = count.entries;
        r
    }

    /// Puts a new node at `parent/name`, replacing what was there.
    fn add(&mut self, parent: NodeId, name: &[u8], full: Vec<u8>, kind: NodeKind, meta: Meta) {
        self.unlink(parent, name);
        let id = self.tree.add(Node {
            kind,
            meta: metadata(meta),
        });
        self.refs.push(0);
        self.link(parent, name, id);
        self.created.insert(full);
    }

    fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.tree.children(dir).and_then(|c| c.get(name)).copied()
    }

    fn hardlink(
        &mut self,
        raw: &[u8],
        (target_path, target_raw): (&[Vec<u8>], &[u8]),
        parent: NodeId,
        name: &[u8],
        full: Vec<u8>,
    ) -> Result<(), FlattenError> {
        let layer = self.layer.clone();
        let err = |problem| WalkError::hardlink(&layer, raw, target_raw, problem);
        let (tname, tparents) = target_path.split_last().expect("never the root");
        let missing = "target not (yet) in the image";
        let tparent = self
            .parent_dir(raw, tparents, false)?
            .ok_or_else(|| err(missing))?;
        let target = self.child(tparent, tname).ok_or_else(|| err(missing))?;
        if matches!(self.tree.nodes[target].kind, NodeKind::Dir(_)) {
            return Err(err("target is a directory").into());
        }
        if self.child(parent, name) != Some(target) {
            // Link before unlinking: the old entry may hold the target's only other reference.
            self.refs[target] += 1;
            self.unlink(parent, name);
            self.refs[target] -= 1;
            self.link(parent, name, target);
        }
        self.created.insert(full);
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
        parents: &[Vec<u8>],
        create: bool,
    ) -> Result<Option<NodeId>, FlattenError> {
        let mut dir = self.tree.root;
        for (i, c) in parents.iter().enumerate() {
            let next = self.child(dir, c);
            dir = match next {
                Some(id) => match &self.tree.nodes[id].kind {
                    NodeKind::Dir(_) => id,
                    other => {
                        let symlink = matches!(other, NodeKind::Symlink(_));
                        let component = parents[..=i].join(&b'/');
                        return Err(
                            WalkError::blocked(&self.layer, raw_path, &component, symlink).into(),
                        );
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
}

impl LayerOps for Flattener<'_> {
    type Error = FlattenError;

    fn root(&mut self, _: &At<'_>, meta: Meta) -> Result<(), FlattenError> {
        self.tree.nodes[self.tree.root].meta = metadata(meta);
        Ok(())
    }

    fn opaque(&mut self, at: &At<'_>) -> Result<(), FlattenError> {
        let dir = self.parent_dir(at.raw, at.path, true)?;
        self.prune_lower(dir.expect("created when missing"), &at.full());
        Ok(())
    }

    fn whiteout(&mut self, at: &At<'_>) -> Result<(), FlattenError> {
        let (parents, name) = at.split();
        // Whiteouts only hide lower layers: this layer's own entry stays.
        if !self.created.contains(&at.full()) {
            if let Some(parent) = self.parent_dir(at.raw, parents, false)? {
                self.unlink(parent, name);
            }
        }
        Ok(())
    }

    fn create(&mut self, at: &At<'_>, what: Create<'_>) -> Result<(), FlattenError> {
        let (parents, name) = at.split();
        let (raw, full) = (at.raw, at.full());
        let parent = self
            .parent_dir(raw, parents, true)?
            .expect("created when missing");
        let (kind, meta) = match what {
            Create::Dir(meta) => {
                let existing = self.child(parent, name);
                if let Some(id) = existing {
                    if matches!(self.tree.nodes[id].kind, NodeKind::Dir(_)) {
                        // A directory over a directory merges: only its metadata changes.
                        self.tree.nodes[id].meta = metadata(meta);
                        self.created.insert(full);
                        return Ok(());
                    }
                }
                (NodeKind::Dir(BTreeMap::new()), meta)
            }
            Create::File { meta, size, data } => {
                // Unlink first: a replaced file's blocks can be reused for the new one.
                self.unlink(parent, name);
                let data = match size {
                    0 => None,
                    _ => Some(self.sink.write_data(data, size).map_err(|source| {
                        FlattenError::Data {
                            layer: self.layer.clone(),
                            path: show(raw),
                            source,
                        }
                    })?),
                };
                (NodeKind::File { size, data }, meta)
            }
            Create::Symlink { meta, target } => (NodeKind::Symlink(target), meta),
            Create::Hardlink { target, target_raw } => {
                return self.hardlink(raw, (&target, &target_raw), parent, name, full)
            }
            Create::Device { meta, dev } => (device_node(dev), meta),
        };
        self.add(parent, name, full, kind, meta);
        Ok(())
    }
}

/// The tree's node for a device or FIFO.
fn device_node(dev: Device) -> NodeKind {
    let Device { kind, major, minor } = dev;
    match kind {
        DeviceKind::Char => NodeKind::CharDev { major, minor },
        DeviceKind::Block => NodeKind::BlockDev { major, minor },
        DeviceKind::Fifo => NodeKind::Fifo,
    }
}

/// The tree's form of an entry's metadata.
fn metadata(m: Meta) -> Metadata {
    Metadata {
        perm: m.mode as u16,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
        mtime_nsec: m.nsec,
        xattrs: m.xattrs.into_iter().collect(),
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
