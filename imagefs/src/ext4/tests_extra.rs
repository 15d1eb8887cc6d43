//! More end-to-end tests: xattrs, lost+found variants, inode limits, data
//! bookkeeping, very wide directories, and a timing run for a large tree.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::Instant;

use super::testutil::*;
use super::{Ext4Builder, Ext4Error};
use crate::tree::{DataId, Metadata, NodeKind, Tree};

fn with_xattrs(items: &[(&str, &[u8])]) -> Metadata {
    let mut m = meta(0o644, 0, 0);
    m.xattrs = items
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
        .collect();
    m
}

/// A POSIX ACL in the xattr (user space) format: version 2, 8-byte entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn xattrs_in_inode_and_in_block() {
    let img = TestImage::new("xattr");
    let mut b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    let cap: &[u8] = &[
        0, 0, 0, 2, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let small = with_xattrs(&[("user.foo", b"bar")]);
    let kind = file_kind(&mut b, b"small");
    add(&mut t, root, b"small", kind, small);
    let kind = file_kind(&mut b, b"ping");
    add(
        &mut t,
        root,
        b"ping",
        kind,
        with_xattrs(&[("security.capability", cap)]),
    );
    let big1 = pattern(1500, 1);
    let big2 = pattern(1200, 2);
    let many = with_xattrs(&[
        ("user.a", b"1"),
        ("user.big1", &big1),
        ("trusted.big2", &big2),
        ("security.selinux", b"system_u:object_r:bin_t:s0\0"),
        ("user.empty", b""),
        ("user.non-ascii-\u{e9}", b"x"),
    ]);
    let kind = file_kind(&mut b, b"many");
    add(&mut t, root, b"many", kind, many.clone());
    add(
        &mut t,
        root,
        b"dir",
        NodeKind::Dir(BTreeMap::new()),
        many.clone(),
    );
    let user_acl = acl(&[
        (1, 7, u32::MAX),
        (2, 5, 1000),
        (4, 5, u32::MAX),
        (0x10, 5, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    let def_acl = acl(&[(1, 7, u32::MAX), (4, 5, u32::MAX), (0x20, 5, u32::MAX)]);
    let acls = with_xattrs(&[
        ("system.posix_acl_access", &user_acl),
        ("system.posix_acl_default", &def_acl),
    ]);
    add(&mut t, root, b"acl", NodeKind::Dir(BTreeMap::new()), acls);
    finish_checked(b, &t, &img);

    assert_eq!(img.ea_get("/small", "user.foo"), b"bar");
    assert_eq!(img.stat("/small").blockcount, 8); // data only: the xattr is in the inode
    assert_eq!(img.ea_get("/ping", "security.capability"), cap);
    for path in ["/many", "/dir"] {
        for (name, value) in &many.xattrs {
            let name = String::from_utf8(name.clone()).unwrap();
            assert_eq!(&img.ea_get(path, &name), value, "{path} {name}");
        }
        let st = img.stat(path);
        assert!(
            st.text.contains("File ACL: ") && !st.text.contains("File ACL: 0\n"),
            "{}",
            st.text
        );
        assert_eq!(st.blockcount, 16, "{path}: data block + xattr block");
    }
    // debugfs reports the id of owner/mask/other entries as 0 (the kernel as -1).
    let norm = |v: &[u8]| -> Vec<u8> {
        let mut v = v.to_vec();
        for e in v[4..].chunks_exact_mut(8) {
            if e[0] != 2 && e[0] != 8 {
                e[4..8].fill(0);
            }
        }
        v
    };
    assert_eq!(
        img.ea_get("/acl", "system.posix_acl_access"),
        norm(&user_acl)
    );
    assert_eq!(
        img.ea_get("/acl", "system.posix_acl_default"),
        norm(&def_acl)
    );
}

#[test]
fn xattr_errors() {
    for (items, want) in [
        (vec![("os2.name", vec![1u8])], "unsupported"),
        (vec![("user.huge", vec![0u8; 4096])], "large"),
        (
            vec![("user.a", vec![0u8; 2500]), ("user.b", vec![0u8; 2500])],
            "large",
        ),
        (vec![("system.posix_acl_access", b"bogus".to_vec())], "acl"),
    ] {
        let img = TestImage::new("xattr-err");
        let b = img.builder(16 * MIB);
        let mut t = Tree::new();
        let root = t.root;
        let refs: Vec<(&str, &[u8])> = items.iter().map(|(k, v)| (*k, &v[..])).collect();
        add(&mut t, root, b"f", NodeKind::Fifo, with_xattrs(&refs));
        let err = b.finish(&t).unwrap_err();
        let ok = match want {
            "unsupported" => matches!(err, Ext4Error::UnsupportedXattr(_)),
            "large" => matches!(err, Ext4Error::XattrTooLarge { .. }),
            _ => matches!(err, Ext4Error::InvalidAcl(_)),
        };
        assert!(ok, "{want}: {err:?}");
    }
}

#[test]
fn lost_found_from_the_tree() {
    // A directory named lost+found is kept (and becomes inode 11).
    let img = TestImage::new("lf-dir");
    let mut b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    let lf = add(
        &mut t,
        root,
        b"lost+found",
        NodeKind::Dir(BTreeMap::new()),
        meta(0o750, 7, 8),
    );
    add_file(&mut b, &mut t, lf, b"kept", b"data");
    add_file(&mut b, &mut t, root, b"other", b"x");
    finish_checked(b, &t, &img);
    let st = img.stat("/lost+found");
    assert_eq!((st.inode, st.mode, st.uid, st.gid), (11, 0o750, 7, 8));
    assert_eq!(img.cat("/lost+found/kept"), b"data");

    // A non-directory lost+found is kept as is; none is added.
    let img = TestImage::new("lf-file");
    let mut b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    add_file(&mut b, &mut t, root, b"lost+found", b"not a dir");
    b.finish(&t).unwrap();
    assert_eq!(img.stat("/lost+found").kind, "regular");
    assert_eq!(img.cat("/lost+found"), b"not a dir");
}

#[test]
fn inode_limits() {
    let img = TestImage::new("inodes");
    let b = Ext4Builder::new(
        img.create(),
        super::Ext4Options {
            inodes: Some(40),
            ..opts(16 * MIB)
        },
    )
    .unwrap();
    let mut t = Tree::new();
    let root = t.root;
    for i in 0..100 {
        add(
            &mut t,
            root,
            format!("p{i}").as_bytes(),
            NodeKind::Fifo,
            meta(0o644, 0, 0),
        );
    }
    let err = b.finish(&t).unwrap_err();
    assert!(
        matches!(
            err,
            Ext4Error::NoInodes {
                needed: 111,
                available: 48
            }
        ),
        "{err:?}"
    );

    // Exactly full: every inode used.
    let b = Ext4Builder::new(
        img.create(),
        super::Ext4Options {
            inodes: Some(48),
            ..opts(16 * MIB)
        },
    )
    .unwrap();
    let mut t = Tree::new();
    let root = t.root;
    for i in 0..37 {
        add(
            &mut t,
            root,
            format!("p{i}").as_bytes(),
            NodeKind::Fifo,
            meta(0o644, 0, 0),
        );
    }
    let stats = finish_checked(b, &t, &img);
    assert_eq!(stats.inodes_used, 48);
}

#[test]
fn unused_and_freed_data_is_released() {
    let img = TestImage::new("release");
    let mut b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    // Written, never freed, not in the tree: finish releases it.
    b.write_data(&mut Cursor::new(vec![1u8; 100_000]), 100_000)
        .unwrap();
    // Written, then the file is replaced.
    let old = b
        .write_data(&mut Cursor::new(vec![2u8; 50_000]), 50_000)
        .unwrap();
    b.free_data(old);
    b.free_data(old); // twice is harmless
    add_file(&mut b, &mut t, root, b"new", b"replacement");
    // An orphan node (unlinked by a later layer) that still names data.
    let orphan = file_kind(&mut b, &[3u8; 9000]);
    t.add(crate::tree::Node {
        kind: orphan,
        meta: meta(0o644, 0, 0),
    });
    let stats = finish_checked(b, &t, &img);
    assert_eq!(img.cat("/new"), b"replacement");
    // sb + gdt + 2 bitmaps + 64 inode-table blocks, root, lost+found (4), one data block.
    assert_eq!(stats.blocks_used, 4 + 64 + 1 + 4 + 1, "{stats:?}");

    // Referencing freed data is an error, and so is sharing data.
    let img = TestImage::new("release-err");
    let mut b = img.builder(16 * MIB);
    let id = b.write_data(&mut Cursor::new(b"abc"), 3).unwrap();
    let mut t = Tree::new();
    let root = t.root;
    add(
        &mut t,
        root,
        b"a",
        NodeKind::File {
            size: 3,
            data: Some(id),
        },
        meta(0o644, 0, 0),
    );
    add(
        &mut t,
        root,
        b"b",
        NodeKind::File {
            size: 3,
            data: Some(id),
        },
        meta(0o644, 0, 0),
    );
    assert!(matches!(b.finish(&t), Err(Ext4Error::SharedData(_))));
    let b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    add(
        &mut t,
        root,
        b"a",
        NodeKind::File {
            size: 3,
            data: Some(DataId(99)),
        },
        meta(0o644, 0, 0),
    );
    assert!(matches!(
        b.finish(&t),
        Err(Ext4Error::UnknownData(DataId(99)))
    ));
}

#[test]
fn sparse_file_without_data() {
    let img = TestImage::new("hole");
    let b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    add(
        &mut t,
        root,
        b"hole",
        NodeKind::File {
            size: 1 << 30,
            data: None,
        },
        meta(0o600, 0, 0),
    );
    finish_checked(b, &t, &img);
    let st = img.stat("/hole");
    assert_eq!((st.size, st.blockcount), (1 << 30, 0));
}

#[test]
fn more_than_65000_subdirectories() {
    let img = TestImage::new("nlink");
    let b = Ext4Builder::new(
        img.create(),
        super::Ext4Options {
            inodes: Some(70_000),
            ..opts(512 * MIB)
        },
    )
    .unwrap();
    let mut t = Tree::new();
    let root = t.root;
    let d = mkdir(&mut t, root, b"wide");
    for i in 0..65_010 {
        mkdir(&mut t, d, format!("{i}").as_bytes());
    }
    finish_checked(b, &t, &img);
    assert_eq!(img.stat("/wide").links, 1);
    assert_eq!(img.stat("/wide/65009").links, 2);
}

#[test]
fn superblock_backups() {
    // 1 GiB + 20 MiB: 9 groups, the last partial; backups in 1, 3, 5, 7.
    let size = 1044 * MIB;
    let img = TestImage::new("backups");
    let mut b = img.builder(size);
    let mut t = Tree::new();
    let root = t.root;
    add_file(&mut b, &mut t, root, b"f", &pattern(100_000, 1));
    let stats = finish_checked(b, &t, &img);
    assert_eq!(stats.size, size);
    let file = std::fs::File::open(&img.path).unwrap();
    let read = |off: u64| {
        let mut sb = vec![0u8; 1024];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut sb, off).unwrap();
        sb
    };
    let primary = read(1024);
    for g in 1..9u64 {
        let sb = read(g * 32768 * 4096);
        if [1, 3, 5, 7].contains(&g) {
            img.fsck_backup(g * 32768);
            assert_eq!(
                u64::from(u16::from_le_bytes([sb[0x5A], sb[0x5B]])),
                g,
                "s_block_group_nr"
            );
            assert_eq!(&sb[..0x5A], &primary[..0x5A]);
            assert_eq!(&sb[0x5C..], &primary[0x5C..]);
        } else {
            assert_ne!(&sb[0x38..0x3A], &[0x53, 0xEF], "no backup in group {g}");
        }
    }
    assert!(img.allocated() < 4 * MIB, "allocated {}", img.allocated());
}

/// A ~300 MB, 10k-file tree; run with `--ignored --nocapture` for timings.
#[test]
#[ignore]
fn big_tree_timing() {
    let img = TestImage::new("timing");
    let mut b = img.builder(600 * MIB);
    let start = Instant::now();
    let mut t = Tree::new();
    let root = t.root;
    let dirs: Vec<_> = (0..500)
        .map(|i| mkdir(&mut t, root, format!("dir{i}").as_bytes()))
        .collect();
    let chunk = pattern(2_000_000, 5);
    let mut total = 0u64;
    for i in 0..10_000u64 {
        let len = if i % 100 == 0 {
            2_000_000
        } else {
            10_000 + (i * 7919) % 40_000
        } as usize;
        total += len as u64;
        let kind = file_kind(&mut b, &chunk[..len]);
        let mut m = meta(0o644, 1000, 1000);
        m.xattrs
            .insert(b"user.i".to_vec(), i.to_le_bytes().to_vec());
        add(
            &mut t,
            dirs[(i % 500) as usize],
            format!("file-{i}").as_bytes(),
            kind,
            m,
        );
    }
    let written = start.elapsed();
    let stats = b.finish(&t).unwrap();
    let finished = start.elapsed();
    eprintln!(
        "{total} bytes in 10000 files: data {written:?}, finish {:?}, {stats:?}",
        finished - written
    );
    let fsck = Instant::now();
    img.fsck();
    eprintln!("e2fsck {:?}", fsck.elapsed());
}

/// A 1 TiB sparse filesystem: every group's bitmaps are written, nothing else.
/// Run with `--ignored --nocapture` (needs a host filesystem allowing 1 TiB files).
#[test]
#[ignore]
fn huge_sparse_filesystem() {
    let img = TestImage::new("huge");
    let start = Instant::now();
    let mut b = img.builder(1 << 40);
    let mut t = Tree::new();
    let root = t.root;
    add_file(&mut b, &mut t, root, b"f", b"tiny");
    let stats = b.finish(&t).unwrap();
    eprintln!(
        "1 TiB: finish {:?}, {stats:?}, {} bytes allocated",
        start.elapsed(),
        img.allocated()
    );
    img.fsck();
}
