//! A reference overlay over layer directories (the rules of kernel
//! overlayfs and fuse-backend-rs), and the check of `tricky_expectations()`
//! against it, decoding the unprivileged encoding as a VMM serving such a
//! store must.

use imagefs::layerstore::read_override;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use testkit::{tricky_expectations, Expect};

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

pub fn lgetxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let (p, n) = (
        CString::new(p.as_os_str().as_bytes()).unwrap(),
        CString::new(name).unwrap(),
    );
    let mut buf = vec![0u8; 65536];
    // SAFETY: both strings are NUL-terminated; `buf` is valid for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

pub fn llistxattr(p: &Path) -> Vec<String> {
    let p = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: `p` is NUL-terminated; `buf` is valid for its length.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "llistxattr: {}", std::io::Error::last_os_error());
    buf[..r as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// What the guest should see of one entry: the host's stat and xattrs with
/// the unprivileged encoding (`user.minivm.override`, `user.minivm.xattr.*`)
/// applied, which is what a VMM serving an unprivileged store must do.
#[derive(Debug)]
pub struct Attrs {
    pub ftype: u32,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: (u32, u32),
    pub mtime: (i64, u32),
    pub nlink: u64,
    pub ino: (u64, u64),
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

pub fn attrs(p: &Path) -> Attrs {
    let m = fs::symlink_metadata(p).unwrap();
    let mut a = Attrs {
        ftype: m.mode() & libc::S_IFMT,
        perm: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        rdev: (libc::major(m.rdev()), libc::minor(m.rdev())),
        mtime: (m.mtime(), m.mtime_nsec() as u32),
        nlink: m.nlink(),
        ino: (m.dev(), m.ino()),
        xattrs: BTreeMap::new(),
    };
    if let Some(o) = read_override(p).unwrap() {
        (a.ftype, a.perm, a.uid, a.gid) = (o.mode & libc::S_IFMT, o.mode & 0o7777, o.uid, o.gid);
        a.rdev = o.rdev.unwrap_or((0, 0));
    }
    for name in llistxattr(p) {
        let value = lgetxattr(p, &name).unwrap();
        if name == "user.minivm.override" || name.ends_with("overlay.opaque") {
            continue;
        }
        let shown = name
            .strip_prefix("user.minivm.xattr.")
            .unwrap_or(&name)
            .to_string();
        a.xattrs.insert(shown, value);
    }
    a
}

/// A reference overlay over layer directories.
pub struct Merged {
    /// Top-most first.
    layers: Vec<PathBuf>,
}

pub fn whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

pub fn opaque(p: &Path) -> bool {
    [
        "user.overlay.opaque",
        "trusted.overlay.opaque",
        "user.fuseoverlayfs.opaque",
    ]
    .iter()
    .any(|n| lgetxattr(p, n).is_some_and(|v| v.eq_ignore_ascii_case(b"y")))
}

impl Merged {
    pub fn new(dirs: &[PathBuf]) -> Merged {
        Merged {
            layers: dirs.iter().rev().cloned().collect(),
        }
    }

    /// The host paths making up `rel`, top-most first; empty when absent.
    pub fn lookup(&self, rel: &[u8]) -> Vec<PathBuf> {
        let mut cur: Vec<PathBuf> = Vec::new();
        for l in &self.layers {
            cur.push(l.clone());
            if opaque(l) {
                break;
            }
        }
        for c in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if !fs::symlink_metadata(&cur[0]).unwrap().is_dir() {
                return Vec::new();
            }
            let mut next = Vec::new();
            for d in &cur {
                let p = d.join(OsStr::from_bytes(c));
                let Ok(m) = fs::symlink_metadata(&p) else {
                    continue;
                };
                if whiteout(&m) {
                    break;
                }
                if !m.is_dir() {
                    if next.is_empty() {
                        next.push(p);
                    }
                    break;
                }
                let stop = opaque(&p);
                next.push(p);
                if stop {
                    break;
                }
            }
            if next.is_empty() {
                return Vec::new();
            }
            cur = next;
        }
        cur
    }

    pub fn children(&self, rel: &[u8]) -> BTreeSet<Vec<u8>> {
        let mut names = BTreeSet::new();
        for d in self.lookup(rel) {
            for e in fs::read_dir(&d).unwrap() {
                names.insert(e.unwrap().file_name().as_bytes().to_vec());
            }
        }
        names
            .into_iter()
            .filter(|n| {
                let mut p = rel.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(n);
                !self.lookup(&p).is_empty()
            })
            .collect()
    }
}

/// Checks every expectation of `tricky_expectations()` against the merged view.
pub fn check_tricky(dirs: &[PathBuf], owners: bool) {
    let m = Merged::new(dirs);
    for (path, expect) in tricky_expectations() {
        let shown = String::from_utf8_lossy(&path).into_owned();
        let nodes = m.lookup(&path);
        if expect == Expect::Absent {
            assert!(nodes.is_empty(), "{shown}: should be absent, is {nodes:?}");
            continue;
        }
        let top = nodes.first().unwrap_or_else(|| panic!("{shown}: missing"));
        let a = attrs(top);
        let owner = |uid: u64, gid: u64| {
            if owners {
                assert_eq!((a.uid as u64, a.gid as u64), (uid, gid), "{shown}: owner");
            }
        };
        match expect {
            Expect::Absent => unreachable!(),
            Expect::Dir {
                mode,
                uid,
                gid,
                children,
                xattrs,
            } => {
                assert_eq!((a.ftype, a.perm), (libc::S_IFDIR, mode), "{shown}: {a:?}");
                owner(uid, gid);
                if let Some(c) = children {
                    let want: BTreeSet<Vec<u8>> = c.into_iter().collect();
                    assert_eq!(m.children(&path), want, "{shown}: children");
                }
                for (n, v) in xattrs {
                    assert_eq!(a.xattrs.get(&n), Some(&v), "{shown}: xattr {n}");
                }
            }
            Expect::File {
                data,
                mode,
                uid,
                gid,
                mtime,
                xattrs,
                nlink,
                same_inode_as,
            } => {
                assert_eq!((a.ftype, a.perm), (libc::S_IFREG, mode), "{shown}: {a:?}");
                assert_eq!(fs::read(top).unwrap(), data, "{shown}: contents");
                owner(uid, gid);
                if let Some(t) = mtime {
                    assert_eq!(a.mtime, (t.0, t.1), "{shown}: mtime");
                }
                let want: BTreeMap<String, Vec<u8>> = xattrs.into_iter().collect();
                assert_eq!(a.xattrs, want, "{shown}: xattrs");
                assert_eq!(a.nlink, nlink as u64, "{shown}: links");
                if let Some(other) = same_inode_as {
                    assert_eq!(attrs(&m.lookup(&other)[0]).ino, a.ino, "{shown}: inode");
                }
            }
            Expect::Symlink(target) => {
                assert_eq!(a.ftype, libc::S_IFLNK, "{shown}");
                assert_eq!(fs::read_link(top).unwrap().as_os_str().as_bytes(), target);
            }
            Expect::CharDev { major, minor, mode } | Expect::BlockDev { major, minor, mode } => {
                let t = if matches!(expect, Expect::CharDev { .. }) {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                assert_eq!(
                    (a.ftype, a.perm, a.rdev),
                    (t, mode, (major, minor)),
                    "{shown}"
                );
            }
            Expect::Fifo { mode } => {
                assert_eq!((a.ftype, a.perm), (libc::S_IFIFO, mode), "{shown}")
            }
        }
    }
}

/// No OCI whiteout files anywhere in the layer directories.
pub fn assert_no_oci_markers(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        assert!(
            !e.file_name().as_bytes().starts_with(b".wh."),
            "{}",
            e.path().display()
        );
        if e.file_type().unwrap().is_dir() {
            assert_no_oci_markers(&e.path());
        }
    }
}
