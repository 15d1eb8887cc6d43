//! [`LayeredFs`] driven through its `FileSystem` API: what the merged view
//! must get exactly right for an OCI image (hardlinks, byte names, devices,
//! copy-up that keeps everything, hidden bookkeeping, rename and rmdir over
//! lower layers), with the lower layers never written.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{
    Context, FileSystem, GetxattrReply, ListxattrReply, OpenOptions,
};

use super::{walk, TempDir};
use crate::virtio::fs::layered::{Chunk, LayeredFs, WORK_DIR};
use crate::virtio::fs::layered_fs;
use crate::virtio::fs::passthrough::passthrough_fs;

const ROOT: u64 = 1;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mknod(path: &Path, mode: u32, dev: libc::dev_t) {
    // SAFETY: a valid NUL-terminated path; mknod does not retain it.
    let rc = unsafe { libc::mknod(c(path).as_ptr(), mode, dev) };
    assert_eq!(rc, 0, "mknod {}", path.display());
}

fn set_xattr(path: &Path, name: &CStr, value: &[u8]) {
    // SAFETY: valid NUL-terminated strings and a value that outlive the call.
    let rc = unsafe {
        libc::lsetxattr(
            c(path).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr on {}", path.display());
}

fn get_xattr(path: &Path, name: &CStr) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings; the buffer is as long as we say.
    let n = unsafe {
        libc::lgetxattr(
            c(path).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn set_mtime(path: &Path, sec: i64) {
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: a valid path and two timespecs, as utimensat wants.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(path).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0);
}

/// Every path under `dir` with its metadata, xattr and content.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .into_iter()
        .map(|(p, m, data)| {
            format!(
                "{:?} {:o} {}:{} {} {} {:?} {:?}",
                p,
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.rdev(),
                get_xattr(&p, c"user.k"),
                data
            )
        })
        .collect();
    out.sort();
    out
}

struct Fixture {
    _tmp: TempDir,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    fs: LayeredFs,
    before: Vec<Vec<String>>,
}

impl Fixture {
    /// Layer 0 (bottom): `h1`/`h2` hardlinks, `latin1-\xe9`, `dev/loop0`,
    /// `dev/fifo`, `owned` (1000:1000 0640, xattr, mtime), `sparse`,
    /// `tree/sub/f`, `full/x`, `r`; layer 1: `o` opaque with an xattr of
    /// its own, hiding layer 0's `o/hidden`.
    fn new() -> Fixture {
        let tmp = TempDir::new();
        let (l0, l1, upper) = (
            tmp.path().join("l0"),
            tmp.path().join("l1"),
            tmp.path().join("upper"),
        );
        for d in [&l0, &l1, &upper] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(l0.join("h1"), b"linked").unwrap();
        std::fs::hard_link(l0.join("h1"), l0.join("h2")).unwrap();
        std::fs::write(l0.join(OsStr::from_bytes(b"latin1-\xe9")), b"e").unwrap();
        std::fs::create_dir(l0.join("dev")).unwrap();
        mknod(
            &l0.join("dev/loop0"),
            libc::S_IFBLK | 0o660,
            libc::makedev(7, 0),
        );
        mknod(&l0.join("dev/fifo"), libc::S_IFIFO | 0o600, 0);
        let owned = l0.join("owned");
        std::fs::write(&owned, b"line1\n").unwrap();
        std::os::unix::fs::chown(&owned, Some(1000), Some(1000)).unwrap();
        std::fs::set_permissions(&owned, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        set_xattr(&owned, c"user.k", b"v");
        set_mtime(&owned, 1_234_567_890);
        let sparse = std::fs::File::create(l0.join("sparse")).unwrap();
        sparse.set_len(3 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&sparse, b"tail", 3 << 20).unwrap();
        std::fs::create_dir_all(l0.join("tree/sub")).unwrap();
        std::fs::write(l0.join("tree/sub/f"), b"f").unwrap();
        std::fs::create_dir(l0.join("full")).unwrap();
        std::fs::write(l0.join("full/x"), b"x").unwrap();
        std::fs::write(l0.join("r"), b"r").unwrap();
        std::fs::create_dir(l0.join("o")).unwrap();
        std::fs::write(l0.join("o/hidden"), b"h").unwrap();
        std::fs::create_dir(l1.join("o")).unwrap();
        set_xattr(&l1.join("o"), c"user.overlay.opaque", b"y");
        set_xattr(&l1.join("o"), c"user.k", b"o");
        std::fs::write(l1.join("o/shown"), b"s").unwrap();

        let lowers = vec![l0, l1];
        let before = lowers.iter().map(|l| snapshot(l)).collect();
        let layers = lowers
            .iter()
            .rev()
            .map(|l| passthrough_fs(l).unwrap())
            .collect();
        let fs = LayeredFs::new(
            Some(passthrough_fs(&upper).unwrap()),
            layers,
            Duration::from_secs(1),
            false,
        )
        .unwrap();
        Fixture {
            _tmp: tmp,
            lowers,
            upper,
            fs,
            before,
        }
    }

    /// LOOKUP, with a negative entry (inode 0) read as ENOENT, as the kernel does.
    fn lookup(&self, parent: u64, name: &[u8]) -> Result<(u64, libc::stat64), i32> {
        let name = CString::new(name).unwrap();
        match self.fs.lookup(&Context::default(), parent, &name) {
            Ok(e) if e.inode == 0 => Err(libc::ENOENT),
            Ok(e) => Ok((e.inode, e.attr)),
            Err(e) => Err(e.raw_os_error().unwrap()),
        }
    }

    fn node(&self, path: &[u8]) -> u64 {
        path.split(|b| *b == b'/')
            .fold(ROOT, |n, part| self.lookup(n, part).unwrap().0)
    }

    fn names(&self, dir: u64) -> Vec<Vec<u8>> {
        let ctx = Context::default();
        let (fh, _) = self.fs.opendir(&ctx, dir, 0).unwrap();
        let mut out = Vec::new();
        self.fs
            .readdir(&ctx, dir, fh.unwrap(), 4096, 0, &mut |d| {
                out.push(d.name.to_vec());
                Ok(1)
            })
            .unwrap();
        self.fs.releasedir(&ctx, dir, 0, fh.unwrap()).unwrap();
        out.retain(|n| n != b"." && n != b"..");
        out.sort();
        out
    }

    fn read(&self, node: u64) -> Vec<u8> {
        let ctx = Context::default();
        let (fh, _, _) = self.fs.open(&ctx, node, libc::O_RDONLY as u32, 0).unwrap();
        let mut chunk = Chunk::new();
        let n = self
            .fs
            .read(&ctx, node, fh.unwrap(), &mut chunk, 1 << 20, 0, None, 0)
            .unwrap();
        self.fs
            .release(&ctx, node, 0, fh.unwrap(), false, false, None)
            .unwrap();
        chunk.data()[..n].to_vec()
    }

    fn append(&self, node: u64, data: &[u8]) {
        let ctx = Context::default();
        let flags = (libc::O_WRONLY | libc::O_APPEND) as u32;
        let (fh, _, _) = self.fs.open(&ctx, node, flags, 0).unwrap();
        let size = self.fs.getattr(&ctx, node, None).unwrap().0.st_size as u64;
        let mut chunk = Chunk::with(data);
        let n = self
            .fs
            .write(
                &ctx,
                node,
                fh.unwrap(),
                &mut chunk,
                data.len() as u32,
                size,
                None,
                false,
                flags,
                0,
            )
            .unwrap();
        assert_eq!(n, data.len());
        self.fs
            .release(&ctx, node, 0, fh.unwrap(), true, false, None)
            .unwrap();
    }

    fn lowers_unchanged(&self) {
        let after: Vec<_> = self.lowers.iter().map(|l| snapshot(l)).collect();
        assert_eq!(self.before, after, "a lower layer changed");
    }
}

fn errno<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => panic!("succeeded, but should have failed"),
        Err(e) => e.raw_os_error().unwrap(),
    }
}

fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

#[test]
fn hardlinks_are_one_inode_and_stay_linked_through_copy_up() {
    let f = Fixture::new();
    let (h1, st1) = f.lookup(ROOT, b"h1").unwrap();
    let (h2, st2) = f.lookup(ROOT, b"h2").unwrap();
    assert_eq!(h1, h2);
    assert_eq!((st1.st_nlink, st2.st_nlink), (2, 2));
    // The same number again after the guest forgot the inode.
    f.fs.forget(&Context::default(), h1, 2);
    assert_eq!(f.lookup(ROOT, b"h1").unwrap().0, h1);
    f.lookup(ROOT, b"h2").unwrap();

    f.append(h1, b"+more");
    assert_eq!(f.read(f.node(b"h2")), b"linked+more");
    let (m1, m2) = (
        std::fs::metadata(f.upper.join("h1")).unwrap(),
        std::fs::metadata(f.upper.join("h2")).unwrap(),
    );
    assert_eq!((m1.ino(), m1.nlink()), (m2.ino(), 2));
    f.lowers_unchanged();
}

#[test]
fn names_are_bytes_and_devices_show() {
    let f = Fixture::new();
    let name = b"latin1-\xe9";
    assert!(f.names(ROOT).contains(&name.to_vec()));
    let (n, _) = f.lookup(ROOT, name).unwrap();
    assert_eq!(f.read(n), b"e");
    f.fs.unlink(&Context::default(), ROOT, &CString::new(&name[..]).unwrap())
        .unwrap();
    assert!(is_whiteout(&f.upper.join(OsStr::from_bytes(name))));
    assert_eq!(f.lookup(ROOT, name), Err(libc::ENOENT));

    let dev = f.node(b"dev");
    assert_eq!(f.names(dev), [b"fifo".to_vec(), b"loop0".to_vec()]);
    let (_, st) = f.lookup(dev, b"loop0").unwrap();
    let host = std::fs::symlink_metadata(f.lowers[0].join("dev/loop0")).unwrap();
    assert!(host.file_type().is_block_device());
    assert_eq!(st.st_mode, host.mode());
    assert_eq!(st.st_rdev, libc::makedev(7, 0));
    let (_, st) = f.lookup(dev, b"fifo").unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFIFO);
    f.lowers_unchanged();
}

#[test]
fn copy_up_keeps_data_owner_mode_xattrs_times_and_holes() {
    let f = Fixture::new();
    let owned = f.node(b"owned");
    f.append(owned, b"line2\n");
    assert_eq!(f.read(owned), b"line1\nline2\n");
    let p = f.upper.join("owned");
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o640));
    assert_eq!(get_xattr(&p, c"user.k").as_deref(), Some(&b"v"[..]));
    let (st, _) = f.fs.getattr(&Context::default(), owned, None).unwrap();
    assert_eq!(
        (st.st_uid, st.st_gid, st.st_mode & 0o7777),
        (1000, 1000, 0o640)
    );

    // Metadata-only changes copy up too, keeping the data.
    let sparse = f.node(b"sparse");
    let mut attr = st;
    attr.st_mode = libc::S_IFREG | 0o600;
    f.fs.setattr(
        &Context::default(),
        sparse,
        attr,
        None,
        fuse_backend_rs::api::filesystem::SetattrValid::MODE,
    )
    .unwrap();
    let m = std::fs::metadata(f.upper.join("sparse")).unwrap();
    assert_eq!((m.len(), m.mode() & 0o7777), ((3 << 20) + 4, 0o600));
    assert!(
        m.blocks() * 512 < 1 << 20,
        "holes filled: {} blocks",
        m.blocks()
    );
    let data = std::fs::read(f.upper.join("sparse")).unwrap();
    assert!(data.ends_with(b"tail") && data[..3 << 20].iter().all(|b| *b == 0));

    // Parents are copied up with their own metadata; nothing temporary remains.
    let sub_f = f.node(b"tree/sub/f");
    f.append(sub_f, b"!");
    assert_eq!(std::fs::read(f.upper.join("tree/sub/f")).unwrap(), b"f!");
    let names = f.names(ROOT);
    assert!(
        names.iter().all(|n| !n.starts_with(b".minivm")),
        "{names:?}"
    );
    // In the host's upper only the (empty) work directory is ours.
    let upper_names: Vec<_> = std::fs::read_dir(&f.upper)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.as_bytes().starts_with(b".minivm"))
        .collect();
    assert_eq!(upper_names, [work_name()], "{upper_names:?}");
    let work = f.upper.join(work_name());
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    f.lowers_unchanged();
}

fn work_name() -> &'static OsStr {
    OsStr::from_bytes(WORK_DIR.to_bytes())
}

/// A persisted upper after a crash mid-copy-up: the half-made copy (and a
/// replaced directory, and a symlink out) in the work directory are removed
/// at the next start, the symlink's target is untouched, and the guest never
/// sees any of it.
#[test]
fn a_crashed_runs_scratch_files_are_removed_at_start() {
    let tmp = TempDir::new();
    let (lower, upper, outside) = (
        tmp.path().join("lower"),
        tmp.path().join("upper"),
        tmp.path().join("outside"),
    );
    for d in [&lower, &upper, &outside] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(lower.join("f"), b"lower").unwrap();
    std::fs::write(outside.join("keep"), b"keep").unwrap();
    let work = upper.join(work_name());
    std::fs::create_dir_all(work.join(".minivm-copyup.1.2/sub")).unwrap();
    std::fs::write(work.join(".minivm-copyup.1.1"), b"half").unwrap();
    std::os::unix::fs::symlink(&outside, work.join(".minivm-copyup.1.3")).unwrap();

    let fs = layered_fs(std::slice::from_ref(&lower), Some(&upper), false).unwrap();
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");
    let ctx = Context::default();
    // Not there for the guest: a negative entry.
    assert_eq!(fs.lookup(&ctx, ROOT, WORK_DIR).unwrap().inode, 0);
    // Copy-ups still work, through the recreated work directory.
    let f = fs.lookup(&ctx, ROOT, c"f").unwrap();
    let (fh, _, _) = fs.open(&ctx, f.inode, libc::O_WRONLY as u32, 0).unwrap();
    fs.release(&ctx, f.inode, 0, fh.unwrap(), false, false, None)
        .unwrap();
    assert_eq!(std::fs::read(upper.join("f")).unwrap(), b"lower");
    assert_eq!(std::fs::read(lower.join("f")).unwrap(), b"lower");
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
}

#[test]
fn the_merge_bookkeeping_is_hidden_from_the_guest() {
    let f = Fixture::new();
    let ctx = Context::default();
    let o = f.node(b"o");
    assert_eq!(f.names(o), [b"shown".to_vec()]);
    assert_eq!(f.lookup(o, b"hidden"), Err(libc::ENOENT));
    let list = match f.fs.listxattr(&ctx, o, 4096).unwrap() {
        ListxattrReply::Names(n) => n,
        ListxattrReply::Count(_) => panic!("names asked for, count given"),
    };
    assert_eq!(list, b"user.k\0");
    match f.fs.listxattr(&ctx, o, 0).unwrap() {
        ListxattrReply::Count(n) => assert_eq!(n as usize, list.len()),
        ListxattrReply::Names(_) => panic!("count asked for, names given"),
    }
    assert_eq!(
        errno(f.fs.getxattr(&ctx, o, c"user.overlay.opaque", 16)),
        libc::ENODATA
    );
    assert!(matches!(
        f.fs.getxattr(&ctx, o, c"user.k", 16).unwrap(),
        GetxattrReply::Value(v) if v == b"o"
    ));
    assert_eq!(
        errno(f.fs.setxattr(&ctx, o, c"user.overlay.opaque", b"y", 0)),
        libc::EPERM
    );
    // A whiteout cannot be made by hand, nor a copy-up scratch name reached.
    assert_eq!(
        errno(f.fs.mknod(&ctx, ROOT, c"w", libc::S_IFCHR | 0o600, 0, 0)),
        libc::EPERM
    );
    let args = CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    assert_eq!(
        errno(f.fs.create(&ctx, ROOT, c".minivm-copyup.0", args)),
        libc::EPERM
    );
    f.lowers_unchanged();
}

#[test]
fn rename_and_rmdir_over_lower_layers() {
    let f = Fixture::new();
    let ctx = Context::default();
    // A lower file moves: the copy in the upper, a whiteout where it was.
    f.node(b"r");
    f.fs.rename(&ctx, ROOT, c"r", ROOT, c"r2", 0).unwrap();
    assert_eq!(f.lookup(ROOT, b"r"), Err(libc::ENOENT));
    assert_eq!(f.read(f.node(b"r2")), b"r");
    assert!(is_whiteout(&f.upper.join("r")));
    assert_eq!(std::fs::read(f.upper.join("r2")).unwrap(), b"r");
    // A directory with lower parts cannot move (mv copies instead).
    f.node(b"tree");
    assert_eq!(
        errno(f.fs.rename(&ctx, ROOT, c"tree", ROOT, c"tree2", 0)),
        libc::EXDEV
    );
    assert_eq!(
        errno(f.fs.rename(&ctx, ROOT, c"r2", ROOT, c"h1", libc::RENAME_NOREPLACE)),
        libc::EEXIST
    );
    assert_eq!(
        errno(f.fs.rename(&ctx, ROOT, c"r2", ROOT, c"h1", libc::RENAME_EXCHANGE)),
        libc::EINVAL
    );

    // rmdir: only when the merged directory is empty.
    let full = f.node(b"full");
    assert_eq!(errno(f.fs.rmdir(&ctx, ROOT, c"full")), libc::ENOTEMPTY);
    f.fs.unlink(&ctx, full, c"x").unwrap();
    assert!(f.names(full).is_empty());
    f.fs.rmdir(&ctx, ROOT, c"full").unwrap();
    assert!(is_whiteout(&f.upper.join("full")));
    assert_eq!(f.lookup(ROOT, b"full"), Err(libc::ENOENT));
    // Made again, it is a new, empty directory: the lower one stays hidden.
    let e = f.fs.mkdir(&ctx, ROOT, c"full", 0o755, 0).unwrap();
    assert!(f.names(e.inode).is_empty());
    assert_eq!(f.lookup(e.inode, b"x"), Err(libc::ENOENT));
    assert_eq!(
        get_xattr(&f.upper.join("full"), c"user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    // A new directory moves freely, here over the whiteout of `r`.
    f.fs.mkdir(&ctx, ROOT, c"newdir", 0o755, 0).unwrap();
    f.fs.rename(&ctx, ROOT, c"newdir", ROOT, c"r", 0).unwrap();
    assert!(std::fs::metadata(f.upper.join("r")).unwrap().is_dir());
    assert!(f.names(f.node(b"r")).is_empty());
    f.lowers_unchanged();
}

/// Mapped mode over a layer written as an unprivileged layer store writes
/// one: the guest sees the image's owners, modes, devices and system
/// xattrs, and what it sets is recorded the same way in the upper.
#[test]
fn mapped_mode_presents_and_records_ids_in_xattrs() {
    use fuse_backend_rs::api::filesystem::SetattrValid;
    use layerfmt::Override;

    let tmp = TempDir::new();
    let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
    std::fs::create_dir_all(lower.join("dev")).unwrap();
    std::fs::create_dir(&upper).unwrap();
    std::fs::write(lower.join("su"), b"#!/bin/sh\n").unwrap();
    set_xattr(&lower.join("su"), c"user.minivm.override", b"0:0:104755");
    std::fs::write(lower.join("dev/null"), b"").unwrap();
    set_xattr(
        &lower.join("dev/null"),
        c"user.minivm.override",
        b"0:0:20666:1:3",
    );
    std::fs::write(lower.join("ping"), b"elf").unwrap();
    set_xattr(
        &lower.join("ping"),
        c"user.minivm.xattr.security.capability",
        b"\x01\x00\x00\x02",
    );
    set_xattr(&lower.join("ping"), c"user.plain", b"p");
    let fs = LayeredFs::new(
        Some(passthrough_fs(&upper).unwrap()),
        vec![passthrough_fs(&lower).unwrap()],
        Duration::from_secs(1),
        true,
    )
    .unwrap();
    let ctx = Context::default();
    let look = |p: u64, n: &CStr| fs.lookup(&ctx, p, n).unwrap();

    let su = look(ROOT, c"su");
    assert_eq!((su.attr.st_uid, su.attr.st_mode), (0, 0o104755));
    let null = look(look(ROOT, c"dev").inode, c"null");
    assert_eq!(null.attr.st_mode, 0o20666);
    assert_eq!(null.attr.st_rdev, libc::makedev(1, 3));
    let ping = look(ROOT, c"ping");
    let names = match fs.listxattr(&ctx, ping.inode, 4096).unwrap() {
        ListxattrReply::Names(n) => n,
        ListxattrReply::Count(_) => panic!("names asked for"),
    };
    let mut names: Vec<&[u8]> = names.split(|b| *b == 0).filter(|n| !n.is_empty()).collect();
    names.sort();
    assert_eq!(names, [&b"security.capability"[..], b"user.plain"]);
    assert!(matches!(
        fs.getxattr(&ctx, ping.inode, c"security.capability", 64).unwrap(),
        GetxattrReply::Value(v) if v == b"\x01\x00\x00\x02"
    ));
    assert_eq!(
        errno(fs.getxattr(&ctx, su.inode, c"user.minivm.override", 64)),
        libc::ENODATA
    );

    // chown and chmod are recorded on the copy-up; the host file stays ours.
    let mut attr = su.attr;
    attr.st_uid = 1234;
    attr.st_gid = 5678;
    attr.st_mode = 0o100750;
    let (st, _) = fs
        .setattr(
            &ctx,
            su.inode,
            attr,
            None,
            SetattrValid::UID | SetattrValid::GID | SetattrValid::MODE,
        )
        .unwrap();
    assert_eq!((st.st_uid, st.st_gid, st.st_mode), (1234, 5678, 0o100750));
    let host = std::fs::metadata(upper.join("su")).unwrap();
    assert_eq!((host.uid(), host.mode() & 0o7777), (0, 0o750 | 0o600));
    let rec = get_xattr(&upper.join("su"), c"user.minivm.override").unwrap();
    assert_eq!(
        Override::parse(&rec),
        Some(Override {
            uid: 1234,
            gid: 5678,
            mode: 0o100750,
            rdev: None
        })
    );
    // A copy-up keeps the mapped xattrs too.
    fs.setxattr(&ctx, ping.inode, c"trusted.t", b"t", 0)
        .unwrap();
    assert_eq!(
        get_xattr(&upper.join("ping"), c"user.minivm.xattr.trusted.t").as_deref(),
        Some(&b"t"[..])
    );
    assert!(get_xattr(
        &upper.join("ping"),
        c"user.minivm.xattr.security.capability"
    )
    .is_some());

    // The guest's creates carry its ids; a device is a file that says so.
    let guest = Context {
        uid: 1000,
        gid: 100,
        pid: 1,
    };
    let dev = fs
        .mknod(
            &guest,
            ROOT,
            c"loop0",
            libc::S_IFBLK | 0o660,
            libc::makedev(7, 0) as u32,
            0o022,
        )
        .unwrap();
    assert_eq!((dev.attr.st_uid, dev.attr.st_gid), (1000, 100));
    assert_eq!(
        (dev.attr.st_mode, dev.attr.st_rdev),
        (libc::S_IFBLK | 0o640, libc::makedev(7, 0))
    );
    assert!(std::fs::metadata(upper.join("loop0")).unwrap().is_file());
    let d = fs.mkdir(&guest, ROOT, c"home", 0o700, 0).unwrap();
    assert_eq!(
        (d.attr.st_uid, d.attr.st_mode),
        (1000, libc::S_IFDIR | 0o700)
    );
    let args = CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
        mode: libc::S_IFREG | 0o4755,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, _, _, _) = fs.create(&guest, d.inode, c"tool", args).unwrap();
    assert_eq!(
        (e.attr.st_uid, e.attr.st_mode),
        (1000, libc::S_IFREG | 0o4755)
    );
    let host = std::fs::metadata(upper.join("home/tool")).unwrap();
    assert_eq!(host.mode() & 0o7000, 0, "set-id bits on the host file");
}

/// A very deep image tree copies up without deep recursion.
#[test]
fn copy_up_of_a_deep_path() {
    let tmp = TempDir::new();
    let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
    let depth = 1500;
    let rel: PathBuf = std::iter::repeat_n("d", depth).collect();
    std::fs::create_dir_all(lower.join(&rel)).unwrap();
    std::fs::write(lower.join(&rel).join("f"), b"deep").unwrap();
    std::fs::create_dir(&upper).unwrap();
    let fs = LayeredFs::new(
        Some(passthrough_fs(&upper).unwrap()),
        vec![passthrough_fs(&lower).unwrap()],
        Duration::from_secs(1),
        false,
    )
    .unwrap();
    let ctx = Context::default();
    let mut node = ROOT;
    for _ in 0..depth {
        node = fs.lookup(&ctx, node, c"d").unwrap().inode;
    }
    let f = fs.lookup(&ctx, node, c"f").unwrap().inode;
    // On a small stack, as a worker thread might have.
    let fs = std::sync::Arc::new(fs);
    let worker = {
        let fs = fs.clone();
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let flags = libc::O_WRONLY as u32;
                fs.open(&Context::default(), f, flags, 0).map(|_| ())
            })
            .unwrap()
    };
    worker.join().unwrap().unwrap();
    assert_eq!(std::fs::read(upper.join(&rel).join("f")).unwrap(), b"deep");
}

/// The guest is the tree's only writer, so it may keep everything: entries
/// and attributes for the timeout, misses as negative entries, file pages
/// across opens and directory listings.
#[test]
fn the_guest_may_cache_what_only_it_changes() {
    let f = Fixture::new();
    let ctx = Context::default();
    let miss = f.fs.lookup(&ctx, ROOT, c"no-such-name").unwrap();
    assert_eq!(miss.inode, 0);
    assert_eq!(miss.entry_timeout, Duration::from_secs(1));
    // The upper's hidden work directory is a miss like any other.
    assert_eq!(f.fs.lookup(&ctx, ROOT, WORK_DIR).unwrap().inode, 0);
    let hit = f.fs.lookup(&ctx, ROOT, c"r").unwrap();
    assert_ne!(hit.inode, 0);
    assert_eq!(hit.entry_timeout, Duration::from_secs(1));
    assert_eq!(hit.attr_timeout, Duration::from_secs(1));

    for flags in [libc::O_RDONLY, libc::O_RDWR] {
        let (fh, opts, _) = f.fs.open(&ctx, hit.inode, flags as u32, 0).unwrap();
        assert!(
            opts.contains(OpenOptions::KEEP_CACHE),
            "{flags:#o}: {opts:?}"
        );
        assert!(
            !opts.contains(OpenOptions::DIRECT_IO),
            "{flags:#o}: {opts:?}"
        );
        f.fs.release(&ctx, hit.inode, 0, fh.unwrap(), false, false, None)
            .unwrap();
    }
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, opts, _) = f.fs.create(&ctx, ROOT, c"no-such-name", args).unwrap();
    assert!(opts.contains(OpenOptions::KEEP_CACHE), "{opts:?}");
    f.fs.release(&ctx, e.inode, 0, fh.unwrap(), false, false, None)
        .unwrap();
    // What was missing exists once the guest made it.
    assert_eq!(f.lookup(ROOT, b"no-such-name").unwrap().0, e.inode);

    let (dh, opts) = f.fs.opendir(&ctx, ROOT, 0).unwrap();
    assert!(opts.contains(OpenOptions::CACHE_DIR), "{opts:?}");
    f.fs.releasedir(&ctx, ROOT, 0, dh.unwrap()).unwrap();
}
