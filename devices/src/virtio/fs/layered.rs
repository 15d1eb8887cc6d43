//! [`LayeredFs`]: an OCI image's unpacked layers merged into one tree, with
//! a per-VM writable upper directory, as overlayfs merges them.
//!
//! Every layer (the upper one too) is a fuse-backend-rs `PassthroughFs`:
//! that is where host paths are opened, one name at a time relative to a
//! directory fd, never following symlinks. This module only decides which
//! layer answers which request:
//!
//! * **Lookup** walks the parent's directories top-down. A 0:0 character
//!   device (a whiteout) hides the name below; a non-directory hides
//!   everything below it; directories merge until one carries
//!   `user.overlay.opaque=y`.
//! * **Names are bytes**: nothing is converted to UTF-8.
//! * **Inode numbers** follow the host's: a node's id is the host inode
//!   number of its top-most file (with the host device's index in the high
//!   bits), so hardlinks in a layer are one inode in the guest, and the same
//!   file keeps its number across forget and lookup.
//! * **Copy-up** happens when a file is opened for writing or its data,
//!   metadata or xattrs change: parents first (as directories with the
//!   lower directory's owner, mode, times and xattrs), then the file into
//!   the upper's work directory (`.minivm-copyup.work`, never shown to the
//!   guest), with its data (holes kept), owner, mode, xattrs and times, and
//!   renamed into place, so a crash never leaves a half-copied file in the
//!   tree; what a crash leaves in the work directory is removed at the next
//!   start ([`clear_work_dir`]).
//!   Other names of a hardlinked file the guest knows are linked to the copy.
//! * With a size cap, each copy-up is charged what the copy occupies, and
//!   refused with ENOSPC when it would not fit.
//! * **Deletion** of a name a lower layer has writes a whiteout in the upper;
//!   a directory created where a lower one was hidden is made opaque.
//!   Renaming a directory that has lower parts fails with EXDEV, as on
//!   overlayfs without `redirect_dir` (mv then copies); RENAME_EXCHANGE and
//!   RENAME_WHITEOUT are refused with EINVAL.
//! * The `user.overlay.*` and `user.minivm.*` xattrs are bookkeeping: the
//!   guest neither sees nor sets them.
//! * **Mapped mode** (an unprivileged VMM serving a layer store unpacked
//!   unprivileged, as fuse-overlayfs does): the image's owner, mode and device
//!   number are in `user.minivm.override` (`uid:gid:mode[:major:minor]`,
//!   mode in octal with the file type) and xattrs outside `user.` are stored
//!   as `user.minivm.xattr.NAME`. The guest sees the image's values; what it
//!   sets (chown, chmod, set-id bits, devices, `security.*`/`trusted.*`
//!   xattrs) is recorded the same way in the upper, whose real files stay the
//!   VMM's with `u+rw` (`u+rwx` for directories). Symlinks, FIFOs and sockets
//!   cannot carry user xattrs: they show the host's owner.
//!
//! A file opened read-only before a copy-up keeps reading the lower copy (as
//! on overlayfs before Linux 4.19). Lower layers are only ever opened
//! read-only. Namespace changes are
//! serialised by one lock; reads and writes on open files are not.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, ListxattrReply,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::api::{BackendFileSystem, VFS_MAX_INO};
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;
use fuse_backend_rs::passthrough::PassthroughFs;

use super::cap::SizeCap;
use super::guard::errno;

/// One layer: a directory tree served by fuse-backend-rs.
pub type Layer = PassthroughFs<()>;

const ROOT: u64 = 1;
/// Prefix of the xattrs that carry the merge's own markers.
const OVERLAY_XATTRS: &[u8] = b"user.overlay.";
const OPAQUE: &CStr = c"user.overlay.opaque";
/// Prefix of the layer store's (and mapped mode's) own xattrs.
const PRIVATE_XATTRS: &[u8] = b"user.minivm.";
/// Where mapped mode keeps an entry's owner, mode and device number.
const OVERRIDE: &CStr = c"user.minivm.override";
/// Prefix under which mapped mode keeps xattrs outside the `user.` namespace.
const MAPPED_XATTRS: &[u8] = b"user.minivm.xattr.";
/// Prefix of the upper's temporary copy-up names, hidden from the guest.
const COPYUP_PREFIX: &[u8] = b".minivm-copyup.";
/// Where scratch files are made, in the upper's root (hidden: it has the
/// prefix above). Renames from it into the tree stay on one file system.
pub const WORK_DIR: &CStr = c".minivm-copyup.work";
const CHUNK: usize = 1 << 20;
const XATTR_MAX: u32 = 65536;
/// Host inode numbers below this become node ids directly (with the host
/// device's index above them).
const INO_BITS: u32 = 48;
/// Node ids handed out when the host's number cannot be used.
const FALLBACK_IDS: u64 = 1 << 55;

/// A file in one layer: the layer's index and its inode there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Real {
    layer: usize,
    ino: u64,
}

/// An entry's owner, mode (with the file type) and device, as mapped mode
/// records them in [`OVERRIDE`] (the layer store's `Override` format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub rdev: Option<(u32, u32)>,
}

impl Ids {
    pub(super) fn parse(value: &[u8]) -> Option<Ids> {
        let s = std::str::from_utf8(value).ok()?;
        let f: Vec<&str> = s.split(':').collect();
        let rdev = match f.len() {
            3 => None,
            5 => Some((f[3].parse().ok()?, f[4].parse().ok()?)),
            _ => return None,
        };
        Some(Ids {
            uid: f[0].parse().ok()?,
            gid: f[1].parse().ok()?,
            mode: u32::from_str_radix(f[2], 8).ok()?,
            rdev,
        })
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut s = format!("{}:{}:{:o}", self.uid, self.gid, self.mode);
        if let Some((major, minor)) = self.rdev {
            s.push_str(&format!(":{major}:{minor}"));
        }
        s.into_bytes()
    }

    fn of(st: &stat64) -> Ids {
        Ids {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            rdev: None,
        }
    }

    fn apply(&self, st: &mut stat64) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_mode = self.mode;
        if let Some((major, minor)) = self.rdev {
            st.st_rdev = libc::makedev(major, minor);
        }
    }
}

/// Whether the host can keep user xattrs (hence [`Ids`]) on this type.
fn carries_ids(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

/// A file or directory of the merged tree the guest holds a reference to.
#[derive(Debug)]
struct Node {
    /// Guest references (lookups not yet forgotten).
    lookups: u64,
    /// Names the guest reached it by: (parent node, name).
    names: Vec<(u64, CString)>,
    /// Top-most first; one for a non-directory, each merged one for a
    /// directory. The node holds one layer reference on each.
    reals: Vec<Real>,
    /// Reals a copy-up replaced, still referenced: open files may use them.
    retired: Vec<Real>,
    /// (host device, host inode) of `reals[0]`.
    key: (u64, u64),
    is_dir: bool,
}

#[derive(Debug, Default)]
struct Tree {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<(u64, u64), u64>,
    /// Host devices seen, for the high bits of node ids.
    devs: Vec<u64>,
    next_fallback: u64,
    next_tmp: u64,
}

/// An open file: which layer's file, and that layer's handle.
#[derive(Clone, Copy, Debug)]
struct OpenFile {
    real: Real,
    fh: u64,
}

/// One entry of a merged directory listing.
#[derive(Debug, Clone)]
struct DirItem {
    name: CString,
    type_: u32,
    ino: u64,
}

/// The merged view of layer directories (see the module docs).
pub struct LayeredFs {
    /// The upper layer first when there is one, then the lower layers,
    /// top-most first.
    layers: Vec<Layer>,
    has_upper: bool,
    /// Host device of each layer's root.
    layer_dev: Vec<u64>,
    tree: Mutex<Tree>,
    files: Mutex<HashMap<u64, OpenFile>>,
    dirs: Mutex<HashMap<u64, Option<Arc<Vec<DirItem>>>>>,
    next_handle: AtomicU64,
    timeout: Duration,
    privileged: bool,
    /// Owners, modes, devices and system xattrs live in xattrs (see the
    /// module docs).
    mapped: bool,
    /// What copy-ups may add to the upper, shared with the guard.
    cap: Option<Arc<SizeCap>>,
    /// The upper's [`WORK_DIR`], when there is an upper.
    work: Option<Real>,
}

/// Removes what a crashed VM left in `upper`'s [`WORK_DIR`] (half-made
/// copies, replaced entries): only minivm makes names there, and the guest
/// can neither see nor create them. Symlinks in it are removed, not
/// followed.
pub fn clear_work_dir(upper: &std::path::Path) -> io::Result<()> {
    let work = upper.join(std::ffi::OsStr::from_bytes(WORK_DIR.to_bytes()));
    match std::fs::remove_dir_all(&work) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn ctx0() -> Context {
    // uid/gid 0 tells PassthroughFs not to switch credentials: the VMM's own.
    Context::default()
}

fn is_dir(st: &stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_whiteout(st: &stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

fn hidden_name(name: &CStr) -> bool {
    name.to_bytes().starts_with(COPYUP_PREFIX)
}

fn private_xattr(name: &[u8]) -> bool {
    name.starts_with(OVERLAY_XATTRS) || name.starts_with(PRIVATE_XATTRS)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the file system down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LayeredFs {
    /// Merges `lowers` (top-most first) under `upper`. The layers must be
    /// imported already. Without an upper the tree cannot change. `mapped`
    /// selects mapped mode (see the module docs).
    pub fn new(
        upper: Option<Layer>,
        lowers: Vec<Layer>,
        timeout: Duration,
        mapped: bool,
    ) -> io::Result<Self> {
        if lowers.is_empty() {
            return Err(errno(libc::EINVAL));
        }
        let has_upper = upper.is_some();
        let layers: Vec<Layer> = upper.into_iter().chain(lowers).collect();
        let mut layer_dev = Vec::with_capacity(layers.len());
        for l in &layers {
            layer_dev.push(l.getattr(&ctx0(), ROOT, None)?.0.st_dev);
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let privileged = unsafe { libc::geteuid() } == 0;
        let mut fs = LayeredFs {
            layers,
            has_upper,
            layer_dev,
            tree: Mutex::new(Tree {
                next_fallback: FALLBACK_IDS,
                ..Default::default()
            }),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            timeout,
            privileged,
            mapped,
            cap: None,
            work: None,
        };
        // The root merges every layer's root down to an opaque one.
        let mut reals = Vec::new();
        for layer in 0..fs.layers.len() {
            let r = Real { layer, ino: ROOT };
            reals.push(r);
            if fs.is_opaque(r) {
                break;
            }
        }
        let attr = fs.layers[0].getattr(&ctx0(), ROOT, None)?.0;
        {
            let mut t = lock(&fs.tree);
            let key = (attr.st_dev, attr.st_ino);
            t.by_key.insert(key, ROOT);
            t.nodes.insert(
                ROOT,
                Node {
                    lookups: 1,
                    names: Vec::new(),
                    reals,
                    retired: Vec::new(),
                    key,
                    is_dir: true,
                },
            );
        }
        if fs.has_upper {
            fs.work = Some(fs.work_dir()?);
        }
        Ok(fs)
    }

    /// The upper's work directory, made if missing.
    fn work_dir(&self) -> io::Result<Real> {
        let upper = Real {
            layer: 0,
            ino: ROOT,
        };
        let found = match self.layer_lookup(upper, WORK_DIR)? {
            Some(found) => found,
            None => {
                // The root's times are the image's (prepare_upper): keep them.
                let root = self.layers[0].getattr(&ctx0(), ROOT, None)?.0;
                let e = self.layers[0].mkdir(&ctx0(), ROOT, WORK_DIR, 0o700, 0)?;
                let r = Real {
                    layer: 0,
                    ino: e.inode,
                };
                let times = SetattrValid::ATIME | SetattrValid::MTIME;
                if let Err(err) = self.layers[0].setattr(&ctx0(), ROOT, root, None, times) {
                    self.release_real(r);
                    return Err(err);
                }
                (r, e.attr)
            }
        };
        if !is_dir(&found.1) {
            self.release_real(found.0);
            return Err(errno(libc::ENOTDIR));
        }
        Ok(found.0)
    }

    /// Charges copy-ups to `cap`: a copy that would pass it fails with
    /// ENOSPC, so opening lower files for writing cannot fill the host.
    pub fn charge_copy_ups_to(&mut self, cap: Arc<SizeCap>) {
        self.cap = Some(cap);
    }

    fn layer(&self, r: Real) -> &Layer {
        &self.layers[r.layer]
    }

    fn work(&self) -> io::Result<Real> {
        self.work.ok_or_else(|| errno(libc::EROFS))
    }

    fn upper(&self) -> io::Result<&Layer> {
        if self.has_upper {
            Ok(&self.layers[0])
        } else {
            Err(errno(libc::EROFS))
        }
    }

    fn entry(&self, id: u64, mut attr: stat64) -> Entry {
        attr.st_ino = id;
        Entry {
            inode: id,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: self.timeout,
            entry_timeout: self.timeout,
        }
    }

    /// `name` in the layer directory `dir`, holding one layer reference.
    fn layer_lookup(&self, dir: Real, name: &CStr) -> io::Result<Option<(Real, stat64)>> {
        match self.layer(dir).lookup(&ctx0(), dir.ino, name) {
            Ok(e) if e.inode == 0 => Ok(None),
            Ok(e) => Ok(Some((
                Real {
                    layer: dir.layer,
                    ino: e.inode,
                },
                e.attr,
            ))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn release_real(&self, r: Real) {
        self.layer(r).forget(&ctx0(), r.ino, 1);
    }

    fn is_opaque(&self, r: Real) -> bool {
        matches!(
            self.layer(r).getxattr(&ctx0(), r.ino, OPAQUE, 16),
            Ok(GetxattrReply::Value(v)) if v == b"y" || v == b"Y"
        )
    }

    fn getattr_real(&self, r: Real) -> io::Result<stat64> {
        Ok(self.layer(r).getattr(&ctx0(), r.ino, None)?.0)
    }

    /// The ids mapped mode recorded on `r`, if any.
    fn ids(&self, r: Real) -> Option<Ids> {
        if !self.mapped {
            return None;
        }
        match self.layer(r).getxattr(&ctx0(), r.ino, OVERRIDE, 64) {
            Ok(GetxattrReply::Value(v)) => Ids::parse(&v),
            _ => None,
        }
    }

    /// `st` (of `r`) as the guest must see it.
    fn present(&self, r: Real, mut st: stat64) -> stat64 {
        if let Some(ids) = self.ids(r) {
            ids.apply(&mut st);
        }
        st
    }

    /// The guest's attributes of `r`.
    fn attr_of(&self, r: Real) -> io::Result<stat64> {
        Ok(self.present(r, self.getattr_real(r)?))
    }

    fn record(&self, r: Real, ids: Ids) -> io::Result<()> {
        self.upper()?
            .setxattr(&ctx0(), r.ino, OVERRIDE, &ids.encode(), 0)
    }

    /// The host name of the guest's xattr `name`.
    fn host_xattr(&self, name: &CStr) -> CString {
        let b = name.to_bytes();
        if self.mapped && !b.starts_with(b"user.") {
            CString::new([MAPPED_XATTRS, b].concat()).expect("no NUL inside")
        } else {
            name.to_owned()
        }
    }

    /// For a guest create in mapped mode: the credentials, mode and umask
    /// to create the host file with, and the ids to record on it.
    fn creation(&self, ctx: &Context, mode: u32, umask: u32) -> (Context, u32, u32, Option<Ids>) {
        if !self.mapped {
            return (*ctx, mode, umask, None);
        }
        let kind = mode & libc::S_IFMT;
        let own = if kind == libc::S_IFDIR { 0o700 } else { 0o600 };
        let ids = Ids {
            uid: ctx.uid,
            gid: ctx.gid,
            mode: kind | (mode & !umask & 0o7777),
            rdev: None,
        };
        (ctx0(), kind | (mode & 0o777) | own, 0, Some(ids))
    }

    /// What `name` is in the merged directory whose layer directories are
    /// `dirs`: its reals (holding a layer reference each) and the top-most
    /// one's attributes, or None if nothing or a whiteout is there.
    fn resolve(&self, dirs: &[Real], name: &CStr) -> io::Result<Option<(Vec<Real>, stat64)>> {
        let mut found: Vec<Real> = Vec::new();
        let mut top: Option<stat64> = None;
        for &dir in dirs {
            let (real, st) = match self.layer_lookup(dir, name) {
                Ok(Some(x)) => x,
                Ok(None) => continue,
                Err(e) => {
                    found.into_iter().for_each(|r| self.release_real(r));
                    return Err(e);
                }
            };
            if is_whiteout(&st) || (top.is_some() && !is_dir(&st)) {
                self.release_real(real);
                break;
            }
            found.push(real);
            if top.is_none() {
                top = Some(st);
            }
            if !is_dir(&st) || self.is_opaque(real) {
                break;
            }
        }
        Ok(top.map(|st| (found, st)))
    }

    /// Whether a lower layer shows `name` in the merged directory `dirs`.
    fn lower_has(&self, dirs: &[Real], name: &CStr) -> io::Result<bool> {
        for &dir in dirs.iter().filter(|d| d.layer != 0 || !self.has_upper) {
            if let Some((real, st)) = self.layer_lookup(dir, name)? {
                self.release_real(real);
                return Ok(!is_whiteout(&st));
            }
        }
        Ok(false)
    }

    fn dev_index(t: &mut Tree, dev: u64) -> u64 {
        match t.devs.iter().position(|d| *d == dev) {
            Some(i) => i as u64,
            None => {
                t.devs.push(dev);
                (t.devs.len() - 1) as u64
            }
        }
    }

    /// The node id a file with host identity `key` should get.
    fn preferred_id(t: &mut Tree, key: (u64, u64)) -> u64 {
        let i = Self::dev_index(t, key.0);
        let id = (i << INO_BITS) | key.1;
        if key.1 >> INO_BITS == 0 && i < 64 && id > ROOT && !t.nodes.contains_key(&id) {
            return id;
        }
        let id = t.next_fallback;
        t.next_fallback += 1;
        id
    }

    /// Takes a guest reference on the node for (`reals`, `st`) found as
    /// `name` in `parent`, creating it if needed. Consumes the layer
    /// references in `reals`.
    fn take_node(
        &self,
        t: &mut Tree,
        parent: u64,
        name: &CStr,
        reals: Vec<Real>,
        st: &stat64,
    ) -> u64 {
        let key = (st.st_dev, st.st_ino);
        let alias = (parent, name.to_owned());
        if let Some(&id) = t.by_key.get(&key) {
            if let Some(node) = t.nodes.get_mut(&id) {
                node.lookups += 1;
                if !node.names.contains(&alias) {
                    node.names.push(alias);
                }
                // The node already holds its own layer references.
                reals.into_iter().for_each(|r| self.release_real(r));
                return id;
            }
        }
        let id = Self::preferred_id(t, key);
        t.by_key.insert(key, id);
        t.nodes.insert(
            id,
            Node {
                lookups: 1,
                names: vec![alias],
                reals,
                retired: Vec::new(),
                key,
                is_dir: is_dir(st),
            },
        );
        id
    }

    fn node_reals(t: &Tree, id: u64) -> io::Result<Vec<Real>> {
        t.nodes
            .get(&id)
            .map(|n| n.reals.clone())
            .ok_or_else(|| errno(libc::ENOENT))
    }

    fn dir_reals(t: &Tree, id: u64) -> io::Result<Vec<Real>> {
        match t.nodes.get(&id) {
            Some(n) if n.is_dir => Ok(n.reals.clone()),
            Some(_) => Err(errno(libc::ENOTDIR)),
            None => Err(errno(libc::ENOENT)),
        }
    }

    fn top(&self, id: u64) -> io::Result<Real> {
        Ok(Self::node_reals(&lock(&self.tree), id)?[0])
    }

    fn do_lookup(&self, parent: u64, name: &CStr) -> io::Result<Entry> {
        if hidden_name(name) {
            return Err(errno(libc::ENOENT));
        }
        let mut t = lock(&self.tree);
        let dirs = Self::dir_reals(&t, parent)?;
        let (reals, st) = self
            .resolve(&dirs, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let shown = self.present(reals[0], st);
        let id = self.take_node(&mut t, parent, name, reals, &st);
        Ok(self.entry(id, shown))
    }

    /// Makes sure node `id` has its top-most file in the upper layer and
    /// returns that file.
    fn copy_up(&self, t: &mut Tree, id: u64) -> io::Result<Real> {
        self.upper()?;
        // The node and its ancestors without an upper directory, nearest
        // first: walked, not recursed, as an image's tree may be very deep.
        let mut chain = Vec::new();
        let mut cur = id;
        loop {
            let node = t.nodes.get(&cur).ok_or_else(|| errno(libc::ENOENT))?;
            if node.reals[0].layer == 0 {
                break;
            }
            if chain.len() > t.nodes.len() {
                return Err(errno(libc::ELOOP));
            }
            chain.push(cur);
            cur = node
                .names
                .iter()
                .find(|(p, _)| t.nodes.contains_key(p))
                .map(|(p, _)| *p)
                .ok_or_else(|| errno(libc::ENOENT))?;
        }
        for &n in chain.iter().rev() {
            self.copy_up_one(t, n)?;
        }
        Ok(Self::node_reals(t, id)?[0])
    }

    /// Copies node `id` up; its parent is in the upper already.
    fn copy_up_one(&self, t: &mut Tree, id: u64) -> io::Result<Real> {
        let upper = self.upper()?;
        let node = t.nodes.get(&id).ok_or_else(|| errno(libc::ENOENT))?;
        let lower = node.reals[0];
        let names: Vec<(u64, CString)> = node
            .names
            .iter()
            .filter(|(p, _)| t.nodes.contains_key(p))
            .cloned()
            .collect();
        let (parent, name) = names.first().cloned().ok_or_else(|| errno(libc::ENOENT))?;
        let pup = Self::node_reals(t, parent)?[0];
        debug_assert_eq!(pup.layer, 0);
        let st = self.getattr_real(lower)?;
        let (new, new_st) = if is_dir(&st) {
            let e = upper.mkdir(&ctx0(), pup.ino, &name, st.st_mode & 0o7777, 0)?;
            let new = Real {
                layer: 0,
                ino: e.inode,
            };
            if let Err(err) = self.copy_meta(lower, new, &st) {
                self.release_real(new);
                let _ = upper.rmdir(&ctx0(), pup.ino, &name);
                return Err(err);
            }
            (new, e.attr)
        } else {
            // What the lower copy occupies is what the upper one will.
            let cost = (st.st_blocks as u64).saturating_mul(512);
            if let Some(cap) = &self.cap {
                cap.check_grow(cost)?;
            }
            let tmp = Self::tmp_name(t);
            let work = self.work()?;
            let new = self.copy_file(lower, &st, work, &tmp)?;
            if let Err(err) = upper.rename(&ctx0(), work.ino, &tmp, pup.ino, &name, 0) {
                self.release_real(new);
                let _ = upper.unlink(&ctx0(), work.ino, &tmp);
                return Err(err);
            }
            if let Some(cap) = &self.cap {
                let got = self
                    .getattr_real(new)
                    .map_or(cost, |s| s.st_blocks as u64 * 512);
                cap.adjust(0, got);
            }
            (new, self.getattr_real(new)?)
        };
        let key = (new_st.st_dev, new_st.st_ino);
        let node = t.nodes.get_mut(&id).expect("checked above");
        if node.is_dir {
            node.reals.insert(0, new);
        } else {
            node.reals[0] = new;
            node.retired.push(lower);
        }
        let old_key = std::mem::replace(&mut node.key, key);
        if t.by_key.get(&old_key) == Some(&id) {
            t.by_key.remove(&old_key);
        }
        t.by_key.insert(key, id);
        // Keep the other names of a hardlinked file pointing at one file.
        if !is_dir(&st) {
            for (p, n) in names.iter().skip(1) {
                let linked = self
                    .copy_up(t, *p)
                    .and_then(|pu| upper.link(&ctx0(), new.ino, pu.ino, n));
                match linked {
                    Ok(e) => self.release_real(Real {
                        layer: 0,
                        ino: e.inode,
                    }),
                    Err(e) => tracing::warn!("copy-up: cannot link {n:?} to its copy: {e}"),
                }
            }
        }
        Ok(new)
    }

    /// A fresh scratch name for the upper, hidden from the guest. The pid
    /// keeps it apart from what an earlier run (of a --persist upper) left.
    fn tmp_name(t: &mut Tree) -> CString {
        t.next_tmp += 1;
        let name = format!(
            "{}{}.{}",
            String::from_utf8_lossy(COPYUP_PREFIX),
            std::process::id(),
            t.next_tmp
        );
        CString::new(name).expect("no NUL in numbers")
    }

    /// Replaces the upper entry `name` in `pup` by a whiteout, atomically
    /// where the host allows (RENAME_WHITEOUT), so that no crash lets the
    /// lower entry show through.
    fn replace_with_whiteout(
        &self,
        t: &mut Tree,
        pup: Real,
        name: &CStr,
        dir: bool,
    ) -> io::Result<()> {
        let upper = self.upper()?;
        let tmp = Self::tmp_name(t);
        let work = self.work()?;
        let remove = |d: Real, n: &CStr| {
            if dir {
                upper.rmdir(&ctx0(), d.ino, n)
            } else {
                upper.unlink(&ctx0(), d.ino, n)
            }
        };
        match upper.rename(
            &ctx0(),
            pup.ino,
            name,
            work.ino,
            &tmp,
            libc::RENAME_WHITEOUT,
        ) {
            Ok(()) => remove(work, &tmp),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM)) => {
                remove(pup, name)?;
                self.whiteout(pup, name)
            }
            Err(e) => Err(e),
        }
    }

    /// Copies the non-directory `lower` (attributes `st`) to `tmp` in the
    /// upper directory `pup` (the work directory); returns the copy, holding
    /// a reference.
    fn copy_file(&self, lower: Real, st: &stat64, pup: Real, tmp: &CStr) -> io::Result<Real> {
        let upper = self.upper()?;
        let ctx = ctx0();
        let new = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                let args = CreateIn {
                    flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32,
                    mode: libc::S_IFREG | (st.st_mode & 0o7777),
                    umask: 0,
                    fuse_flags: 0,
                };
                let (e, fh, _, _) = upper.create(&ctx, pup.ino, tmp, args)?;
                let new = Real {
                    layer: 0,
                    ino: e.inode,
                };
                let copied = self.copy_data(lower, new, fh.unwrap_or(0), st.st_size as u64);
                let _ = upper.release(&ctx, new.ino, 0, fh.unwrap_or(0), false, false, None);
                copied.map(|_| new)
            }
            libc::S_IFLNK => {
                let target = self.layer(lower).readlink(&ctx, lower.ino)?;
                let target = CString::new(target).map_err(|_| errno(libc::EINVAL))?;
                let e = upper.symlink(&ctx, &target, pup.ino, tmp)?;
                Ok(Real {
                    layer: 0,
                    ino: e.inode,
                })
            }
            _ => {
                let e = upper.mknod(&ctx, pup.ino, tmp, st.st_mode, st.st_rdev as u32, 0)?;
                Ok(Real {
                    layer: 0,
                    ino: e.inode,
                })
            }
        };
        let new = match new {
            Ok(new) => new,
            Err(e) => {
                let _ = upper.unlink(&ctx, pup.ino, tmp);
                return Err(e);
            }
        };
        if let Err(e) = self.copy_meta(lower, new, st) {
            self.release_real(new);
            let _ = upper.unlink(&ctx, pup.ino, tmp);
            return Err(e);
        }
        Ok(new)
    }

    /// Copies `size` bytes of data, leaving all-zero chunks as holes.
    fn copy_data(&self, lower: Real, new: Real, ufh: u64, size: u64) -> io::Result<()> {
        let ctx = ctx0();
        let upper = self.upper()?;
        let src = self.layer(lower);
        let (lfh, _, _) = src.open(&ctx, lower.ino, libc::O_RDONLY as u32, 0)?;
        let lfh = lfh.unwrap_or(0);
        let mut buf = Chunk::new();
        let result = (|| {
            let mut off = 0u64;
            loop {
                buf.clear();
                let n = src.read(&ctx, lower.ino, lfh, &mut buf, CHUNK as u32, off, None, 0)?;
                if n == 0 {
                    break;
                }
                if buf.data().iter().any(|b| *b != 0) {
                    while !buf.remaining().is_empty() {
                        let len = buf.remaining().len() as u32;
                        let at = off + buf.pos as u64;
                        let w = upper
                            .write(&ctx, new.ino, ufh, &mut buf, len, at, None, false, 0, 0)?;
                        if w == 0 {
                            return Err(io::Error::from(io::ErrorKind::WriteZero));
                        }
                    }
                }
                off += n as u64;
            }
            if off < size {
                off = size;
            }
            // The size, for a file ending in a hole.
            // SAFETY: stat64 is plain old data; all-zero is a valid value.
            let mut attr: stat64 = unsafe { std::mem::zeroed() };
            attr.st_size = off as i64;
            upper.setattr(&ctx, new.ino, attr, Some(ufh), SetattrValid::SIZE)?;
            Ok(())
        })();
        let _ = src.release(&ctx, lower.ino, 0, lfh, false, false, None);
        result
    }

    /// Gives `new` the owner, mode, xattrs and times of `lower` (`st`).
    fn copy_meta(&self, lower: Real, new: Real, st: &stat64) -> io::Result<()> {
        let ctx = ctx0();
        let upper = self.upper()?;
        let symlink = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        // Owner first: chown clears set-id bits and file capabilities.
        match upper.setattr(
            &ctx,
            new.ino,
            *st,
            None,
            SetattrValid::UID | SetattrValid::GID,
        ) {
            Ok(_) => {}
            Err(e) if !self.privileged && e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(e),
        }
        if !symlink {
            upper.setattr(&ctx, new.ino, *st, None, SetattrValid::MODE)?;
        }
        let names = match self.layer(lower).listxattr(&ctx, lower.ino, XATTR_MAX) {
            Ok(ListxattrReply::Names(n)) => n,
            Ok(ListxattrReply::Count(_)) => Vec::new(),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
            Err(e) => return Err(e),
        };
        for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            // The merge's markers are per layer; mapped ids and xattrs move.
            if name.starts_with(OVERLAY_XATTRS) {
                continue;
            }
            let cname = CString::new(name).map_err(|_| errno(libc::EINVAL))?;
            let value = match self
                .layer(lower)
                .getxattr(&ctx, lower.ino, &cname, XATTR_MAX)?
            {
                GetxattrReply::Value(v) => v,
                GetxattrReply::Count(_) => continue,
            };
            upper.setxattr(&ctx, new.ino, &cname, &value, 0)?;
        }
        upper.setattr(
            &ctx,
            new.ino,
            *st,
            None,
            SetattrValid::ATIME | SetattrValid::MTIME,
        )?;
        Ok(())
    }

    /// Gets `parent` ready for a new `name` in the upper layer: its upper
    /// directory, after removing a whiteout there. Returns that directory
    /// and whether a whiteout was removed (a lower entry is hidden).
    fn prepare_new(&self, t: &mut Tree, parent: u64, name: &CStr) -> io::Result<(Real, bool)> {
        if hidden_name(name) {
            return Err(errno(libc::EPERM));
        }
        let upper = self.upper()?;
        let dirs = Self::dir_reals(t, parent)?;
        if let Some((reals, _)) = self.resolve(&dirs, name)? {
            reals.into_iter().for_each(|r| self.release_real(r));
            return Err(errno(libc::EEXIST));
        }
        let pup = self.copy_up(t, parent)?;
        let mut whiteout = false;
        if let Some((r, st)) = self.layer_lookup(pup, name)? {
            self.release_real(r);
            if !is_whiteout(&st) {
                return Err(errno(libc::EEXIST));
            }
            upper.unlink(&ctx0(), pup.ino, name)?;
            whiteout = true;
        }
        Ok((pup, whiteout))
    }

    /// Registers a new upper file the guest created as `name` in `parent`,
    /// first recording `ids` on it (mapped mode).
    fn created(
        &self,
        t: &mut Tree,
        parent: u64,
        name: &CStr,
        e: Entry,
        ids: Option<Ids>,
    ) -> io::Result<Entry> {
        let real = Real {
            layer: 0,
            ino: e.inode,
        };
        if let Some(ids) = ids.filter(|_| carries_ids(e.attr.st_mode)) {
            if let Err(err) = self.record(real, ids) {
                self.release_real(real);
                return Err(err);
            }
        }
        let shown = self.present(real, e.attr);
        let id = self.take_node(t, parent, name, vec![real], &e.attr);
        Ok(self.entry(id, shown))
    }

    fn whiteout(&self, pup: Real, name: &CStr) -> io::Result<()> {
        let e = self
            .upper()?
            .mknod(&ctx0(), pup.ino, name, libc::S_IFCHR, 0, 0)?;
        self.release_real(Real {
            layer: 0,
            ino: e.inode,
        });
        Ok(())
    }

    fn forget_alias(t: &mut Tree, parent: u64, name: &CStr, key: (u64, u64)) {
        if let Some(node) = t.by_key.get(&key).and_then(|id| t.nodes.get_mut(id)) {
            node.names
                .retain(|(p, n)| !(*p == parent && n.as_c_str() == name));
        }
    }

    /// The merged listing of the directory whose layer directories are `dirs`.
    fn list(&self, t: &mut Tree, dirs: &[Real]) -> io::Result<Vec<DirItem>> {
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut out = Vec::new();
        for &dir in dirs {
            let dev_i = Self::dev_index(t, self.layer_dev[dir.layer]);
            for (name, type_, ino) in self.read_layer_dir(dir)? {
                if !seen.insert(name.clone()) {
                    continue;
                }
                if dir.layer == 0 && self.has_upper && name.starts_with(COPYUP_PREFIX) {
                    continue;
                }
                let cname = CString::new(name).map_err(|_| errno(libc::EINVAL))?;
                let mut type_ = type_;
                if type_ == libc::DT_CHR as u32 || type_ == libc::DT_UNKNOWN as u32 {
                    if let Some((r, st)) = self.layer_lookup(dir, &cname)? {
                        self.release_real(r);
                        if is_whiteout(&st) {
                            continue;
                        }
                        type_ = (st.st_mode & libc::S_IFMT) >> 12;
                    }
                }
                if self.mapped && type_ == libc::DT_REG as u32 {
                    // It may be a device recorded in xattrs: let stat tell.
                    type_ = libc::DT_UNKNOWN as u32;
                }
                let key = (self.layer_dev[dir.layer], ino);
                let ino = t
                    .by_key
                    .get(&key)
                    .copied()
                    .unwrap_or((dev_i << INO_BITS) | (ino & ((1 << INO_BITS) - 1)));
                out.push(DirItem {
                    name: cname,
                    type_,
                    ino,
                });
            }
        }
        Ok(out)
    }

    /// Every entry (name, d_type, host inode) of one layer's directory,
    /// without `.` and `..`.
    fn read_layer_dir(&self, dir: Real) -> io::Result<Vec<(Vec<u8>, u32, u64)>> {
        let layer = self.layer(dir);
        let (fh, _) = layer.opendir(&ctx0(), dir.ino, libc::O_RDONLY as u32)?;
        let fh = fh.unwrap_or(0);
        let mut raw = Vec::new();
        let mut offset = 0u64;
        let res = loop {
            let before = raw.len();
            let r = layer.readdir(&ctx0(), dir.ino, fh, 65536, offset, &mut |d| {
                raw.push((d.name.to_vec(), d.type_, d.ino));
                offset = d.offset;
                Ok(1)
            });
            if let Err(e) = r {
                break Err(e);
            }
            if raw.len() == before {
                break Ok(());
            }
        };
        let _ = layer.releasedir(&ctx0(), dir.ino, 0, fh);
        res?;
        raw.retain(|(n, _, _)| n != b"." && n != b"..");
        Ok(raw)
    }

    /// Empties the upper part of a merged-empty directory (whiteouts only).
    fn clear_upper_dir(&self, dir: Real) -> io::Result<()> {
        let upper = self.upper()?;
        for (n, _, _) in self.read_layer_dir(dir)? {
            let n = CString::new(n).map_err(|_| errno(libc::EINVAL))?;
            upper.unlink(&ctx0(), dir.ino, &n)?;
        }
        Ok(())
    }

    fn open_file(&self, real: Real, fh: Option<u64>) -> u64 {
        let h = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(
            h,
            OpenFile {
                real,
                fh: fh.unwrap_or(0),
            },
        );
        h
    }

    fn file(&self, handle: u64) -> io::Result<OpenFile> {
        lock(&self.files)
            .get(&handle)
            .copied()
            .ok_or_else(|| errno(libc::EBADF))
    }

    fn remove_entry(&self, parent: u64, name: &CStr, want_dir: bool) -> io::Result<()> {
        let upper = self.upper()?;
        let mut t = lock(&self.tree);
        let dirs = Self::dir_reals(&t, parent)?;
        let (reals, st) = self
            .resolve(&dirs, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let key = (st.st_dev, st.st_ino);
        let top = reals[0];
        let result = (|| {
            match (want_dir, is_dir(&st)) {
                (true, false) => return Err(errno(libc::ENOTDIR)),
                (false, true) => return Err(errno(libc::EISDIR)),
                _ => {}
            }
            if want_dir && !self.list(&mut t, &reals)?.is_empty() {
                return Err(errno(libc::ENOTEMPTY));
            }
            let lower = self.lower_has(&dirs, name)?;
            if top.layer == 0 && self.has_upper {
                let pup = dirs[0];
                if want_dir {
                    self.clear_upper_dir(top)?;
                }
                if lower {
                    self.replace_with_whiteout(&mut t, pup, name, want_dir)?;
                } else if want_dir {
                    upper.rmdir(&ctx0(), pup.ino, name)?;
                } else {
                    upper.unlink(&ctx0(), pup.ino, name)?;
                }
            } else if lower {
                let pup = self.copy_up(&mut t, parent)?;
                self.whiteout(pup, name)?;
            }
            Ok(())
        })();
        reals.into_iter().for_each(|r| self.release_real(r));
        result?;
        Self::forget_alias(&mut t, parent, name, key);
        Ok(())
    }
}

/// A chunk buffer that a layer's `read` fills and another's `write` drains.
pub(super) struct Chunk {
    buf: Vec<u8>,
    len: usize,
    pos: usize,
}

impl Chunk {
    pub(super) fn new() -> Self {
        Chunk {
            buf: vec![0; CHUNK],
            len: 0,
            pos: 0,
        }
    }
    /// A chunk holding `data` (at most [`CHUNK`] bytes), ready to be written.
    #[cfg(test)]
    pub(super) fn with(data: &[u8]) -> Self {
        let mut c = Chunk::new();
        c.buf[..data.len()].copy_from_slice(data);
        c.len = data.len();
        c
    }
    fn clear(&mut self) {
        self.len = 0;
        self.pos = 0;
    }
    pub(super) fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    fn remaining(&self) -> &[u8] {
        &self.buf[self.pos..self.len]
    }
}

impl io::Write for Chunk {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for Chunk {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let n = count.min(CHUNK - self.len);
        // SAFETY: the slice is our own buffer, borrowed mutably for the call;
        // nothing else accesses it meanwhile.
        let slice =
            unsafe { FileVolatileSlice::from_mut_slice(&mut self.buf[self.len..self.len + n]) };
        let got = f.read_at_volatile(slice, off)?;
        self.len += got;
        Ok(got)
    }
    fn available_bytes(&self) -> usize {
        CHUNK - self.len
    }
}

impl io::Read for Chunk {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ZeroCopyReader for Chunk {
    fn read_to(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let n = count.min(self.len - self.pos);
        // SAFETY: as in `write_from`: our own buffer, only read by the callee.
        let slice =
            unsafe { FileVolatileSlice::from_mut_slice(&mut self.buf[self.pos..self.pos + n]) };
        let put = f.write_at_volatile(slice, off)?;
        if put == 0 && n > 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        self.pos += put;
        Ok(put)
    }
}

impl BackendFileSystem for LayeredFs {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        let st = self.attr_of(self.top(ROOT)?)?;
        Ok((self.entry(ROOT, st), VFS_MAX_INO))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl FileSystem for LayeredFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut opts = None;
        for l in &self.layers {
            let o = l.init(capable)?;
            opts.get_or_insert(o);
        }
        Ok(opts.unwrap_or_else(FsOptions::empty))
    }

    fn destroy(&self) {
        self.layers.iter().for_each(|l| l.destroy());
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.do_lookup(parent, name)
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        if inode == ROOT {
            return;
        }
        let mut t = lock(&self.tree);
        let Some(node) = t.nodes.get_mut(&inode) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups > 0 {
            return;
        }
        let node = t.nodes.remove(&inode).expect("present");
        if t.by_key.get(&node.key) == Some(&inode) {
            t.by_key.remove(&node.key);
        }
        drop(t);
        for r in node.reals.into_iter().chain(node.retired) {
            self.release_real(r);
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let mut st = self.attr_of(self.top(inode)?)?;
        st.st_ino = inode;
        Ok((st, self.timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let up = self.copy_up(&mut lock(&self.tree), inode)?;
        let fh = match handle.map(|h| self.file(h)) {
            Some(Ok(f)) if f.real == up => Some(f.fh),
            _ => None,
        };
        let upper = self.upper()?;
        let idbits = SetattrValid::UID | SetattrValid::GID | SetattrValid::MODE;
        if !self.mapped || !valid.intersects(idbits) {
            let (st, d) = upper.setattr(ctx, up.ino, attr, fh, valid)?;
            let mut st = self.present(up, st);
            st.st_ino = inode;
            return Ok((st, d));
        }
        // Mapped: owner and mode go to the recorded ids; the host file only
        // gets the permission bits, and keeps the VMM's access.
        let raw = self.getattr_real(up)?;
        if carries_ids(raw.st_mode) {
            let mut ids = self.ids(up).unwrap_or_else(|| Ids::of(&raw));
            if valid.contains(SetattrValid::UID) {
                ids.uid = attr.st_uid;
            }
            if valid.contains(SetattrValid::GID) {
                ids.gid = attr.st_gid;
            }
            if valid.contains(SetattrValid::MODE) {
                ids.mode = (ids.mode & libc::S_IFMT) | (attr.st_mode & 0o7777);
                let (_, host_mode, _, _) = self.creation(
                    &ctx0(),
                    raw.st_mode & libc::S_IFMT | (attr.st_mode & 0o777),
                    0,
                );
                let mut a = raw;
                a.st_mode = host_mode;
                upper.setattr(&ctx0(), up.ino, a, None, SetattrValid::MODE)?;
            }
            self.record(up, ids)?;
        }
        let rest = valid - idbits;
        if !rest.is_empty() {
            upper.setattr(ctx, up.ino, attr, fh, rest)?;
        }
        let mut st = self.attr_of(up)?;
        st.st_ino = inode;
        Ok((st, self.timeout))
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let r = self.top(inode)?;
        self.layer(r).readlink(ctx, r.ino)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let mut t = lock(&self.tree);
        let (pup, _) = self.prepare_new(&mut t, parent, name)?;
        let (hctx, _, _, _) = self.creation(ctx, libc::S_IFLNK | 0o777, 0);
        let e = self.upper()?.symlink(&hctx, linkname, pup.ino, name)?;
        self.created(&mut t, parent, name, e, None)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
            // That is a whiteout: it would hide the name, not create it.
            return Err(errno(libc::EPERM));
        }
        let mut t = lock(&self.tree);
        let (pup, _) = self.prepare_new(&mut t, parent, name)?;
        let (hctx, mut hmode, humask, mut ids) = self.creation(ctx, mode, umask);
        let mut hrdev = rdev;
        let kind = mode & libc::S_IFMT;
        if let Some(ids) = ids
            .as_mut()
            .filter(|_| kind == libc::S_IFCHR || kind == libc::S_IFBLK)
        {
            // A device is an empty file that says what it is.
            ids.rdev = Some((libc::major(rdev.into()), libc::minor(rdev.into())));
            hmode = libc::S_IFREG | 0o600;
            hrdev = 0;
        }
        let e = self
            .upper()?
            .mknod(&hctx, pup.ino, name, hmode, hrdev, humask)?;
        self.created(&mut t, parent, name, e, ids)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let mut t = lock(&self.tree);
        let (pup, hid_lower) = self.prepare_new(&mut t, parent, name)?;
        let upper = self.upper()?;
        let (hctx, hmode, humask, ids) = self.creation(ctx, libc::S_IFDIR | mode, umask);
        let e = upper.mkdir(&hctx, pup.ino, name, hmode & 0o7777, humask)?;
        if hid_lower {
            // What a lower layer had under this name stays hidden.
            if let Err(err) = upper.setxattr(&ctx0(), e.inode, OPAQUE, b"y", 0) {
                upper.forget(&ctx0(), e.inode, 1);
                let _ = upper.rmdir(&ctx0(), pup.ino, name);
                let _ = self.whiteout(pup, name);
                return Err(err);
            }
        }
        self.created(&mut t, parent, name, e, ids)
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove_entry(parent, name, false)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove_entry(parent, name, true)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(errno(libc::EINVAL));
        }
        if hidden_name(oldname) || hidden_name(newname) {
            return Err(errno(libc::EPERM));
        }
        let upper = self.upper()?;
        let mut t = lock(&self.tree);
        let odirs = Self::dir_reals(&t, olddir)?;
        let ndirs = Self::dir_reals(&t, newdir)?;
        let (sreals, sst) = self
            .resolve(&odirs, oldname)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let skey = (sst.st_dev, sst.st_ino);
        let src_lower_parts = sreals.iter().any(|r| r.layer != 0 || !self.has_upper);
        sreals.into_iter().for_each(|r| self.release_real(r));
        if is_dir(&sst) && src_lower_parts {
            return Err(errno(libc::EXDEV));
        }
        let dst = self.resolve(&ndirs, newname)?;
        let dkey = dst.as_ref().map(|(_, st)| (st.st_dev, st.st_ino));
        let checked = (|| {
            if let Some((dreals, dst_st)) = &dst {
                if dkey == Some(skey) {
                    return Ok(true); // Same file: nothing to do.
                }
                if flags & libc::RENAME_NOREPLACE != 0 {
                    return Err(errno(libc::EEXIST));
                }
                match (is_dir(&sst), is_dir(dst_st)) {
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (true, true) => {
                        if !self.list(&mut t, dreals)?.is_empty() {
                            return Err(errno(libc::ENOTEMPTY));
                        }
                        if dreals[0].layer == 0 && self.has_upper {
                            self.clear_upper_dir(dreals[0])?;
                        }
                    }
                    (false, false) => {}
                }
            }
            Ok(false)
        })();
        if let Some((dreals, _)) = dst {
            dreals.into_iter().for_each(|r| self.release_real(r));
        }
        if checked? {
            return Ok(());
        }
        let sid = *t.by_key.get(&skey).ok_or_else(|| errno(libc::ENOENT))?;
        self.copy_up(&mut t, sid)?;
        let pold = self.copy_up(&mut t, olddir)?;
        let pnew = self.copy_up(&mut t, newdir)?;
        let old_lower = self.lower_has(&odirs, oldname)?;
        let new_lower = self.lower_has(&ndirs, newname)?;
        if is_dir(&sst) {
            // A directory cannot replace the whiteout (a device) in place.
            if let Some((r, st)) = self.layer_lookup(pnew, newname)? {
                self.release_real(r);
                if is_whiteout(&st) {
                    upper.unlink(&ctx0(), pnew.ino, newname)?;
                }
            }
        }
        if old_lower {
            // Leave the whiteout in the same step where the host allows it.
            let whiteout_flags = flags | libc::RENAME_WHITEOUT;
            match upper.rename(ctx, pold.ino, oldname, pnew.ino, newname, whiteout_flags) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM)) => {
                    upper.rename(ctx, pold.ino, oldname, pnew.ino, newname, flags)?;
                    self.whiteout(pold, oldname)?;
                }
                Err(e) => return Err(e),
            }
        } else {
            upper.rename(ctx, pold.ino, oldname, pnew.ino, newname, flags)?;
        }
        let sup = Self::node_reals(&t, sid)?[0];
        if is_dir(&sst) && new_lower {
            upper.setxattr(&ctx0(), sup.ino, OPAQUE, b"y", 0)?;
        }
        if let Some(dkey) = dkey {
            Self::forget_alias(&mut t, newdir, newname, dkey);
        }
        if let Some(node) = t.nodes.get_mut(&sid) {
            node.names
                .retain(|(p, n)| !(*p == olddir && n.as_c_str() == oldname));
            node.names.push((newdir, newname.to_owned()));
        }
        Ok(())
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let mut t = lock(&self.tree);
        let (pup, _) = self.prepare_new(&mut t, newparent, newname)?;
        let up = self.copy_up(&mut t, inode)?;
        let e = self.upper()?.link(ctx, up.ino, pup.ino, newname)?;
        self.created(&mut t, newparent, newname, e, None)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let f = flags as i32;
        let writes = f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0;
        let real = if writes {
            self.copy_up(&mut lock(&self.tree), inode)?
        } else {
            self.top(inode)?
        };
        let (fh, opts, _) = self.layer(real).open(ctx, real.ino, flags, fuse_flags)?;
        Ok((Some(self.open_file(real, fh)), opts, None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let mut t = lock(&self.tree);
        let (pup, _) = self.prepare_new(&mut t, parent, name)?;
        let mode = match args.mode & libc::S_IFMT {
            0 => args.mode | libc::S_IFREG,
            _ => args.mode,
        };
        let (hctx, mode, umask, ids) = self.creation(ctx, mode, args.umask);
        let hargs = CreateIn {
            mode,
            umask,
            ..args
        };
        let (e, fh, opts, _) = self.upper()?.create(&hctx, pup.ino, name, hargs)?;
        let real = Real {
            layer: 0,
            ino: e.inode,
        };
        let entry = self.created(&mut t, parent, name, e, ids)?;
        Ok((entry, Some(self.open_file(real, fh)), opts, None))
    }

    fn read(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let f = self.file(handle)?;
        self.layer(f.real)
            .read(ctx, f.real.ino, f.fh, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let f = self.file(handle)?;
        if f.real.layer != 0 || !self.has_upper {
            return Err(errno(libc::EBADF));
        }
        self.layer(f.real).write(
            ctx,
            f.real.ino,
            f.fh,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, _inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        let f = self.file(handle)?;
        self.layer(f.real).flush(ctx, f.real.ino, f.fh, lock_owner)
    }

    fn fsync(&self, ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let f = self.file(handle)?;
        self.layer(f.real).fsync(ctx, f.real.ino, datasync, f.fh)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let f = self.file(handle)?;
        if f.real.layer != 0 || !self.has_upper {
            return Err(errno(libc::EBADF));
        }
        self.layer(f.real)
            .fallocate(ctx, f.real.ino, f.fh, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        _inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let f = lock(&self.files)
            .remove(&handle)
            .ok_or_else(|| errno(libc::EBADF))?;
        self.layer(f.real).release(
            ctx,
            f.real.ino,
            flags,
            f.fh,
            flush,
            flock_release,
            lock_owner,
        )
    }

    fn statfs(&self, ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        self.layers[0].statfs(ctx, ROOT)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if private_xattr(name.to_bytes()) {
            return Err(errno(libc::EPERM));
        }
        let up = self.copy_up(&mut lock(&self.tree), inode)?;
        self.upper()?
            .setxattr(ctx, up.ino, &self.host_xattr(name), value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if private_xattr(name.to_bytes()) {
            return Err(errno(libc::ENODATA));
        }
        let r = self.top(inode)?;
        self.layer(r)
            .getxattr(ctx, r.ino, &self.host_xattr(name), size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let r = self.top(inode)?;
        let names = match self.layer(r).listxattr(ctx, r.ino, XATTR_MAX)? {
            ListxattrReply::Names(n) => n,
            ListxattrReply::Count(_) => Vec::new(),
        };
        let mut out = Vec::with_capacity(names.len());
        for n in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let shown = match n.strip_prefix(MAPPED_XATTRS) {
                Some(system) if self.mapped => system,
                _ if private_xattr(n) => continue,
                _ => n,
            };
            out.extend_from_slice(shown);
            out.push(0);
        }
        if size == 0 {
            Ok(ListxattrReply::Count(out.len() as u32))
        } else if out.len() > size as usize {
            Err(errno(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(out))
        }
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        if private_xattr(name.to_bytes()) {
            return Err(errno(libc::EPERM));
        }
        let up = self.copy_up(&mut lock(&self.tree), inode)?;
        self.upper()?
            .removexattr(ctx, up.ino, &self.host_xattr(name))
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        Self::dir_reals(&lock(&self.tree), inode)?;
        let h = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(h, None);
        Ok((Some(h), OpenOptions::empty()))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let items = self.listing(inode, handle, offset)?;
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let n = add_entry(DirEntry {
                ino: item.ino,
                offset: i as u64 + 1,
                type_: item.type_,
                name: item.name.to_bytes(),
            })?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let items = self.listing(inode, handle, offset)?;
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let entry = if item.name.as_bytes() == b"." || item.name.as_bytes() == b".." {
                // No attributes: the kernel then links nothing for it.
                Entry {
                    inode: 0,
                    generation: 0,
                    // SAFETY: stat64 is plain old data; all-zero is valid.
                    attr: unsafe { std::mem::zeroed() },
                    attr_flags: 0,
                    attr_timeout: Duration::ZERO,
                    entry_timeout: Duration::ZERO,
                }
            } else {
                // Changed since the listing was taken: skip it.
                let Ok(entry) = self.do_lookup(inode, &item.name) else {
                    continue;
                };
                entry
            };
            let d = DirEntry {
                ino: if entry.inode == 0 {
                    item.ino
                } else {
                    entry.inode
                },
                offset: i as u64 + 1,
                type_: item.type_,
                name: item.name.to_bytes(),
            };
            let id = entry.inode;
            let n = add_entry(d, entry)?;
            if n == 0 {
                if id != 0 {
                    self.forget(&ctx0(), id, 1);
                }
                break;
            }
        }
        Ok(())
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, _handle: u64) -> io::Result<()> {
        let r = self.top(inode)?;
        if r.layer != 0 || !self.has_upper {
            return Ok(());
        }
        let upper = self.upper()?;
        let (fh, _) = upper.opendir(ctx, r.ino, libc::O_RDONLY as u32)?;
        let fh = fh.unwrap_or(0);
        let res = upper.fsyncdir(ctx, r.ino, datasync, fh);
        let _ = upper.releasedir(ctx, r.ino, 0, fh);
        res
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        lock(&self.dirs).remove(&handle);
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let r = self.top(inode)?;
        self.layer(r).access(ctx, r.ino, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let f = self.file(handle)?;
        self.layer(f.real)
            .lseek(ctx, f.real.ino, f.fh, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        let f = self.file(handle)?;
        self.layer(f.real)
            .getlk(ctx, f.real.ino, f.fh, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        let f = self.file(handle)?;
        self.layer(f.real)
            .setlk(ctx, f.real.ino, f.fh, owner, lock, flags)
    }
}

impl LayeredFs {
    /// The listing behind an open directory, taken afresh when the guest
    /// (re)starts reading at offset 0.
    fn listing(&self, inode: u64, handle: u64, offset: u64) -> io::Result<Arc<Vec<DirItem>>> {
        if offset != 0 {
            if let Some(Some(items)) = lock(&self.dirs).get(&handle) {
                return Ok(items.clone());
            }
        }
        let items = {
            let mut t = lock(&self.tree);
            let dirs = Self::dir_reals(&t, inode)?;
            let parent = t
                .nodes
                .get(&inode)
                .and_then(|n| n.names.first())
                .map_or(ROOT, |(p, _)| *p);
            let dot = |name: &CStr, ino| DirItem {
                name: name.to_owned(),
                type_: libc::DT_DIR as u32,
                ino,
            };
            let mut items = vec![dot(c".", inode), dot(c"..", parent)];
            items.extend(self.list(&mut t, &dirs)?);
            Arc::new(items)
        };
        match lock(&self.dirs).get_mut(&handle) {
            Some(slot) => *slot = Some(items.clone()),
            None => return Err(errno(libc::EBADF)),
        }
        Ok(items)
    }
}
