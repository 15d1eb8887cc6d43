//! Test helpers shared by the block tests, device-level tests, and the full
//! path through [`MmioTransport`].

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub(crate) use super::QUEUE_SIZE;
use super::{Block, BlockError};
use crate::bus::BusDevice;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::mock::{add_chain, reg_read, reg_write};
use crate::virtio::{Interrupt, VirtioDevice, INTERRUPT_STATUS_USED_RING};
use crate::GuestMemory;

/// Where tests put the request header, data buffers and status byte.
pub(crate) const HDR: u64 = 0x1_0000;
pub(crate) const DATA: u64 = 0x2_0000;
pub(crate) const STATUS: u64 = 0xf_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

/// A fresh read-write image file with `contents`, unique per call.
pub(crate) fn temp_image(contents: &[u8]) -> (File, PathBuf) {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "minivm-blk-test-{}-{}.img",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    (file, path)
}

/// 1 MiB of guest memory starting at 0.
pub(crate) struct TestMem {
    pub mem: Arc<GuestMemory>,
}

impl TestMem {
    pub fn new() -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        TestMem { mem: Arc::new(mem) }
    }

    /// Writes a request header at [`HDR`].
    pub fn header(&self, type_: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&type_.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }
}

/// `(addr, len, flags)` triples as raw descriptors (next fields are fixed up by the mock).
pub(crate) fn raw_descs(descs: &[(u64, u32, u16)]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .map(|&(a, l, f)| SplitDescriptor::new(a, l, f, 0).into())
        .collect()
}

fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()))
}

fn block(img: &[u8], read_only: bool) -> (Block, PathBuf) {
    let (file, path) = temp_image(img);
    (Block::new(file, read_only, "disk0").unwrap(), path)
}

#[test]
fn new_checks_image_and_serial() {
    let (file, path) = temp_image(&[]);
    assert!(matches!(
        Block::new(file, false, "x"),
        Err(BlockError::TooSmall(0))
    ));
    let file = File::open(&path).unwrap();
    let long = "a".repeat(21);
    assert!(matches!(
        Block::new(file, false, &long),
        Err(BlockError::SerialTooLong(_))
    ));
    std::fs::remove_file(path).unwrap();

    // 1000 bytes round down to one sector.
    let (b, path) = block(&[0u8; 1000], true);
    assert_eq!(b.sectors(), 1);
    assert_eq!(b.device_type(), VIRTIO_ID_BLOCK);
    assert_eq!(b.queue_max_sizes(), &[QUEUE_SIZE]);
    let f = b.features();
    for bit in [
        VIRTIO_BLK_F_RO,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_F_VERSION_1,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
    }
    std::fs::remove_file(path).unwrap();
    let (b, path) = block(&[0u8; 4096], false);
    assert_eq!(b.features() & (1 << VIRTIO_BLK_F_RO), 0);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn config_space_layout() {
    let (mut b, path) = block(&vec![0u8; 8 * 512 + 7], false);
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let mut w = [0u8; 4];
    b.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), 126);
    b.read_config(20, &mut w);
    assert_eq!(u32::from_le_bytes(w), 512);
    // Straddling the end, far past it, and at a huge offset: zeros, no panic.
    let mut w = [0xffu8; 8];
    b.read_config(92, &mut w);
    assert_eq!(w, [0; 8]);
    b.read_config(u64::MAX, &mut w);
    assert_eq!(w, [0; 8]);
    // Writes are ignored.
    b.write_config(0, &[1, 2, 3, 4]);
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn serves_queue_and_interrupts() {
    let img: Vec<u8> = (0..4096u32).map(|i| (i >> 9) as u8).collect();
    let (mut b, path) = block(&img, false);
    let t = TestMem::new();
    let mq = MockSplitQueue::new(&*t.mem, QUEUE_SIZE);
    let irq = interrupt();

    // Not active yet: nothing happens.
    b.process_queue(0);
    b.activate(t.mem.clone(), vec![mq.create_queue().unwrap()], irq.clone())
        .unwrap();

    t.header(VIRTIO_BLK_T_IN, 5);
    add_chain(&mq, 0, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]);
    // A second chain whose head index is out of range is skipped, not fatal.
    mq.avail().ring().ref_at(1).unwrap().store(QUEUE_SIZE + 3);
    mq.avail().idx().store(2);
    add_chain(
        &mq,
        3,
        &[(HDR, 16, 0), (DATA + 512, 512, W), (STATUS, 1, W)],
    );
    b.process_queue(0);
    b.process_queue(7); // no such queue

    assert_eq!(mq.used().idx().load(), 2);
    let e = mq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((e.id(), e.len()), (0, 513));
    assert_eq!(mq.used().ring().ref_at(1).unwrap().load().id(), 3);
    assert_eq!(t.status(), VIRTIO_BLK_S_OK as u8);
    let mut buf = [0u8; 512];
    t.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert_eq!(buf, [5u8; 512]);
    assert_eq!(irq.status(), INTERRUPT_STATUS_USED_RING);
    assert_eq!(irq.irqfd().read().unwrap(), 1);

    // After reset the device ignores the queue until activated again.
    b.reset();
    add_chain(&mq, 6, &[(HDR, 16, 0), (STATUS, 1, W)]);
    b.process_queue(0);
    assert_eq!(mq.used().idx().load(), 2);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn event_idx_suppresses_interrupts() {
    let (mut b, path) = block(&[0u8; 4096], false);
    let t = TestMem::new();
    let mq = MockSplitQueue::new(&*t.mem, QUEUE_SIZE);
    let mut q: Queue = mq.create_queue().unwrap();
    q.set_event_idx(true);
    let irq = interrupt();
    b.activate(t.mem.clone(), vec![q], irq.clone()).unwrap();
    // used_event (after the avail ring) = 5: the driver wants an interrupt once entry 5 is used.
    let used_event = mq.avail_addr().0 + 4 + 2 * u64::from(QUEUE_SIZE);
    t.mem.write_obj(5u16, GuestAddress(used_event)).unwrap();

    t.header(VIRTIO_BLK_T_FLUSH, 0);
    add_chain(&mq, 0, &[(HDR, 16, 0), (STATUS, 1, W)]);
    b.process_queue(0);
    assert_eq!(mq.used().idx().load(), 1);
    assert_eq!(irq.status(), 0);
    assert!(irq.irqfd().read().is_err());
    // The device published avail_event = next avail index when it re-enabled notifications.
    let avail_event = mq.used_addr().0 + 4 + 8 * u64::from(QUEUE_SIZE);
    assert_eq!(t.mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(), 1);

    for i in 1..6u16 {
        add_chain(&mq, 2 * i, &[(HDR, 16, 0), (STATUS, 1, W)]);
    }
    b.process_queue(0);
    assert_eq!(mq.used().idx().load(), 6);
    assert_eq!(irq.status(), INTERRUPT_STATUS_USED_RING);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn impossible_avail_index_stops_the_queue() {
    let (mut b, path) = block(&[0u8; 4096], false);
    let t = TestMem::new();
    let mq = MockSplitQueue::new(&*t.mem, QUEUE_SIZE);
    let irq = interrupt();
    b.activate(t.mem.clone(), vec![mq.create_queue().unwrap()], irq.clone())
        .unwrap();
    t.header(VIRTIO_BLK_T_FLUSH, 0);
    add_chain(&mq, 0, &[(HDR, 16, 0), (STATUS, 1, W)]);
    mq.avail().idx().store(QUEUE_SIZE + 10);
    b.process_queue(0);
    assert_eq!(mq.used().idx().load(), 0);
    // Even once the index looks sane again, the queue stays stopped until reset.
    mq.avail().idx().store(1);
    b.process_queue(0);
    assert_eq!(mq.used().idx().load(), 0);
    assert_eq!(irq.status(), 0);
    b.reset();
    let mq = MockSplitQueue::new(&*t.mem, QUEUE_SIZE);
    b.activate(t.mem.clone(), vec![mq.create_queue().unwrap()], irq.clone())
        .unwrap();
    add_chain(&mq, 0, &[(HDR, 16, 0), (STATUS, 1, W)]);
    b.process_queue(0);
    assert_eq!(mq.used().idx().load(), 1);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn indirect_chain() {
    let (mut b, path) = block(&[9u8; 4096], false);
    let t = TestMem::new();
    let mq = MockSplitQueue::new(&*t.mem, QUEUE_SIZE);
    b.activate(t.mem.clone(), vec![mq.create_queue().unwrap()], interrupt())
        .unwrap();
    // The indirect table lives at 0x8000 with header, data and status.
    let table = 0x8000u64;
    let entries = [(HDR, 16, 0), (DATA, 1024, W), (STATUS, 1, W)];
    for (i, &(a, l, f)) in entries.iter().enumerate() {
        let flags = if i < 2 {
            f | VRING_DESC_F_NEXT as u16
        } else {
            f
        };
        let d: RawDescriptor = SplitDescriptor::new(a, l, flags, i as u16 + 1).into();
        t.mem
            .write_obj(d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    t.header(VIRTIO_BLK_T_IN, 0);
    mq.add_desc_chains(
        &[SplitDescriptor::new(table, 48, VRING_DESC_F_INDIRECT as u16, 0).into()],
        0,
    )
    .unwrap();
    b.process_queue(0);
    assert_eq!(mq.used().ring().ref_at(0).unwrap().load().len(), 1025);
    assert_eq!(t.status(), VIRTIO_BLK_S_OK as u8);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn full_path_through_mmio_transport() {
    let img: Vec<u8> = (0..8192u32).map(|i| (i >> 9) as u8).collect();
    let (b, path) = block(&img, false);
    let t = TestMem::new();
    let irq = interrupt();
    let mut tr = MmioTransport::new(Box::new(b), t.mem.clone(), irq.clone()).unwrap();

    assert_eq!(reg_read(&mut tr, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_BLOCK);
    let mut cap = [0u8; 8];
    tr.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 16);

    reg_write(&mut tr, VIRTIO_MMIO_STATUS, 1);
    reg_write(&mut tr, VIRTIO_MMIO_STATUS, 3);
    reg_write(&mut tr, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let lo = reg_read(&mut tr, VIRTIO_MMIO_DEVICE_FEATURES);
    reg_write(&mut tr, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let hi = reg_read(&mut tr, VIRTIO_MMIO_DEVICE_FEATURES);
    assert_eq!(hi & 1, 1, "VERSION_1 offered");
    reg_write(&mut tr, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    reg_write(&mut tr, VIRTIO_MMIO_DRIVER_FEATURES, lo);
    reg_write(&mut tr, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    reg_write(&mut tr, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    reg_write(&mut tr, VIRTIO_MMIO_STATUS, 0xb);
    assert_eq!(reg_read(&mut tr, VIRTIO_MMIO_STATUS), 0xb);

    let mq = MockSplitQueue::create(&*t.mem, GuestAddress(0x4_0000), QUEUE_SIZE);
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(
        reg_read(&mut tr, VIRTIO_MMIO_QUEUE_NUM_MAX),
        u32::from(QUEUE_SIZE)
    );
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
    reg_write(
        &mut tr,
        VIRTIO_MMIO_QUEUE_DESC_LOW,
        mq.desc_table_addr().0 as u32,
    );
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
    reg_write(
        &mut tr,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        mq.avail_addr().0 as u32,
    );
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_USED_LOW, mq.used_addr().0 as u32);
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_READY, 1);
    reg_write(&mut tr, VIRTIO_MMIO_STATUS, 0xf);
    assert_eq!(reg_read(&mut tr, VIRTIO_MMIO_STATUS), 0xf);
    assert!(tr.is_activated());

    // Notify through the register (no ioeventfd).
    t.header(VIRTIO_BLK_T_IN, 3);
    add_chain(&mq, 0, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]);
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(mq.used().idx().load(), 1);
    assert_eq!(mq.used().ring().ref_at(0).unwrap().load().len(), 513);
    let mut buf = [0u8; 512];
    t.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert_eq!(buf, [3u8; 512]);
    assert_eq!(
        reg_read(&mut tr, VIRTIO_MMIO_INTERRUPT_STATUS),
        INTERRUPT_STATUS_USED_RING
    );
    reg_write(
        &mut tr,
        VIRTIO_MMIO_INTERRUPT_ACK,
        INTERRUPT_STATUS_USED_RING,
    );
    assert_eq!(reg_read(&mut tr, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    // Notify through the queue eventfd, as KVM's ioeventfd would.
    t.mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    t.header(VIRTIO_BLK_T_OUT, 15);
    add_chain(&mq, 3, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]);
    tr.queue_events()[0].write(1).unwrap();
    tr.process_queue_event(0);
    assert_eq!(mq.used().idx().load(), 2);
    assert_eq!(t.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(&std::fs::read(&path).unwrap()[15 * 512..], &[0xee; 512][..]);
    // A spurious wakeup (counter already drained) does nothing.
    tr.process_queue_event(0);
    assert_eq!(mq.used().idx().load(), 2);

    // Reset: device idle, registers back to power-on values.
    reg_write(&mut tr, VIRTIO_MMIO_STATUS, 0);
    assert!(!tr.is_activated());
    assert_eq!(reg_read(&mut tr, VIRTIO_MMIO_QUEUE_READY), 0);
    add_chain(&mq, 6, &[(HDR, 16, 0), (STATUS, 1, W)]);
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(mq.used().idx().load(), 2);
    std::fs::remove_file(path).unwrap();
}
