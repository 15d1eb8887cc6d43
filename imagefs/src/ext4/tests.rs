//! End-to-end tests: build images, check them with `e2fsck -fn`, and read
//! them back with `debugfs`.

use std::collections::BTreeMap;
use std::io::Cursor;

use super::testutil::*;
use super::{estimate_size, Ext4Builder, Ext4Error, Ext4Options};
use crate::tree::{Metadata, NodeKind, Tree};

#[test]
fn empty_filesystem() {
    let img = TestImage::new("empty");
    let b = img.builder(64 * MIB);
    let stats = finish_checked(b, &Tree::new(), &img);
    assert_eq!(stats.size, 64 * MIB);
    assert_eq!(stats.inodes_used, 11);
    assert_eq!(img.ls("/"), vec!["lost+found"]);
    let lf = img.stat("/lost+found");
    assert_eq!(
        (lf.inode, lf.mode, lf.uid, lf.gid, lf.links),
        (11, 0o700, 0, 0, 2)
    );
    let root = img.stat("/");
    assert_eq!((root.inode, root.mode, root.links), (2, 0o755, 3));
    // Sparse: only a handful of metadata blocks were written.
    assert_eq!(img.len(), 64 * MIB);
    assert!(img.allocated() < MIB, "allocated {}", img.allocated());
    let sb = img.debugfs("stats");
    assert!(sb.contains("Filesystem volume name:   minivm-test"), "{sb}");
    assert!(
        sb.contains("Filesystem UUID:          8b2e4c1a-5731-4e9d-a06f-123456789abc"),
        "{sb}"
    );
    assert!(sb.contains("Filesystem state:         clean"), "{sb}");
}

#[test]
fn nested_dirs_and_link_counts() {
    let img = TestImage::new("nested");
    let b = img.builder(32 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    let a = mkdir(&mut t, root, b"a");
    let ab = mkdir(&mut t, a, b"b");
    let abc = mkdir(&mut t, ab, b"c");
    mkdir(&mut t, a, b"d");
    mkdir(&mut t, a, b"e");
    add(&mut t, a, b"fifo", NodeKind::Fifo, meta(0o600, 0, 0));
    add(&mut t, abc, b"deep", NodeKind::Fifo, meta(0o644, 0, 0));
    finish_checked(b, &t, &img);
    assert_eq!(img.stat("/").links, 4); // a, lost+found
    assert_eq!(img.stat("/a").links, 5); // b, d, e
    assert_eq!(img.stat("/a/b").links, 3);
    assert_eq!(img.stat("/a/b/c").links, 2);
    assert_eq!(img.ls("/a"), vec!["b", "d", "e", "fifo"]);
    assert_eq!(img.stat("/a/b/c/deep").kind, "FIFO");
}

#[test]
fn directory_with_5000_entries() {
    let img = TestImage::new("bigdir");
    let mut b = img.builder(64 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    let d = mkdir(&mut t, root, b"many");
    let shared = add_file(&mut b, &mut t, root, b"shared", b"x");
    let mut names = Vec::new();
    for i in 0..5000 {
        let name = format!("file-number-{i:05}");
        if i % 10 == 0 {
            mkdir(&mut t, d, name.as_bytes());
        } else {
            link(&mut t, d, name.as_bytes(), shared);
        }
        names.push(name);
    }
    finish_checked(b, &t, &img);
    let st = img.stat("/many");
    assert!(st.size > 4096 * 20, "size {}", st.size);
    assert_eq!(st.links, 2 + 500);
    assert_eq!(img.ls("/many"), names);
    assert_eq!(img.stat("/shared").links, 4501);
    assert_eq!(img.cat("/many/file-number-04999"), b"x");
}

#[test]
fn regular_file_sizes() {
    let img = TestImage::new("sizes");
    let mut b = img.builder(64 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    let sizes = [0usize, 1, 4095, 4096, 4097, 10 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        add_file(
            &mut b,
            &mut t,
            root,
            format!("f{n}").as_bytes(),
            &pattern(n, i as u64),
        );
    }
    finish_checked(b, &t, &img);
    for (i, &n) in sizes.iter().enumerate() {
        let path = format!("/f{n}");
        let st = img.stat(&path);
        assert_eq!((st.size, st.links, st.mode), (n as u64, 1, 0o644), "{path}");
        assert_eq!(st.blockcount, (n as u64).div_ceil(4096) * 8, "{path}");
        assert!(
            img.cat(&path) == pattern(n, i as u64),
            "{path} contents differ"
        );
    }
}

#[test]
fn fragmented_file_uses_index_blocks() {
    let img = TestImage::new("frag");
    let mut b = img.builder(32 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    // Alternate kept and freed 2 MiB pieces, leaving six 2 MiB holes.
    let mut holes = Vec::new();
    for i in 0..12u64 {
        let data = pattern(2 << 20, 100 + i);
        let id = b
            .write_data(&mut Cursor::new(&data), data.len() as u64)
            .unwrap();
        if i % 2 == 0 {
            holes.push(id);
        } else {
            add(
                &mut t,
                root,
                format!("keep{i}").as_bytes(),
                NodeKind::File {
                    size: data.len() as u64,
                    data: Some(id),
                },
                meta(0o644, 0, 0),
            );
        }
    }
    for id in holes {
        b.free_data(id);
    }
    // 15 MiB: six holes (12 MiB) + 3 MiB after the kept files.
    let big = pattern(15 << 20, 7);
    add_file(&mut b, &mut t, root, b"D", &big);
    finish_checked(b, &t, &img);
    let ex = img.debugfs("ex /D");
    let leaves = ex
        .lines()
        .filter(|l| l.contains(" - ") && l.trim_start().starts_with("1/"))
        .count();
    assert!(leaves > 4, "expected > 4 extents:\n{ex}");
    assert!(
        ex.lines().any(|l| l.trim_start().starts_with("0/ 1")),
        "expected an index level:\n{ex}"
    );
    let st = img.stat("/D");
    assert_eq!(st.blockcount, ((15u64 << 20) / 4096 + 1) * 8); // data + one leaf block
    assert!(img.cat("/D") == big, "D contents differ");
    assert!(img.cat("/keep5") == pattern(2 << 20, 105));
}

#[test]
fn hardlinks_share_an_inode() {
    let img = TestImage::new("hardlinks");
    let mut b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    let d = mkdir(&mut t, root, b"d");
    let f = add_file(&mut b, &mut t, root, b"one", b"hello");
    link(&mut t, root, b"two", f);
    link(&mut t, d, b"three", f);
    finish_checked(b, &t, &img);
    let (a, c) = (img.stat("/one"), img.stat("/d/three"));
    assert_eq!(a.links, 3);
    assert_eq!(a.inode, c.inode);
    assert_eq!(img.cat("/two"), b"hello");
}

#[test]
fn symlinks_devices_fifos() {
    let img = TestImage::new("special");
    let b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    let long: Vec<u8> = (0..200).map(|i| b'a' + (i % 26) as u8).collect();
    add(
        &mut t,
        root,
        b"short",
        NodeKind::Symlink(b"../target/file".to_vec()),
        meta(0o777, 0, 0),
    );
    add(
        &mut t,
        root,
        b"edge59",
        NodeKind::Symlink(vec![b'e'; 59]),
        meta(0o777, 0, 0),
    );
    add(
        &mut t,
        root,
        b"edge60",
        NodeKind::Symlink(vec![b'f'; 60]),
        meta(0o777, 0, 0),
    );
    add(
        &mut t,
        root,
        b"long",
        NodeKind::Symlink(long.clone()),
        meta(0o777, 5, 6),
    );
    add(
        &mut t,
        root,
        b"null",
        NodeKind::CharDev { major: 1, minor: 3 },
        meta(0o666, 0, 0),
    );
    add(
        &mut t,
        root,
        b"sda1",
        NodeKind::BlockDev { major: 8, minor: 1 },
        meta(0o660, 0, 6),
    );
    add(
        &mut t,
        root,
        b"bigchr",
        NodeKind::CharDev {
            major: 300,
            minor: 70000,
        },
        meta(0o600, 0, 0),
    );
    add(
        &mut t,
        root,
        b"bigblk",
        NodeKind::BlockDev {
            major: 259,
            minor: 256,
        },
        meta(0o600, 0, 0),
    );
    add(&mut t, root, b"pipe", NodeKind::Fifo, meta(0o644, 0, 0));
    finish_checked(b, &t, &img);
    let s = img.stat("/short");
    assert_eq!((s.kind.as_str(), s.size, s.mode), ("symlink", 14, 0o777));
    assert_eq!(s.fast_link.as_deref(), Some("../target/file"));
    assert_eq!(
        img.stat("/edge59").fast_link.as_deref(),
        Some(&*"e".repeat(59))
    );
    let l = img.stat("/long");
    assert_eq!(
        (l.size, l.uid, l.gid, l.fast_link.is_none(), l.blockcount),
        (200, 5, 6, true, 8)
    );
    assert_eq!(img.cat("/long"), long);
    assert_eq!(img.cat("/edge60"), vec![b'f'; 60]);
    for (path, kind, dev) in [
        ("/null", "character", (1, 3)),
        ("/sda1", "block", (8, 1)),
        ("/bigchr", "character", (300, 70000)),
        ("/bigblk", "block", (259, 256)),
    ] {
        let s = img.stat(path);
        assert_eq!((s.kind.as_str(), s.device), (kind, Some(dev)), "{path}");
    }
    assert_eq!(img.stat("/pipe").kind, "FIFO");
}

#[test]
fn modes_owners_and_times() {
    let img = TestImage::new("meta");
    let b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    let cases: [(&str, u16, u32, u32, i64, u32); 5] = [
        ("suid", 0o4755, 0, 0, 0, 0),
        ("sgid", 0o2711, 70000, 80000, -1, 999_999_999),
        (
            "sticky",
            0o1777,
            65536,
            4_000_000_000,
            -1_000_000_000,
            123_456_789,
        ),
        ("future", 0o640, 1000, 1000, 2_200_000_000, 5),
        ("far", 0o400, 1, 2, 9_000_000_000, 42),
    ];
    for (name, perm, uid, gid, mtime, nsec) in cases {
        let m = Metadata {
            perm,
            uid,
            gid,
            mtime,
            mtime_nsec: nsec,
            xattrs: BTreeMap::new(),
        };
        let kind = if name == "sticky" {
            NodeKind::Dir(BTreeMap::new())
        } else {
            NodeKind::Fifo
        };
        add(&mut t, root, name.as_bytes(), kind, m);
    }
    finish_checked(b, &t, &img);
    for (name, perm, uid, gid, mtime, nsec) in cases {
        let s = img.stat(&format!("/{name}"));
        assert_eq!(
            (s.mode, s.uid, s.gid),
            (u32::from(perm), uid, gid),
            "{name}"
        );
        assert_eq!(s.mtime_raw.1 >> 2, nsec, "{name}");
        assert_eq!(s.mtime_text, date_text(mtime), "{name}");
    }
}

#[test]
fn names_utf8_and_255_bytes() {
    let img = TestImage::new("names");
    let mut b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    let utf8 = "grüße-日本語-🦀".as_bytes();
    let long = vec![b'n'; 255];
    add_file(&mut b, &mut t, root, utf8, b"utf8");
    let d = mkdir(&mut t, root, &long);
    add_file(&mut b, &mut t, d, &long, b"long");
    finish_checked(b, &t, &img);
    let long_s = String::from_utf8(long).unwrap();
    let mut want = vec![
        "grüße-日本語-🦀".to_owned(),
        long_s.clone(),
        "lost+found".to_owned(),
    ];
    want.sort();
    assert_eq!(img.ls("/"), want);
    assert_eq!(img.cat(&format!("/{long_s}/{long_s}")), b"long");

    let img = TestImage::new("names-bad");
    let b = img.builder(16 * MIB);
    let mut t = Tree::new();
    let root = t.root;
    add(
        &mut t,
        root,
        &[b'x'; 256],
        NodeKind::Fifo,
        meta(0o644, 0, 0),
    );
    assert!(matches!(b.finish(&t), Err(Ext4Error::NameTooLong(n)) if n.len() == 256));
}

#[test]
fn sizes_with_partial_groups() {
    for size in [
        200 * MIB,
        129 * MIB,
        300 * MIB + 4096,
        128 * MIB + 4096,
        3 * 128 * MIB,
    ] {
        let img = TestImage::new("groups");
        let mut b = img.builder(size);
        let mut t = Tree::new();
        let root = t.root;
        // Most of the space, so data lands in every group.
        let n = (size - size / 8) as usize;
        let data = pattern(n, size);
        add_file(&mut b, &mut t, root, b"big", &data);
        for i in 0..50 {
            let d = mkdir(&mut t, root, format!("d{i}").as_bytes());
            add_file(&mut b, &mut t, d, b"f", &pattern(5000, i));
        }
        let stats = finish_checked(b, &t, &img);
        assert_eq!(img.len(), size);
        assert!(
            stats.size <= size && stats.size > size - 2 * MIB,
            "{size} -> {}",
            stats.size
        );
        assert!(img.cat("/big") == data, "size {size}: contents differ");
        assert_eq!(img.cat("/d49/f"), pattern(5000, 49));
    }
}

#[test]
fn no_space_fails_fast() {
    let img = TestImage::new("nospace");
    let mut b = img.builder(8 * MIB);
    // A reader that would produce endless data: must not even be read.
    let mut endless = std::io::repeat(0xAB);
    match b.write_data(&mut endless, 9 * MIB) {
        Err(Ext4Error::NoSpace { needed, size }) => {
            assert_eq!(size, 8 * MIB);
            assert!(needed > 9 * MIB);
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(img.len(), 8 * MIB);
    assert!(img.allocated() < MIB);
    // The builder stays usable after the failure.
    let mut t = Tree::new();
    let root = t.root;
    add_file(&mut b, &mut t, root, b"small", b"fits");
    finish_checked(b, &t, &img);
    assert_eq!(img.len(), 8 * MIB);
}

#[test]
fn too_small_and_bad_options() {
    let img = TestImage::new("small");
    let err = Ext4Builder::new(img.create(), opts(100 * 1024))
        .err()
        .unwrap();
    assert!(
        matches!(err, Ext4Error::TooSmall { size: 102400, min } if min > 102400),
        "{err:?}"
    );
    let mut o = opts(16 * MIB);
    o.label = "x".repeat(17);
    assert!(matches!(
        Ext4Builder::new(img.create(), o),
        Err(Ext4Error::LabelTooLong(_))
    ));
    let o = Ext4Options {
        size: (16 << 40) + 4096,
        ..opts(0)
    };
    assert!(matches!(
        Ext4Builder::new(img.create(), o),
        Err(Ext4Error::TooLarge { .. })
    ));
}

#[test]
fn short_reader_is_an_error() {
    let img = TestImage::new("short");
    let mut b = img.builder(8 * MIB);
    let err = b
        .write_data(&mut Cursor::new(vec![1u8; 100]), 5000)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Ext4Error::ShortRead {
                expected: 5000,
                got: 100
            }
        ),
        "{err:?}"
    );
    finish_checked(b, &Tree::new(), &img);
}

#[test]
fn estimate_is_sufficient() {
    let (files, dirs) = (3000u64, 300u64);
    let data_bytes: u64 = (0..files).map(|i| (i * 7919) % 20000).sum();
    let size = estimate_size(files, dirs, data_bytes);
    let img = TestImage::new("estimate");
    let mut b = img.builder(size);
    let mut t = Tree::new();
    let root = t.root;
    let ds: Vec<_> = (0..dirs)
        .map(|i| mkdir(&mut t, root, format!("directory-{i}").as_bytes()))
        .collect();
    for i in 0..files {
        let data = pattern(((i * 7919) % 20000) as usize, i);
        add_file(
            &mut b,
            &mut t,
            ds[(i % dirs) as usize],
            format!("some-file-name-{i}").as_bytes(),
            &data,
        );
    }
    let stats = finish_checked(b, &t, &img);
    assert!(stats.blocks_used * 4096 <= size);
    // Not wildly over: within 2x of what was used.
    assert!(
        size < 2 * stats.blocks_used * 4096 + 8 * MIB,
        "estimate {size}, used {}",
        stats.blocks_used * 4096
    );
}

#[test]
fn estimate_covers_inodes_for_many_small_files() {
    let size = estimate_size(20_000, 10, 0);
    let layout = super::layout::Layout::new(size, None).unwrap();
    assert!(layout.inodes_count() >= 20_000 + 10 + 11, "{layout:?}");
    assert!(size < 400 * MIB, "{size}");
}
