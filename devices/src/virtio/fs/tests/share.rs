//! File system behaviour through the device: passthrough, read-only mode,
//! the size cap, and containment.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;
use crate::virtio::fs::disk_cap;

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let data = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(e.path())
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                stack.push(e.path());
                Vec::new()
            };
            out.push((e.path().display().to_string(), data, m.mode()));
        }
    }
    out.sort();
    out
}

#[test]
fn reads_host_files_and_directories() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("hello.txt"), b"hello world").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/inner.txt"), vec![7u8; 10_000]).unwrap();
    let mem = test_mem();
    let mut h = Harness::share(&mem, dir.path(), false);

    let (node, attr) = h.lookup(FUSE_ROOT, "hello.txt").unwrap();
    assert_eq!(attr.size, 11);
    assert_eq!(attr.mode & libc::S_IFMT, libc::S_IFREG);
    let fh = h.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(node, fh, 0, 4096).unwrap(), b"hello world");
    assert_eq!(h.read(node, fh, 6, 3).unwrap(), b"wor");
    assert_eq!(h.readdir(FUSE_ROOT).unwrap(), ["hello.txt", "sub"]);

    let (sub, attr) = h.lookup(FUSE_ROOT, "sub").unwrap();
    assert_eq!(attr.mode & libc::S_IFMT, libc::S_IFDIR);
    let (inner, _) = h.lookup(sub, "inner.txt").unwrap();
    let fh = h.open(inner, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(inner, fh, 0, 65536).unwrap(), vec![7u8; 10_000]);
    assert_eq!(h.lookup(sub, "missing"), Err(libc::ENOENT));
    // The root's attributes come from the host directory.
    assert_eq!(
        h.getattr(FUSE_ROOT).unwrap().mode & libc::S_IFMT,
        libc::S_IFDIR
    );
    assert_ne!(h.irq.status(), 0, "used-ring interrupt raised");
}

#[test]
fn creates_and_writes_visible_on_host() {
    let dir = TempDir::new();
    let mem = test_mem();
    let mut h = Harness::share(&mem, dir.path(), false);

    let (node, fh) = h
        .create(FUSE_ROOT, "new.txt", libc::O_WRONLY | libc::O_CREAT, 0o644)
        .unwrap();
    assert_eq!(h.write(node, fh, 0, b"written by the guest").unwrap(), 20);
    assert_eq!(h.write(node, fh, 8, b"BY").unwrap(), 2);
    assert_eq!(
        std::fs::read(dir.path().join("new.txt")).unwrap(),
        b"written BY the guest"
    );
    let d = h.mkdir(FUSE_ROOT, "made").unwrap();
    assert!(dir.path().join("made").is_dir());
    h.create(d, "inside", libc::O_WRONLY | libc::O_CREAT, 0o644)
        .unwrap();
    assert!(dir.path().join("made/inside").is_file());
    assert_eq!(h.truncate(node, 7).unwrap().size, 7);
    assert_eq!(
        std::fs::read(dir.path().join("new.txt")).unwrap(),
        b"written"
    );
    h.unlink(FUSE_ROOT, "new.txt").unwrap();
    assert!(!dir.path().join("new.txt").exists());

    // The guest's mode and umask apply exactly: the worker's umask is 0, while
    // the VMM process keeps its own.
    let b = body(&[
        &(libc::O_WRONLY as u32).to_le_bytes(),
        &0o666u32.to_le_bytes(),
        &0u32.to_le_bytes(),
        &0u32.to_le_bytes(),
        &cstr("shared-mode"),
    ]);
    h.call(CREATE, FUSE_ROOT, &b).ok();
    let mode = std::fs::metadata(dir.path().join("shared-mode"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let umask = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    assert_ne!(
        umask.split_whitespace().nth(1),
        Some("0000"),
        "process umask untouched"
    );
}

#[test]
fn files_belong_to_the_guest_user() {
    let dir = TempDir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mem = test_mem();
    let mut h = Harness::share(&mem, dir.path(), false);
    let b = body(&[&0o755u32.to_le_bytes(), &0u32.to_le_bytes(), &cstr("users")]);
    let r = h.raw(1, &message_as(MKDIR, 900, FUSE_ROOT, &b, 1234), OUT_LEN);
    assert_eq!(r.unwrap().error, 0);
    let meta = std::fs::metadata(dir.path().join("users")).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // A root VMM creates as the guest's user (setresuid per request).
        assert_eq!((meta.uid(), meta.gid()), (1234, 1234));
    } else {
        // An unprivileged one creates as itself rather than failing.
        // SAFETY: as above.
        assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    }
}

#[test]
fn read_only_refuses_every_change() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("file"), b"original").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::os::unix::fs::symlink("file", dir.path().join("link")).unwrap();
    let before = snapshot(dir.path());
    let mem = test_mem();
    let mut h = Harness::share(&mem, dir.path(), true);
    const EROFS: i32 = libc::EROFS;

    let (node, _) = h.lookup(FUSE_ROOT, "file").unwrap();
    let (sub, _) = h.lookup(FUSE_ROOT, "sub").unwrap();
    // Reading works.
    let fh = h.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(node, fh, 0, 100).unwrap(), b"original");
    let (link, _) = h.lookup(FUSE_ROOT, "link").unwrap();
    assert_eq!(h.readlink(link).unwrap(), b"file");
    // Opening for writing or truncation does not.
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(h.open(node, flags), Err(EROFS), "open flags {flags:#o}");
    }
    // Even with a handle the kernel believes is writable.
    assert_eq!(h.write(node, fh, 0, b"x"), Err(EROFS));
    assert_eq!(
        h.create(FUSE_ROOT, "new", libc::O_WRONLY | libc::O_CREAT, 0o644),
        Err(EROFS)
    );
    assert_eq!(h.mkdir(FUSE_ROOT, "d"), Err(EROFS));
    assert_eq!(h.unlink(FUSE_ROOT, "file"), Err(EROFS));
    assert_eq!(h.truncate(node, 0).map(|_| ()), Err(EROFS));
    let r = h.call(SYMLINK, FUSE_ROOT, &body(&[&cstr("s"), &cstr("file")]));
    assert_eq!(r.error, -EROFS);
    let r = h.call(RMDIR_OP, FUSE_ROOT, &cstr("sub"));
    assert_eq!(r.error, -EROFS);
    let r = h.call(
        RENAME,
        FUSE_ROOT,
        &body(&[&FUSE_ROOT.to_le_bytes(), &cstr("file"), &cstr("moved")]),
    );
    assert_eq!(r.error, -EROFS);
    let r = h.call(LINK, sub, &body(&[&node.to_le_bytes(), &cstr("hard")]));
    assert_eq!(r.error, -EROFS);
    let r = h.call(
        MKNOD,
        FUSE_ROOT,
        &body(&[
            &(libc::S_IFIFO | 0o644).to_le_bytes(),
            &[0u8; 12],
            &cstr("fifo"),
        ]),
    );
    assert_eq!(r.error, -EROFS);
    let r = h.call(
        SETXATTR,
        node,
        &body(&[
            &1u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &cstr("user.x"),
            b"1",
        ]),
    );
    assert_eq!(r.error, -EROFS);
    let fa = body(&[
        &fh.to_le_bytes(),
        &0u64.to_le_bytes(),
        &4096u64.to_le_bytes(),
        &0u32.to_le_bytes(),
        &0u32.to_le_bytes(),
    ]);
    assert_eq!(h.call(FALLOCATE, node, &fa).error, -EROFS);
    let mut chmod = vec![0u8; 88];
    chmod[0..4].copy_from_slice(&1u32.to_le_bytes()); // FATTR_MODE
    chmod[68..72].copy_from_slice(&(libc::S_IFREG | 0o777).to_le_bytes());
    assert_eq!(h.call(SETATTR, node, &chmod).error, -EROFS);

    assert_eq!(snapshot(dir.path()), before, "host directory unchanged");
}

const RMDIR_OP: u32 = 11;

#[test]
fn size_cap_gives_enospc_and_shows_in_statfs() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("existing"), vec![1u8; 8192]).unwrap();
    let cap = 256 * 1024;
    let vfs = disk_cap(dir.path(), cap).unwrap();
    let mem = test_mem();
    let mut h = Harness::new(&mem, vfs);
    h.init();

    let (blocks, bfree, bavail, frsize) = h.statfs();
    assert_eq!(blocks * u64::from(frsize), cap);
    let free0 = bfree * u64::from(frsize);
    assert!(free0 <= cap - 8192, "existing data counts: {free0} free");
    assert_eq!(bavail, bfree);

    let (node, fh) = h
        .create(FUSE_ROOT, "big", libc::O_RDWR | libc::O_CREAT, 0o644)
        .unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut off = 0u64;
    let err = loop {
        match h.write(node, fh, off, &chunk) {
            Ok(n) => off += u64::from(n),
            Err(e) => break e,
        }
        assert!(off <= cap, "wrote past the cap");
    };
    assert_eq!(err, libc::ENOSPC);
    assert!(off >= 128 * 1024, "only {off} bytes fit");
    let host_alloc = std::fs::metadata(dir.path().join("big")).unwrap().blocks() * 512;
    assert!(host_alloc <= cap);
    let (_, bfree, _, _) = h.statfs();
    let free1 = bfree * u64::from(frsize);
    assert!(
        free1 < 64 * 1024 && free1 + off <= free0 + 4096,
        "free {free0} -> {free1}"
    );

    // Overwriting allocated data is fine even near the cap.
    h.write(node, fh, 0, &chunk[..4096]).unwrap();
    // Nothing new once full; fallocate is refused up front.
    let fa = body(&[
        &fh.to_le_bytes(),
        &off.to_le_bytes(),
        &(1u64 << 20).to_le_bytes(),
        &0u32.to_le_bytes(),
        &0u32.to_le_bytes(),
    ]);
    assert_eq!(h.call(FALLOCATE, node, &fa).error, -libc::ENOSPC);

    // Truncating frees space, and writes fit again.
    h.truncate(node, 0).unwrap();
    let (_, bfree, _, _) = h.statfs();
    assert!(bfree * u64::from(frsize) >= free0 - 4096);
    h.write(node, fh, 0, &chunk).unwrap();
    // Unlinking frees as well.
    h.unlink(FUSE_ROOT, "big").unwrap();
    h.unlink(FUSE_ROOT, "existing").unwrap();
    let (_, bfree, _, _) = h.statfs();
    assert!(bfree * u64::from(frsize) >= free0 + 8192 - 4096);
}

#[test]
fn size_cap_refuses_creates_when_full() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("filler"), vec![1u8; 64 * 1024]).unwrap();
    let vfs = disk_cap(dir.path(), 16 * 1024).unwrap();
    let mem = test_mem();
    let mut h = Harness::new(&mem, vfs);
    h.init();
    let (_, bfree, _, _) = h.statfs();
    assert_eq!(bfree, 0);
    assert_eq!(
        h.create(FUSE_ROOT, "f", libc::O_WRONLY | libc::O_CREAT, 0o644),
        Err(libc::ENOSPC)
    );
    assert_eq!(h.mkdir(FUSE_ROOT, "d"), Err(libc::ENOSPC));
    let (node, _) = h.lookup(FUSE_ROOT, "filler").unwrap();
    let fh = h.open(node, libc::O_WRONLY).unwrap();
    assert_eq!(h.write(node, fh, 64 * 1024, b"more"), Err(libc::ENOSPC));
    h.unlink(FUSE_ROOT, "filler").unwrap();
    h.create(FUSE_ROOT, "f", libc::O_WRONLY | libc::O_CREAT, 0o644)
        .unwrap();
}

const SECRET: &[u8] = b"TOP-SECRET-3c9e1f-outside-the-share";

#[test]
fn guest_stays_inside_the_share() {
    let base = TempDir::new();
    let outside = base.path().join("outside-secret");
    std::fs::write(&outside, SECRET).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    xattr::set(&outside, "user.secret", SECRET);
    std::fs::create_dir(base.path().join("outside-dir")).unwrap();
    std::fs::write(base.path().join("outside-dir/passwd"), SECRET).unwrap();
    let share = base.path().join("share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::os::unix::fs::symlink("/etc", share.join("etc_link")).unwrap();
    std::os::unix::fs::symlink("../outside-secret", share.join("up_link")).unwrap();
    std::os::unix::fs::symlink("..", share.join("dotdot_link")).unwrap();
    std::os::unix::fs::symlink(base.path().join("outside-dir"), share.join("abs_dir")).unwrap();
    let mem = test_mem();
    let mut h = Harness::share(&mem, &share, false);
    const EINVAL: i32 = libc::EINVAL;

    // No climbing: "..", "." and multi-component names are refused everywhere.
    for name in ["..", ".", "", "sub/..", "../outside-secret", "/etc"] {
        assert_eq!(
            h.lookup(FUSE_ROOT, name).map(|_| ()),
            Err(EINVAL),
            "{name:?}"
        );
    }
    let (sub, _) = h.lookup(FUSE_ROOT, "sub").unwrap();
    assert_eq!(h.lookup(sub, "..").map(|_| ()), Err(EINVAL));

    // Symlinks are returned as data and never followed by the server.
    for (name, target) in [
        ("etc_link", b"/etc".to_vec()),
        ("up_link", b"../outside-secret".to_vec()),
        ("dotdot_link", b"..".to_vec()),
    ] {
        let (node, attr) = h.lookup(FUSE_ROOT, name).unwrap();
        assert_eq!(attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
        assert_eq!(h.readlink(node).unwrap(), target);
        // Walking through it component by component goes nowhere.
        for child in ["passwd", "outside-secret", "hosts"] {
            assert!(h.lookup(node, child).is_err(), "{name}/{child}");
        }
        assert!(h.open(node, libc::O_RDONLY).is_err(), "open {name}");
        assert!(h.open(node, libc::O_WRONLY | libc::O_TRUNC).is_err());
        // Attribute and xattr requests act on the link itself.
        assert_eq!(h.getattr(node).unwrap().mode & libc::S_IFMT, libc::S_IFLNK);
        let r = h.call(
            GETXATTR,
            node,
            &body(&[
                &256u32.to_le_bytes(),
                &0u32.to_le_bytes(),
                &cstr("user.secret"),
            ]),
        );
        assert_ne!(r.error, 0);
        let mut chmod = vec![0u8; 88];
        chmod[0..4].copy_from_slice(&1u32.to_le_bytes());
        chmod[68..72].copy_from_slice(&(libc::S_IFREG | 0o666).to_le_bytes());
        h.call(SETATTR, node, &chmod);
        let _ = h.truncate(node, 0);
    }
    let (abs, _) = h.lookup(FUSE_ROOT, "abs_dir").unwrap();
    assert!(h.lookup(abs, "passwd").is_err());

    // A symlink the guest makes itself is just as inert; CREATE over a
    // symlink does not open its target.
    let r = h.call(
        SYMLINK,
        FUSE_ROOT,
        &body(&[&cstr("evil"), &cstr("../outside-secret")]),
    );
    let evil = u64_at(r.ok(), 0);
    assert!(h.open(evil, libc::O_RDWR).is_err());
    for name in ["evil", "up_link"] {
        let res = h.create(
            FUSE_ROOT,
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        );
        if let Ok((node, fh)) = res {
            let _ = h.write(node, fh, 0, b"clobbered");
        }
    }
    // Hard links and renames only ever involve inodes inside the share.
    let r = h.call(
        LINK,
        FUSE_ROOT,
        &body(&[&evil.to_le_bytes(), &cstr("evil2")]),
    );
    assert_eq!(r.error, 0);
    let r = h.call(
        RENAME,
        sub,
        &body(&[&FUSE_ROOT.to_le_bytes(), &cstr(".."), &cstr("x")]),
    );
    assert_eq!(r.error, -EINVAL);
    // Device nodes are refused; the overlayfs whiteout (char 0:0) is not.
    let mknod = |mode: u32, rdev: u32, name: &str| {
        body(&[
            &mode.to_le_bytes(),
            &rdev.to_le_bytes(),
            &0u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &cstr(name),
        ])
    };
    let r = h.call(
        MKNOD,
        FUSE_ROOT,
        &mknod(libc::S_IFBLK | 0o600, 0x0801, "sda"),
    );
    assert_eq!(r.error, -libc::EPERM);
    let r = h.call(
        MKNOD,
        FUSE_ROOT,
        &mknod(libc::S_IFCHR | 0o600, 0x0103, "null"),
    );
    assert_eq!(r.error, -libc::EPERM);
    let r = h.call(MKNOD, FUSE_ROOT, &mknod(libc::S_IFCHR, 0, "whiteout"));
    assert_eq!(r.error, 0);
    // Made-up node ids reach nothing.
    for node in [
        0xdead_beef,
        (1u64 << 56) | 0x1234,
        (7u64 << 56) | 1,
        u64::MAX,
    ] {
        assert!(h.getattr(node).is_err(), "node {node:#x}");
        assert!(h.lookup(node, "outside-secret").is_err());
    }

    assert_eq!(
        std::fs::read(&outside).unwrap(),
        SECRET,
        "outside file untouched"
    );
    let mode = std::fs::metadata(&outside).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !h.transcript.windows(SECRET.len()).any(|w| w == SECRET),
        "a reply leaked bytes from outside the share"
    );
}

/// Tiny xattr helper (std has none).
mod xattr {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    pub fn set(path: &Path, name: &str, value: &[u8]) {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: both strings are NUL-terminated and live across the call;
        // value points to value.len() readable bytes.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
    }
}
