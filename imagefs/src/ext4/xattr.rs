//! Extended attributes: in the inode body when they fit, else in one
//! external block, with the entry and block hashes e2fsck verifies.

use std::collections::BTreeMap;

use super::inode::IBODY_SIZE;
use super::layout::BS;
use super::Ext4Error;

const MAGIC: u32 = 0xEA02_0000;
/// Entry header: name_len, name_index, value_offs, value_inum, value_size, hash.
const ENTRY_HEADER: usize = 16;
/// External block header: magic, refcount, blocks, hash, checksum, reserved.
const BLOCK_HEADER: usize = 32;

/// POSIX ACL tags (linux/posix_acl.h).
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// One attribute as stored: name index, name suffix, on-disk value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Attr {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Attr {
    /// Bytes of entry (header + padded name) this attribute uses.
    fn entry_size(&self) -> usize {
        ENTRY_HEADER + self.name.len().next_multiple_of(4)
    }
    fn value_size(&self) -> usize {
        self.value.len().next_multiple_of(4)
    }
}

/// Encoded attributes of one inode.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    /// The in-inode area ([`IBODY_SIZE`] bytes), if any attribute lives there.
    pub ibody: Option<Vec<u8>>,
    /// The external block, if needed.
    pub block: Option<Vec<u8>>,
}

/// Splits a full name into the ext4 name index and the stored suffix.
fn split_name(full: &[u8]) -> Result<(u8, &[u8]), Ext4Error> {
    match full {
        b"system.posix_acl_access" => return Ok((2, b"")),
        b"system.posix_acl_default" => return Ok((3, b"")),
        _ => {}
    }
    const PREFIXES: [(&[u8], u8); 4] = [
        (b"user.", 1),
        (b"trusted.", 4),
        (b"security.", 6),
        (b"system.", 7),
    ];
    for (prefix, index) in PREFIXES {
        if let Some(rest) = full.strip_prefix(prefix) {
            if rest.is_empty() || rest.len() > 255 {
                break;
            }
            return Ok((index, rest));
        }
    }
    Err(Ext4Error::UnsupportedXattr(full.to_vec()))
}

/// Converts a POSIX ACL from the xattr format user space sees (version 2,
/// 8-byte entries) to ext4's disk format (version 1, 4-byte entries for
/// tags without an id), as the kernel and e2fsprogs do.
fn acl_to_disk(name: &[u8], value: &[u8]) -> Result<Vec<u8>, Ext4Error> {
    let bad = || Ext4Error::InvalidAcl(name.to_vec());
    if value.len() < 4 || (value.len() - 4) % 8 != 0 || value[0..4] != 2u32.to_le_bytes() {
        return Err(bad());
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in value[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        match tag {
            ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_MASK | ACL_OTHER => out.extend_from_slice(&e[0..4]),
            ACL_USER | ACL_GROUP => out.extend_from_slice(e),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// The entry hash of `ext2fs_ext_attr_hash_entry` (unsigned name bytes, as
/// current kernels compute it), over the zero-padded value.
fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut hash = 0u32;
    for &c in name {
        hash = (hash << 5) ^ (hash >> 27) ^ u32::from(c);
    }
    for w in value.chunks(4) {
        let mut word = [0u8; 4];
        word[..w.len()].copy_from_slice(w);
        hash = (hash << 16) ^ (hash >> 16) ^ u32::from_le_bytes(word);
    }
    hash
}

/// Writes the entry table for `attrs` into `area` starting at `first`, with
/// values packed downward from the end of `area`; value offsets are relative
/// to `base`. Returns the entry hashes in order.
fn place(area: &mut [u8], first: usize, base: usize, attrs: &[&Attr]) -> Vec<u32> {
    let mut off = first;
    let mut vend = area.len();
    let mut hashes = Vec::with_capacity(attrs.len());
    for a in attrs {
        let voff = if a.value.is_empty() {
            0
        } else {
            vend -= a.value_size();
            area[vend..vend + a.value.len()].copy_from_slice(&a.value);
            vend - base
        };
        let hash = entry_hash(&a.name, &a.value);
        let e = &mut area[off..off + a.entry_size()];
        e[0] = a.name.len() as u8;
        e[1] = a.index;
        e[2..4].copy_from_slice(&(voff as u16).to_le_bytes());
        // e_value_inum (4..8) stays 0: no EA inodes.
        e[8..12].copy_from_slice(&(a.value.len() as u32).to_le_bytes());
        e[12..16].copy_from_slice(&hash.to_le_bytes());
        e[16..16 + a.name.len()].copy_from_slice(&a.name);
        off += a.entry_size();
        hashes.push(hash);
    }
    // The 4 zero bytes after the last entry end the table.
    debug_assert!(off + 4 <= vend);
    hashes
}

/// Encodes `xattrs` (full names) for one inode: as many as fit in the inode
/// body (in order), the rest in one external block.
pub(crate) fn encode(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Encoded, Ext4Error> {
    if xattrs.is_empty() {
        return Ok(Encoded::default());
    }
    let mut attrs = Vec::with_capacity(xattrs.len());
    for (full, value) in xattrs {
        let (index, name) = split_name(full)?;
        let value = if index == 2 || index == 3 {
            acl_to_disk(full, value)?
        } else {
            value.clone()
        };
        if value.len()
            > BS as usize - BLOCK_HEADER - ENTRY_HEADER - 4 - name.len().next_multiple_of(4)
        {
            return Err(Ext4Error::XattrTooLarge {
                name: full.clone(),
                size: value.len(),
            });
        }
        attrs.push(Attr {
            index,
            name: name.to_vec(),
            value,
        });
    }
    // The kernel looks attributes up in a block assuming this order.
    attrs.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));

    // In-inode area: 4-byte magic, entries, 4-byte end marker, values.
    let mut in_body = Vec::new();
    let mut in_block = Vec::new();
    let mut used = 4 + 4;
    for a in &attrs {
        let cost = a.entry_size() + a.value_size();
        if used + cost <= IBODY_SIZE {
            used += cost;
            in_body.push(a);
        } else {
            in_block.push(a);
        }
    }
    let mut out = Encoded::default();
    if !in_body.is_empty() {
        let mut area = vec![0u8; IBODY_SIZE];
        area[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        // In-inode value offsets count from the first entry, after the magic.
        place(&mut area, 4, 4, &in_body);
        out.ibody = Some(area);
    }
    if !in_block.is_empty() {
        let need: usize = BLOCK_HEADER
            + 4
            + in_block
                .iter()
                .map(|a| a.entry_size() + a.value_size())
                .sum::<usize>();
        if need > BS as usize {
            let size = in_block.iter().map(|a| a.value.len()).sum();
            return Err(Ext4Error::XattrTooLarge {
                name: in_block[0].name.clone(),
                size,
            });
        }
        let mut block = vec![0u8; BS as usize];
        block[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        block[4..8].copy_from_slice(&1u32.to_le_bytes()); // h_refcount
        block[8..12].copy_from_slice(&1u32.to_le_bytes()); // h_blocks
        let hashes = place(&mut block, BLOCK_HEADER, 0, &in_block);
        // ext4_xattr_rehash: the block hash mixes the entry hashes.
        let mut h = 0u32;
        for eh in hashes {
            h = (h << 16) ^ (h >> 16) ^ eh;
        }
        block[12..16].copy_from_slice(&h.to_le_bytes());
        out.block = Some(block);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(&str, &[u8])]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        items
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn names() {
        assert_eq!(split_name(b"user.foo").unwrap(), (1, &b"foo"[..]));
        assert_eq!(
            split_name(b"system.posix_acl_default").unwrap(),
            (3, &b""[..])
        );
        assert_eq!(
            split_name(b"security.capability").unwrap(),
            (6, &b"capability"[..])
        );
        assert!(split_name(b"user.").is_err());
        assert!(split_name(b"os2.x").is_err());
    }

    #[test]
    fn small_in_inode_big_in_block() {
        let e = encode(&map(&[("user.foo", b"bar")])).unwrap();
        assert!(e.ibody.is_some() && e.block.is_none());
        let big = vec![7u8; 1000];
        let e = encode(&map(&[
            ("user.a", &big),
            ("user.b", &big),
            ("user.c", b"x"),
        ]))
        .unwrap();
        assert!(e.ibody.is_some() && e.block.is_some());
        let too_big = vec![0u8; 4096];
        assert!(matches!(
            encode(&map(&[("user.a", &too_big)])),
            Err(Ext4Error::XattrTooLarge { .. })
        ));
        let e = encode(&map(&[
            ("user.a", &vec![1u8; 2000]),
            ("user.b", &vec![1u8; 2000]),
            ("user.c", &[1u8; 200]),
        ]));
        assert!(matches!(e, Err(Ext4Error::XattrTooLarge { .. })));
    }

    #[test]
    fn acl_conversion() {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        let d = acl_to_disk(b"system.posix_acl_access", &v).unwrap();
        assert_eq!(d.len(), 4 + 4 + 8 + 4 + 4);
        assert!(acl_to_disk(b"system.posix_acl_access", b"junk").is_err());
    }
}
