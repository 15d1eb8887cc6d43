//! The layers served as the VMM serves them: fuse-backend-rs's
//! `OverlayFs` over one `PassthroughFs` per layer plus an empty upper
//! layer, queried through its `FileSystem` API (no FUSE mount needed).

use super::*;
use fuse_backend_rs::api::filesystem::{Context, DirEntry, FileSystem, GetxattrReply};
use fuse_backend_rs::overlayfs::{config::Config, BoxedLayer, OverlayFs};
use fuse_backend_rs::passthrough::{Config as PtConfig, PassthroughFs};
use imagefs::layerstore::prepare_upper;
use std::sync::Arc;

fn layer(dir: &Path) -> Arc<BoxedLayer> {
    let fs = PassthroughFs::<()>::new(PtConfig {
        root_dir: dir.to_string_lossy().into(),
        xattr: true, // OverlayFs reads the opaque xattrs through it.
        do_import: true,
        ..Default::default()
    })
    .unwrap();
    fs.import().unwrap();
    Arc::new(Box::new(fs) as BoxedLayer)
}

/// (inode, stat) of `path`, or the lookup's errno.
fn lookup(fs: &OverlayFs, path: &[u8]) -> Result<(u64, libc::stat64), i32> {
    let ctx = Context::default();
    let (mut ino, mut st) = (1, fs.getattr(&ctx, 1, None).unwrap().0);
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        let e = fs
            .lookup(&ctx, ino, &CString::new(c).unwrap())
            .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        (ino, st) = (e.inode, e.attr);
    }
    Ok((ino, st))
}

fn children(fs: &OverlayFs, ino: u64) -> BTreeSet<Vec<u8>> {
    let ctx = Context::default();
    let (h, _) = fs.opendir(&ctx, ino, 0).unwrap();
    let mut out = BTreeSet::new();
    let mut add = |d: DirEntry| {
        if d.name != b"." && d.name != b".." {
            out.insert(d.name.to_vec());
        }
        Ok(1)
    };
    fs.readdir(&ctx, ino, h.unwrap_or(0), 65536, 0, &mut add)
        .unwrap();
    out
}

/// The overlay the VMM builds: the layers (top-most first) under an upper
/// directory made by `prepare_upper`.
fn serve(dirs: &[PathBuf], tmp: &Path) -> OverlayFs {
    let (upper, work) = (tmp.join("upper"), tmp.join("work"));
    prepare_upper(dirs, &upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let lowers = dirs.iter().rev().map(|d| layer(d)).collect();
    let config = Config {
        mountpoint: "/".into(),
        work: work.to_string_lossy().into(),
        do_import: true,
        ..Default::default()
    };
    let fs = OverlayFs::new(Some(layer(&upper)), lowers, config).unwrap();
    fs.import().unwrap();
    fs
}

#[test]
fn fuse_backend_rs_overlay_serves_the_merged_image() {
    let tmp = TempDir::new("ls-fuse").unwrap();
    let layout = write(&tricky_image(), &tmp.path().join("oci"), Compression::Gzip);
    let store = LayerStore::new(tmp.path().join("store"));
    let dirs = ensure(&store, &layout).unwrap();
    let fs = serve(&dirs, tmp.path());
    let ctx = Context::default();
    let privileged = store.privileged();
    for (path, expect) in tricky_expectations() {
        let shown = String::from_utf8_lossy(&path).into_owned();
        if std::str::from_utf8(&path).is_err() {
            // fuse-backend-rs's overlay turns names into UTF-8 lossily.
            assert_eq!(lookup(&fs, &path).err(), Some(libc::ENOENT), "{shown}");
            continue;
        }
        if expect == Expect::Absent {
            assert_eq!(lookup(&fs, &path).err(), Some(libc::ENOENT), "{shown}");
            continue;
        }
        let (ino, st) = lookup(&fs, &path).unwrap_or_else(|e| panic!("{shown}: errno {e}"));
        let (ftype, perm) = (st.st_mode & libc::S_IFMT, st.st_mode & 0o7777);
        let rdev = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
        let owner = (u64::from(st.st_uid), u64::from(st.st_gid));
        match expect {
            Expect::Absent => unreachable!(),
            Expect::Dir {
                mode,
                uid,
                gid,
                children: c,
                xattrs,
            } => {
                assert_eq!(ftype, libc::S_IFDIR, "{shown}");
                if privileged {
                    assert_eq!((perm, owner), (mode, (uid, gid)), "{shown}");
                }
                if let Some(c) = c {
                    assert_eq!(children(&fs, ino), c.into_iter().collect(), "{shown}");
                }
                for (n, v) in xattrs {
                    let r = fs.getxattr(&ctx, ino, &CString::new(n.clone()).unwrap(), 1024);
                    assert!(
                        matches!(r, Ok(GetxattrReply::Value(ref got)) if *got == v),
                        "{shown}: {n}"
                    );
                }
            }
            Expect::File {
                data,
                mode,
                uid,
                gid,
                nlink,
                ..
            } => {
                assert_eq!(
                    (ftype, st.st_size as usize),
                    (libc::S_IFREG, data.len()),
                    "{shown}"
                );
                assert_eq!(st.st_nlink, u64::from(nlink), "{shown}");
                if privileged {
                    assert_eq!((perm, owner), (mode, (uid, gid)), "{shown}");
                }
            }
            Expect::Symlink(t) => assert_eq!(fs.readlink(&ctx, ino).unwrap(), t, "{shown}"),
            Expect::CharDev { major, minor, mode } | Expect::BlockDev { major, minor, mode } => {
                if privileged {
                    assert_eq!((perm, rdev), (mode, (major, minor)), "{shown}");
                }
            }
            Expect::Fifo { mode } => {
                assert_eq!((ftype, perm), (libc::S_IFIFO, mode), "{shown}")
            }
        }
    }
}

#[test]
fn the_root_shows_the_upper_directory_made_like_the_image_root() {
    let tmp = TempDir::new("ls-fuse-root").unwrap();
    let image = TestImage::new(vec![
        vec![TestEntry::file("f", "f\n")],
        vec![TestEntry::raw(&b"./"[..], b'5')
            .mode(0o750)
            .mtime(1_600_000_000, 0)],
    ]);
    let layout = write(&image, &tmp.path().join("oci"), Compression::Gzip);
    let store = LayerStore::new(tmp.path().join("store"));
    let dirs = ensure(&store, &layout).unwrap();
    let fs = serve(&dirs, tmp.path());
    let (_, st) = lookup(&fs, b"").unwrap();
    assert_eq!((st.st_mode & 0o7777, st.st_mtime), (0o750, 1_600_000_000));
    // What an upper directory made otherwise would show instead.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let lowers = dirs.iter().rev().map(|d| layer(d)).collect();
    let plain = OverlayFs::new(Some(layer(&other)), lowers, Config::default()).unwrap();
    plain.import().unwrap();
    assert_eq!(lookup(&plain, b"").unwrap().1.st_mode & 0o7777, 0o711);
}
