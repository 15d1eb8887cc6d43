//! Unit tests of the image writers.

use crate::entry::TestEntry;
use crate::fixtures::CAP_NET_BIND_SERVICE_XATTR;
use crate::fixtures::{hostile_image, long_names, tricky_expectations, tricky_image};
use crate::layer::layer_tar;
use crate::tempdir::TempDir;
use imagefs::layer::Compression;
use std::collections::HashMap;
use std::io::Read;

/// Reads a layer back with the tar crate: path -> (type, uid, mtime, pax records, data).
#[allow(clippy::type_complexity)]
fn read_back(
    tar: &[u8],
) -> HashMap<
    Vec<u8>,
    (
        tar::EntryType,
        u64,
        Vec<(String, Vec<u8>)>,
        Vec<u8>,
        Option<Vec<u8>>,
    ),
> {
    let mut a = tar::Archive::new(tar);
    let mut out = HashMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let pax = match e.pax_extensions().unwrap() {
            Some(p) => p
                .map(|x| x.unwrap())
                .map(|x| (x.key().unwrap().to_string(), x.value_bytes().to_vec()))
                .collect(),
            None => Vec::new(),
        };
        let link = e.link_name_bytes().map(|l| l.to_vec());
        let (t, uid, path) = (
            e.header().entry_type(),
            e.header().uid().unwrap(),
            e.path_bytes().to_vec(),
        );
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(path, (t, uid, pax, data, link));
    }
    out
}

#[test]
fn tricky_layers_read_back() {
    let image = tricky_image();
    let l0 = read_back(&layer_tar(&image.layers[0]).unwrap());
    let get = |p: &str| {
        l0.get(p.as_bytes())
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    assert_eq!(get(&long_names::pax_file()).3, b"pax long name\n");
    assert_eq!(get(&long_names::gnu_file()).3, b"gnu long name\n");
    assert_eq!(
        get("long/link").4.as_deref(),
        Some(long_names::gnu_target().as_bytes())
    );
    assert_eq!(
        get("long/paxlink").4.as_deref(),
        Some(long_names::pax_target().as_bytes())
    );
    assert_eq!(get("owned-huge").1, 3_000_000);
    assert!(get("owned-huge")
        .2
        .contains(&("uid".to_string(), b"3000000".to_vec())));
    assert!(get("mtime-ns")
        .2
        .contains(&("mtime".to_string(), b"1234567890.123456789".to_vec())));
    let caps = &get("caps").2;
    assert!(caps.contains(&(
        "SCHILY.xattr.security.capability".to_string(),
        CAP_NET_BIND_SERVICE_XATTR.to_vec()
    )));
    assert!(caps.contains(&("SCHILY.xattr.user.test".to_string(), b"hello".to_vec())));
    assert_eq!(get("a/hl2").0, tar::EntryType::Link);
    assert_eq!(get("dev/null").0, tar::EntryType::Char);
    assert!(l0.contains_key(&b"unicode/latin1-\xe9"[..]));
    let l1 = read_back(&layer_tar(&image.layers[1]).unwrap());
    for p in ["a/.wh.gone", "opq/.wh..wh..opq", ".wh.d", "b/.wh.x"] {
        assert!(l1.contains_key(p.as_bytes()), "{p}");
    }
    let l2 = read_back(&layer_tar(&image.layers[2]).unwrap());
    assert!(l2.contains_key(&b"./dotslash"[..]));
}

#[test]
fn hostile_entries_are_written_verbatim() {
    let l = read_back(&layer_tar(&hostile_image().layers[0]).unwrap());
    for p in [
        "../escape",
        "/abs-file",
        "a/../../b",
        "link-out/pwned",
        "a/.wh...",
    ] {
        assert!(
            l.contains_key(p.as_bytes()),
            "{p}: {:?}",
            l.keys()
                .map(|k| String::from_utf8_lossy(k))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(l[&b"hl-out"[..]].4.as_deref(), Some(&b"/etc/passwd"[..]));
}

#[test]
fn expectations_cover_the_doc_table() {
    let e = tricky_expectations();
    assert!(e.len() >= 40);
    let paths: Vec<&[u8]> = e.iter().map(|(p, _)| p.as_slice()).collect();
    let mut dedup = paths.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), paths.len(), "duplicate paths in expectations");
}

#[test]
fn whiteout_names() {
    assert_eq!(TestEntry::whiteout("a/b/c").tar_path(), b"a/b/.wh.c");
    assert_eq!(TestEntry::whiteout("top").tar_path(), b".wh.top");
    assert_eq!(TestEntry::opaque("a/b/").tar_path(), b"a/b/.wh..wh..opq");
}

#[test]
fn builds_are_deterministic() {
    let a = tricky_image().build(Compression::Gzip).unwrap();
    let b = tricky_image().build(Compression::Gzip).unwrap();
    assert_eq!(a.manifest_digest, b.manifest_digest);
}

#[test]
fn temp_dirs_are_removed() {
    let p = {
        let t = TempDir::new("unit").unwrap();
        std::fs::write(t.path().join("f"), "x").unwrap();
        t.path().to_path_buf()
    };
    assert!(!p.exists());
}

#[test]
fn busybox_roots_are_written_with_modes_and_links() {
    use crate::rootfs::busybox_root;
    use std::os::unix::fs::PermissionsExt;
    let t = TempDir::new("unit-root").unwrap();
    let root = t.path().join("root");
    busybox_root(
        &root,
        "#!/bin/sh\necho hi\n",
        &[
            TestEntry::dir("mnt/data"),
            TestEntry::file("etc/motd", "motd\n"),
        ],
    );
    let mode = |p: &str| {
        std::fs::symlink_metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("init"), 0o755);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("proc"), 0o555);
    assert_eq!(mode("etc/motd"), 0o644);
    assert!(root.join("mnt/data").is_dir());
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        std::path::Path::new("busybox")
    );
    assert_eq!(
        std::fs::read(root.join("init")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
}

#[test]
fn busybox_disks_and_initramfs_hold_the_root() {
    use crate::rootfs::{busybox_disk, busybox_initramfs};
    use std::process::Command;
    let t = TempDir::new("unit-disk").unwrap();
    let check = TestEntry::executable("check", "#!/bin/sh\necho check\n");
    let img = busybox_disk(t.path(), "d", "#!/bin/sh\n", &[check], 16);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");
    let cat = |p: &str| {
        let out = Command::new("debugfs")
            .args(["-R", &format!("cat {p}")])
            .arg(&img)
            .output()
            .unwrap();
        out.stdout
    };
    assert_eq!(cat("/check"), b"#!/bin/sh\necho check\n");
    assert_eq!(cat("/etc/group"), b"root:x:0:\nnogroup:x:65534:\n");
    let cpio = busybox_initramfs(t.path(), "#!/bin/sh\n");
    let listing = Command::new("cpio")
        .args(["-t", "--quiet", "-F"])
        .arg(&cpio)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout).into_owned();
    for want in ["init", "bin/busybox", "bin/sh"] {
        assert!(names.lines().any(|l| l == want), "{want} in {names}");
    }
}
