//! Laying out the tree: inodes, directories, extent trees, xattrs, then the
//! bitmaps, group descriptors and superblocks.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;

use super::layout::has_super;
use super::{io_err, Ext4Builder, Ext4Error, Extent, BLOCK, BLOCKS_PER_GROUP, INODE_SIZE};
use crate::tree::{Metadata, NodeId, NodeKind, Tree};

const ROOT_INO: u64 = 2;
const FIRST_INO: u64 = 11;
const EXTRA_ISIZE: u16 = 32;
const EXTENTS_FL: u32 = 0x80000;
const EXT_MAGIC: u16 = 0xf30a;
const XATTR_MAGIC: u32 = 0xea02_0000;
/// Bytes for in-inode xattrs after the 4-byte magic: 256 - 128 - 32 - 4.
const IBODY_XATTR_SPACE: usize = 92;
const DIR_NLINK_MAX: u64 = 65000;

const S_IFIFO: u16 = 0o010000;
const S_IFCHR: u16 = 0o020000;
const S_IFDIR: u16 = 0o040000;
const S_IFBLK: u16 = 0o060000;
const S_IFREG: u16 = 0o100000;
const S_IFLNK: u16 = 0o120000;

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// An inode being assembled.
struct Inode {
    bytes: [u8; INODE_SIZE as usize],
    /// 512-byte sectors used.
    sectors: u64,
}

impl Inode {
    fn new(mode: u16, meta: &Metadata, links: u64) -> Self {
        let mut b = [0u8; INODE_SIZE as usize];
        put16(&mut b, 0, mode | (meta.perm & 0o7777));
        put16(&mut b, 2, meta.uid as u16);
        put16(&mut b, 24, meta.gid as u16);
        put16(&mut b, 26, links as u16);
        put16(&mut b, 120, (meta.uid >> 16) as u16);
        put16(&mut b, 122, (meta.gid >> 16) as u16);
        put16(&mut b, 128, EXTRA_ISIZE);
        let secs = meta.mtime;
        let lo = secs as i32;
        // Extra: 2 epoch bits (times outside 1901..2038), then nanoseconds.
        let epoch = ((secs - i64::from(lo)) >> 32) as u32 & 3;
        let extra = epoch | (meta.mtime_nsec.min(999_999_999) << 2);
        for (t, x) in [(8, 140), (12, 132), (16, 136), (144, 148)] {
            put32(&mut b, t, lo as u32);
            put32(&mut b, x, extra);
        }
        Inode {
            bytes: b,
            sectors: 0,
        }
    }

    fn set_size(&mut self, size: u64) {
        put32(&mut self.bytes, 4, size as u32);
        put32(&mut self.bytes, 108, (size >> 32) as u32);
    }

    fn set_block_area(&mut self, area: &[u8; 60], extents: bool) {
        self.bytes[40..100].copy_from_slice(area);
        if extents {
            let f =
                u32::from_le_bytes(self.bytes[32..36].try_into().unwrap_or_default()) | EXTENTS_FL;
            put32(&mut self.bytes, 32, f);
        }
    }

    fn finish(mut self) -> [u8; INODE_SIZE as usize] {
        put32(&mut self.bytes, 28, self.sectors as u32);
        put16(&mut self.bytes, 116, (self.sectors >> 32) as u16);
        self.bytes
    }
}

fn ext_header(entries: usize, max: u16, depth: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    put16(&mut h, 0, EXT_MAGIC);
    put16(&mut h, 2, entries as u16);
    put16(&mut h, 4, max);
    put16(&mut h, 6, depth);
    h
}

/// Builds the extent tree for `extents`: the 60-byte in-inode root, and
/// writes index/leaf blocks when more than 4 extents are needed.
fn extent_tree(
    b: &mut Ext4Builder,
    extents: &[Extent],
    inode: &mut Inode,
) -> Result<[u8; 60], Ext4Error> {
    let mut root = [0u8; 60];
    const PER_BLOCK: usize = (BLOCK as usize - 12) / 12;
    if extents.len() <= 4 {
        root[..12].copy_from_slice(&ext_header(extents.len(), 4, 0));
        for (i, e) in extents.iter().enumerate() {
            write_extent(&mut root[12 + i * 12..24 + i * 12], e);
        }
        return Ok(root);
    }
    // (first logical block, entry bytes) of the nodes of the current level.
    let mut nodes: Vec<(u32, u64)> = Vec::new();
    for chunk in extents.chunks(PER_BLOCK) {
        let mut blk = vec![0u8; BLOCK as usize];
        blk[..12].copy_from_slice(&ext_header(chunk.len(), PER_BLOCK as u16, 0));
        for (i, e) in chunk.iter().enumerate() {
            write_extent(&mut blk[12 + i * 12..24 + i * 12], e);
        }
        let at = write_meta_block(b, &blk, inode)?;
        nodes.push((chunk[0].logical, at));
    }
    let mut depth = 1u16;
    while nodes.len() > 4 {
        let mut up = Vec::new();
        for chunk in nodes.chunks(PER_BLOCK) {
            let mut blk = vec![0u8; BLOCK as usize];
            blk[..12].copy_from_slice(&ext_header(chunk.len(), PER_BLOCK as u16, depth));
            for (i, n) in chunk.iter().enumerate() {
                write_index(&mut blk[12 + i * 12..24 + i * 12], *n);
            }
            let at = write_meta_block(b, &blk, inode)?;
            up.push((chunk[0].0, at));
        }
        nodes = up;
        depth += 1;
    }
    root[..12].copy_from_slice(&ext_header(nodes.len(), 4, depth));
    for (i, n) in nodes.iter().enumerate() {
        write_index(&mut root[12 + i * 12..24 + i * 12], *n);
    }
    Ok(root)
}

fn write_extent(out: &mut [u8], e: &Extent) {
    put32(out, 0, e.logical);
    put16(out, 4, e.len as u16);
    put16(out, 6, (e.start >> 32) as u16);
    put32(out, 8, e.start as u32);
}

fn write_index(out: &mut [u8], (logical, block): (u32, u64)) {
    put32(out, 0, logical);
    put32(out, 4, block as u32);
    put16(out, 8, (block >> 32) as u16);
}

/// Allocates one block for `data` (a full block), writes it, counts it in `inode`.
fn write_meta_block(b: &mut Ext4Builder, data: &[u8], inode: &mut Inode) -> Result<u64, Ext4Error> {
    let at = b.alloc(1)?[0].0;
    b.file
        .write_all_at(data, at * BLOCK)
        .map_err(io_err("writing metadata"))?;
    inode.sectors += BLOCK / 512;
    Ok(at)
}

/// Writes `data` into freshly allocated blocks; returns the extents.
fn write_blocks(
    b: &mut Ext4Builder,
    data: &[u8],
    inode: &mut Inode,
) -> Result<Vec<Extent>, Ext4Error> {
    let n = (data.len() as u64).div_ceil(BLOCK);
    let runs = b.alloc(n)?;
    let mut extents = Vec::new();
    let mut logical = 0u64;
    for (start, len) in runs {
        let from = (logical * BLOCK) as usize;
        let to = (((logical + len) * BLOCK) as usize).min(data.len());
        let mut chunk = data[from..to].to_vec();
        chunk.resize((len * BLOCK) as usize, 0);
        b.file
            .write_all_at(&chunk, start * BLOCK)
            .map_err(io_err("writing metadata"))?;
        extents.push(Extent {
            logical: logical as u32,
            start,
            len,
        });
        logical += len;
    }
    inode.sectors += n * (BLOCK / 512);
    Ok(extents)
}

fn file_type(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::File { .. } => 1,
        NodeKind::Dir(_) => 2,
        NodeKind::CharDev { .. } => 3,
        NodeKind::BlockDev { .. } => 4,
        NodeKind::Fifo => 5,
        NodeKind::Symlink(_) => 7,
    }
}

/// Linear directory blocks: `.`, `..`, then the entries.
fn dir_blocks(entries: &[(Vec<u8>, u64, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut block = vec![0u8; BLOCK as usize];
    let mut pos = 0usize;
    let mut last = 0usize;
    for (name, ino, ft) in entries {
        let len = (8 + name.len()).next_multiple_of(4);
        if pos + len > BLOCK as usize {
            let rl = BLOCK as usize - last;
            put16(&mut block, last + 4, rl as u16);
            out.extend_from_slice(&block);
            block = vec![0u8; BLOCK as usize];
            pos = 0;
        }
        put32(&mut block, pos, *ino as u32);
        put16(&mut block, pos + 4, len as u16);
        block[pos + 6] = name.len() as u8;
        block[pos + 7] = *ft;
        block[pos + 8..pos + 8 + name.len()].copy_from_slice(name);
        last = pos;
        pos += len;
    }
    let rl = BLOCK as usize - last;
    put16(&mut block, last + 4, rl as u16);
    out.extend_from_slice(&block);
    out
}

/// Splits an xattr name into ext4's (index, suffix).
fn xattr_index(name: &[u8]) -> Result<(u8, &[u8]), Ext4Error> {
    const PREFIXES: [(&[u8], u8); 6] = [
        (b"user.", 1),
        (b"system.posix_acl_access", 2),
        (b"system.posix_acl_default", 3),
        (b"trusted.", 4),
        (b"security.", 6),
        (b"system.", 7),
    ];
    for (p, i) in PREFIXES {
        if let Some(rest) = name.strip_prefix(p) {
            return Ok((i, rest));
        }
    }
    Err(Ext4Error::UnsupportedXattr(
        String::from_utf8_lossy(name).into_owned(),
    ))
}

fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        h = (h << 5) ^ (h >> 27) ^ (c as i8 as i32 as u32);
    }
    let mut padded = value.to_vec();
    padded.resize(value.len().next_multiple_of(4), 0);
    for w in padded.chunks(4) {
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    h
}

/// Xattr entries + values laid out in a region of `space` bytes; value offsets
/// are relative to `base` bytes before the region. Returns None if they don't fit.
fn xattr_region(
    attrs: &[(u8, &[u8], &[u8])],
    space: usize,
    base: usize,
) -> Option<(Vec<u8>, Vec<u32>)> {
    let entries: usize = attrs
        .iter()
        .map(|(_, n, _)| (16 + n.len()).next_multiple_of(4))
        .sum::<usize>()
        + 4;
    let values: usize = attrs
        .iter()
        .map(|(_, _, v)| v.len().next_multiple_of(4))
        .sum();
    if entries + values > space {
        return None;
    }
    let mut r = vec![0u8; space];
    let mut pos = 0;
    let mut vend = space;
    let mut hashes = Vec::new();
    for (idx, name, value) in attrs {
        let vlen = value.len().next_multiple_of(4);
        vend -= vlen;
        r[vend..vend + value.len()].copy_from_slice(value);
        let h = entry_hash(name, value);
        hashes.push(h);
        r[pos] = name.len() as u8;
        r[pos + 1] = *idx;
        put16(
            &mut r,
            pos + 2,
            if value.is_empty() {
                0
            } else {
                (vend + base) as u16
            },
        );
        put32(&mut r, pos + 8, value.len() as u32);
        put32(&mut r, pos + 12, h);
        r[pos + 16..pos + 16 + name.len()].copy_from_slice(name);
        pos += (16 + name.len()).next_multiple_of(4);
    }
    Some((r, hashes))
}

fn write_xattrs(b: &mut Ext4Builder, meta: &Metadata, inode: &mut Inode) -> Result<(), Ext4Error> {
    if meta.xattrs.is_empty() {
        return Ok(());
    }
    let mut attrs = Vec::new();
    for (name, value) in &meta.xattrs {
        let (idx, suffix) = xattr_index(name)?;
        if suffix.len() > 255 {
            return Err(Ext4Error::UnsupportedXattr(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        attrs.push((idx, suffix, value.as_slice()));
    }
    // The order ext4 keeps in blocks: index, name length, name.
    attrs.sort_by(|a, b| (a.0, a.1.len(), a.1).cmp(&(b.0, b.1.len(), b.1)));
    if let Some((region, _)) = xattr_region(&attrs, IBODY_XATTR_SPACE, 0) {
        let start = 128 + EXTRA_ISIZE as usize;
        put32(&mut inode.bytes, start, XATTR_MAGIC);
        inode.bytes[start + 4..start + 4 + IBODY_XATTR_SPACE].copy_from_slice(&region);
        return Ok(());
    }
    let (region, hashes) = xattr_region(&attrs, BLOCK as usize - 32, 32)
        .ok_or(Ext4Error::XattrTooLarge(BLOCK - 32))?;
    let mut blk = vec![0u8; BLOCK as usize];
    put32(&mut blk, 0, XATTR_MAGIC);
    put32(&mut blk, 4, 1); // refcount
    put32(&mut blk, 8, 1); // blocks
    let mut h: u32 = 0;
    for eh in hashes {
        h = (h << 16) ^ (h >> 16) ^ eh;
    }
    put32(&mut blk, 12, h);
    blk[32..].copy_from_slice(&region);
    let at = write_meta_block(b, &blk, inode)?;
    put32(&mut inode.bytes, 104, at as u32);
    put16(&mut inode.bytes, 118, (at >> 32) as u16);
    Ok(())
}

/// Writes the tree; returns the number of inodes in use.
pub(super) fn write_tree(b: &mut Ext4Builder, tree: &Tree) -> Result<u64, Ext4Error> {
    let reachable = tree.reachable();
    let has_lf = tree
        .children(tree.root)
        .is_some_and(|c| c.contains_key(&b"lost+found"[..]));
    // Inode numbers: root 2, then from 11 on (11 is lost+found when we add it).
    let mut ino_of: HashMap<NodeId, u64> = HashMap::new();
    let mut next = if has_lf { FIRST_INO } else { FIRST_INO + 1 };
    for &(id, _) in &reachable {
        if id == tree.root {
            ino_of.insert(id, ROOT_INO);
        } else {
            ino_of.insert(id, next);
            next += 1;
        }
    }
    let last_ino = next - 1;
    if last_ino > b.layout.inodes() {
        return Err(Ext4Error::NoInodes {
            needed: last_ino,
            available: b.layout.inodes(),
        });
    }
    let mut parent: HashMap<NodeId, NodeId> = HashMap::new();
    parent.insert(tree.root, tree.root);
    for &(id, _) in &reachable {
        if let Some(ch) = tree.children(id) {
            for (name, &c) in ch {
                if name.len() > 255 {
                    return Err(Ext4Error::NameTooLong(name.clone()));
                }
                if matches!(tree.nodes[c].kind, NodeKind::Dir(_)) {
                    parent.insert(c, id);
                }
            }
        }
    }

    let mut inodes: BTreeMap<u64, [u8; INODE_SIZE as usize]> = BTreeMap::new();
    let mut dirs_per_group: HashMap<u64, u64> = HashMap::new();
    let ipg = b.layout.inodes_per_group;
    let count_dir = |ino: u64, dirs: &mut HashMap<u64, u64>| {
        *dirs.entry((ino - 1) / ipg).or_default() += 1;
    };
    if !has_lf {
        let meta = Metadata {
            perm: 0o700,
            ..Default::default()
        };
        let mut inode = Inode::new(S_IFDIR, &meta, 2);
        let data = dir_blocks(&[(b".".to_vec(), FIRST_INO, 2), (b"..".to_vec(), ROOT_INO, 2)]);
        let ext = write_blocks(b, &data, &mut inode)?;
        let area = extent_tree(b, &ext, &mut inode)?;
        inode.set_block_area(&area, true);
        inode.set_size(data.len() as u64);
        inodes.insert(FIRST_INO, inode.finish());
        count_dir(FIRST_INO, &mut dirs_per_group);
    }

    for &(id, refs) in &reachable {
        let node = &tree.nodes[id];
        let ino = ino_of[&id];
        let inode = match &node.kind {
            NodeKind::Dir(children) => {
                let mut entries = vec![
                    (b".".to_vec(), ino, 2u8),
                    (b"..".to_vec(), ino_of[&parent[&id]], 2u8),
                ];
                let mut subdirs = 0u64;
                for (name, &c) in children {
                    let k = &tree.nodes[c].kind;
                    subdirs += u64::from(matches!(k, NodeKind::Dir(_)));
                    entries.push((name.clone(), ino_of[&c], file_type(k)));
                }
                if id == tree.root && !has_lf {
                    entries.push((b"lost+found".to_vec(), FIRST_INO, 2));
                    subdirs += 1;
                }
                let links = if subdirs + 2 > DIR_NLINK_MAX {
                    1
                } else {
                    subdirs + 2
                };
                let mut inode = Inode::new(S_IFDIR, &node.meta, links);
                let data = dir_blocks(&entries);
                let ext = write_blocks(b, &data, &mut inode)?;
                let area = extent_tree(b, &ext, &mut inode)?;
                inode.set_block_area(&area, true);
                inode.set_size(data.len() as u64);
                count_dir(ino, &mut dirs_per_group);
                inode
            }
            NodeKind::File { size, data } => {
                let mut inode = Inode::new(S_IFREG, &node.meta, u64::from(refs));
                let ext: Vec<Extent> = data
                    .and_then(|d| b.data.get(&d.0).cloned())
                    .unwrap_or_default();
                inode.sectors += ext.iter().map(|e| e.len).sum::<u64>() * (BLOCK / 512);
                let area = extent_tree(b, &ext, &mut inode)?;
                inode.set_block_area(&area, true);
                inode.set_size(*size);
                inode
            }
            NodeKind::Symlink(target) => {
                let mut inode = Inode::new(S_IFLNK, &node.meta, u64::from(refs));
                if target.len() < 60 {
                    let mut area = [0u8; 60];
                    area[..target.len()].copy_from_slice(target);
                    inode.set_block_area(&area, false);
                } else if target.len() < BLOCK as usize {
                    let ext = write_blocks(b, target, &mut inode)?;
                    let area = extent_tree(b, &ext, &mut inode)?;
                    inode.set_block_area(&area, true);
                } else {
                    return Err(Ext4Error::SymlinkTooLong(target.len()));
                }
                inode.set_size(target.len() as u64);
                inode
            }
            NodeKind::CharDev { major, minor } | NodeKind::BlockDev { major, minor } => {
                let mode = if matches!(node.kind, NodeKind::CharDev { .. }) {
                    S_IFCHR
                } else {
                    S_IFBLK
                };
                let mut inode = Inode::new(mode, &node.meta, u64::from(refs));
                let mut area = [0u8; 60];
                if *major < 256 && *minor < 256 {
                    put32(&mut area, 0, (major << 8) | minor);
                } else {
                    put32(
                        &mut area,
                        4,
                        (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
                    );
                }
                inode.set_block_area(&area, false);
                inode
            }
            NodeKind::Fifo => Inode::new(S_IFIFO, &node.meta, u64::from(refs)),
        };
        let mut inode = inode;
        write_xattrs(b, &node.meta, &mut inode)?;
        inodes.insert(ino, inode.finish());
    }

    write_inode_tables(b, &inodes)?;
    write_group_metadata(b, last_ino, &dirs_per_group)?;
    Ok(last_ino - 10 + u64::from(has_lf))
}

fn write_inode_tables(
    b: &mut Ext4Builder,
    inodes: &BTreeMap<u64, [u8; INODE_SIZE as usize]>,
) -> Result<(), Ext4Error> {
    let ipg = b.layout.inodes_per_group;
    let mut by_group: BTreeMap<u64, Vec<(u64, &[u8; INODE_SIZE as usize])>> = BTreeMap::new();
    for (&ino, bytes) in inodes {
        by_group
            .entry((ino - 1) / ipg)
            .or_default()
            .push((ino, bytes));
    }
    for (g, list) in by_group {
        let first = (list[0].0 - 1) % ipg;
        let last = (list[list.len() - 1].0 - 1) % ipg;
        let mut buf = vec![0u8; ((last - first + 1) * INODE_SIZE) as usize];
        for (ino, bytes) in list {
            let i = ((ino - 1) % ipg - first) * INODE_SIZE;
            buf[i as usize..(i + INODE_SIZE) as usize].copy_from_slice(bytes);
        }
        let off = b.layout.inode_table(g) * BLOCK + first * INODE_SIZE;
        b.file
            .write_all_at(&buf, off)
            .map_err(io_err("writing inode tables"))?;
    }
    Ok(())
}

fn write_group_metadata(
    b: &mut Ext4Builder,
    last_ino: u64,
    dirs: &HashMap<u64, u64>,
) -> Result<(), Ext4Error> {
    let l = b.layout;
    let ipg = l.inodes_per_group;
    let mut gdt = vec![0u8; (l.gdt_blocks * BLOCK) as usize];
    let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
    for g in 0..l.groups {
        // Block bitmap: bits past a short last group are set, as e2fsck expects.
        let mut bb = vec![0xffu8; BLOCK as usize];
        let start = l.group_start(g);
        let n = l.group_blocks(g);
        let mut gfree = 0u64;
        for i in 0..BLOCKS_PER_GROUP {
            let used = i >= n || b.is_used(start + i);
            if !used {
                bb[(i / 8) as usize] &= !(1 << (i % 8));
                gfree += 1;
            }
        }
        let mut ib = vec![0xffu8; BLOCK as usize];
        let mut ifree = 0u64;
        for i in 0..ipg {
            let ino = g * ipg + i + 1;
            if ino > last_ino {
                ib[(i / 8) as usize] &= !(1 << (i % 8));
                ifree += 1;
            }
        }
        b.file
            .write_all_at(&bb, l.block_bitmap(g) * BLOCK)
            .map_err(io_err("writing bitmaps"))?;
        b.file
            .write_all_at(&ib, l.inode_bitmap(g) * BLOCK)
            .map_err(io_err("writing bitmaps"))?;
        let d = &mut gdt[(g * 32) as usize..(g * 32 + 32) as usize];
        put32(d, 0, l.block_bitmap(g) as u32);
        put32(d, 4, l.inode_bitmap(g) as u32);
        put32(d, 8, l.inode_table(g) as u32);
        put16(d, 12, gfree as u16);
        put16(d, 14, ifree as u16);
        put16(d, 16, dirs.get(&g).copied().unwrap_or(0) as u16);
        free_blocks += gfree;
        free_inodes += ifree;
    }
    let sb = superblock(b, free_blocks, free_inodes);
    for g in (0..l.groups).filter(|&g| has_super(g)) {
        let mut s = sb.clone();
        put16(&mut s, 90, g as u16);
        let base = l.group_start(g) * BLOCK;
        // Group 0's superblock sits 1024 bytes into block 0; backups start their block.
        let (off, mut block) = if g == 0 {
            (1024usize, vec![0u8; BLOCK as usize])
        } else {
            (0, vec![0u8; BLOCK as usize])
        };
        block[off..off + 1024].copy_from_slice(&s);
        b.file
            .write_all_at(&block, base)
            .map_err(io_err("writing superblocks"))?;
        b.file
            .write_all_at(&gdt, base + BLOCK)
            .map_err(io_err("writing group descriptors"))?;
    }
    Ok(())
}

fn superblock(b: &Ext4Builder, free_blocks: u64, free_inodes: u64) -> Vec<u8> {
    let l = b.layout;
    let t = b.opts.timestamp as u32;
    let mut s = vec![0u8; 1024];
    put32(&mut s, 0, l.inodes() as u32);
    put32(&mut s, 4, l.blocks as u32);
    put32(&mut s, 12, free_blocks as u32);
    put32(&mut s, 16, free_inodes as u32);
    put32(&mut s, 20, 0); // first data block (4 KiB blocks)
    put32(&mut s, 24, 2); // 1024 << 2
    put32(&mut s, 28, 2);
    put32(&mut s, 32, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 36, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 40, l.inodes_per_group as u32);
    put32(&mut s, 48, t); // write time
    put16(&mut s, 54, 0xffff); // max mount count: -1
    put16(&mut s, 56, 0xef53);
    put16(&mut s, 58, 1); // clean
    put16(&mut s, 60, 1); // errors: continue
    put32(&mut s, 64, t); // last check
    put32(&mut s, 76, 1); // dynamic revision
    put32(&mut s, 84, FIRST_INO as u32);
    put16(&mut s, 88, INODE_SIZE as u16);
    put32(&mut s, 92, 0x8); // compat: ext_attr
    put32(&mut s, 96, 0x2 | 0x40); // incompat: filetype, extents
    put32(&mut s, 100, 0x1 | 0x2 | 0x20 | 0x40); // ro_compat: sparse_super, large_file, dir_nlink, extra_isize
    s[104..120].copy_from_slice(&b.opts.uuid);
    let label = b.opts.label.as_bytes();
    let n = label.len().min(16);
    s[120..120 + n].copy_from_slice(&label[..n]);
    // Hash seed from the UUID (reproducible), half_md4 by default.
    for i in 0..4 {
        let mut w = [0u8; 4];
        for (j, x) in w.iter_mut().enumerate() {
            *x = b.opts.uuid[(i * 4 + j + 7) % 16] ^ (0x5a + i as u8);
        }
        s[236 + i * 4..240 + i * 4].copy_from_slice(&w);
    }
    s[252] = 1;
    put32(&mut s, 264, t); // mkfs time
    put16(&mut s, 348, EXTRA_ISIZE);
    put16(&mut s, 350, EXTRA_ISIZE);
    put32(&mut s, 352, 1); // flags: signed directory hash
    s
}
