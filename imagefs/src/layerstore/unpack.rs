//! Unpacks one layer's tar stream into its own directory, in the form
//! overlays (and minivm's `LayeredFs`) read (see [`layerfmt`]): OCI whiteouts
//! become character devices 0:0, opaque markers the [`OPAQUE_XATTR`] xattr.
//! The entries and their rules come from [`crate::walk`], as for
//! [`crate::flatten`]: whiteouts and opaque markers hide lower layers only,
//! later entries replace earlier ones.
//!
//! Every path is walked component by component from the layer's root
//! descriptor with `O_NOFOLLOW`; nothing is ever created through a symlink.
//! Lower layers (already unpacked, top-most first) are consulted, with
//! overlay lookup rules, for three things: hardlinks to files of lower
//! layers (copied, since a hardlink cannot cross layer directories);
//! directories missing from the tar but needed as parents (they take the
//! metadata of the directory the layers below show, so the merged view keeps
//! it); and refusing paths that lead through a symlink of a lower layer.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use layerfmt::{is_opaque_value, OPAQUE_VALUE, OPAQUE_XATTR, OPAQUE_XATTRS_READ};

use super::apply::Attrs;
use super::sys::{self, cstr};
use super::LayerStoreError;
use crate::walk::{
    show, walk_layer, At, Create, Device, DeviceKind, EntryCount, LayerOps, Meta, WalkError,
};

/// Scratch name for hardlinks. No tar entry can create it: `.wh..wh.*` names are skipped.
const LINK_SCRATCH: &[u8] = b".wh..wh.minivm-link";

/// Counts for one layer.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UnpackStats {
    /// Tar entries read.
    pub entries: u64,
    /// Bytes of regular-file data written (including copies from lower layers).
    pub file_bytes: u64,
}

/// What a directory's metadata is set to in the final pass.
enum DirMeta {
    /// From the tar entry (or the default for a new implicit directory).
    Tar(Meta),
    /// Copied from the directory the lower layers show (already encoded).
    Copied {
        st: libc::stat,
        xattrs: Vec<(CString, Vec<u8>)>,
    },
}

fn default_dir() -> DirMeta {
    DirMeta::Tar(Meta {
        mode: 0o755,
        ..Meta::default()
    })
}

/// Result of looking a path up across this layer and the lower ones.
enum Lookup {
    /// Nothing visible there.
    Missing,
    /// The top-most visible entry: in layer `layer` (0 = this one), in directory `parent`.
    Found {
        layer: usize,
        parent: OwnedFd,
        st: libc::stat,
    },
    /// Component `depth` is not a directory (a symlink when `symlink`).
    Blocked { depth: usize, symlink: bool },
}

fn is_dir(st: &libc::stat) -> bool {
    sys::file_type(st) == libc::S_IFDIR
}

fn is_opaque(dir: BorrowedFd<'_>) -> io::Result<bool> {
    for name in OPAQUE_XATTRS_READ {
        if let Some(v) = sys::fget_xattr(dir, &cstr(name.as_bytes())?)? {
            if is_opaque_value(&v) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn copied_meta(dir: BorrowedFd<'_>) -> io::Result<DirMeta> {
    let st = sys::fstat(dir)?;
    let xattrs = sys::fget_all_xattrs(dir)?
        .into_iter()
        .filter(|(n, _)| {
            !OPAQUE_XATTRS_READ
                .iter()
                .any(|r| r.as_bytes() == n.as_bytes())
        })
        .collect();
    Ok(DirMeta::Copied { st, xattrs })
}

/// Unpacks one layer into an empty directory.
pub(crate) struct Unpacker<'a> {
    attrs: Attrs,
    root: OwnedFd,
    /// Lower layers' roots, top-most first.
    lowers: Vec<OwnedFd>,
    max_entries: u64,
    max_bytes: u64,
    /// Paths this layer created (explicitly, or as new parent directories).
    created: HashSet<Vec<u8>>,
    /// Directory metadata, applied after everything else (mtimes last).
    dirs: BTreeMap<Vec<u8>, DirMeta>,
    buf: Vec<u8>,
    /// The last parent directory opened (tars list directories together);
    /// dropped whenever this layer removes a directory.
    last_parent: Option<(Vec<u8>, OwnedFd)>,
    stats: UnpackStats,
    progress: &'a mut dyn FnMut(),
}

impl<'a> Unpacker<'a> {
    /// `root` is the empty layer directory, `lowers` the unpacked layers below
    /// (top-most first). `progress` is called after each entry.
    pub(crate) fn new(
        layer: &str,
        root: OwnedFd,
        lowers: Vec<OwnedFd>,
        privileged: bool,
        (max_bytes, max_entries): (u64, u64),
        progress: &'a mut dyn FnMut(),
    ) -> Result<Self, LayerStoreError> {
        let mut u = Unpacker {
            attrs: Attrs {
                layer: layer.to_string(),
                privileged,
            },
            root,
            lowers,
            max_entries,
            max_bytes,
            created: HashSet::new(),
            dirs: BTreeMap::new(),
            buf: vec![0; 256 * 1024],
            last_parent: None,
            stats: UnpackStats::default(),
            progress,
        };
        // Without a "./" entry the merged root keeps the metadata the layers below give it.
        let root_meta = match u.lowers.first() {
            Some(l) => copied_meta(l.as_fd()).map_err(u.entry_err(b".", "read the lower root"))?,
            None => default_dir(),
        };
        u.dirs.insert(Vec::new(), root_meta);
        Ok(u)
    }

    fn entry_err(
        &self,
        path: &[u8],
        op: impl Into<String>,
    ) -> impl FnOnce(io::Error) -> LayerStoreError {
        self.attrs.entry_err(path, op)
    }

    fn bad_path(&self, path: &[u8], problem: &'static str) -> LayerStoreError {
        self.attrs.bad_path(path, problem)
    }

    fn blocked(&self, path: &[u8], component: &[u8], symlink: bool) -> LayerStoreError {
        WalkError::blocked(&self.attrs.layer, path, component, symlink).into()
    }

    /// Applies the whole tar stream (stops at its end-of-archive marker).
    pub(crate) fn run(&mut self, tar: &mut dyn Read) -> Result<(), LayerStoreError> {
        let layer = self.attrs.layer.clone();
        let mut count = EntryCount {
            entries: self.stats.entries,
            max: self.max_entries,
        };
        let r = walk_layer(&layer, tar, &mut count, self);
        self.stats.entries = count.entries;
        r
    }

    /// Sets the directories' metadata (after all their children were
    /// written, so their mtimes stay; deepest first, so a directory's mode
    /// never stands in the way of its children) and returns the counts.
    pub(crate) fn finish(mut self) -> Result<UnpackStats, LayerStoreError> {
        for (path, meta) in std::mem::take(&mut self.dirs).into_iter().rev() {
            let shown = if path.is_empty() { &b"."[..] } else { &path };
            let Some(fd) = self
                .open_own_dir(&path)
                .map_err(self.entry_err(shown, "open the directory"))?
            else {
                continue; // Replaced by a non-directory later in the layer.
            };
            match meta {
                DirMeta::Tar(m) => {
                    self.attrs
                        .apply_fd(shown, fd.as_fd(), libc::S_IFDIR, &m, None)?
                }
                DirMeta::Copied { st, xattrs } => {
                    self.attrs.apply_copied(shown, fd.as_fd(), &st, &xattrs)?
                }
            }
        }
        Ok(self.stats)
    }

    /// Opens a directory of this layer; None if the path is no directory any more.
    fn open_own_dir(&self, path: &[u8]) -> io::Result<Option<OwnedFd>> {
        let mut dir = self.root.try_clone()?;
        for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            dir = match sys::open_dir(dir.as_fd(), &cstr(c)?) {
                Ok(d) => d,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
        }
        Ok(Some(dir))
    }

    /// Opens the directory holding an entry, walking `parents` without
    /// following symlinks. Missing directories are created: with the
    /// metadata the lower layers show for them, or as new 0755 root-owned
    /// directories (as docker does) when nothing is below. With `create`
    /// false (for whiteouts), returns None instead where nothing visible
    /// exists below, as there is then nothing to hide.
    fn parent(
        &mut self,
        raw: &[u8],
        parents: &[Vec<u8>],
        create: bool,
    ) -> Result<Option<OwnedFd>, LayerStoreError> {
        let key = parents.join(&b'/');
        if let Some((k, fd)) = &self.last_parent {
            if *k == key {
                return fd.try_clone().map(Some).map_err(self.entry_err(raw, "dup"));
            }
        }
        let mut dir = self.root.try_clone().map_err(self.entry_err(raw, "dup"))?;
        for (i, c) in parents.iter().enumerate() {
            let cname = cstr(c).map_err(|_| self.bad_path(raw, "NUL in path"))?;
            match sys::open_dir(dir.as_fd(), &cname) {
                Ok(fd) => {
                    dir = fd;
                    continue;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) => {}
                Err(e) => return Err(self.entry_err(raw, "open a parent directory")(e)),
            }
            let prefix = parents[..=i].join(&b'/');
            let here = sys::stat_at(dir.as_fd(), &cname).map_err(self.entry_err(raw, "stat"))?;
            let (meta, opaque, new) = match here {
                // Deleted from the lower layers by this layer: a new, opaque directory.
                Some(st) if sys::is_whiteout(&st) => {
                    if !create {
                        return Ok(None);
                    }
                    sys::unlink_at(dir.as_fd(), &cname, false)
                        .map_err(self.entry_err(raw, "unlink"))?;
                    (default_dir(), true, true)
                }
                Some(st) => {
                    return Err(self.blocked(raw, &prefix, sys::file_type(&st) == libc::S_IFLNK))
                }
                None => match self
                    .lookup(&parents[..=i])
                    .map_err(self.entry_err(raw, "look up lower layers"))?
                {
                    Lookup::Found { parent, st, .. } if is_dir(&st) => {
                        let below = sys::open_dir(parent.as_fd(), &cname)
                            .and_then(|d| copied_meta(d.as_fd()))
                            .map_err(self.entry_err(raw, "read a lower directory"))?;
                        (below, false, false)
                    }
                    Lookup::Found { st, .. } => {
                        return Err(self.blocked(
                            raw,
                            &prefix,
                            sys::file_type(&st) == libc::S_IFLNK,
                        ))
                    }
                    Lookup::Blocked { depth, symlink } => {
                        return Err(self.blocked(raw, &parents[..=depth].join(&b'/'), symlink))
                    }
                    Lookup::Missing if !create => return Ok(None),
                    Lookup::Missing => (default_dir(), false, true),
                },
            };
            sys::mkdir_at(dir.as_fd(), &cname, 0o700).map_err(self.entry_err(raw, "mkdir"))?;
            dir = sys::open_dir(dir.as_fd(), &cname)
                .map_err(self.entry_err(raw, "open a new directory"))?;
            if opaque {
                self.set_opaque(raw, dir.as_fd())?;
            }
            if new {
                self.created.insert(prefix.clone());
            }
            self.dirs.insert(prefix, meta);
        }
        let cached = dir.try_clone().map_err(self.entry_err(raw, "dup"))?;
        self.last_parent = Some((key, cached));
        Ok(Some(dir))
    }

    /// Looks `comps` up with overlay rules across this layer and the lower
    /// ones: a whiteout ends the search, a non-directory hides what is below
    /// it, an opaque directory hides the directories below it.
    fn lookup(&self, comps: &[Vec<u8>]) -> io::Result<Lookup> {
        let mut dirs: Vec<(usize, OwnedFd)> = Vec::new();
        for (i, l) in std::iter::once(&self.root).chain(&self.lowers).enumerate() {
            dirs.push((i, l.try_clone()?));
            if is_opaque(l.as_fd())? {
                break;
            }
        }
        for (depth, c) in comps.iter().enumerate() {
            let cname = cstr(c)?;
            let last = depth + 1 == comps.len();
            let mut next = Vec::new();
            for (i, d) in &dirs {
                let Some(st) = sys::stat_at(d.as_fd(), &cname)? else {
                    continue;
                };
                if sys::is_whiteout(&st) {
                    break;
                }
                if next.is_empty() && (last || !is_dir(&st)) {
                    if last {
                        return Ok(Lookup::Found {
                            layer: *i,
                            parent: d.try_clone()?,
                            st,
                        });
                    }
                    let symlink = sys::file_type(&st) == libc::S_IFLNK;
                    return Ok(Lookup::Blocked { depth, symlink });
                }
                if !is_dir(&st) {
                    break;
                }
                let fd = sys::open_dir(d.as_fd(), &cname)?;
                let opaque = is_opaque(fd.as_fd())?;
                next.push((*i, fd));
                if opaque {
                    break;
                }
            }
            if next.is_empty() {
                return Ok(Lookup::Missing);
            }
            dirs = next;
        }
        Ok(Lookup::Missing)
    }

    fn set_opaque(&self, raw: &[u8], dir: BorrowedFd<'_>) -> Result<(), LayerStoreError> {
        let name = cstr(OPAQUE_XATTR.as_bytes()).expect("no NUL");
        sys::fset_xattr(dir, &name, OPAQUE_VALUE)
            .map_err(self.entry_err(raw, format!("setxattr {OPAQUE_XATTR}")))
    }

    /// Removes whatever this layer has at `name` (a whole tree for a directory).
    fn clear(
        &mut self,
        raw: &[u8],
        dir: BorrowedFd<'_>,
        full: &[u8],
        name: &CStr,
    ) -> Result<bool, LayerStoreError> {
        let Some(st) = sys::stat_at(dir, name).map_err(self.entry_err(raw, "stat"))? else {
            return Ok(false);
        };
        if is_dir(&st) {
            self.last_parent = None;
            sys::remove_tree_at(dir, name)
                .map_err(self.entry_err(raw, "remove the replaced directory"))?;
            let mut under = full.to_vec();
            under.push(b'/');
            self.dirs
                .retain(|k, _| k.as_slice() != full && !k.starts_with(&under));
        } else {
            sys::unlink_at(dir, name, false)
                .map_err(self.entry_err(raw, "unlink the replaced entry"))?;
        }
        Ok(true)
    }

    fn dir(
        &mut self,
        raw: &[u8],
        p: BorrowedFd<'_>,
        full: &[u8],
        name: &CStr,
        meta: Meta,
    ) -> Result<(), LayerStoreError> {
        let existing = sys::stat_at(p, name).map_err(self.entry_err(raw, "stat"))?;
        // A directory over a directory merges: only its metadata changes.
        if !existing.as_ref().is_some_and(is_dir) {
            // Over a non-directory of this layer (or a whiteout), the lower entry
            // was already hidden: the new directory must not show lower content.
            let opaque = self.clear(raw, p, full, name)?;
            sys::mkdir_at(p, name, 0o700).map_err(self.entry_err(raw, "mkdir"))?;
            if opaque {
                let d = sys::open_dir(p, name).map_err(self.entry_err(raw, "open"))?;
                self.set_opaque(raw, d.as_fd())?;
            }
        }
        self.dirs.insert(full.to_vec(), DirMeta::Tar(meta));
        Ok(())
    }

    fn write_data(
        &mut self,
        raw: &[u8],
        r: &mut dyn Read,
        f: &mut File,
    ) -> Result<(), LayerStoreError> {
        loop {
            let n = match r.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WalkError::tar(&self.attrs.layer, e).into()),
            };
            f.write_all(&self.buf[..n])
                .map_err(self.entry_err(raw, "write"))?;
            self.stats.file_bytes += n as u64;
        }
    }

    fn symlink(
        &mut self,
        raw: &[u8],
        p: BorrowedFd<'_>,
        full: &[u8],
        name: &CStr,
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), LayerStoreError> {
        let target = cstr(target).map_err(|_| self.bad_path(raw, "NUL in the symlink target"))?;
        self.clear(raw, p, full, name)?;
        sys::symlink_at(&target, p, name).map_err(self.entry_err(raw, "symlink"))?;
        self.attrs.apply_at(raw, p, name, libc::S_IFLNK, meta)
    }

    fn device(
        &mut self,
        raw: &[u8],
        p: BorrowedFd<'_>,
        full: &[u8],
        name: &CStr,
        Device { kind, major, minor }: Device,
        meta: &Meta,
    ) -> Result<(), LayerStoreError> {
        let ftype = match kind {
            DeviceKind::Char => libc::S_IFCHR,
            DeviceKind::Block => libc::S_IFBLK,
            DeviceKind::Fifo => libc::S_IFIFO,
        };
        self.clear(raw, p, full, name)?;
        let whiteout = ftype == libc::S_IFCHR && major == 0 && minor == 0;
        if whiteout {
            tracing::warn!(
                "layer {}: {:?} is a character device 0:0, which overlays read as a whiteout",
                self.attrs.layer,
                show(raw)
            );
        }
        if self.attrs.privileged || ftype == libc::S_IFIFO || whiteout {
            sys::mknod_at(p, name, ftype | 0o600, libc::makedev(major, minor))
                .map_err(self.entry_err(raw, "mknod"))?;
            return self.attrs.apply_at(raw, p, name, ftype, meta);
        }
        // Unprivileged: an empty regular file standing for the device.
        let f = sys::create(p, name, 0o600).map_err(self.entry_err(raw, "create"))?;
        self.attrs
            .apply_fd(raw, f.as_fd(), ftype, meta, Some((major, minor)))
    }

    fn hardlink(
        &mut self,
        raw: &[u8],
        (target, target_raw): (&[Vec<u8>], &[u8]),
        p: BorrowedFd<'_>,
        full: &[u8],
        name: &CStr,
    ) -> Result<(), LayerStoreError> {
        let layer = self.attrs.layer.clone();
        let err = |problem| WalkError::hardlink(&layer, raw, target_raw, problem);
        let tname = target.last().expect("never the root");
        let tname = cstr(tname).map_err(|_| err("NUL in the target"))?;
        let (found_in, tparent, st) = match self
            .lookup(target)
            .map_err(self.entry_err(raw, "look up the link target"))?
        {
            Lookup::Missing => return Err(err("target not (yet) in the image").into()),
            Lookup::Blocked { .. } => {
                let problem = "the path to the target goes through a symlink or a file";
                return Err(err(problem).into());
            }
            Lookup::Found { layer, parent, st } => (layer, parent, st),
        };
        if is_dir(&st) {
            return Err(err("target is a directory").into());
        }
        if found_in == 0 {
            // Link first: the replaced entry may be (or contain) the target.
            let scratch = cstr(LINK_SCRATCH).expect("no NUL");
            sys::link_at(tparent.as_fd(), &tname, p, &scratch)
                .map_err(self.entry_err(raw, "link"))?;
            self.clear(raw, p, full, name)?;
            return sys::rename_at(p, &scratch, name).map_err(self.entry_err(raw, "rename"));
        }
        self.clear(raw, p, full, name)?;
        let copied = self
            .attrs
            .copy_from_lower(raw, tparent.as_fd(), &tname, &st, p, name)?;
        self.stats.file_bytes += copied;
        if self.stats.file_bytes > self.max_bytes {
            return Err(LayerStoreError::TooLarge {
                layer: self.attrs.layer.clone(),
                limit: self.max_bytes,
            });
        }
        Ok(())
    }
}

impl LayerOps for Unpacker<'_> {
    type Error = LayerStoreError;

    fn root(&mut self, at: &At<'_>, meta: Meta) -> Result<(), LayerStoreError> {
        let meta = self.attrs.image_meta(at.raw, meta);
        self.dirs.insert(Vec::new(), DirMeta::Tar(meta));
        Ok(())
    }

    fn opaque(&mut self, at: &At<'_>) -> Result<(), LayerStoreError> {
        let dir = self.parent(at.raw, at.path, true)?;
        self.set_opaque(at.raw, dir.expect("created when missing").as_fd())
    }

    fn whiteout(&mut self, at: &At<'_>) -> Result<(), LayerStoreError> {
        let (parents, target) = at.split();
        let (raw, full) = (at.raw, at.full());
        // Whiteouts only hide lower layers: this layer's own entry stays.
        if self.created.contains(&full) {
            return Ok(());
        }
        let Some(dir) = self.parent(raw, parents, false)? else {
            return Ok(()); // Nothing below to hide.
        };
        let cname = cstr(target).map_err(|_| self.bad_path(raw, "NUL in path"))?;
        if let Some(st) = sys::stat_at(dir.as_fd(), &cname).map_err(self.entry_err(raw, "stat"))? {
            if sys::is_whiteout(&st) {
                return Ok(());
            }
        }
        // A directory here only mirrors a lower one (made as a parent): it goes too.
        self.clear(raw, dir.as_fd(), &full, &cname)?;
        sys::mknod_at(dir.as_fd(), &cname, libc::S_IFCHR, 0).map_err(self.entry_err(
            raw,
            "mknod whiteout (a character device 0:0; unprivileged this needs Linux >= 5.8)",
        ))
    }

    fn create(&mut self, at: &At<'_>, what: Create<'_>) -> Result<(), LayerStoreError> {
        let (parents, name) = at.split();
        let (raw, full) = (at.raw, at.full());
        let parent = self
            .parent(raw, parents, true)?
            .expect("parents are created when missing");
        let cname = cstr(name).map_err(|_| self.bad_path(raw, "NUL in path"))?;
        let p = parent.as_fd();
        match what {
            Create::Dir(meta) => {
                let meta = self.attrs.image_meta(raw, meta);
                self.dir(raw, p, &full, &cname, meta)?
            }
            Create::File { meta, data, .. } => {
                let meta = self.attrs.image_meta(raw, meta);
                self.clear(raw, p, &full, &cname)?;
                let mut f = sys::create(p, &cname, 0o600).map_err(self.entry_err(raw, "create"))?;
                self.write_data(raw, data, &mut f)?;
                self.attrs
                    .apply_fd(raw, f.as_fd(), libc::S_IFREG, &meta, None)?;
            }
            Create::Symlink { meta, target } => {
                let meta = self.attrs.image_meta(raw, meta);
                self.symlink(raw, p, &full, &cname, &target, &meta)?
            }
            Create::Hardlink { target, target_raw } => {
                self.hardlink(raw, (&target, &target_raw), p, &full, &cname)?
            }
            Create::Device { meta, dev } => {
                let meta = self.attrs.image_meta(raw, meta);
                self.device(raw, p, &full, &cname, dev, &meta)?
            }
        }
        self.created.insert(full);
        Ok(())
    }

    fn entry_done(&mut self) {
        (self.progress)();
    }
}
