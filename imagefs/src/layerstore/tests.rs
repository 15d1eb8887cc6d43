//! Unit tests of the layer store: the same-layer and cross-layer rules of the
//! unpacker on small hand-made layers, the unprivileged encoding, and the
//! store's bookkeeping. End-to-end tests are in `imagefs/tests/layerstore.rs`.

use super::*;
use crate::digest::VerifyingReader;
use crate::reference::ImageRef;
use crate::source::{ImageSource, ResolvedImage, SourceError};
use crate::walk::WalkError;
use layerfmt::LAYER_FORMAT;
use oci_spec::image::{Descriptor, MediaType};
use std::collections::HashMap;
use std::fs;
use std::io::{Cursor, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use testkit::{layer_tar, TempDir, TestEntry};

/// Blobs served from memory, verified like the real sources.
struct MemSource {
    r: ImageRef,
    blobs: HashMap<String, Vec<u8>>,
}

impl ImageSource for MemSource {
    fn reference(&self) -> &ImageRef {
        &self.r
    }
    fn resolve(&mut self) -> Result<ResolvedImage, SourceError> {
        Err(SourceError::Invalid {
            image: "mem".into(),
            detail: "blobs only".into(),
        })
    }
    fn open_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let data = self.blobs[&desc.digest().to_string()].clone();
        let d = Digest::from_oci(desc.digest()).unwrap();
        Ok(Box::new(VerifyingReader::new(
            Cursor::new(data),
            d,
            Some(desc.size()),
            "blob",
        )))
    }
}

struct Fixture {
    _tmp: TempDir,
    store: LayerStore,
    src: MemSource,
}

fn fixture(unprivileged: bool) -> Fixture {
    let tmp = TempDir::new("layerstore-unit").unwrap();
    let opts = StoreOptions {
        force_unprivileged: unprivileged,
        ..StoreOptions::default()
    };
    let store = LayerStore::with_options(tmp.path().join("layers"), opts);
    let src = MemSource {
        r: "oci:/nonexistent".parse().unwrap(),
        blobs: HashMap::new(),
    };
    Fixture {
        _tmp: tmp,
        store,
        src,
    }
}

impl Fixture {
    fn desc(&mut self, entries: &[TestEntry]) -> Descriptor {
        let tar = layer_tar(entries).unwrap();
        let d = Digest::of_bytes(&tar);
        let desc = Descriptor::new(MediaType::ImageLayer, tar.len() as u64, d.to_oci());
        self.src.blobs.insert(d.to_string(), tar);
        desc
    }

    fn layer(
        &mut self,
        entries: &[TestEntry],
        lowers: &[PathBuf],
    ) -> Result<PathBuf, LayerStoreError> {
        let desc = self.desc(entries);
        self.store
            .ensure_layer(&mut self.src, &desc, lowers, "test")
            .map(|(d, _)| d)
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn opaque(p: &Path) -> bool {
    sys::lget_xattr(p, c"user.overlay.opaque")
        .unwrap()
        .as_deref()
        == Some(b"y")
}

#[test]
fn same_layer_rules() {
    let mut f = fixture(false);
    let base = f
        .layer(
            &[
                TestEntry::dir("keep"),
                TestEntry::file("keep/lower", "lower\n"),
                TestEntry::dir("x"),
                TestEntry::file("x/lower", "lower\n"),
                TestEntry::file("y", "y\n"),
                TestEntry::dir("w"),
                TestEntry::file("w/lower", "lower\n"),
            ],
            &[],
        )
        .unwrap();
    let top = f
        .layer(
            &[
                // Written, then whited out in the same layer: the entry stays.
                TestEntry::file("keep/new", "new\n"),
                TestEntry::whiteout("keep/new"),
                // Whited out, then recreated: an opaque directory.
                TestEntry::whiteout("x"),
                TestEntry::dir("x"),
                TestEntry::file("x/new", "new\n"),
                // Whited out, then used as a parent: an opaque directory too.
                TestEntry::whiteout("w"),
                TestEntry::file("w/new", "new\n"),
                // A file, then a directory in its place: opaque too.
                TestEntry::file("y", "file\n"),
                TestEntry::dir("y"),
                // A whiteout in a directory nothing below has: nothing to write.
                TestEntry::whiteout("nowhere/thing"),
                // Later entries win.
                TestEntry::file("z", "first\n"),
                TestEntry::symlink("z", "second"),
                // A hardlink replacing the directory that holds its target.
                TestEntry::dir("d"),
                TestEntry::file("d/f", "in d\n"),
                TestEntry::hardlink("d", "d/f"),
                // Whiteouts of lower entries are character devices 0:0.
                TestEntry::whiteout("keep/lower"),
            ],
            std::slice::from_ref(&base),
        )
        .unwrap();
    assert_eq!(fs::read(top.join("keep/new")).unwrap(), b"new\n");
    assert!(is_whiteout(&top.join("keep/lower")));
    assert!(!opaque(&top.join("keep")));
    assert!(opaque(&top.join("x")) && opaque(&top.join("y")) && opaque(&top.join("w")));
    assert_eq!(names(&top.join("w")), ["new"]);
    assert_eq!(names(&top.join("x")), ["new"]);
    assert!(!top.join("nowhere").exists());
    assert_eq!(fs::read_link(top.join("z")).unwrap(), Path::new("second"));
    assert_eq!(fs::read(top.join("d")).unwrap(), b"in d\n");
    // No OCI whiteout names and no scratch names are left anywhere.
    let all = names(&top);
    assert!(all.iter().all(|n| !n.starts_with(".wh.")), "{all:?}");
    assert_eq!(all, ["d", "keep", "w", "x", "y", "z"]);
}

#[test]
fn parents_mirror_the_lower_directory() {
    let mut f = fixture(false);
    let base = f
        .layer(
            &[
                TestEntry::dir("srv")
                    .mode(0o750)
                    .mtime(1_600_000_000, 5)
                    .xattr("user.k", "v"),
                TestEntry::dir("srv/www").mode(0o700),
                TestEntry::file("srv/www/old", "old\n"),
            ],
            &[],
        )
        .unwrap();
    let top = f
        .layer(
            &[
                TestEntry::file("srv/www/index.html", "hi\n"),
                TestEntry::whiteout("srv/www/old"),
            ],
            std::slice::from_ref(&base),
        )
        .unwrap();
    for (dir, mode) in [("srv", 0o750), ("srv/www", 0o700)] {
        let (a, b) = (
            fs::metadata(base.join(dir)).unwrap(),
            fs::metadata(top.join(dir)).unwrap(),
        );
        assert_eq!(b.mode() & 0o7777, mode, "{dir}");
        assert_eq!(
            (a.mtime(), a.mtime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            "{dir}"
        );
    }
    assert_eq!(
        sys::lget_xattr(&top.join("srv"), c"user.k")
            .unwrap()
            .as_deref(),
        Some(&b"v"[..])
    );
    // The root too takes the lower root's metadata when the tar has no "./".
    assert_eq!(
        fs::metadata(&top).unwrap().mode() & 0o7777,
        fs::metadata(&base).unwrap().mode() & 0o7777
    );
    // A "./" entry sets the root's own metadata.
    let rooted = f
        .layer(&[TestEntry::raw(&b"./"[..], b'5').mode(0o700)], &[top])
        .unwrap();
    assert_eq!(fs::metadata(&rooted).unwrap().mode() & 0o7777, 0o700);
}

#[test]
fn hardlinks_to_lower_layers_are_copies() {
    let mut f = fixture(false);
    let base = f
        .layer(
            &[
                TestEntry::file("bin/tool", "tool\n")
                    .mode(0o4711)
                    .mtime(1_500_000_000, 7),
                TestEntry::symlink("bin/sym", "tool"),
                TestEntry::dir("gone"),
                TestEntry::file("gone/f", "f\n"),
            ],
            &[],
        )
        .unwrap();
    let top = f
        .layer(
            &[
                TestEntry::hardlink("bin/tool2", "bin/tool"),
                TestEntry::hardlink("sym2", "bin/sym"),
            ],
            std::slice::from_ref(&base),
        )
        .unwrap();
    let m = fs::metadata(top.join("bin/tool2")).unwrap();
    assert_eq!(fs::read(top.join("bin/tool2")).unwrap(), b"tool\n");
    assert_eq!(
        (m.nlink(), m.mtime(), m.mtime_nsec()),
        (1, 1_500_000_000, 7)
    );
    if f.store.privileged() {
        assert_eq!(m.mode() & 0o7777, 0o4711);
    }
    assert_eq!(fs::read_link(top.join("sym2")).unwrap(), Path::new("tool"));
    // Targets hidden by this layer are not in the image.
    let e = f
        .layer(
            &[
                TestEntry::whiteout("gone"),
                TestEntry::hardlink("x", "gone/f"),
            ],
            std::slice::from_ref(&base),
        )
        .unwrap_err();
    assert!(
        matches!(e, LayerStoreError::Walk(WalkError::Hardlink { .. })),
        "{e}"
    );
    let e = f
        .layer(
            &[
                TestEntry::opaque("gone"),
                TestEntry::hardlink("x", "gone/f"),
            ],
            &[base],
        )
        .unwrap_err();
    assert!(e.to_string().contains("not (yet) in the image"), "{e}");
}

#[test]
fn reserved_xattrs_are_dropped() {
    let mut f = fixture(false);
    let top = f
        .layer(
            &[
                TestEntry::dir("d")
                    .xattr("user.overlay.opaque", "y")
                    .xattr("trusted.overlay.opaque", "y")
                    .xattr("user.minivm.override", "0:0:104755"),
                TestEntry::file("f", "x")
                    .xattr("user.fuseoverlayfs.opaque", "y")
                    .xattr("user.ok", "1"),
            ],
            &[],
        )
        .unwrap();
    assert!(!opaque(&top.join("d")));
    let xattrs = |p: &Path| sys::flist_xattr(fs::File::open(p).unwrap().as_fd()).unwrap();
    assert_eq!(xattrs(&top.join("d")), Vec::<std::ffi::CString>::new());
    assert_eq!(xattrs(&top.join("f")), [c"user.ok".to_owned()]);
}

#[test]
fn unprivileged_encoding() {
    let mut f = fixture(true);
    assert!(!f.store.privileged());
    let top = f
        .layer(
            &[
                TestEntry::dir("tmp").mode(0o1777).owner(0, 0),
                TestEntry::file("su", "su\n").mode(0o4755).owner(0, 0),
                TestEntry::file("mine", "x").mode(0o400).owner(1000, 1001),
                TestEntry::file("caps", "x").xattr("security.capability", [1, 2, 3]),
                TestEntry::char_dev("null", 1, 3),
                TestEntry::block_dev("loop0", 7, 0),
                TestEntry::fifo("fifo").mode(0o640),
                TestEntry::dir("gone"),
                TestEntry::whiteout("gone"),
            ],
            &[],
        )
        .unwrap();
    let ov = |p: &str| read_override(&top.join(p)).unwrap().unwrap();
    let mode = |p: &str| fs::symlink_metadata(top.join(p)).unwrap().mode();
    assert_eq!(ov("tmp").mode, libc::S_IFDIR | 0o1777);
    assert_eq!(mode("tmp") & 0o7777, 0o777);
    assert_eq!(ov("su").mode, libc::S_IFREG | 0o4755);
    assert_eq!(mode("su") & 0o7777, 0o755, "no setuid bit on the host");
    assert_eq!((ov("mine").uid, ov("mine").gid), (1000, 1001));
    assert_eq!(mode("mine") & 0o777, 0o600, "readable by the server");
    let caps =
        sys::lget_xattr(&top.join("caps"), c"user.minivm.xattr.security.capability").unwrap();
    assert_eq!(caps.as_deref(), Some(&[1u8, 2, 3][..]));
    for (p, t, dev) in [
        ("null", libc::S_IFCHR, (1, 3)),
        ("loop0", libc::S_IFBLK, (7, 0)),
    ] {
        assert!(
            fs::symlink_metadata(top.join(p)).unwrap().is_file(),
            "{p}: a stand-in file"
        );
        assert_eq!((ov(p).mode & libc::S_IFMT, ov(p).rdev), (t, Some(dev)));
    }
    assert!(fs::symlink_metadata(top.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(mode("fifo") & 0o777, 0o640);
    // Whiteouts are the same in both modes; 'gone' was made by this layer, so it stays.
    assert!(top.join("gone").is_dir());
    assert!(
        fs::metadata(f.store.root()).unwrap().mode() & 0o077 == 0,
        "store root is private"
    );
}

#[test]
fn store_bookkeeping() {
    let mut f = fixture(false);
    let desc = f.desc(&[TestEntry::file("a", "a")]);
    let (dir, cached) = f.store.ensure_layer(&mut f.src, &desc, &[], "img").unwrap();
    assert!(!cached);
    let (again, cached) = f.store.ensure_layer(&mut f.src, &desc, &[], "img").unwrap();
    assert!(cached && again == dir);
    let list = f.store.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].rootfs, dir);
    assert_eq!((list[0].bytes(), list[0].meta.entries), (1, 1));
    assert_eq!(list[0].meta.format, LAYER_FORMAT);
    // Leftovers of dead processes go; those of live ones stay.
    let tmp = f.store.root().join("tmp");
    fs::create_dir_all(tmp.join(format!("{}.4294967.0/rootfs", "ab"))).unwrap();
    let live = crate::host::WorkDir::create(&tmp, "ab").unwrap();
    assert_eq!(f.store.gc_tmp(), 1);
    let live_name = live.path().file_name().unwrap().to_string_lossy();
    assert_eq!(names(&tmp), [live_name.into_owned()]);
    drop(live);
    // An entry of another mode is rebuilt rather than used.
    let other = LayerStore::with_options(
        f.store.root(),
        StoreOptions {
            force_unprivileged: f.store.privileged(),
            ..StoreOptions::default()
        },
    );
    assert!(other.get(&list[0].digest).is_none());
    let (_, cached) = other.ensure_layer(&mut f.src, &desc, &[], "img").unwrap();
    assert!(!cached);
    assert_eq!(other.list()[0].meta.privileged, other.privileged());
    assert!(other.remove(&list[0].digest).unwrap());
    assert!(!other.remove(&list[0].digest).unwrap());
    assert!(other.list().is_empty());
}

#[test]
fn limits() {
    let mut f = fixture(false);
    f.store.opts.max_entries = 3;
    let many: Vec<TestEntry> = (0..5)
        .map(|i| TestEntry::file(format!("f{i}"), "x"))
        .collect();
    let e = f.layer(&many, &[]).unwrap_err();
    assert!(
        matches!(
            e,
            LayerStoreError::Walk(WalkError::TooManyEntries { limit: 3, .. })
        ),
        "{e}"
    );
    f.store.opts.max_layer_bytes = 100_000;
    let e = f
        .layer(&[TestEntry::file("big", vec![0u8; 200_000])], &[])
        .unwrap_err();
    assert!(
        matches!(e, LayerStoreError::TooLarge { limit: 100_000, .. }),
        "{e}"
    );
    assert!(f.store.list().is_empty());
    assert!(
        names(&f.store.root().join("tmp")).is_empty(),
        "failed unpacks leave nothing"
    );
}

#[test]
fn upper_dir_takes_the_image_root() {
    for unprivileged in [false, true] {
        let mut f = fixture(unprivileged);
        let root = TestEntry::raw(&b"./"[..], b'5')
            .mode(0o1750)
            .owner(0, 0)
            .mtime(1_234_567_890, 0);
        let top = f.layer(&[root], &[]).unwrap();
        let upper = f.store.root().join("upper");
        prepare_upper(std::slice::from_ref(&top), &upper).unwrap();
        let (a, b) = (fs::metadata(&top).unwrap(), fs::metadata(&upper).unwrap());
        assert_eq!(
            (a.mode(), a.uid(), a.mtime()),
            (b.mode(), b.uid(), b.mtime())
        );
        assert_eq!(b.mtime(), 1_234_567_890);
        assert_eq!(read_override(&upper).unwrap(), read_override(&top).unwrap());
        assert_eq!(read_override(&upper).unwrap().is_some(), unprivileged);
    }
}
