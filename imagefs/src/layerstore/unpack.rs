//! Unpacks one layer's tar stream into its own directory, in the form
//! overlayfs (and fuse-backend-rs's `OverlayFs`) reads: OCI whiteouts become
//! character devices 0:0, opaque markers become the `user.overlay.opaque`
//! xattr. The semantics match [`crate::flatten`] exactly: whiteouts and
//! opaque markers hide lower layers only, later entries replace earlier ones.
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

use super::apply::Meta;
use super::sys::{self, cstr};
use super::{LayerStoreError, OPAQUE_XATTR};
use crate::flatten::normalize;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are aufs metadata (e.g. `.wh..wh.plnk`), not content.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
/// Scratch name for hardlinks. No tar entry can create it: `.wh..wh.*` names are skipped.
const LINK_SCRATCH: &[u8] = b".wh..wh.minivm-link";
/// Opaque markers recognised when reading layers: the three fuse-backend-rs checks.
const OPAQUE_XATTRS_READ: [&[u8]; 3] = [
    b"user.fuseoverlayfs.opaque",
    b"trusted.overlay.opaque",
    b"user.overlay.opaque",
];

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

pub(super) fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(super) fn is_dir(st: &libc::stat) -> bool {
    sys::file_type(st) == libc::S_IFDIR
}

fn is_opaque(dir: BorrowedFd<'_>) -> io::Result<bool> {
    for name in OPAQUE_XATTRS_READ {
        if let Some(v) = sys::fget_xattr(dir, &cstr(name)?)? {
            if v.len() == 1 && v[0].eq_ignore_ascii_case(&b'y') {
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
        .filter(|(n, _)| !OPAQUE_XATTRS_READ.contains(&n.as_bytes()))
        .collect();
    Ok(DirMeta::Copied { st, xattrs })
}

/// Unpacks one layer into an empty directory.
pub(crate) struct Unpacker<'a> {
    pub(super) layer: String,
    root: OwnedFd,
    /// Lower layers' roots, top-most first.
    lowers: Vec<OwnedFd>,
    pub(super) privileged: bool,
    max_entries: u64,
    pub(super) max_bytes: u64,
    /// Paths this layer created (explicitly, or as new parent directories).
    created: HashSet<Vec<u8>>,
    /// Directory metadata, applied after everything else (mtimes last).
    dirs: BTreeMap<Vec<u8>, DirMeta>,
    buf: Vec<u8>,
    /// The last parent directory opened (tars list directories together);
    /// dropped whenever this layer removes a directory.
    last_parent: Option<(Vec<u8>, OwnedFd)>,
    pub(super) stats: UnpackStats,
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
            layer: layer.to_string(),
            root,
            lowers,
            privileged,
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

    pub(super) fn entry_err(
        &self,
        path: &[u8],
        op: impl Into<String>,
    ) -> impl FnOnce(io::Error) -> LayerStoreError {
        let (layer, path, op) = (self.layer.clone(), show(path), op.into());
        move |source| LayerStoreError::Entry {
            layer,
            path,
            op,
            source,
        }
    }

    pub(super) fn tar_err(&self, source: io::Error) -> LayerStoreError {
        LayerStoreError::Tar {
            layer: self.layer.clone(),
            source,
        }
    }

    pub(super) fn bad_path(&self, path: &[u8], problem: &'static str) -> LayerStoreError {
        LayerStoreError::BadPath {
            layer: self.layer.clone(),
            path: show(path),
            problem,
        }
    }

    fn blocked(&self, path: &[u8], component: &[u8], symlink: bool) -> LayerStoreError {
        let (layer, path, component) = (self.layer.clone(), show(path), show(component));
        if symlink {
            LayerStoreError::ThroughSymlink {
                layer,
                path,
                symlink: component,
            }
        } else {
            LayerStoreError::NotADirectory {
                layer,
                path,
                component,
            }
        }
    }

    /// Applies the whole tar stream (stops at its end-of-archive marker).
    pub(crate) fn run(&mut self, tar: &mut dyn Read) -> Result<(), LayerStoreError> {
        let mut archive = tar::Archive::new(tar);
        let entries = archive.entries().map_err(|e| self.tar_err(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.tar_err(e))?;
            self.stats.entries += 1;
            if self.stats.entries > self.max_entries {
                return Err(LayerStoreError::TooManyEntries {
                    layer: self.layer.clone(),
                    limit: self.max_entries,
                });
            }
            self.entry(&mut entry)?;
            (self.progress)();
        }
        Ok(())
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
                DirMeta::Tar(m) => self.apply_fd(shown, fd.as_fd(), libc::S_IFDIR, &m, None)?,
                DirMeta::Copied { st, xattrs } => {
                    self.apply_copied(shown, fd.as_fd(), &st, &xattrs)?
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

    fn entry(&mut self, entry: &mut tar::Entry<'_, &mut dyn Read>) -> Result<(), LayerStoreError> {
        use tar::EntryType as T;
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let comps = normalize(&raw).map_err(|p| self.bad_path(&raw, p))?;
        let Some((&name, parents)) = comps.split_last() else {
            if kind == T::Directory {
                let meta = self.metadata(entry, &raw)?;
                self.dirs.insert(Vec::new(), DirMeta::Tar(meta));
                return Ok(());
            }
            return Err(self.bad_path(&raw, "a non-directory entry for the root"));
        };
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&raw, parents, name);
        }
        let meta = self.metadata(entry, &raw)?;
        let full = comps.join(&b'/');
        let parent = self
            .parent(&raw, parents, true)?
            .expect("parents are created when missing");
        let cname = cstr(name).map_err(|_| self.bad_path(&raw, "NUL in path"))?;
        let p = parent.as_fd();
        match kind {
            T::Directory => self.dir(&raw, p, &full, &cname, meta)?,
            T::Regular | T::Continuous => {
                self.clear(&raw, p, &full, &cname)?;
                let mut f =
                    sys::create(p, &cname, 0o600).map_err(self.entry_err(&raw, "create"))?;
                self.write_data(&raw, entry, &mut f)?;
                self.apply_fd(&raw, f.as_fd(), libc::S_IFREG, &meta, None)?;
            }
            T::Symlink => self.symlink(&raw, p, &full, &cname, entry, &meta)?,
            T::Link => self.hardlink(&raw, p, &full, &cname, entry)?,
            T::Char | T::Block | T::Fifo => self.special(&raw, p, &full, &cname, entry, &meta)?,
            other => {
                return Err(LayerStoreError::Unsupported {
                    layer: self.layer.clone(),
                    path: show(&raw),
                    kind: format!("{other:?}"),
                })
            }
        }
        self.created.insert(full);
        Ok(())
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
        parents: &[&[u8]],
        create: bool,
    ) -> Result<Option<OwnedFd>, LayerStoreError> {
        let key = parents.join(&b'/');
        if let Some((k, fd)) = &self.last_parent {
            if *k == key {
                return fd.try_clone().map(Some).map_err(self.entry_err(raw, "dup"));
            }
        }
        let mut dir = self.root.try_clone().map_err(self.entry_err(raw, "dup"))?;
        for (i, &c) in parents.iter().enumerate() {
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
    fn lookup(&self, comps: &[&[u8]]) -> io::Result<Lookup> {
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
        sys::fset_xattr(dir, &name, b"y")
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

    fn whiteout(
        &mut self,
        raw: &[u8],
        parents: &[&[u8]],
        name: &[u8],
    ) -> Result<(), LayerStoreError> {
        if name == OPAQUE_MARKER {
            let dir = self
                .parent(raw, parents, true)?
                .expect("parents are created when missing");
            return self.set_opaque(raw, dir.as_fd());
        }
        if name.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(self.bad_path(raw, "whiteout of an empty, '.' or '..' name"));
        }
        let mut full = parents.join(&b'/');
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(target);
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
                Err(e) => return Err(self.tar_err(e)),
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
        entry: &tar::Entry<'_, &mut dyn Read>,
        meta: &Meta,
    ) -> Result<(), LayerStoreError> {
        let target = entry
            .link_name_bytes()
            .map(|c| c.into_owned())
            .unwrap_or_default();
        if target.is_empty() {
            return Err(self.bad_path(raw, "symlink with an empty target"));
        }
        let target = cstr(&target).map_err(|_| self.bad_path(raw, "NUL in the symlink target"))?;
        self.clear(raw, p, full, name)?;
        sys::symlink_at(&target, p, name).map_err(self.entry_err(raw, "symlink"))?;
        self.apply_at(raw, p, name, libc::S_IFLNK, meta)
    }

    fn special(
        &mut self,
        raw: &[u8],
        p: BorrowedFd<'_>,
        full: &[u8],
        name: &CStr,
        entry: &tar::Entry<'_, &mut dyn Read>,
        meta: &Meta,
    ) -> Result<(), LayerStoreError> {
        let h = entry.header();
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        let ftype = match h.entry_type() {
            tar::EntryType::Char => libc::S_IFCHR,
            tar::EntryType::Block => libc::S_IFBLK,
            _ => libc::S_IFIFO,
        };
        self.clear(raw, p, full, name)?;
        let whiteout = ftype == libc::S_IFCHR && major == 0 && minor == 0;
        if whiteout {
            tracing::warn!(
                "layer {}: {:?} is a character device 0:0, which overlays read as a whiteout",
                self.layer,
                show(raw)
            );
        }
        if self.privileged || ftype == libc::S_IFIFO || whiteout {
            sys::mknod_at(p, name, ftype | 0o600, libc::makedev(major, minor))
                .map_err(self.entry_err(raw, "mknod"))?;
            return self.apply_at(raw, p, name, ftype, meta);
        }
        // Unprivileged: an empty regular file standing for the device.
        let f = sys::create(p, name, 0o600).map_err(self.entry_err(raw, "create"))?;
        self.apply_fd(raw, f.as_fd(), ftype, meta, Some((major, minor)))
    }

    fn hardlink(
        &mut self,
        raw: &[u8],
        p: BorrowedFd<'_>,
        full: &[u8],
        name: &CStr,
        entry: &tar::Entry<'_, &mut dyn Read>,
    ) -> Result<(), LayerStoreError> {
        let target_raw = entry
            .link_name_bytes()
            .map(|c| c.into_owned())
            .unwrap_or_default();
        let (layer, path, target) = (self.layer.clone(), show(raw), show(&target_raw));
        let err = |problem| LayerStoreError::Hardlink {
            layer: layer.clone(),
            path: path.clone(),
            target: target.clone(),
            problem,
        };
        let tcomps = normalize(&target_raw).map_err(|_| err("target is outside the image"))?;
        let Some(&tname) = tcomps.last() else {
            return Err(err("target is the root directory"));
        };
        let tname = cstr(tname).map_err(|_| err("NUL in the target"))?;
        let (found_in, tparent, st) = match self
            .lookup(&tcomps)
            .map_err(self.entry_err(raw, "look up the link target"))?
        {
            Lookup::Missing => return Err(err("target not (yet) in the image")),
            Lookup::Blocked { .. } => {
                return Err(err(
                    "the path to the target goes through a symlink or a file",
                ))
            }
            Lookup::Found { layer, parent, st } => (layer, parent, st),
        };
        if is_dir(&st) {
            return Err(err("target is a directory"));
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
        self.copy_from_lower(raw, tparent.as_fd(), &tname, &st, p, name)
    }
}
