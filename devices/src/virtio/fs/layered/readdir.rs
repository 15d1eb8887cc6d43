//! Merged directory listings: each layer directory's names, top-most first,
//! without duplicates, whiteouts or the upper's scratch names; taken when
//! the guest starts reading an open directory and kept for its later reads.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::{DirEntry, Entry, FileSystem};

use super::lookup::is_whiteout;
use super::refs::{ctx0, LayerHandle, Real};
use super::tree::{DirItem, Tree, COPYUP_PREFIX, INO_BITS, ROOT};
use super::{lock, no_inode_entry, LayeredFs};
use crate::virtio::fs::guard::errno;

impl LayeredFs {
    /// The merged listing of the directory whose layer directories are `dirs`.
    pub(super) fn list(&self, t: &mut Tree, dirs: &[Real]) -> io::Result<Vec<DirItem>> {
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut out = Vec::new();
        for &dir in dirs {
            let dev_i = t.dev_index(self.layer_dev[dir.layer]);
            for (name, type_, ino) in self.read_layer_dir(dir)? {
                if !seen.insert(name.clone()) {
                    continue;
                }
                if self.in_upper(dir) && name.starts_with(COPYUP_PREFIX) {
                    continue;
                }
                let cname = CString::new(name).map_err(|_| errno(libc::EINVAL))?;
                let mut type_ = type_;
                if type_ == libc::DT_CHR as u32 || type_ == libc::DT_UNKNOWN as u32 {
                    if let Some((_, st)) = self.layer_lookup(dir, &cname)? {
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
    pub(super) fn read_layer_dir(&self, dir: Real) -> io::Result<Vec<(Vec<u8>, u32, u64)>> {
        let layer = self.layer(dir);
        let (fh, _) = layer.opendir(&ctx0(), dir.ino, libc::O_RDONLY as u32)?;
        let handle = LayerHandle::dir(layer, dir.ino, fh);
        let mut raw = Vec::new();
        let mut offset = 0u64;
        loop {
            let before = raw.len();
            layer.readdir(&ctx0(), dir.ino, handle.fh(), 65536, offset, &mut |d| {
                raw.push((d.name.to_vec(), d.type_, d.ino));
                offset = d.offset;
                Ok(1)
            })?;
            if raw.len() == before {
                break;
            }
        }
        raw.retain(|(n, _, _)| n != b"." && n != b"..");
        Ok(raw)
    }

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
            let dirs = t.dir_reals(inode)?;
            let parent = t
                .nodes
                .get(&inode)
                .and_then(|n| n.names.first())
                .map_or(ROOT, |(p, _)| *p);
            let dot = |name: &std::ffi::CStr, ino| DirItem {
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

    /// An open directory's handle, whose listing is taken on first read.
    pub(super) fn open_dir(&self, inode: u64) -> io::Result<u64> {
        lock(&self.tree).dir_reals(inode)?;
        let h = self.next_handle();
        lock(&self.dirs).insert(h, None);
        Ok(h)
    }

    pub(super) fn do_readdir(
        &self,
        inode: u64,
        handle: u64,
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

    pub(super) fn do_readdirplus(
        &self,
        inode: u64,
        handle: u64,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let items = self.listing(inode, handle, offset)?;
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let entry = if item.name.as_bytes() == b"." || item.name.as_bytes() == b".." {
                // No attributes: the kernel then links nothing for it.
                no_inode_entry(Duration::ZERO)
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
                    self.forget_node(id, 1);
                }
                break;
            }
        }
        Ok(())
    }
}
