//! The layers served as the VMM serves them: minivm's `LayeredFs` (devices
//! crate) over one `PassthroughFs` per layer plus an upper layer made by
//! `prepare_upper`, queried through its `FileSystem` API (no FUSE mount
//! needed). A store unpacked as root is served natively; one unpacked
//! unprivileged is served in mapped mode, and both must show the image
//! exactly. (Here rather than in imagefs, which does not depend on devices.)

use devices::virtio::fs::{layered_fs, LayeredFs};
use fuse_backend_rs::api::filesystem::{Context, DirEntry, FileSystem, GetxattrReply};
use imagefs::layerstore::{prepare_upper, LayerStore, StoreOptions};
use imagefs::source::{self, SourceOptions};
use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use testkit::{
    tricky_expectations, tricky_image, Compression, Expect, TempDir, TestEntry, TestImage,
};

/// Writes `image` as an OCI layout at `dir` and unpacks it into `store`.
fn unpack(store: &LayerStore, image: &TestImage, dir: &Path) -> Vec<PathBuf> {
    image
        .write_oci_layout(dir, "latest", Compression::Gzip)
        .unwrap();
    let r = format!("oci:{}:latest", dir.display()).parse().unwrap();
    let mut src = source::open(&r, &SourceOptions::default()).unwrap();
    let resolved = src.resolve().unwrap();
    store
        .ensure_image(src.as_mut(), &resolved, "test", &mut |_| {})
        .unwrap()
}

/// (inode, stat) of `path`, or the lookup's errno.
fn lookup(fs: &LayeredFs, path: &[u8]) -> Result<(u64, libc::stat64), i32> {
    let ctx = Context::default();
    let (mut ino, mut st) = (1, fs.getattr(&ctx, 1, None).unwrap().0);
    for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        let e = fs
            .lookup(&ctx, ino, &CString::new(c).unwrap())
            .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        // A negative entry (the guest may cache the miss) is ENOENT to the kernel.
        if e.inode == 0 {
            return Err(libc::ENOENT);
        }
        (ino, st) = (e.inode, e.attr);
    }
    Ok((ino, st))
}

fn children(fs: &LayeredFs, ino: u64) -> BTreeSet<Vec<u8>> {
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

/// The merged view the VMM builds: the layers under an upper directory made
/// by `prepare_upper`, mapped when the store is unprivileged.
fn serve(store: &LayerStore, dirs: &[PathBuf], tmp: &Path) -> LayeredFs {
    let upper = tmp.join("upper");
    prepare_upper(dirs, &upper).unwrap();
    layered_fs(dirs, Some(&upper), !store.privileged()).unwrap()
}

#[test]
fn the_merged_image_as_root() {
    let tmp = TempDir::new("ls-fuse").unwrap();
    let store = LayerStore::new(tmp.path().join("store"));
    served_image_matches(&store, tmp.path());
}

#[test]
fn the_merged_image_unprivileged_in_mapped_mode() {
    let tmp = TempDir::new("ls-fuse-mapped").unwrap();
    let opts = StoreOptions {
        force_unprivileged: true,
        ..StoreOptions::default()
    };
    let store = LayerStore::with_options(tmp.path().join("store"), opts);
    served_image_matches(&store, tmp.path());
}

/// Every expectation of the tricky image holds in the merged view: types,
/// owners, modes, devices, sizes, links, children, xattrs, symlink targets,
/// byte names; hardlinks are one inode; no bookkeeping xattr shows.
fn served_image_matches(store: &LayerStore, tmp: &Path) {
    let dirs = unpack(store, &tricky_image(), &tmp.join("oci"));
    let fs = serve(store, &dirs, tmp);
    let ctx = Context::default();
    for (path, expect) in tricky_expectations() {
        let shown = String::from_utf8_lossy(&path).into_owned();
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
                assert_eq!((perm, owner), (mode, (uid, gid)), "{shown}");
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
                xattrs,
                same_inode_as,
                ..
            } => {
                assert_eq!(
                    (ftype, st.st_size as usize),
                    (libc::S_IFREG, data.len()),
                    "{shown}"
                );
                assert_eq!(st.st_nlink, u64::from(nlink), "{shown}");
                assert_eq!((perm, owner), (mode, (uid, gid)), "{shown}");
                let mut want: Vec<Vec<u8>> =
                    xattrs.iter().map(|(n, _)| n.as_bytes().to_vec()).collect();
                want.sort();
                assert_eq!(xattr_names(&fs, ino), want, "{shown}");
                for (n, v) in xattrs {
                    let r = fs.getxattr(&ctx, ino, &CString::new(n.clone()).unwrap(), 1024);
                    assert!(
                        matches!(r, Ok(GetxattrReply::Value(ref got)) if *got == v),
                        "{shown}: {n}"
                    );
                }
                if let Some(other) = same_inode_as {
                    assert_eq!(lookup(&fs, &other).map(|(i, _)| i), Ok(ino), "{shown}");
                }
            }
            Expect::Symlink(t) => assert_eq!(fs.readlink(&ctx, ino).unwrap(), t, "{shown}"),
            Expect::CharDev { major, minor, mode } | Expect::BlockDev { major, minor, mode } => {
                let want = if matches!(expect, Expect::CharDev { .. }) {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                assert_eq!((ftype, perm, rdev), (want, mode, (major, minor)), "{shown}");
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
    let store = LayerStore::new(tmp.path().join("store"));
    let dirs = unpack(&store, &image, &tmp.path().join("oci"));
    let fs = serve(&store, &dirs, tmp.path());
    let (_, st) = lookup(&fs, b"").unwrap();
    assert_eq!((st.st_mode & 0o7777, st.st_mtime), (0o750, 1_600_000_000));
    // What an upper directory made otherwise would show instead.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let plain = layered_fs(&dirs, Some(&other), false).unwrap();
    assert_eq!(lookup(&plain, b"").unwrap().1.st_mode & 0o7777, 0o711);
}

/// The xattr names the guest would list, sorted.
fn xattr_names(fs: &LayeredFs, ino: u64) -> Vec<Vec<u8>> {
    use fuse_backend_rs::api::filesystem::ListxattrReply;
    let names = match fs.listxattr(&Context::default(), ino, 65536).unwrap() {
        ListxattrReply::Names(n) => n,
        ListxattrReply::Count(_) => Vec::new(),
    };
    let mut out: Vec<Vec<u8>> = names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    out.sort();
    out
}
