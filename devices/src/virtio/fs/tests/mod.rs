//! virtio-fs tests: a [`Harness`] that drives an [`Fs`] device through
//! `MockSplitQueue`s with hand-built FUSE messages, against temp directories.

mod device;
mod layered;
mod overlay;
mod refs;
mod share;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use fuse_backend_rs::api::Vfs;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Fs, QUEUE_SIZE};
use crate::virtio::{Interrupt, VirtioDevice};
use crate::GuestMemory;

pub(super) const W: u16 = VRING_DESC_F_WRITE as u16;
/// Request bytes go here (up to 1 MiB) ...
pub(super) const IN_BUF: u64 = 0x10_0000;
/// ... and replies here (up to 1 MiB + 4 KiB).
pub(super) const OUT_BUF: u64 = 0x20_0000;
pub(super) const OUT_LEN: u32 = 0x10_1000;
const MEM_SIZE: usize = 0x40_0000;
/// Where the two queues' rings live.
const HIPRIO_RING: u64 = 0;
const REQUEST_RING: u64 = 0x8_0000;

pub(super) const FUSE_ROOT: u64 = 1;

// FUSE opcodes (include/uapi/linux/fuse.h).
pub(super) const LOOKUP: u32 = 1;
pub(super) const FORGET: u32 = 2;
pub(super) const GETATTR: u32 = 3;
pub(super) const SETATTR: u32 = 4;
pub(super) const READLINK: u32 = 5;
pub(super) const SYMLINK: u32 = 6;
pub(super) const MKNOD: u32 = 8;
pub(super) const MKDIR: u32 = 9;
pub(super) const UNLINK: u32 = 10;
pub(super) const RENAME: u32 = 12;
pub(super) const LINK: u32 = 13;
pub(super) const OPEN: u32 = 14;
pub(super) const READ: u32 = 15;
pub(super) const WRITE: u32 = 16;
pub(super) const STATFS: u32 = 17;
pub(super) const SETXATTR: u32 = 21;
pub(super) const GETXATTR: u32 = 22;
pub(super) const INIT: u32 = 26;
pub(super) const OPENDIR: u32 = 27;
pub(super) const READDIR: u32 = 28;
pub(super) const CREATE: u32 = 35;
pub(super) const FALLOCATE: u32 = 43;

/// Every entry under `dir` (depth first, unsorted) with its metadata, and
/// its content if it is a regular file.
pub(super) fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let data = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                if m.is_dir() {
                    stack.push(p.clone());
                }
                Vec::new()
            };
            out.push((p, m, data));
        }
    }
    out
}

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "minivm-fs-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn test_mem() -> Arc<GuestMemory> {
    Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

pub(super) fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()))
}

/// A parsed FUSE reply.
#[derive(Debug)]
pub(super) struct Reply {
    /// Bytes the device reported in the used ring.
    pub used_len: u32,
    pub error: i32,
    pub unique: u64,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> &[u8] {
        assert_eq!(self.error, 0, "FUSE error {}", -self.error);
        &self.body
    }
}

pub(super) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

pub(super) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// `struct fuse_attr` fields we check, at `off` in a reply body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub mode: u32,
}

impl Attr {
    pub fn parse(b: &[u8], off: usize) -> Attr {
        Attr {
            ino: u64_at(b, off),
            size: u64_at(b, off + 8),
            blocks: u64_at(b, off + 16),
            mode: u32_at(b, off + 60),
        }
    }
}

/// `fuse_in_header` + body, with `len` = total length unless overridden.
pub(super) fn message(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    message_as(opcode, unique, nodeid, body, 0)
}

/// [`message`] sent by guest user and group `id`.
pub(super) fn message_as(opcode: u32, unique: u64, nodeid: u64, body: &[u8], id: u32) -> Vec<u8> {
    let len = 40 + body.len() as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&opcode.to_le_bytes());
    m.extend_from_slice(&unique.to_le_bytes());
    m.extend_from_slice(&nodeid.to_le_bytes());
    m.extend_from_slice(&id.to_le_bytes()); // uid
    m.extend_from_slice(&id.to_le_bytes()); // gid
    m.extend_from_slice(&1u32.to_le_bytes()); // pid
    m.extend_from_slice(&0u32.to_le_bytes()); // padding
    m.extend_from_slice(body);
    m
}

/// Concatenates little-endian fields and byte strings into a request body.
pub(super) fn body(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub(super) fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// An [`Fs`] device activated on two mock queues in `mem`.
pub(super) struct Harness<'m> {
    pub mem: &'m GuestMemory,
    pub fs: Fs,
    pub hiprio: MockSplitQueue<'m, GuestMemory>,
    pub req: MockSplitQueue<'m, GuestMemory>,
    pub irq: Arc<Interrupt>,
    /// Every reply byte the guest was ever given, for leak checks.
    pub transcript: Vec<u8>,
    next_desc: [u16; 2],
    unique: u64,
}

impl<'m> Harness<'m> {
    /// Activates a device serving `vfs` under tag "share".
    pub fn new(mem: &'m Arc<GuestMemory>, vfs: Arc<Vfs>) -> Harness<'m> {
        let m: &'m GuestMemory = mem;
        let hiprio = MockSplitQueue::create(m, GuestAddress(HIPRIO_RING), QUEUE_SIZE);
        let req = MockSplitQueue::create(m, GuestAddress(REQUEST_RING), QUEUE_SIZE);
        let mut fs = Fs::new(
            "share",
            vfs,
            sandbox::ThreadFilter::none(sandbox::ThreadKind::FsWorker),
        )
        .unwrap();
        let irq = interrupt();
        fs.activate(
            mem.clone(),
            vec![hiprio.create_queue().unwrap(), req.create_queue().unwrap()],
            irq.clone(),
        )
        .unwrap();
        Harness {
            mem: m,
            fs,
            hiprio,
            req,
            irq,
            transcript: Vec::new(),
            next_desc: [0, 0],
            unique: 0,
        }
    }

    /// Serves `root` read-write (or read-only) and completes FUSE_INIT.
    pub fn share(mem: &'m Arc<GuestMemory>, root: &Path, read_only: bool) -> Harness<'m> {
        let mut h = Harness::new(mem, super::passthrough(root, read_only).unwrap());
        h.init();
        h
    }

    fn queue(&self, q: usize) -> &MockSplitQueue<'m, GuestMemory> {
        if q == 0 {
            &self.hiprio
        } else {
            &self.req
        }
    }

    /// Adds a chain of `(addr, len, flags)` descriptors to queue `q`, notifies,
    /// waits for the worker, and returns the used length if the used ring
    /// advanced.
    pub fn chain(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> Option<u32> {
        let n = descs.len() as u16;
        if self.next_desc[q] + n >= QUEUE_SIZE {
            self.next_desc[q] = 0;
        }
        let first = self.next_desc[q];
        self.next_desc[q] += n;
        let raw = crate::virtio::mock::chain_descriptors(first, descs);
        let before = self.queue(q).used().idx().load();
        self.queue(q).add_desc_chains(&raw, first).unwrap();
        self.kick(q);
        let mq = self.queue(q);
        let after = mq.used().idx().load();
        if after == before {
            return None;
        }
        assert_eq!(after, before.wrapping_add(1), "one chain, one used entry");
        let e = mq
            .used()
            .ring()
            .ref_at(usize::from(before % QUEUE_SIZE))
            .unwrap()
            .load();
        assert_eq!(e.id(), u32::from(first), "used entry names the head");
        Some(e.len())
    }

    /// Notifies queue `q` and waits until the worker handled it.
    pub fn kick(&mut self, q: usize) {
        self.fs.process_queue(q);
        self.fs.wait_idle();
    }

    /// Sends raw request bytes on queue `q` with a reply buffer of `out_len`.
    pub fn raw(&mut self, q: usize, msg: &[u8], out_len: u32) -> Option<Reply> {
        self.mem.write_slice(msg, GuestAddress(IN_BUF)).unwrap();
        // Stale bytes must not pass for a reply.
        self.mem
            .write_slice(&[0xa5; 16], GuestAddress(OUT_BUF))
            .unwrap();
        let mut descs = vec![(IN_BUF, msg.len() as u32, 0)];
        if out_len > 0 {
            descs.push((OUT_BUF, out_len, W));
        }
        let used_len = self.chain(q, &descs)?;
        if used_len == 0 {
            return Some(Reply {
                used_len,
                error: 0,
                unique: 0,
                body: Vec::new(),
            });
        }
        let mut out = vec![0u8; used_len as usize];
        self.mem
            .read_slice(&mut out, GuestAddress(OUT_BUF))
            .unwrap();
        self.transcript.extend_from_slice(&out);
        let len = u32_at(&out, 0);
        assert_eq!(len, used_len, "out header len matches the used length");
        Some(Reply {
            used_len,
            error: u32_at(&out, 4) as i32,
            unique: u64_at(&out, 8),
            body: out[16..].to_vec(),
        })
    }

    /// Sends one request on the request queue and checks the reply's unique.
    pub fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let unique = self.unique;
        let r = self
            .raw(1, &message(opcode, unique, nodeid, body), OUT_LEN)
            .expect("used ring advanced");
        assert_eq!(r.unique, unique);
        r
    }

    pub fn init(&mut self) {
        // major 7, minor 38, max_readahead 128 KiB, flags: ASYNC_READ |
        // BIG_WRITES | DO_READDIRPLUS | MAX_PAGES.
        let flags: u32 = 1 | (1 << 5) | (1 << 13) | (1 << 22);
        let b = body(&[
            &7u32.to_le_bytes(),
            &38u32.to_le_bytes(),
            &0x2_0000u32.to_le_bytes(),
            &flags.to_le_bytes(),
        ]);
        let r = self.call(INIT, 0, &b);
        let out = r.ok();
        assert_eq!(u32_at(out, 0), 7, "FUSE major");
    }

    /// LOOKUP: `Ok((nodeid, attr))` or the negative errno; a negative
    /// entry (nodeid 0) is ENOENT, as the kernel reads it.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<(u64, Attr), i32> {
        let r = self.call(LOOKUP, parent, &cstr(name));
        if r.error != 0 {
            return Err(-r.error);
        }
        let b = &r.body;
        match u64_at(b, 0) {
            0 => Err(libc::ENOENT),
            node => Ok((node, Attr::parse(b, 40))),
        }
    }

    pub fn getattr(&mut self, node: u64) -> Result<Attr, i32> {
        let r = self.call(GETATTR, node, &[0u8; 16]);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(Attr::parse(&r.body, 16))
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        self.open_op(OPEN, node, flags)
    }

    fn open_op(&mut self, op: u32, node: u64, flags: i32) -> Result<u64, i32> {
        let b = body(&[&(flags as u32).to_le_bytes(), &0u32.to_le_bytes()]);
        let r = self.call(op, node, &b);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(u64_at(&r.body, 0))
    }

    fn read_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
        body(&[
            &fh.to_le_bytes(),
            &offset.to_le_bytes(),
            &size.to_le_bytes(),
            &0u32.to_le_bytes(),
            &0u64.to_le_bytes(),
            &0u32.to_le_bytes(),
            &0u32.to_le_bytes(),
        ])
    }

    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let r = self.call(READ, node, &Self::read_in(fh, offset, size));
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(r.body)
    }

    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let b = body(&[
            &fh.to_le_bytes(),
            &offset.to_le_bytes(),
            &(data.len() as u32).to_le_bytes(),
            &0u32.to_le_bytes(),
            &0u64.to_le_bytes(),
            &0u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            data,
        ]);
        let r = self.call(WRITE, node, &b);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(u32_at(&r.body, 0))
    }

    /// CREATE: `Ok((nodeid, fh))`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: i32,
        mode: u32,
    ) -> Result<(u64, u64), i32> {
        let b = body(&[
            &(flags as u32).to_le_bytes(),
            &mode.to_le_bytes(),
            &0o022u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &cstr(name),
        ]);
        let r = self.call(CREATE, parent, &b);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok((u64_at(&r.body, 0), u64_at(&r.body, 128)))
    }

    pub fn mkdir(&mut self, parent: u64, name: &str) -> Result<u64, i32> {
        let b = body(&[&0o755u32.to_le_bytes(), &0u32.to_le_bytes(), &cstr(name)]);
        let r = self.call(MKDIR, parent, &b);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(u64_at(&r.body, 0))
    }

    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        let r = self.call(UNLINK, parent, &cstr(name));
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(())
    }

    /// SETATTR of the size only (a truncate).
    pub fn truncate(&mut self, node: u64, size: u64) -> Result<Attr, i32> {
        let mut b = vec![0u8; 88];
        b[0..4].copy_from_slice(&(1u32 << 3).to_le_bytes()); // FATTR_SIZE
        b[16..24].copy_from_slice(&size.to_le_bytes());
        let r = self.call(SETATTR, node, &b);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(Attr::parse(&r.body, 16))
    }

    pub fn readlink(&mut self, node: u64) -> Result<Vec<u8>, i32> {
        let r = self.call(READLINK, node, &[]);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(r.body)
    }

    /// Names in directory `node` (OPENDIR + READDIR, one buffer).
    pub fn readdir(&mut self, node: u64) -> Result<Vec<String>, i32> {
        let fh = self.open_op(OPENDIR, node, libc::O_RDONLY)?;
        let r = self.call(READDIR, node, &Self::read_in(fh, 0, 4096));
        if r.error != 0 {
            return Err(-r.error);
        }
        let mut names = Vec::new();
        let b = &r.body;
        let mut off = 0;
        while off + 24 <= b.len() {
            let namelen = u32_at(b, off + 16) as usize;
            names.push(String::from_utf8_lossy(&b[off + 24..off + 24 + namelen]).into_owned());
            off += (24 + namelen).div_ceil(8) * 8;
        }
        names.sort();
        Ok(names)
    }

    /// STATFS: (blocks, bfree, bavail, frsize).
    pub fn statfs(&mut self) -> (u64, u64, u64, u32) {
        let r = self.call(STATFS, FUSE_ROOT, &[]);
        let b = r.ok();
        (u64_at(b, 0), u64_at(b, 8), u64_at(b, 16), u32_at(b, 48))
    }
}
