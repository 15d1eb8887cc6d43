//! The node tree: the files and directories of the merged view the guest
//! holds references to, their node ids and the layer references they keep.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;

use fuse_backend_rs::abi::fuse_abi::stat64;

use super::refs::{Real, RealRef};
use crate::virtio::fs::guard::errno;

/// The root's node id.
pub(super) const ROOT: u64 = 1;
/// Host inode numbers below this become node ids directly (with the host
/// device's index above them).
pub(super) const INO_BITS: u32 = 48;
/// Node ids handed out when the host's number cannot be used.
const FALLBACK_IDS: u64 = 1 << 55;
/// Prefix of the upper's temporary copy-up names, hidden from the guest.
pub(super) const COPYUP_PREFIX: &[u8] = b".minivm-copyup.";

/// A file or directory of the merged tree the guest holds a reference to.
#[derive(Debug)]
pub(super) struct Node {
    /// Guest references (lookups not yet forgotten).
    pub lookups: u64,
    /// Names the guest reached it by: (parent node, name).
    pub names: Vec<(u64, CString)>,
    /// Top-most first; one for a non-directory, each merged one for a
    /// directory. The node holds one layer reference on each.
    pub reals: Vec<Real>,
    /// Reals a copy-up replaced, still referenced: open files may use them.
    pub retired: Vec<Real>,
    /// (host device, host inode) of `reals[0]`.
    pub key: (u64, u64),
    pub is_dir: bool,
}

#[derive(Debug)]
pub(super) struct Tree {
    pub nodes: HashMap<u64, Node>,
    pub by_key: HashMap<(u64, u64), u64>,
    /// Host devices seen, for the high bits of node ids.
    devs: Vec<u64>,
    next_fallback: u64,
    next_tmp: u64,
}

/// One entry of a merged directory listing.
#[derive(Debug, Clone)]
pub(super) struct DirItem {
    pub name: CString,
    pub type_: u32,
    pub ino: u64,
}

pub(super) fn is_dir(st: &stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

impl Tree {
    /// A tree holding only the root, whose layer directories are `reals`
    /// and whose top-most one is the host's `key`.
    pub(super) fn new(reals: Vec<Real>, key: (u64, u64)) -> Tree {
        let mut t = Tree {
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            devs: Vec::new(),
            next_fallback: FALLBACK_IDS,
            next_tmp: 0,
        };
        t.by_key.insert(key, ROOT);
        t.nodes.insert(
            ROOT,
            Node {
                lookups: 1,
                names: Vec::new(),
                reals,
                retired: Vec::new(),
                key,
                is_dir: true,
            },
        );
        t
    }

    pub(super) fn dev_index(&mut self, dev: u64) -> u64 {
        match self.devs.iter().position(|d| *d == dev) {
            Some(i) => i as u64,
            None => {
                self.devs.push(dev);
                (self.devs.len() - 1) as u64
            }
        }
    }

    /// The node id a file with host identity `key` should get.
    fn preferred_id(&mut self, key: (u64, u64)) -> u64 {
        let i = self.dev_index(key.0);
        let id = (i << INO_BITS) | key.1;
        if key.1 >> INO_BITS == 0 && i < 64 && id > ROOT && !self.nodes.contains_key(&id) {
            return id;
        }
        let id = self.next_fallback;
        self.next_fallback += 1;
        id
    }

    /// Takes a guest reference on the node for (`reals`, `st`) found as
    /// `name` in `parent`, creating it if needed: a new node keeps the layer
    /// references in `reals`, an existing one has its own (these drop).
    pub(super) fn take_node(
        &mut self,
        parent: u64,
        name: &CStr,
        reals: Vec<RealRef>,
        st: &stat64,
    ) -> u64 {
        let key = (st.st_dev, st.st_ino);
        let alias = (parent, name.to_owned());
        if let Some(node) = self.by_key.get(&key).and_then(|id| self.nodes.get_mut(id)) {
            node.lookups += 1;
            if !node.names.contains(&alias) {
                node.names.push(alias);
            }
            return self.by_key[&key];
        }
        let id = self.preferred_id(key);
        self.by_key.insert(key, id);
        let reals = reals.into_iter().map(RealRef::keep).collect();
        self.nodes.insert(
            id,
            Node {
                lookups: 1,
                names: vec![alias],
                reals,
                retired: Vec::new(),
                key,
                is_dir: is_dir(st),
            },
        );
        id
    }

    /// Drops `count` guest references on `id`; returns the node once none
    /// is left (its layer references are the caller's to forget).
    pub(super) fn forget(&mut self, id: u64, count: u64) -> Option<Node> {
        let node = self.nodes.get_mut(&id)?;
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups > 0 {
            return None;
        }
        let node = self.nodes.remove(&id)?;
        if self.by_key.get(&node.key) == Some(&id) {
            self.by_key.remove(&node.key);
        }
        Some(node)
    }

    pub(super) fn node_reals(&self, id: u64) -> io::Result<Vec<Real>> {
        self.nodes
            .get(&id)
            .map(|n| n.reals.clone())
            .ok_or_else(|| errno(libc::ENOENT))
    }

    pub(super) fn dir_reals(&self, id: u64) -> io::Result<Vec<Real>> {
        match self.nodes.get(&id) {
            Some(n) if n.is_dir => Ok(n.reals.clone()),
            Some(_) => Err(errno(libc::ENOTDIR)),
            None => Err(errno(libc::ENOENT)),
        }
    }

    /// Forgets that the file `key` was reachable as `name` in `parent`.
    pub(super) fn forget_alias(&mut self, parent: u64, name: &CStr, key: (u64, u64)) {
        if let Some(node) = self.by_key.get(&key).and_then(|id| self.nodes.get_mut(id)) {
            node.names
                .retain(|(p, n)| !(*p == parent && n.as_c_str() == name));
        }
    }

    /// A fresh scratch name for the upper, hidden from the guest. The pid
    /// keeps it apart from what an earlier run (of a --persist upper) left.
    pub(super) fn tmp_name(&mut self) -> CString {
        self.next_tmp += 1;
        let name = format!(
            "{}{}.{}",
            String::from_utf8_lossy(COPYUP_PREFIX),
            std::process::id(),
            self.next_tmp
        );
        CString::new(name).expect("no NUL in numbers")
    }
}
