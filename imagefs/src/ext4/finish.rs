//! Writing the final tree: inode numbering, per-node inodes and their
//! blocks, then bitmaps, group descriptors and superblocks.

use std::collections::HashSet;

use super::alloc::Run;
use super::dir::{self, DirBuilder};
use super::extent;
use super::inode::{self, InodeSpec};
use super::io::MetaWriter;
use super::layout::{Layout, BS, FIRST_INO, INODE_SIZE};
use super::superblock::{self, GroupCounts, SuperInfo};
use super::xattr;
use super::{Ext4Builder, Ext4Error, Ext4Stats};
use crate::tree::{Metadata, NodeId, NodeKind, Tree};

const ROOT_INO: u32 = 2;
const LOST_FOUND_INO: u32 = FIRST_INO;
/// Largest i_links_count; beyond it directories use 1 (dir_nlink).
const LINK_MAX: u32 = 65000;
/// Longest symlink target (PATH_MAX - 1).
const SYMLINK_MAX: usize = 4095;
/// Fast symlinks keep targets shorter than i_block (60 bytes) in the inode.
const FAST_SYMLINK_MAX: usize = 59;
/// Empty blocks appended to lost+found (mkfs makes it 16 KiB).
const LOST_FOUND_EXTRA_BLOCKS: usize = 3;

/// Where lost+found comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LostFound {
    /// The tree has a directory named lost+found in the root (gets inode 11).
    Tree(NodeId),
    /// We add one.
    Synthetic,
    /// The root has a non-directory named lost+found: keep it, add nothing.
    Absent,
}

/// Inode numbers and directory structure of the reachable tree.
struct Plan {
    /// Reachable nodes with their inode numbers and entry counts.
    order: Vec<(NodeId, u32, u32)>,
    /// Inode number by node id (0: unreachable).
    ino: Vec<u32>,
    /// Parent inode by node id, for directories.
    parent: Vec<u32>,
    /// Subdirectory count by node id.
    subdirs: Vec<u32>,
    lost_found: LostFound,
    /// Highest inode number used.
    max_ino: u32,
}

fn check_name(name: &[u8]) -> Result<(), Ext4Error> {
    if name.len() > 255 {
        return Err(Ext4Error::NameTooLong(name.to_vec()));
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&c| c == b'/' || c == 0)
    {
        return Err(Ext4Error::InvalidName(name.to_vec()));
    }
    Ok(())
}

impl Plan {
    fn new(tree: &Tree, available: u64) -> Result<Plan, Ext4Error> {
        let root_children = tree.children(tree.root).ok_or(Ext4Error::RootNotDir)?;
        let lost_found = match root_children.get(&b"lost+found"[..]) {
            Some(&id) if matches!(tree.nodes[id].kind, NodeKind::Dir(_)) => LostFound::Tree(id),
            Some(_) => LostFound::Absent,
            None => LostFound::Synthetic,
        };
        let reach = tree.reachable();
        let n = tree.nodes.len();
        let mut plan = Plan {
            order: Vec::with_capacity(reach.len()),
            ino: vec![0; n],
            parent: vec![0; n],
            subdirs: vec![0; n],
            lost_found,
            max_ino: 0,
        };
        let mut next = if lost_found == LostFound::Absent {
            FIRST_INO
        } else {
            FIRST_INO + 1
        };
        for &(id, refs) in &reach {
            let is_dir = matches!(tree.nodes[id].kind, NodeKind::Dir(_));
            if is_dir && refs > 1 {
                return Err(Ext4Error::DirHardlink(id));
            }
            if !is_dir && refs > LINK_MAX {
                return Err(Ext4Error::TooManyLinks(refs));
            }
            let ino = if id == tree.root {
                ROOT_INO
            } else if lost_found == LostFound::Tree(id) {
                LOST_FOUND_INO
            } else {
                next += 1;
                next - 1
            };
            plan.ino[id] = ino;
            plan.order.push((id, ino, refs));
        }
        plan.max_ino = (next - 1).max(FIRST_INO - 1);
        if u64::from(plan.max_ino) > available {
            return Err(Ext4Error::NoInodes {
                needed: u64::from(plan.max_ino),
                available,
            });
        }
        plan.parent[tree.root] = ROOT_INO;
        for &(id, ino, _) in &plan.order {
            if let Some(children) = tree.children(id) {
                for (name, &child) in children {
                    check_name(name)?;
                    if matches!(tree.nodes[child].kind, NodeKind::Dir(_)) {
                        plan.parent[child] = ino;
                        plan.subdirs[id] += 1;
                    }
                }
            }
        }
        if lost_found == LostFound::Synthetic {
            plan.subdirs[tree.root] += 1;
        }
        Ok(plan)
    }
}

/// Directory entry type of a node.
fn file_type(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::Dir(_) => dir::FT_DIR,
        NodeKind::File { .. } => dir::FT_REG,
        NodeKind::Symlink(_) => dir::FT_SYMLINK,
        NodeKind::CharDev { .. } => dir::FT_CHR,
        NodeKind::BlockDev { .. } => dir::FT_BLK,
        NodeKind::Fifo => dir::FT_FIFO,
    }
}

/// In-memory inode tables, one buffer per group holding the used prefix.
struct InodeTables {
    groups: Vec<Vec<u8>>,
    ipg: u64,
}

impl InodeTables {
    fn slot(&mut self, ino: u32) -> &mut [u8] {
        let g = (u64::from(ino) - 1) / self.ipg;
        let idx = ((u64::from(ino) - 1) % self.ipg) as usize;
        let table = &mut self.groups[g as usize];
        let end = (idx + 1) * INODE_SIZE as usize;
        if table.len() < end {
            table.resize(end.next_multiple_of(BS as usize), 0);
        }
        &mut table[idx * INODE_SIZE as usize..end]
    }
}

/// Sets (`on`) or clears bits `from..to` of `bitmap`: whole bytes at once.
fn set_bits(bitmap: &mut [u8], from: usize, to: usize, on: bool) {
    let to = to.min(bitmap.len() * 8);
    let mut bit = from;
    while bit < to {
        if bit % 8 == 0 && bit + 8 <= to {
            let end = bit + (to - bit) / 8 * 8;
            bitmap[bit / 8..end / 8].fill(if on { 0xFF } else { 0 });
            bit = end;
            continue;
        }
        if on {
            bitmap[bit / 8] |= 1 << (bit % 8);
        } else {
            bitmap[bit / 8] &= !(1 << (bit % 8));
        }
        bit += 1;
    }
}

#[cfg(test)]
#[test]
fn bit_ranges() {
    let mut b = vec![0u8; 4];
    set_bits(&mut b, 3, 21, true);
    assert_eq!(b, [0xF8, 0xFF, 0x1F, 0]);
    set_bits(&mut b, 8, 16, false);
    assert_eq!(b, [0xF8, 0, 0x1F, 0]);
    set_bits(&mut b, 30, 100, true);
    assert_eq!(b, [0xF8, 0, 0x1F, 0xC0]);
}

impl Ext4Builder {
    /// Allocates `n` blocks for metadata written at finish.
    fn alloc_meta(&mut self, n: u64) -> Result<Vec<Run>, Ext4Error> {
        self.alloc.alloc(n).ok_or_else(|| self.no_space(n))
    }

    /// Queues `bytes` (whole blocks) into `runs`, in order.
    fn write_runs(
        &self,
        meta: &mut MetaWriter,
        runs: &[Run],
        bytes: &[u8],
    ) -> Result<(), Ext4Error> {
        let mut off = 0usize;
        for &(start, n) in runs {
            let len = (n * BS) as usize;
            meta.block(&self.file, start, bytes[off..off + len].to_vec())?;
            off += len;
        }
        Ok(())
    }

    /// Writes the final tree and all filesystem metadata, then syncs the file.
    /// Only nodes reachable from the root are written; data written but not
    /// used by any of them is released first.
    pub fn finish(mut self, tree: &Tree) -> Result<Ext4Stats, Ext4Error> {
        let layout = self.layout.clone();
        let plan = Plan::new(tree, layout.inodes_count())?;

        // Check file data references, and release data nobody uses (it would
        // otherwise be allocated blocks without an owner).
        let mut used = HashSet::new();
        for &(id, _, _) in &plan.order {
            if let NodeKind::File { size, data } = &tree.nodes[id].kind {
                if *size > (u64::from(u32::MAX)) * BS {
                    return Err(Ext4Error::FileTooLarge(*size));
                }
                if let Some(d) = data {
                    let rec = self.data.get(&d.0).ok_or(Ext4Error::UnknownData(*d))?;
                    if rec.len > *size {
                        return Err(Ext4Error::DataSizeMismatch {
                            id: *d,
                            data_len: rec.len,
                            size: *size,
                        });
                    }
                    if !used.insert(d.0) {
                        return Err(Ext4Error::SharedData(*d));
                    }
                }
            }
        }
        let unused: Vec<u64> = self
            .data
            .keys()
            .copied()
            .filter(|k| !used.contains(k))
            .collect();
        for k in unused {
            self.free_data(crate::tree::DataId(k));
        }

        let mut meta = MetaWriter::default();
        let mut tables = InodeTables {
            groups: vec![Vec::new(); layout.groups as usize],
            ipg: layout.inodes_per_group,
        };
        let mut dirs_per_group = vec![0u64; layout.groups as usize];
        for &(id, ino, refs) in &plan.order {
            let node = &tree.nodes[id];
            let spec = self.node_inode(tree, &plan, &mut meta, id, ino, refs, &node.meta)?;
            if matches!(node.kind, NodeKind::Dir(_)) {
                dirs_per_group[((u64::from(ino) - 1) / layout.inodes_per_group) as usize] += 1;
            }
            spec.encode(tables.slot(ino));
        }
        if plan.lost_found == LostFound::Synthetic {
            let lf_meta = Metadata {
                perm: 0o700,
                mtime: self.opts.timestamp,
                ..Default::default()
            };
            let spec = self.dir_inode(
                &mut meta,
                DirBuilder::new(LOST_FOUND_INO, ROOT_INO),
                2,
                true,
            )?;
            let spec = self.common(&mut meta, spec, &lf_meta)?;
            dirs_per_group[0] += 1;
            spec.encode(tables.slot(LOST_FOUND_INO));
        }
        for (g, table) in tables.groups.into_iter().enumerate() {
            if !table.is_empty() {
                meta.block(&self.file, layout.inode_table(g as u64), table)?;
            }
        }

        let counts = self.write_bitmaps(&mut meta, &layout, plan.max_ino, &dirs_per_group)?;
        let used_inodes = u64::from(plan.max_ino);
        let info = SuperInfo {
            free_blocks: self.alloc.free_blocks(),
            free_inodes: layout.inodes_count() - used_inodes,
            uuid: self.opts.uuid,
            label: {
                let mut l = [0u8; 16];
                l[..self.opts.label.len()].copy_from_slice(self.opts.label.as_bytes());
                l
            },
            timestamp: self.opts.timestamp,
        };
        let gdt = superblock::descriptors(&layout, &counts);
        meta.at(&self.file, 1024, superblock::superblock(&layout, &info, 0))?;
        meta.block(&self.file, 1, gdt.clone())?;
        for g in 1..layout.groups {
            if Layout::has_super(g) {
                let start = layout.group_start(g);
                meta.block(&self.file, start, superblock::superblock(&layout, &info, g))?;
                meta.block(&self.file, start + 1, gdt.clone())?;
            }
        }
        meta.flush(&self.file)?;
        self.file.sync_all().map_err(|source| Ext4Error::Io {
            what: "syncing the image",
            source,
        })?;
        Ok(Ext4Stats {
            inodes_used: used_inodes,
            blocks_used: layout.blocks_count - self.alloc.free_blocks(),
            size: layout.blocks_count * BS,
        })
    }

    /// Queues every group's bitmaps and returns the per-group counts.
    fn write_bitmaps(
        &self,
        meta: &mut MetaWriter,
        layout: &Layout,
        max_ino: u32,
        dirs: &[u64],
    ) -> Result<Vec<GroupCounts>, Ext4Error> {
        let ipg = layout.inodes_per_group;
        let mut counts = Vec::with_capacity(layout.groups as usize);
        for g in 0..layout.groups {
            let start = layout.group_start(g);
            // All used (this also sets the padding past a partial last
            // group), then clear what is free.
            let mut bb = vec![0xFFu8; BS as usize];
            let mut free_blocks = 0;
            for (s, n) in self.alloc.free_in(start, start + layout.group_blocks(g)) {
                set_bits(
                    &mut bb,
                    (s - start) as usize,
                    (s - start + n) as usize,
                    false,
                );
                free_blocks += n;
            }
            // Inodes 1..=max_ino are in use (reserved ones included); bits
            // past the group's inodes are padding, set.
            let used = u64::from(max_ino).saturating_sub(g * ipg).min(ipg);
            let mut ib = vec![0u8; BS as usize];
            set_bits(&mut ib, 0, used as usize, true);
            set_bits(&mut ib, ipg as usize, BS as usize * 8, true);
            meta.block(&self.file, layout.block_bitmap(g), bb)?;
            meta.block(&self.file, layout.inode_bitmap(g), ib)?;
            counts.push(GroupCounts {
                free_blocks,
                free_inodes: ipg - used,
                used_dirs: dirs[g as usize],
            });
        }
        debug_assert_eq!(
            counts.iter().map(|c| c.free_blocks).sum::<u64>(),
            self.alloc.free_blocks()
        );
        Ok(counts)
    }

    /// The inode of one reachable node, its blocks queued or allocated.
    #[allow(clippy::too_many_arguments)]
    fn node_inode(
        &mut self,
        tree: &Tree,
        plan: &Plan,
        meta: &mut MetaWriter,
        id: NodeId,
        ino: u32,
        refs: u32,
        md: &Metadata,
    ) -> Result<InodeSpec, Ext4Error> {
        let spec = match &tree.nodes[id].kind {
            NodeKind::Dir(children) => {
                let mut d = DirBuilder::new(ino, plan.parent[id]);
                if id == tree.root && plan.lost_found == LostFound::Synthetic {
                    d.push(b"lost+found", LOST_FOUND_INO, dir::FT_DIR);
                }
                for (name, &child) in children {
                    d.push(name, plan.ino[child], file_type(&tree.nodes[child].kind));
                }
                let is_lf = plan.lost_found == LostFound::Tree(id);
                self.dir_inode(meta, d, 2 + plan.subdirs[id], is_lf)?
            }
            NodeKind::File { size, data } => {
                let runs = data
                    .and_then(|d| self.data.get(&d.0))
                    .map(|r| r.runs.clone())
                    .unwrap_or_default();
                let spec = InodeSpec {
                    mode: inode::S_IFREG,
                    size: *size,
                    links: refs as u16,
                    ..Default::default()
                };
                self.extent_inode(meta, spec, &runs)?
            }
            NodeKind::Symlink(target) => {
                if target.is_empty() || target.len() > SYMLINK_MAX || target.contains(&0) {
                    return Err(Ext4Error::InvalidSymlink(target.clone()));
                }
                let spec = InodeSpec {
                    mode: inode::S_IFLNK,
                    size: target.len() as u64,
                    links: refs as u16,
                    ..Default::default()
                };
                if target.len() <= FAST_SYMLINK_MAX {
                    let mut spec = spec;
                    spec.i_block[..target.len()].copy_from_slice(target);
                    spec
                } else {
                    let runs = self.alloc_meta(1)?;
                    let mut block = target.clone();
                    block.resize(BS as usize, 0);
                    self.write_runs(meta, &runs, &block)?;
                    self.extent_inode(meta, spec, &runs)?
                }
            }
            NodeKind::CharDev { major, minor } | NodeKind::BlockDev { major, minor } => {
                if *major > 0xfff || *minor > 0xf_ffff {
                    return Err(Ext4Error::InvalidDevice {
                        major: *major,
                        minor: *minor,
                    });
                }
                let chr = matches!(tree.nodes[id].kind, NodeKind::CharDev { .. });
                let mode = if chr { inode::S_IFCHR } else { inode::S_IFBLK };
                InodeSpec {
                    mode,
                    links: refs as u16,
                    i_block: inode::encode_dev(*major, *minor),
                    ..Default::default()
                }
            }
            NodeKind::Fifo => InodeSpec {
                mode: inode::S_IFIFO,
                links: refs as u16,
                ..Default::default()
            },
        };
        self.common(meta, spec, md)
    }

    /// A directory inode from its entries; `links` before the dir_nlink cap.
    fn dir_inode(
        &mut self,
        meta: &mut MetaWriter,
        d: DirBuilder,
        links: u32,
        lost_found: bool,
    ) -> Result<InodeSpec, Ext4Error> {
        let bytes = d.finish(if lost_found {
            LOST_FOUND_EXTRA_BLOCKS
        } else {
            0
        });
        let runs = self.alloc_meta(bytes.len() as u64 / BS)?;
        self.write_runs(meta, &runs, &bytes)?;
        // dir_nlink: a directory with too many subdirectories counts 1.
        let links = if links > LINK_MAX { 1 } else { links as u16 };
        let spec = InodeSpec {
            mode: inode::S_IFDIR,
            size: bytes.len() as u64,
            links,
            ..Default::default()
        };
        self.extent_inode(meta, spec, &runs)
    }

    /// Adds the extent tree for data in `runs` to `spec`.
    fn extent_inode(
        &mut self,
        meta: &mut MetaWriter,
        mut spec: InodeSpec,
        runs: &[Run],
    ) -> Result<InodeSpec, Ext4Error> {
        let extents = extent::extents_of(runs);
        let tree_blocks = extent::tree_blocks(extents.len());
        let blocks: Vec<u64> = self
            .alloc_meta(tree_blocks)?
            .into_iter()
            .flat_map(|(s, n)| s..s + n)
            .collect();
        let (root, written) = extent::build(&extents, &blocks);
        for (block, data) in written {
            meta.block(&self.file, block, data)?;
        }
        spec.i_block = root;
        spec.flags |= inode::EXTENTS_FL;
        spec.fs_blocks += runs.iter().map(|r| r.1).sum::<u64>() + tree_blocks;
        Ok(spec)
    }

    /// Fills in what every inode has: permissions, owner, times, xattrs.
    fn common(
        &mut self,
        meta: &mut MetaWriter,
        mut spec: InodeSpec,
        md: &Metadata,
    ) -> Result<InodeSpec, Ext4Error> {
        spec.mode |= md.perm & 0o7777;
        spec.uid = md.uid;
        spec.gid = md.gid;
        spec.time = md.mtime;
        spec.time_nsec = md.mtime_nsec;
        let enc = xattr::encode(&md.xattrs)?;
        spec.ibody = enc.ibody;
        if let Some(block) = enc.block {
            let runs = self.alloc_meta(1)?;
            spec.file_acl = runs[0].0;
            spec.fs_blocks += 1;
            meta.block(&self.file, runs[0].0, block)?;
        }
        Ok(spec)
    }
}
