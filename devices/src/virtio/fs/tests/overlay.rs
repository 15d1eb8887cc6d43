//! An image served from layer directories through the device: the merged
//! view, copy-up into the upper directory, whiteouts, read-only mode and the
//! cap, with the lower layers left untouched.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::*;
use crate::virtio::fs::{overlay, FsError};

/// An overlayfs whiteout (0:0 character device), as the layer store writes one.
fn whiteout(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path; mknod does not retain it.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) };
    assert_eq!(rc, 0, "mknod whiteout {}", path.display());
}

fn set_opaque(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = c"user.overlay.opaque";
    // SAFETY: valid NUL-terminated strings and a 1-byte value that outlive the call.
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, 0, "set opaque on {}", path.display());
}

/// Every path, kind, content and mode under `dir`.
fn snapshot(dir: &Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<_> = walk(dir)
        .into_iter()
        .map(|(p, m, data)| (p.display().to_string(), m.mode(), data))
        .collect();
    out.sort();
    out
}

/// Two layers: the lower has `a`, `b`, `d/x`, `keep/k`; the upper one
/// replaces `a`, whites out `b` and makes `d` opaque with a new `d/y`.
fn layers(root: &Path) -> Vec<PathBuf> {
    let (l0, l1) = (root.join("l0"), root.join("l1"));
    for d in [&l0, &l1] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(l0.join("a"), b"a0").unwrap();
    std::fs::write(l0.join("b"), b"b0").unwrap();
    std::fs::create_dir(l0.join("d")).unwrap();
    std::fs::write(l0.join("d/x"), b"x0").unwrap();
    std::fs::create_dir(l0.join("keep")).unwrap();
    std::fs::write(l0.join("keep/k"), b"k0").unwrap();
    std::fs::write(l1.join("a"), b"a1").unwrap();
    whiteout(&l1.join("b"));
    std::fs::create_dir(l1.join("d")).unwrap();
    set_opaque(&l1.join("d"));
    std::fs::write(l1.join("d/y"), b"y1").unwrap();
    vec![l0, l1]
}

fn read_all(h: &mut Harness<'_>, node: u64) -> Vec<u8> {
    let fh = h.open(node, libc::O_RDONLY).unwrap();
    h.read(node, fh, 0, 65536).unwrap()
}

#[test]
fn merged_view_copy_up_and_whiteouts_stay_in_the_upper() {
    let tmp = TempDir::new();
    let lowers = layers(tmp.path());
    let upper = tmp.path().join("upper");
    std::fs::create_dir(&upper).unwrap();
    let before: Vec<_> = lowers.iter().map(|l| snapshot(l)).collect();

    let mem = test_mem();
    let mut h = Harness::new(&mem, overlay(&lowers, Some(&upper), None).unwrap());
    h.init();
    // The merged view: the top layer wins, whiteouts and opaque dirs hide.
    assert_eq!(h.readdir(FUSE_ROOT).unwrap(), [".", "..", "a", "d", "keep"]);
    let (a, _) = h.lookup(FUSE_ROOT, "a").unwrap();
    assert_eq!(read_all(&mut h, a), b"a1");
    assert_eq!(h.lookup(FUSE_ROOT, "b"), Err(libc::ENOENT));
    let (d, _) = h.lookup(FUSE_ROOT, "d").unwrap();
    assert_eq!(h.readdir(d).unwrap(), [".", "..", "y"]);
    assert_eq!(h.lookup(d, "x"), Err(libc::ENOENT));
    // Containment applies to the overlay too.
    assert_eq!(h.lookup(FUSE_ROOT, ".."), Err(libc::EINVAL));

    // Writes: a new file, a copy-up of a lower file, a deleted lower file.
    let (n, fh) = h
        .create(FUSE_ROOT, "new", libc::O_RDWR | libc::O_CREAT, 0o644)
        .unwrap();
    assert_eq!(h.write(n, fh, 0, b"fresh").unwrap(), 5);
    let (keep, _) = h.lookup(FUSE_ROOT, "keep").unwrap();
    let (k, _) = h.lookup(keep, "k").unwrap();
    let fh = h.open(k, libc::O_RDWR).unwrap();
    assert_eq!(h.write(k, fh, 0, b"K1").unwrap(), 2);
    assert_eq!(read_all(&mut h, k), b"K1");
    h.unlink(FUSE_ROOT, "a").unwrap();
    assert_eq!(h.lookup(FUSE_ROOT, "a"), Err(libc::ENOENT));
    assert_eq!(
        h.readdir(FUSE_ROOT).unwrap(),
        [".", "..", "d", "keep", "new"]
    );

    // Every change is in the upper directory; the layers are unchanged.
    let after: Vec<_> = lowers.iter().map(|l| snapshot(l)).collect();
    assert_eq!(before, after);
    assert_eq!(std::fs::read(upper.join("new")).unwrap(), b"fresh");
    assert_eq!(std::fs::read(upper.join("keep/k")).unwrap(), b"K1");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let wh = std::fs::symlink_metadata(upper.join("a")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{wh:?}");
}

#[test]
fn without_an_upper_the_image_is_read_only() {
    let tmp = TempDir::new();
    let lowers = layers(tmp.path());
    let before: Vec<_> = lowers.iter().map(|l| snapshot(l)).collect();
    let mem = test_mem();
    let mut h = Harness::new(&mem, overlay(&lowers, None, None).unwrap());
    h.init();
    let (a, _) = h.lookup(FUSE_ROOT, "a").unwrap();
    assert_eq!(read_all(&mut h, a), b"a1");
    assert_eq!(
        h.create(FUSE_ROOT, "new", libc::O_RDWR | libc::O_CREAT, 0o644),
        Err(libc::EROFS)
    );
    assert_eq!(h.open(a, libc::O_RDWR), Err(libc::EROFS));
    assert_eq!(h.unlink(FUSE_ROOT, "a"), Err(libc::EROFS));
    assert_eq!(h.mkdir(FUSE_ROOT, "dir"), Err(libc::EROFS));
    let after: Vec<_> = lowers.iter().map(|l| snapshot(l)).collect();
    assert_eq!(before, after);
}

#[test]
fn the_cap_bounds_the_upper_and_statfs_reports_it() {
    let tmp = TempDir::new();
    let lowers = layers(tmp.path());
    let upper = tmp.path().join("upper");
    std::fs::create_dir(&upper).unwrap();
    let cap = 8u64 << 20;
    let mem = test_mem();
    let mut h = Harness::new(&mem, overlay(&lowers, Some(&upper), Some(cap)).unwrap());
    h.init();
    let (blocks, _, _, frsize) = h.statfs();
    assert_eq!(blocks * u64::from(frsize), cap);
    let (n, fh) = h
        .create(FUSE_ROOT, "big", libc::O_RDWR | libc::O_CREAT, 0o644)
        .unwrap();
    let chunk = vec![0x5au8; 512 << 10];
    let mut written = 0u64;
    let err = loop {
        match h.write(n, fh, written, &chunk) {
            Ok(w) => written += u64::from(w),
            Err(e) => break e,
        }
        assert!(written <= cap, "wrote {written} bytes past the cap");
    };
    assert_eq!(err, libc::ENOSPC);
    assert!(written >= cap / 2, "refused too early: {written}");
    assert!(super::super::disk_usage(&upper).unwrap() <= cap);
}

#[test]
fn an_overlay_needs_layers_that_exist() {
    assert!(matches!(overlay(&[], None, None), Err(FsError::NoLayers)));
    let tmp = TempDir::new();
    let missing = tmp.path().join("missing");
    assert!(matches!(
        overlay(&[missing], None, None),
        Err(FsError::Root { .. })
    ));
}

#[test]
fn copy_ups_count_against_the_cap() {
    let tmp = TempDir::new();
    let lowers = layers(tmp.path());
    // A lower file bigger than the cap: opening it for writing would copy it.
    let big = vec![0x33u8; 3 << 20];
    std::fs::write(lowers[0].join("big"), &big).unwrap();
    let upper = tmp.path().join("upper");
    std::fs::create_dir(&upper).unwrap();
    let cap = 2u64 << 20;
    let mem = test_mem();
    let mut h = Harness::new(&mem, overlay(&lowers, Some(&upper), Some(cap)).unwrap());
    h.init();
    let (b, _) = h.lookup(FUSE_ROOT, "big").unwrap();
    assert_eq!(h.open(b, libc::O_RDWR), Err(libc::ENOSPC));
    assert!(!upper.join("big").exists());
    // A small one fits, and what it took shows in statfs.
    let (_, free_before, _, _) = h.statfs();
    let (keep, _) = h.lookup(FUSE_ROOT, "keep").unwrap();
    let (k, _) = h.lookup(keep, "k").unwrap();
    h.open(k, libc::O_RDWR).unwrap();
    assert_eq!(std::fs::read(upper.join("keep/k")).unwrap(), b"k0");
    let (_, free_after, _, _) = h.statfs();
    assert!(free_after < free_before, "{free_after} !< {free_before}");
}
