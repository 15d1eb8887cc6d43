//! The filesystem tree an image flattens into: an arena of nodes, directories
//! mapping names to node ids. Hardlinks are several directory entries naming
//! one node. File contents are not held here: they live in the output
//! filesystem already (see [`DataId`]), written while the layers streamed by.

use std::collections::BTreeMap;

/// Index of a node in [`Tree::nodes`].
pub type NodeId = usize;

/// Opaque handle to file contents already written by the filesystem writer
/// (e.g. [`crate::ext4::Ext4Builder::write_data`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataId(pub u64);

/// Ownership, permissions, times and extended attributes of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`); no type bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch (may be negative).
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Extended attributes, full names (`user.x`, `security.capability`, ...), sorted by name.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory: entry name -> node. Names are single components, never `.`/`..`, no `/` or NUL.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// A regular file of `size` bytes; `data` is None when empty.
    File { size: u64, data: Option<DataId> },
    /// A symbolic link (target stored verbatim, never followed).
    Symlink(Vec<u8>),
    /// Character device.
    CharDev { major: u32, minor: u32 },
    /// Block device.
    BlockDev { major: u32, minor: u32 },
    /// Named pipe.
    Fifo,
}

/// One inode-to-be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Type and type-specific contents.
    pub kind: NodeKind,
    /// Metadata.
    pub meta: Metadata,
}

/// The whole tree. Nodes that are no longer reachable from the root (deleted
/// by a later layer) stay in the arena and must be ignored by writers.
#[derive(Debug, Clone)]
pub struct Tree {
    /// All nodes ever created.
    pub nodes: Vec<Node>,
    /// The root directory.
    pub root: NodeId,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// A tree with an empty root directory owned by root, mode 0755.
    pub fn new() -> Self {
        let root = Node {
            kind: NodeKind::Dir(BTreeMap::new()),
            meta: Metadata {
                perm: 0o755,
                ..Default::default()
            },
        };
        Tree {
            nodes: vec![root],
            root: 0,
        }
    }

    /// Adds a node (not yet linked anywhere) and returns its id.
    pub fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The entries of directory `dir` (None if it is not a directory).
    pub fn children(&self, dir: NodeId) -> Option<&BTreeMap<Vec<u8>, NodeId>> {
        match &self.nodes.get(dir)?.kind {
            NodeKind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// Mutable entries of directory `dir`.
    pub fn children_mut(&mut self, dir: NodeId) -> Option<&mut BTreeMap<Vec<u8>, NodeId>> {
        match &mut self.nodes.get_mut(dir)?.kind {
            NodeKind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// Reachable nodes in depth-first order (each once, even if hardlinked),
    /// with the number of directory entries naming each (the root counts one).
    pub fn reachable(&self) -> Vec<(NodeId, u32)> {
        let mut refs: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut order = Vec::new();
        let mut stack = vec![self.root];
        refs.insert(self.root, 1);
        order.push(self.root);
        while let Some(d) = stack.pop() {
            if let Some(children) = self.children(d) {
                for &c in children.values() {
                    let n = refs.entry(c).or_insert(0);
                    *n += 1;
                    if *n == 1 {
                        order.push(c);
                        if matches!(self.nodes[c].kind, NodeKind::Dir(_)) {
                            stack.push(c);
                        }
                    }
                }
            }
        }
        order.into_iter().map(|id| (id, refs[&id])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachable_counts_hardlinks_and_skips_orphans() {
        let mut t = Tree::new();
        let f = t.add(Node {
            kind: NodeKind::File {
                size: 0,
                data: None,
            },
            meta: Metadata::default(),
        });
        let d = t.add(Node {
            kind: NodeKind::Dir(BTreeMap::new()),
            meta: Metadata::default(),
        });
        let orphan = t.add(Node {
            kind: NodeKind::Fifo,
            meta: Metadata::default(),
        });
        t.children_mut(t.root).unwrap().insert(b"a".to_vec(), f);
        t.children_mut(t.root).unwrap().insert(b"d".to_vec(), d);
        t.children_mut(d).unwrap().insert(b"b".to_vec(), f);
        let r = t.reachable();
        assert_eq!(r.len(), 3);
        assert!(r.contains(&(f, 2)));
        assert!(r.contains(&(d, 1)));
        assert!(!r.iter().any(|(id, _)| *id == orphan));
    }
}
