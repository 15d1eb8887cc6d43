//! [`LayeredFs`] gives back every host reference it takes: requests that
//! fail part-way (after a lookup in the layers, during a copy-up) leave no
//! layer inode (an open `O_PATH` fd each) or layer handle behind, so a
//! guest cannot pile up host fds by repeating them.

use std::ffi::CStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{Context, FileSystem};

use super::TempDir;
use crate::virtio::fs::passthrough::passthrough_fs;
use crate::virtio::fs::{LayeredFs, SizeCap};

const ROOT: u64 = 1;

/// Open fds of this process on files under `dir` (other tests run in
/// parallel and open their own, elsewhere).
fn fds_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

fn fails<T>(what: &str, r: std::io::Result<T>, want: i32) {
    match r {
        Ok(_) => panic!("{what}: succeeded, but should have failed"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(want), "{what}: {e}"),
    }
}

#[test]
fn failing_requests_leave_no_host_reference_behind() {
    let tmp = TempDir::new();
    let root = tmp.path().canonicalize().unwrap();
    let (lower, upper) = (root.join("lower"), root.join("upper"));
    std::fs::create_dir_all(lower.join("d")).unwrap();
    std::fs::create_dir_all(lower.join("e")).unwrap();
    std::fs::create_dir(&upper).unwrap();
    std::fs::write(lower.join("a"), vec![7u8; 65536]).unwrap();
    std::fs::write(lower.join("b"), b"").unwrap();
    std::fs::write(lower.join("d/f"), vec![7u8; 65536]).unwrap();
    let mut fs = LayeredFs::new(
        Some(passthrough_fs(&upper).unwrap()),
        vec![passthrough_fs(&lower).unwrap()],
        Duration::from_secs(1),
        false,
    )
    .unwrap();
    // Room for the empty `b`, not for the data of `a` or `d/f`.
    fs.charge_copy_ups_to(Arc::new(SizeCap::new(4096, 0)));
    let ctx = Context::default();
    let baseline = fds_under(&root);

    let a = fs.lookup(&ctx, ROOT, c"a").unwrap().inode;
    let b = fs.lookup(&ctx, ROOT, c"b").unwrap().inode;
    let d = fs.lookup(&ctx, ROOT, c"d").unwrap().inode;
    let f = fs.lookup(&ctx, d, c"f").unwrap().inode;
    assert!(fds_under(&root) > baseline, "the count sees held nodes");
    // `b` is copied into the work directory, but a directory the host put
    // in its place stops the rename into the tree.
    std::fs::create_dir_all(upper.join("b/x")).unwrap();

    let create = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let rename = |from: &CStr, to: &CStr, flags| fs.rename(&ctx, ROOT, from, ROOT, to, flags);
    for _ in 0..3 {
        assert_eq!(
            fs.lookup(&ctx, ROOT, c"missing").unwrap().inode,
            0,
            "a negative entry"
        );
        fails("mkdir", fs.mkdir(&ctx, ROOT, c"d", 0o755, 0), libc::EEXIST);
        fails("create", fs.create(&ctx, ROOT, c"a", create), libc::EEXIST);
        fails("symlink", fs.symlink(&ctx, c"t", d, c"f"), libc::EEXIST);
        fails("link", fs.link(&ctx, a, ROOT, c"e"), libc::EEXIST);
        fails("rmdir", fs.rmdir(&ctx, ROOT, c"d"), libc::ENOTEMPTY);
        fails("rmdir file", fs.rmdir(&ctx, ROOT, c"a"), libc::ENOTDIR);
        fails("unlink dir", fs.unlink(&ctx, ROOT, c"e"), libc::EISDIR);
        fails("rename lower dir", rename(c"e", c"z", 0), libc::EXDEV);
        fails("rename over dir", rename(c"a", c"e", 0), libc::EISDIR);
        let noreplace = libc::RENAME_NOREPLACE;
        fails(
            "rename noreplace",
            rename(c"a", c"b", noreplace),
            libc::EEXIST,
        );
        let whiteout = libc::S_IFCHR | 0o644;
        fails(
            "mknod",
            fs.mknod(&ctx, ROOT, c"w", whiteout, 0, 0),
            libc::EPERM,
        );
        // Copy-ups refused by the cap: `d` is copied up, then `f` is not.
        fails(
            "open a",
            fs.open(&ctx, a, libc::O_RDWR as u32, 0),
            libc::ENOSPC,
        );
        fails(
            "open f",
            fs.open(&ctx, f, libc::O_RDWR as u32, 0),
            libc::ENOSPC,
        );
        fails(
            "open b",
            fs.open(&ctx, b, libc::O_RDWR as u32, 0),
            libc::EISDIR,
        );
    }
    for node in [f, d, b, a] {
        fs.forget(&ctx, node, 1);
    }
    assert_eq!(fds_under(&root), baseline, "host fds leaked");
    let work = upper.join(".minivm-copyup.work");
    assert_eq!(std::fs::read_dir(work).unwrap().count(), 0, "scratch left");
}
