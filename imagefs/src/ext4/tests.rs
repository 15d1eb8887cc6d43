//! ext4 writer tests: every image must pass `e2fsck -fn`; contents are read
//! back with debugfs.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::Command;

use super::*;
use crate::tree::{Metadata, Node, NodeKind, Tree};

struct Img(PathBuf);
impl Drop for Img {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn opts(size: u64) -> Ext4Options {
    Ext4Options {
        size,
        inodes: None,
        label: "test".into(),
        uuid: [7; 16],
        timestamp: 1_700_000_000,
    }
}

fn new_img(name: &str, size: u64) -> (Img, Ext4Builder) {
    let p = std::env::temp_dir().join(format!("minivm-ext4-{name}-{}.raw", std::process::id()));
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    (Img(p), Ext4Builder::new(f, opts(size)).unwrap())
}

fn fsck(img: &Img) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img.0)
        .output()
        .expect("e2fsck");
    assert!(
        out.status.success(),
        "e2fsck failed ({:?}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn debugfs(img: &Img, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(&img.0)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn meta(perm: u16) -> Metadata {
    Metadata {
        perm,
        mtime: 1_600_000_000,
        ..Default::default()
    }
}

fn add(t: &mut Tree, dir: usize, name: &str, kind: NodeKind, m: Metadata) -> usize {
    let id = t.add(Node { kind, meta: m });
    t.children_mut(dir)
        .unwrap()
        .insert(name.as_bytes().to_vec(), id);
    id
}

fn file(b: &mut Ext4Builder, data: &[u8]) -> NodeKind {
    let id = if data.is_empty() {
        None
    } else {
        Some(b.write_data(&mut &data[..], data.len() as u64).unwrap())
    };
    NodeKind::File {
        size: data.len() as u64,
        data: id,
    }
}

#[test]
fn empty_filesystem_is_clean() {
    let (img, b) = new_img("empty", 64 << 20);
    b.finish(&Tree::new()).unwrap();
    fsck(&img);
    assert!(debugfs(&img, "ls -l /").contains("lost+found"));
}

#[test]
fn files_dirs_links_devices_xattrs() {
    let (img, mut b) = new_img("mixed", 300 << 20);
    let mut t = Tree::new();
    let root = t.root;
    let etc = add(
        &mut t,
        root,
        "etc",
        NodeKind::Dir(BTreeMap::new()),
        meta(0o755),
    );
    let sizes = [0usize, 1, 4095, 4096, 4097, 10 << 20];
    for s in sizes {
        let data: Vec<u8> = (0..s).map(|i| (i % 251) as u8).collect();
        let k = file(&mut b, &data);
        add(&mut t, etc, &format!("f{s}"), k, meta(0o644));
    }
    let k = file(&mut b, b"shared\n");
    let shared = add(
        &mut t,
        root,
        "hl1",
        k,
        Metadata {
            uid: 100_000,
            gid: 70_000,
            ..meta(0o4755)
        },
    );
    t.children_mut(etc).unwrap().insert(b"hl2".to_vec(), shared);
    t.children_mut(root)
        .unwrap()
        .insert(b"hl3".to_vec(), shared);
    add(
        &mut t,
        root,
        "short",
        NodeKind::Symlink(b"etc/f1".to_vec()),
        meta(0o777),
    );
    add(
        &mut t,
        root,
        "long",
        NodeKind::Symlink(vec![b'x'; 200]),
        meta(0o777),
    );
    add(
        &mut t,
        root,
        "null",
        NodeKind::CharDev { major: 1, minor: 3 },
        meta(0o666),
    );
    add(
        &mut t,
        root,
        "big",
        NodeKind::BlockDev {
            major: 259,
            minor: 300,
        },
        meta(0o660),
    );
    add(&mut t, root, "fifo", NodeKind::Fifo, meta(0o600));
    add(
        &mut t,
        root,
        "sticky",
        NodeKind::Dir(BTreeMap::new()),
        meta(0o1777),
    );
    let mut caps = meta(0o755);
    caps.xattrs.insert(
        b"security.capability".to_vec(),
        vec![1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    caps.xattrs.insert(b"user.foo".to_vec(), b"bar".to_vec());
    let k = file(&mut b, b"caps");
    add(&mut t, root, "caps", k, caps);
    let mut many = meta(0o644);
    for i in 0..20 {
        many.xattrs
            .insert(format!("user.attribute-{i}").into_bytes(), vec![b'v'; 50]);
    }
    let k = file(&mut b, b"many xattrs");
    add(&mut t, root, "many", k, many);
    let mut old = meta(0o644);
    old.mtime = -1_000_000_000;
    old.mtime_nsec = 5;
    add(&mut t, root, "old", NodeKind::Fifo, old);
    let mut future = meta(0o644);
    future.mtime = 4_000_000_000;
    future.mtime_nsec = 999_999_999;
    add(&mut t, root, "future", NodeKind::Fifo, future);
    add(&mut t, root, "ünïcödé-✓", NodeKind::Fifo, meta(0o644));
    add(&mut t, root, &"n".repeat(255), NodeKind::Fifo, meta(0o644));
    let big = add(
        &mut t,
        root,
        "bigdir",
        NodeKind::Dir(BTreeMap::new()),
        meta(0o755),
    );
    for i in 0..5000 {
        add(
            &mut t,
            big,
            &format!("entry-number-{i:05}"),
            NodeKind::Fifo,
            meta(0o644),
        );
    }
    for i in 0..30 {
        add(
            &mut t,
            big,
            &format!("sub{i}"),
            NodeKind::Dir(BTreeMap::new()),
            meta(0o755),
        );
    }
    let stats = b.finish(&t).unwrap();
    assert!(stats.inodes_used > 5000);
    fsck(&img);

    let f = debugfs(&img, "stat /etc/f4097");
    assert!(f.contains("Size: 4097"), "{f}");
    let data = Command::new("debugfs")
        .args(["-R", "cat /etc/f10485760"])
        .arg(&img.0)
        .output()
        .unwrap()
        .stdout;
    let want: Vec<u8> = (0..10usize << 20).map(|i| (i % 251) as u8).collect();
    assert!(data == want, "10 MiB file differs");
    let st = debugfs(&img, "stat /hl1");
    assert!(
        st.contains("Links: 3") && st.contains("User: 100000") && st.contains("Group: 70000"),
        "{st}"
    );
    assert!(st.contains("Mode:  04755"), "{st}");
    assert!(debugfs(&img, "stat /long").contains("Size: 200"));
    assert!(debugfs(&img, "stat /big").contains("Device major/minor number: 259:300"));
    assert!(debugfs(&img, "stat /null").contains("Device major/minor number: 01:03"));
    let ea = debugfs(&img, "ea_list /many");
    assert!(ea.contains("user.attribute-19"), "{ea}");
    let ea = debugfs(&img, "ea_list /caps");
    assert!(
        ea.contains("security.capability") && ea.contains("user.foo"),
        "{ea}"
    );
    let st = debugfs(&img, "stat /bigdir");
    assert!(st.contains("Links: 32"), "{st}");
    let st = debugfs(&img, "stat /future");
    assert!(
        st.contains("mtime: 0xee6b2800:ee6b27ff") || st.contains("2096"),
        "{st}"
    );
    // Sparse: 10 MiB of data in a 300 MiB image.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&img.0).unwrap();
    assert!(
        m.blocks() * 512 < 40 << 20,
        "not sparse: {}",
        m.blocks() * 512
    );
}

#[test]
fn freed_blocks_are_reused_and_fragmented_files_get_index_blocks() {
    let (img, mut b) = new_img("frag", 64 << 20);
    let mut t = Tree::new();
    let root = t.root;
    // Interleave small files, free every other one, then write a file that
    // must fill the holes: many extents.
    let mut ids = Vec::new();
    for i in 0..40 {
        let data = vec![i as u8; 8192];
        ids.push(b.write_data(&mut &data[..], 8192).unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            b.free_data(*id);
        } else {
            add(
                &mut t,
                root,
                &format!("keep{i}"),
                NodeKind::File {
                    size: 8192,
                    data: Some(*id),
                },
                meta(0o644),
            );
        }
    }
    b.cursor = 0;
    let big: Vec<u8> = (0..(160 * 1024 + 100)).map(|i| (i % 7) as u8).collect();
    let id = b.write_data(&mut &big[..], big.len() as u64).unwrap();
    assert!(b.data[&id.0].len() > 4, "expected a fragmented file");
    add(
        &mut t,
        root,
        "frag",
        NodeKind::File {
            size: big.len() as u64,
            data: Some(id),
        },
        meta(0o644),
    );
    b.finish(&t).unwrap();
    fsck(&img);
    let data = Command::new("debugfs")
        .args(["-R", "cat /frag"])
        .arg(&img.0)
        .output()
        .unwrap()
        .stdout;
    assert!(data == big);
}

#[test]
fn sizes_not_multiple_of_a_group() {
    for size in [129u64 << 20, 200 << 20, (300 << 20) + 4096] {
        let (img, mut b) = new_img(&format!("size{size}"), size);
        let mut t = Tree::new();
        let root = t.root;
        let k = file(&mut b, b"hello");
        add(&mut t, root, "hello", k, meta(0o644));
        b.finish(&t).unwrap();
        fsck(&img);
    }
}

#[test]
fn no_space_fails_fast_and_too_small_is_an_error() {
    let (img, mut b) = new_img("full", 16 << 20);
    let mut zeros = std::io::repeat(0).take(1 << 30);
    let err = b.write_data(&mut zeros, 1 << 30).unwrap_err();
    assert!(matches!(err, Ext4Error::NoSpace { .. }), "{err}");
    assert_eq!(std::fs::metadata(&img.0).unwrap().len(), 16 << 20);
    let p = std::env::temp_dir().join(format!("minivm-ext4-tiny-{}", std::process::id()));
    let f = File::create(&p).unwrap();
    assert!(matches!(
        Ext4Builder::new(f, opts(4096)),
        Err(Ext4Error::TooSmall { .. })
    ));
    let _ = std::fs::remove_file(p);
    // Short data is an error, not a silent hole.
    let err = b.write_data(&mut &b"abc"[..], 10).unwrap_err();
    assert!(
        matches!(err, Ext4Error::ShortData { got: 3, want: 10 }),
        "{err}"
    );
}
