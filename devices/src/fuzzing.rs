//! Entry points of the fuzz targets in `fuzz/` (built with the `fuzzing`
//! feature). The unit tests below replay the corpus and the saved crash
//! inputs kept in `fuzz/`, so every input found once stays a test.
//!
//! Each entry plays a hostile driver: it takes arbitrary bytes, must not
//! panic the device model, and checks that nothing outside the device's own
//! backing (disk file, shared tree) changed.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;
use crate::virtio::block::{Block, QUEUE_SIZE as BLK_QUEUE_SIZE};
use crate::virtio::fs::{disk_cap, drain_queue, overlay, FsStats, FuseServer};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::{Interrupt, VirtioDevice};
use crate::GuestMemory;

/// Guest memory of every target: rings, then buffers.
const MEM_SIZE: usize = 0x2_0000;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x4000;
const USED_RING: u64 = 0x5000;
/// Request and reply buffers start here.
const BUFFERS: u64 = 0x8000;
/// The disk behind virtio-blk: 64 KiB of a known pattern.
const DISK_LEN: u64 = 0x1_0000;

fn memory() -> Arc<GuestMemory> {
    let ranges = [(GuestAddress(0), MEM_SIZE)];
    Arc::new(GuestMemoryMmap::<()>::from_ranges(&ranges).expect("guest memory"))
}

fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")))
}

/// This process's scratch directory `name` (under the temp dir, per pid;
/// directories of ended processes are removed on first use).
fn scratch(name: &str) -> PathBuf {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    let base = ONCE.get_or_init(|| {
        let tmp = std::env::temp_dir();
        for e in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let n = e.file_name();
            let pid = n.to_str().and_then(|n| n.strip_prefix("minivm-devfuzz-"));
            let pid = pid.and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new("/proc").join(p.to_string()).exists()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        tmp.join(format!("minivm-devfuzz-{}", std::process::id()))
    });
    let p = base.join(name);
    fs::create_dir_all(&p).expect("scratch directory");
    p
}

/// A fresh disk file of [`DISK_LEN`] bytes, each byte its offset's low bits.
fn disk(name: &str) -> File {
    let path = scratch("disk").join(name);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("scratch disk");
    let pattern: Vec<u8> = (0..DISK_LEN).map(|i| i as u8).collect();
    f.write_all_at(&pattern, 0).expect("scratch disk");
    f
}

fn check_disk_len(f: &File) {
    let len = f.metadata().expect("disk metadata").len();
    assert_eq!(len, DISK_LEN, "a guest request changed the disk's size");
}

/// Little-endian fields read off the input; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let n = N.min(self.0.len());
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        b
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The virtio-mmio register interface of a virtio-blk device, driven by a
/// stream of 7-byte operations: `kind: u8, offset: u16, value: u32`.
/// `kind % 4`: 0 reads and 1 writes a register (access size `1 << (kind >>
/// 2 & 3)` bytes, offset within the 0x200-byte window, config included);
/// 2 stores `value` in guest memory at `offset * 4` (to build rings and
/// requests); 3 rings queue `offset`'s doorbell through the event path.
pub fn virtio_mmio_blk(data: &[u8]) {
    let mem = memory();
    let disk_file = disk("mmio");
    let blk = Block::new(disk_file.try_clone().expect("dup disk"), false, "fuzz").expect("block");
    let mut t = MmioTransport::new(Box::new(blk), mem.clone(), interrupt()).expect("transport");
    let mut input = Input(data);
    while !input.is_empty() {
        let kind = input.u8();
        let offset = input.u16();
        let value = input.u32().to_le_bytes();
        let size = 1usize << ((kind >> 2) & 3);
        let reg = u64::from(offset) % 0x200;
        match kind % 4 {
            0 => {
                let mut buf = [0u8; 8];
                t.read(reg, &mut buf[..size]);
            }
            1 => t.write(reg, &[value, value].concat()[..size]),
            2 => {
                let addr = GuestAddress(u64::from(offset) * 4);
                let _ = mem.write_slice(&value, addr);
            }
            _ => {
                let idx = usize::from(offset % 2);
                if let Some(evt) = t.queue_events().get(idx) {
                    let _ = evt.write(1);
                }
                t.process_queue_event(idx);
            }
        }
    }
    check_disk_len(&disk_file);
}

/// Descriptor chains into virtio-blk, the device already activated with a
/// 256-entry queue. Input: `n: u8` descriptors of `addr: u16, len: u16,
/// flags: u16, next: u16` (addr is an offset into the buffer area), then
/// `m: u8` avail entries of `head: u16`, then bytes for the buffer area
/// (request headers, data). The queue is served twice (a second kick after
/// the first drain must find nothing new or the same ring state).
pub fn blk_chains(data: &[u8]) {
    let mem = memory();
    let mut input = Input(data);
    let n = input.u8();
    for i in 0..u64::from(n) {
        let addr = BUFFERS + u64::from(input.u16());
        let (len, flags, next) = (input.u16(), input.u16(), input.u16());
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&u32::from(len).to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(DESC_TABLE + 16 * i))
            .expect("descriptor table");
    }
    let m = input.u8();
    for i in 0..u64::from(m) {
        let head = input.u16();
        mem.write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * i))
            .expect("avail ring");
    }
    mem.write_obj(u16::from(m), GuestAddress(AVAIL_RING + 2))
        .expect("avail idx");
    let rest = input.take(MEM_SIZE - BUFFERS as usize);
    mem.write_slice(rest, GuestAddress(BUFFERS))
        .expect("buffers");

    let disk_file = disk("chains");
    let mut blk =
        Block::new(disk_file.try_clone().expect("dup disk"), false, "fuzz").expect("block");
    let q = ring_queue(BLK_QUEUE_SIZE);
    blk.activate(mem.clone(), vec![q], interrupt())
        .expect("activate");
    blk.process_queue(0);
    let used: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx");
    assert!(
        used <= u16::from(m),
        "more chains used ({used}) than offered ({m})"
    );
    blk.process_queue(0);
    check_disk_len(&disk_file);
}

/// A ready split queue of `size` entries at the fixed ring addresses.
fn ring_queue(size: u16) -> Queue {
    let mut q = Queue::new(size).expect("queue size");
    q.set_size(size);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_ready(true);
    q
}

/// FUSE requests, each sent the way the guest kernel sends it: a chain of
/// one readable buffer (the message; two when split) and one writable one.
struct FuseDriver {
    mem: Arc<GuestMemory>,
    queue: Queue,
    server: FuseServer,
    stats: FsStats,
    sent: u16,
}

/// Queue size of the fuzzed FUSE queue (a ring of chains the driver reuses).
const FUSE_QUEUE: u16 = 16;
/// Where a request goes and where its reply may be written.
const REQUEST: u64 = BUFFERS;
const REPLY: u64 = 0x1_4000;
const REPLY_LEN: u32 = (MEM_SIZE as u64 - REPLY) as u32;

impl FuseDriver {
    fn new(vfs: Arc<fuse_backend_rs::api::Vfs>) -> FuseDriver {
        let mut d = FuseDriver {
            mem: memory(),
            queue: ring_queue(FUSE_QUEUE),
            server: FuseServer::new(vfs),
            stats: FsStats::default(),
            sent: 0,
        };
        // major 7, minor 38, 128 KiB readahead, ASYNC_READ | BIG_WRITES |
        // DO_READDIRPLUS | MAX_PAGES: what the guest kernel asks.
        let flags: u32 = 1 | (1 << 5) | (1 << 13) | (1 << 22);
        let init: Vec<u8> = [7u32, 38, 0x2_0000, flags]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        d.send(26, 0, &init, 0);
        let error: i32 = d.mem.read_obj(GuestAddress(REPLY + 4)).expect("reply");
        assert_eq!(error, 0, "FUSE_INIT failed");
        d
    }

    /// Sends one request; `shape` bit 0 gives it a 64-byte reply buffer,
    /// bit 1 splits the message over two readable descriptors.
    fn send(&mut self, opcode: u32, nodeid: u64, body: &[u8], shape: u8) {
        let len = 40 + body.len() as u32;
        let mut msg = Vec::with_capacity(len as usize);
        for f in [len, opcode] {
            msg.extend_from_slice(&f.to_le_bytes());
        }
        for f in [u64::from(self.sent), nodeid] {
            msg.extend_from_slice(&f.to_le_bytes());
        }
        for f in [0u32, 0, 1, 0] {
            msg.extend_from_slice(&f.to_le_bytes()); // uid, gid, pid, padding
        }
        msg.extend_from_slice(body);
        let msg = &msg[..msg.len().min((REPLY - REQUEST) as usize)];
        self.mem
            .write_slice(msg, GuestAddress(REQUEST))
            .expect("request buffer");
        let reply_len = if shape & 1 == 1 { 64 } else { REPLY_LEN };
        let half = msg.len() as u32 / 2;
        let readable: &[(u64, u32)] = if shape & 2 == 2 {
            &[
                (REQUEST, half),
                (REQUEST + u64::from(half), msg.len() as u32 - half),
            ]
        } else {
            &[(REQUEST, msg.len() as u32)]
        };
        let mut descs: Vec<(u64, u32, u16)> = readable.iter().map(|&(a, l)| (a, l, 0)).collect();
        descs.push((REPLY, reply_len, 2)); // VRING_DESC_F_WRITE
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | 1 }; // VRING_DESC_F_NEXT
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&(i as u16 + 1).to_le_bytes());
            self.mem
                .write_slice(&d, GuestAddress(DESC_TABLE + 16 * i as u64))
                .expect("descriptor");
        }
        let slot = AVAIL_RING + 4 + 2 * u64::from(self.sent % FUSE_QUEUE);
        self.mem.write_obj(0u16, GuestAddress(slot)).expect("avail");
        self.sent = self.sent.wrapping_add(1);
        self.mem
            .write_obj(self.sent, GuestAddress(AVAIL_RING + 2))
            .expect("avail idx");
        let mut used = false;
        drain_queue(
            &mut self.queue,
            &self.mem,
            &self.server,
            &self.stats,
            &mut used,
        )
        .expect("a well-formed ring");
        assert!(used, "FUSE request {opcode} was not completed");
    }

    /// Runs the records of `data`: `body_len: u16, opcode: u8, node: u8,
    /// shape: u8, body` (see [`FuseDriver::send`] for `shape`). Node ids of
    /// the served file system are `1 << 56 | ino` (fuse-backend-rs's Vfs
    /// numbering): `node` < 0x80 names `1 << 56 | node`, and `node` >= 0x80
    /// the raw id `node & 0x7f` (1 is the root, 0 nothing).
    fn run(&mut self, data: &[u8]) {
        let mut input = Input(data);
        while !input.is_empty() {
            let body_len = usize::from(input.u16());
            let opcode = u32::from(input.u8());
            let node = input.u8();
            let nodeid = match node {
                0..0x80 => 1 << 56 | u64::from(node),
                _ => u64::from(node & 0x7f),
            };
            let shape = input.u8();
            let body = input.take(body_len).to_vec();
            self.send(opcode, nodeid, &body, shape);
        }
    }
}

/// A small tree to serve: files, a directory, a symlink out of the share
/// (data to the host, never followed), a FIFO.
fn populate(dir: &Path) {
    fs::create_dir_all(dir.join("d/e")).expect("tree");
    fs::write(dir.join("a"), b"alpha\n").expect("tree");
    fs::write(dir.join("d/b"), vec![b'b'; 5000]).expect("tree");
    std::os::unix::fs::symlink("../outside/x", dir.join("up")).expect("tree");
    std::os::unix::fs::symlink("/etc/passwd", dir.join("abs")).expect("tree");
    let fifo =
        std::ffi::CString::new(dir.join("p").into_os_string().into_encoded_bytes()).expect("path");
    // SAFETY: a NUL-terminated path; mkfifo only creates a node.
    unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
}

/// The scratch tree `name`: `share/` (what is served, rebuilt per input),
/// `outside/` and a canary beside it, which no request may touch.
struct ShareScratch {
    root: PathBuf,
}

const CANARY: &[u8] = b"minivm fuzz canary\n";

impl ShareScratch {
    fn new(name: &str) -> ShareScratch {
        let root = scratch(name);
        for d in ["share", "outside"] {
            let p = root.join(d);
            make_removable(&p);
            let _ = fs::remove_dir_all(&p);
            fs::create_dir(&p).expect("scratch");
        }
        fs::write(root.join("canary"), CANARY).expect("canary");
        ShareScratch { root }
    }

    fn check(&self, extra: &[&str]) {
        let canary = fs::read(self.root.join("canary")).ok();
        assert_eq!(canary.as_deref(), Some(CANARY), "the canary changed");
        let outside = fs::read_dir(self.root.join("outside"))
            .expect("outside")
            .count();
        assert_eq!(outside, 0, "a request wrote outside the share");
        let mut names: Vec<String> = fs::read_dir(&self.root)
            .expect("scratch")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = ["canary", "outside", "share"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        want.sort();
        assert_eq!(names, want, "a request created an entry beside the share");
    }
}

/// Gives the owner full access to every directory under `p`, so a tree the
/// guest chmod'ed to 000 can be removed.
fn make_removable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(p) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
        for e in fs::read_dir(p).into_iter().flatten().flatten() {
            make_removable(&e.path());
        }
    }
}

/// Serializes the FUSE targets within a process: they share scratch trees.
static FUSE_LOCK: Mutex<()> = Mutex::new(());

/// FUSE messages into the virtio-fs server sharing a host directory
/// (GuardFs over fuse-backend-rs's passthrough, writable, 1 MiB cap), after
/// the guest kernel's FUSE_INIT. Records as in [`FuseDriver::run`].
pub fn fuse_passthrough(data: &[u8]) {
    let _lock = FUSE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let s = ShareScratch::new("passthrough");
    populate(&s.root.join("share"));
    let vfs = disk_cap(&s.root.join("share"), 1 << 20).expect("share");
    FuseDriver::new(vfs).run(data);
    s.check(&[]);
}

/// FUSE messages into the layered file system (two read-only lower layers,
/// a writable upper, 1 MiB cap) that serves an OCI image over virtio-fs.
/// Records as in [`FuseDriver::run`]; the lower layers must come out
/// unchanged.
pub fn fuse_layered(data: &[u8]) {
    let _lock = FUSE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let s = ShareScratch::new("layered");
    let lowers = [s.root.join("lower0"), s.root.join("lower1")];
    if !lowers[1].join("a").exists() {
        for l in &lowers {
            make_removable(l);
            let _ = fs::remove_dir_all(l);
        }
        populate(&lowers[0]);
        fs::create_dir_all(lowers[1].join("d")).expect("lower");
        fs::write(lowers[1].join("a"), b"upper a\n").expect("lower");
        fs::write(lowers[1].join("d/.wh.b"), b"").expect("lower");
    }
    let before = tree_digest(&s.root.join("lower0")) ^ tree_digest(&s.root.join("lower1"));
    let vfs = overlay(&lowers, Some(&s.root.join("share")), Some(1 << 20)).expect("overlay");
    FuseDriver::new(vfs).run(data);
    s.check(&["lower0", "lower1"]);
    let after = tree_digest(&s.root.join("lower0")) ^ tree_digest(&s.root.join("lower1"));
    assert_eq!(before, after, "a lower layer changed");
}

/// A cheap fingerprint of a tree: names, modes, sizes, mtimes and contents.
fn tree_digest(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d).into_iter().flatten().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            (p.as_os_str(), m.mode(), m.size(), m.mtime(), m.nlink()).hash(&mut h);
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                fs::read(&p).ok().hash(&mut h);
            }
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use testkit::replay_fuzz_inputs as replay;

    #[test]
    fn virtio_mmio_blk_corpus() {
        replay("virtio_mmio_blk", super::virtio_mmio_blk);
    }

    #[test]
    fn blk_chains_corpus() {
        replay("blk_chains", super::blk_chains);
    }

    #[test]
    fn fuse_passthrough_corpus() {
        replay("fuse_passthrough", super::fuse_passthrough);
    }

    #[test]
    fn fuse_layered_corpus() {
        replay("fuse_layered", super::fuse_layered);
    }

    /// The escape oracle works: an entry beside the share is caught.
    #[test]
    #[should_panic(expected = "wrote outside the share")]
    fn share_check_catches_writes_outside() {
        let s = super::ShareScratch::new("oracle");
        std::fs::write(s.root.join("outside/x"), b"x").unwrap();
        s.check(&[]);
    }
}
