//! virtio-blk request handling: parse one descriptor chain, run it against the
//! disk image, and report the status.
//!
//! The guest controls every byte of a chain, so parsing assumes nothing: the
//! descriptor walk is virtio-queue's (bounded by the queue size, with loop and
//! index checks), every length and sector is checked with checked arithmetic,
//! and all guest memory is reached through vm-memory's checked accessors.

use super::backend::Backend;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestMemory as _, VolatileMemoryError};

use crate::GuestMemory;

/// Bytes per virtio-blk sector; capacity and request offsets count in these.
pub const SECTOR_SIZE: u64 = 512;
/// Data descriptors per request we advertise (and enforce) through `seg_max`.
pub const SEG_MAX: u32 = 126;
/// Header, data segments and status.
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// `struct virtio_blk_outhdr`: le32 type, le32 reserved (ioprio), le64 sector.
const HEADER_LEN: u32 = 16;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// The backing image as requests see it.
pub struct Disk {
    backend: Backend,
    /// Size in bytes, rounded down to whole sectors.
    size: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Wraps storage of `size` bytes (already a multiple of [`SECTOR_SIZE`]).
    pub fn new(backend: Backend, size: u64, read_only: bool, id: [u8; ID_BYTES]) -> Self {
        Disk {
            backend,
            size,
            read_only,
            id,
        }
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// The storage, for a snapshot of its contents.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

/// Why a request failed; only logged, the guest sees a status byte.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("chain has {0} descriptors, fewer than header + status")]
    TooShort(usize),
    #[error("header descriptor is write-only or shorter than 16 bytes")]
    BadHeader,
    #[error("reading the request header: {0}")]
    Header(vm_memory::GuestMemoryError),
    #[error("data descriptor has the wrong direction for request type {0}")]
    DataDirection(u32),
    #[error("data buffer {addr:#x}+{len:#x} is not in guest memory")]
    DataOutOfMemory { addr: u64, len: u32 },
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    #[error("sectors {sector}+{len} bytes run past the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("disk I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("guest memory I/O: {0}")]
    Volatile(#[from] VolatileMemoryError),
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

impl Error {
    fn status(&self) -> u8 {
        match self {
            Error::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            t => RequestType::Unsupported(t),
        }
    }
}

/// A parsed request whose data buffers are known to lie in guest memory.
struct Request<'d> {
    kind: RequestType,
    sector: u64,
    data: &'d [Descriptor],
    data_len: u64,
}

impl<'d> Request<'d> {
    /// Parses the header and data part of a chain (`descs` without the status).
    fn parse(mem: &GuestMemory, descs: &'d [Descriptor]) -> Result<Self, Error> {
        let Some((header, data)) = descs.split_first() else {
            return Err(Error::TooShort(descs.len() + 1));
        };
        if header.is_write_only() || header.len() < HEADER_LEN {
            return Err(Error::BadHeader);
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        mem.read_slice(&mut raw, header.addr())
            .map_err(Error::Header)?;
        let type_ = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let kind = RequestType::from(type_);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&raw[8..16]);
        let sector = u64::from_le_bytes(sector);

        if let RequestType::Unsupported(t) = kind {
            return Err(Error::Unsupported(t));
        }
        // IN and GET_ID fill guest buffers; OUT (and FLUSH, which has none) reads them.
        let device_writes = matches!(kind, RequestType::In | RequestType::GetId);
        let mut data_len = 0u64;
        for d in data {
            if d.is_write_only() != device_writes {
                return Err(Error::DataDirection(type_));
            }
            if !mem.check_range(d.addr(), d.len() as usize) {
                return Err(Error::DataOutOfMemory {
                    addr: d.addr().raw_value(),
                    len: d.len(),
                });
            }
            // Cannot overflow: virtio-queue caps a chain at 2^32 bytes.
            data_len += u64::from(d.len());
        }
        Ok(Request {
            kind,
            sector,
            data,
            data_len,
        })
    }

    /// Checks that the transfer lies within the disk and returns its byte offset.
    fn disk_offset(&self, disk: &Disk) -> Result<u64, Error> {
        // A mask, not `%`: clippy wants is_multiple_of, which is newer than our MSRV 1.85.
        if self.data_len & (SECTOR_SIZE - 1) != 0 {
            return Err(Error::UnalignedLength(self.data_len));
        }
        let out_of_range = Error::OutOfRange {
            sector: self.sector,
            len: self.data_len,
        };
        let Some(offset) = self.sector.checked_mul(SECTOR_SIZE) else {
            return Err(out_of_range);
        };
        match offset.checked_add(self.data_len) {
            Some(end) if end <= disk.size => Ok(offset),
            _ => Err(out_of_range),
        }
    }

    /// Runs the request; returns the number of bytes written into guest buffers.
    fn execute(&self, mem: &GuestMemory, disk: &mut Disk) -> Result<u32, Error> {
        match self.kind {
            RequestType::In => {
                let mut offset = self.disk_offset(disk)?;
                for d in self.data {
                    for slice in mem.get_slices(d.addr(), d.len() as usize) {
                        let slice = slice?;
                        disk.backend.read_into(slice, offset)?;
                        offset += slice.len() as u64;
                    }
                }
                // At most 2^32 - 512: a multiple of 512 within a chain capped at 2^32 bytes.
                Ok(u32::try_from(self.data_len).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if disk.read_only {
                    return Err(Error::ReadOnly);
                }
                let mut offset = self.disk_offset(disk)?;
                for d in self.data {
                    for slice in mem.get_slices(d.addr(), d.len() as usize) {
                        let slice = slice?;
                        disk.backend.write_from(slice, offset)?;
                        offset += slice.len() as u64;
                    }
                }
                Ok(0)
            }
            RequestType::Flush => {
                disk.backend.flush()?;
                Ok(0)
            }
            RequestType::GetId => {
                let mut id: &[u8] = &disk.id;
                for d in self.data {
                    if id.is_empty() {
                        break;
                    }
                    let n = id.len().min(d.len() as usize);
                    mem.write_slice(&id[..n], d.addr())?;
                    id = &id[n..];
                }
                Ok((ID_BYTES - id.len()) as u32)
            }
            RequestType::Unsupported(t) => Err(Error::Unsupported(t)),
        }
    }
}

/// Serves one chain and returns `(head index, used length)` for the used ring.
///
/// The used length counts bytes written into the guest, status byte included.
/// A chain without a usable status descriptor (device-writable, non-empty, in
/// guest memory, at the real end of the chain) gets used length 0 and no reply.
pub fn process_chain(chain: DescriptorChain<&GuestMemory>, disk: &mut Disk) -> (u16, u32) {
    let head = chain.head_index();
    let mem = chain.memory();
    // One more than allowed, to tell "too long" from "just long enough".
    let descs: Vec<Descriptor> = chain.clone().take(MAX_DESCRIPTORS + 1).collect();

    let Some((status, rest)) = descs.split_last() else {
        crate::guest_warn!("virtio-blk: chain {head} is empty (bad head or table); dropped");
        return (head, 0);
    };
    if descs.len() > MAX_DESCRIPTORS {
        crate::guest_warn!(
            "virtio-blk: chain {head} exceeds {MAX_DESCRIPTORS} descriptors; dropped"
        );
        return (head, 0);
    }
    // A NEXT flag on the last descriptor means virtio-queue stopped the walk
    // early (a loop, a bad next index or unreadable table): the end is unknown.
    if status.has_next() {
        crate::guest_warn!("virtio-blk: chain {head} is looped or broken; dropped");
        return (head, 0);
    }
    if !status.is_write_only() || status.len() == 0 {
        crate::guest_warn!("virtio-blk: chain {head} has no writable status descriptor; dropped");
        return (head, 0);
    }

    let result = if rest.is_empty() {
        Err(Error::TooShort(descs.len()))
    } else {
        Request::parse(mem, rest).and_then(|req| req.execute(mem, disk))
    };
    let (code, written) = match result {
        Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
        Err(e) => {
            crate::guest_warn!("virtio-blk: request {head} failed: {e}");
            // Partially filled buffers count as garbage: report only the status.
            (e.status(), 0)
        }
    };
    if let Err(e) = mem.write_obj(code, status.addr()) {
        crate::guest_warn!("virtio-blk: chain {head}: status byte not writable ({e}); dropped");
        return (head, 0);
    }
    (head, written.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::tests::{
        raw_descs, temp_image, TestMem, DATA, HDR, QUEUE_SIZE, STATUS,
    };
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::GuestAddress;

    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn disk(img: &[u8], read_only: bool) -> (Disk, std::path::PathBuf) {
        let (file, path) = temp_image(img);
        let id = *b"minivm-test-serial-0";
        (
            Disk::new(
                crate::virtio::block::backend::Backend::Raw(file),
                img.len() as u64 / 512 * 512,
                read_only,
                id,
            ),
            path,
        )
    }

    /// Runs one chain built from `(addr, len, flags)` and returns (used len, status byte).
    fn run(t: &TestMem, disk: &mut Disk, descs: &[(u64, u32, u16)]) -> (u32, u8) {
        let mq = MockSplitQueue::new(&*t.mem, QUEUE_SIZE);
        let chain = mq.build_desc_chain(&raw_descs(descs)).expect("chain");
        let (head, len) = process_chain(chain, disk);
        assert_eq!(head, 0);
        (len, t.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
    }

    /// Runs descriptors `(addr, len, flags, next)` with NEXT set on all of them.
    fn run_raw(t: &TestMem, disk: &mut Disk, descs: &[(u64, u32, u16, u16)]) -> (u16, u32) {
        let mq = MockSplitQueue::new(&*t.mem, QUEUE_SIZE);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, f, n)| SplitDescriptor::new(a, l, f | VRING_DESC_F_NEXT as u16, n).into())
            .collect();
        mq.add_desc_chains(&raw, 0).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        let chain = q.iter(&*t.mem).unwrap().next().expect("chain");
        process_chain(chain, disk)
    }

    #[test]
    fn read_write_flush_getid() {
        let img: Vec<u8> = (0..4096u32).map(|i| (i / 512) as u8 + 1).collect();
        let (mut d, path) = disk(&img, false);
        let t = TestMem::new();

        t.header(VIRTIO_BLK_T_IN, 2);
        let (len, st) = run(&t, &mut d, &[(HDR, 16, 0), (DATA, 1024, W), (STATUS, 1, W)]);
        assert_eq!((len, st), (1025, VIRTIO_BLK_S_OK as u8));
        let mut buf = vec![0u8; 1024];
        t.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert_eq!(&buf[..], &img[1024..2048]);

        t.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        t.header(VIRTIO_BLK_T_OUT, 7);
        let (len, st) = run(&t, &mut d, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]);
        assert_eq!((len, st), (1, VIRTIO_BLK_S_OK as u8));
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[3584..], &[0xab; 512][..]);
        assert_eq!(&on_disk[..3584], &img[..3584]);

        t.header(VIRTIO_BLK_T_FLUSH, 0);
        let (len, st) = run(&t, &mut d, &[(HDR, 16, 0), (STATUS, 1, W)]);
        assert_eq!((len, st), (1, VIRTIO_BLK_S_OK as u8));

        t.header(VIRTIO_BLK_T_GET_ID, 0);
        let (len, st) = run(
            &t,
            &mut d,
            &[
                (HDR, 16, 0),
                (DATA, 8, W),
                (DATA + 8, 64, W),
                (STATUS, 1, W),
            ],
        );
        assert_eq!((len, st), (21, VIRTIO_BLK_S_OK as u8));
        let mut id = [0u8; 20];
        t.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"minivm-test-serial-0");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn multi_segment_read_spans_descriptors() {
        let img: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
        let (mut d, path) = disk(&img, false);
        let t = TestMem::new();
        t.header(VIRTIO_BLK_T_IN, 0);
        // 100 + 924 bytes: each segment need not be sector sized, only the total.
        let (len, st) = run(
            &t,
            &mut d,
            &[
                (HDR, 16, 0),
                (DATA, 100, W),
                (DATA + 0x1000, 924, W),
                (STATUS, 1, W),
            ],
        );
        assert_eq!((len, st), (1025, VIRTIO_BLK_S_OK as u8));
        let mut a = vec![0u8; 100];
        let mut b = vec![0u8; 924];
        t.mem.read_slice(&mut a, GuestAddress(DATA)).unwrap();
        t.mem
            .read_slice(&mut b, GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(&a[..], &img[..100]);
        assert_eq!(&b[..], &img[100..1024]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn errors_get_a_status() {
        let img = vec![7u8; 2048 + 100]; // capacity rounds down to 4 sectors
        let (mut d, path) = disk(&img, true);
        let t = TestMem::new();
        let ioerr = VIRTIO_BLK_S_IOERR as u8;

        // Write to a read-only disk: IOERR and the file is untouched.
        t.header(VIRTIO_BLK_T_OUT, 0);
        t.mem.write_slice(&[1u8; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]),
            (1, ioerr)
        );
        assert_eq!(std::fs::read(&path).unwrap(), img);

        t.header(12345, 0);
        let unsupp = VIRTIO_BLK_S_UNSUPP as u8;
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (STATUS, 1, W)]),
            (1, unsupp)
        );

        // The last sector is readable, one past it is not, nor is a wrapping sector.
        t.header(VIRTIO_BLK_T_IN, 3);
        let ok = VIRTIO_BLK_S_OK as u8;
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]),
            (513, ok)
        );
        t.header(VIRTIO_BLK_T_IN, 4);
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]),
            (1, ioerr)
        );
        t.header(VIRTIO_BLK_T_IN, 3);
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (DATA, 1024, W), (STATUS, 1, W)]),
            (1, ioerr)
        );
        t.header(VIRTIO_BLK_T_IN, u64::MAX / 256);
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]),
            (1, ioerr)
        );

        // Unaligned length, wrong direction, header problems, buffer outside memory.
        t.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (DATA, 511, W), (STATUS, 1, W)]),
            (1, ioerr)
        );
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]),
            (1, ioerr)
        );
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, W), (DATA, 512, W), (STATUS, 1, W)]),
            (1, ioerr)
        );
        assert_eq!(
            run(&t, &mut d, &[(HDR, 8, 0), (DATA, 512, W), (STATUS, 1, W)]),
            (1, ioerr)
        );
        assert_eq!(
            run(
                &t,
                &mut d,
                &[(1 << 40, 16, 0), (DATA, 512, W), (STATUS, 1, W)]
            ),
            (1, ioerr)
        );
        assert_eq!(
            run(
                &t,
                &mut d,
                &[(HDR, 16, 0), (1 << 40, 512, W), (STATUS, 1, W)]
            ),
            (1, ioerr)
        );
        let end = t.mem.last_addr().raw_value() - 255;
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (end, 512, W), (STATUS, 1, W)]),
            (1, ioerr)
        );
        // Only a status descriptor.
        assert_eq!(run(&t, &mut d, &[(STATUS, 1, W)]), (1, ioerr));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn chains_without_status_are_dropped() {
        let img = vec![0u8; 4096];
        let (mut d, path) = disk(&img, false);
        let t = TestMem::new();
        t.header(VIRTIO_BLK_T_IN, 0);
        t.mem.write_obj(0x55u8, GuestAddress(STATUS)).unwrap();
        // Read-only status, empty status, status outside memory, no status at all.
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, 0)]),
            (0, 0x55)
        );
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 0, W)]),
            (0, 0x55)
        );
        assert_eq!(
            run(&t, &mut d, &[(HDR, 16, 0), (DATA, 512, W), (1 << 40, 1, W)]),
            (0, 0x55)
        );
        assert_eq!(run(&t, &mut d, &[(HDR, 16, 0)]), (0, 0x55));
        assert_eq!(run(&t, &mut d, &[(HDR, 16, 0), (DATA, 512, 0)]), (0, 0x55));
        // Too many segments.
        let mut many = vec![(HDR, 16, 0)];
        many.extend((0..SEG_MAX as u64 + 1).map(|i| (DATA + i * 512, 512, W)));
        many.push((STATUS, 1, W));
        assert_eq!(run(&t, &mut d, &many), (0, 0x55));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn descriptor_loop_is_dropped() {
        let img = vec![0u8; 4096];
        let (mut d, path) = disk(&img, false);
        let t = TestMem::new();
        t.header(VIRTIO_BLK_T_IN, 0);
        t.mem.write_obj(0x55u8, GuestAddress(STATUS)).unwrap();
        // 0 -> 1 -> 2 -> 1 -> ...: virtio-queue's TTL ends the walk.
        assert_eq!(
            run_raw(
                &t,
                &mut d,
                &[(HDR, 16, 0, 1), (DATA, 512, W, 2), (STATUS, 1, W, 1)]
            ),
            (0, 0)
        );
        assert_eq!(t.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0x55);
        // A next index past the table also ends the walk early.
        assert_eq!(
            run_raw(
                &t,
                &mut d,
                &[(HDR, 16, 0, 1), (DATA, 512, W, 2), (STATUS, 1, W, 999)]
            ),
            (0, 0)
        );
        // A chain pointing back at its own head.
        assert_eq!(run_raw(&t, &mut d, &[(HDR, 16, 0, 0)]), (0, 0));
        assert_eq!(t.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0x55);
        std::fs::remove_file(path).unwrap();
    }
}
