//! The device half: construction, config space, queue servicing, resets, and
//! hostile input.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT};
use virtio_queue::{Queue, QueueT};

use super::*;
use crate::bus::BusDevice;
use crate::virtio::fs::{FsError, TAG_MAX_LEN};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::mock::reg_read;
use crate::virtio::{ActivateError, INTERRUPT_STATUS_USED_RING};

fn vfs(dir: &TempDir) -> Arc<Vfs> {
    super::super::passthrough(dir.path(), false).unwrap()
}

#[test]
fn tag_is_validated() {
    let dir = TempDir::new();
    assert!(matches!(
        Fs::new(
            "",
            vfs(&dir),
            sandbox::ThreadFilter::none(sandbox::ThreadKind::FsWorker)
        ),
        Err(FsError::TagLength(_))
    ));
    let long = "t".repeat(TAG_MAX_LEN + 1);
    let e = Fs::new(
        &long,
        vfs(&dir),
        sandbox::ThreadFilter::none(sandbox::ThreadKind::FsWorker),
    )
    .err()
    .unwrap();
    assert!(matches!(e, FsError::TagLength(_)));
    assert!(e.to_string().contains("37 bytes"), "{e}");
    assert!(matches!(
        Fs::new(
            "a\0b",
            vfs(&dir),
            sandbox::ThreadFilter::none(sandbox::ThreadKind::FsWorker)
        ),
        Err(FsError::TagNul(_))
    ));
    let max = "m".repeat(TAG_MAX_LEN);
    assert_eq!(
        Fs::new(
            &max,
            vfs(&dir),
            sandbox::ThreadFilter::none(sandbox::ThreadKind::FsWorker)
        )
        .unwrap()
        .tag(),
        max
    );
}

#[test]
fn passthrough_checks_the_root() {
    let dir = TempDir::new();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        super::super::passthrough(&file, false),
        Err(FsError::Root { .. })
    ));
    let missing = dir.path().join("missing");
    assert!(matches!(
        super::super::passthrough(&missing, true),
        Err(FsError::Root { .. })
    ));
}

#[test]
fn identity_features_and_config_space() {
    let dir = TempDir::new();
    let mut fs = Fs::new(
        "myfs",
        vfs(&dir),
        sandbox::ThreadFilter::none(sandbox::ThreadKind::FsWorker),
    )
    .unwrap();
    assert_eq!(fs.device_type(), VIRTIO_ID_FS);
    assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    for bit in [VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX] {
        assert_ne!(fs.features() & (1 << bit), 0, "feature bit {bit}");
    }
    fs.ack_features(u64::MAX);
    assert_eq!(fs.acked_features(), fs.features());

    let mut cfg = [0xffu8; 40];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], b"myfs");
    assert!(cfg[4..36].iter().all(|&b| b == 0));
    assert_eq!(u32_at(&cfg, 36), 1, "num_request_queues");
    // Partial, straddling and far-away reads; writes are ignored.
    let mut w = [0xffu8; 8];
    fs.read_config(36, &mut w);
    assert_eq!(w, [1, 0, 0, 0, 0, 0, 0, 0]);
    fs.read_config(u64::MAX, &mut w);
    assert_eq!(w, [0; 8]);
    fs.write_config(0, b"evil");
    fs.read_config(0, &mut w[..4]);
    assert_eq!(&w[..4], b"myfs");
}

#[test]
fn activation_needs_both_queues() {
    let dir = TempDir::new();
    let mut fs = Fs::new(
        "share",
        vfs(&dir),
        sandbox::ThreadFilter::none(sandbox::ThreadKind::FsWorker),
    )
    .unwrap();
    let mem = test_mem();
    let mq = MockSplitQueue::new(&*mem, QUEUE_SIZE);
    // Notifications before activation are ignored.
    fs.process_queue(1);
    let err = fs
        .activate(mem.clone(), vec![mq.create_queue().unwrap()], interrupt())
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 2,
            got: 1
        }
    ));
}

#[test]
fn malformed_messages_never_panic_and_always_complete() {
    let dir = TempDir::new();
    let mem = test_mem();
    let mut h = Harness::share(&mem, dir.path(), false);
    let getattr = message(GETATTR, 77, FUSE_ROOT, &[0u8; 16]);

    // Shorter than fuse_in_header: dropped with a zero-length completion.
    assert_eq!(h.raw(1, &getattr[..10], OUT_LEN).unwrap().used_len, 0);
    // `len` claims more than the buffer holds.
    let mut m = message(LOOKUP, 2, FUSE_ROOT, &cstr("x"));
    m[0..4].copy_from_slice(&4096u32.to_le_bytes());
    assert_eq!(h.raw(1, &m, OUT_LEN).unwrap().used_len, 0);
    // `len` smaller than the header itself.
    m[0..4].copy_from_slice(&8u32.to_le_bytes());
    h.raw(1, &m, OUT_LEN).unwrap();
    // `len` beyond any message the server accepts: ENOMEM reply.
    m[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(h.raw(1, &m, OUT_LEN).unwrap().error, -libc::ENOMEM);
    // Unknown opcode: ENOSYS.
    let r = h
        .raw(1, &message(9999, 3, FUSE_ROOT, &[]), OUT_LEN)
        .unwrap();
    assert_eq!((r.error, r.unique), (-libc::ENOSYS, 3));
    // Bad node ids: errors, not panics.
    for node in [0, 0xdead_beef, (1u64 << 56) | 0xffff_ffff, u64::MAX] {
        let r = h
            .raw(1, &message(GETATTR, 4, node, &[0u8; 16]), OUT_LEN)
            .unwrap();
        assert_ne!(r.error, 0, "node {node:#x}");
    }
    // A name without its NUL, and a LOOKUP with no name at all.
    let r = h
        .raw(1, &message(LOOKUP, 5, FUSE_ROOT, b"abc"), OUT_LEN)
        .unwrap();
    assert!(r.used_len == 0 || r.error != 0);
    h.raw(1, &message(LOOKUP, 6, FUSE_ROOT, &[]), OUT_LEN)
        .unwrap();
    // A request whose body is too short for its fixed part.
    h.raw(1, &message(READ, 7, FUSE_ROOT, &[0u8; 8]), OUT_LEN)
        .unwrap();
    // No writable descriptor: the reply has nowhere to go.
    assert_eq!(h.raw(1, &getattr, 0).unwrap().used_len, 0);
    // A reply buffer too small for the reply.
    assert_eq!(h.raw(1, &getattr, 20).unwrap().used_len, 0);

    // Descriptors outside guest memory, straddling its end, or absurdly long.
    let end = MEM_SIZE as u64;
    h.mem.write_slice(&getattr, GuestAddress(IN_BUF)).unwrap();
    for descs in [
        vec![(1u64 << 40, 56, 0), (OUT_BUF, 4096, W)],
        vec![(end - 8, 56, 0), (OUT_BUF, 4096, W)],
        vec![(IN_BUF, 56, 0), (end - 8, 4096, W)],
        vec![(IN_BUF, 56, 0), (u64::MAX - 100, 4096, W)],
        vec![(IN_BUF, u32::MAX, 0), (OUT_BUF, 4096, W)],
    ] {
        assert_eq!(h.chain(1, &descs), Some(0), "{descs:x?}");
    }
    // Writable before readable breaks the spec's ordering rule, but
    // virtio-queue sorts descriptors by direction, so it is simply served.
    assert_eq!(
        h.chain(1, &[(OUT_BUF, 4096, W), (IN_BUF, 56, 0)]),
        Some(16 + 104)
    );
    // FORGET on the hiprio queue gets no reply, just a completion.
    let forget = message(FORGET, 8, (1u64 << 56) | 12345, &5u64.to_le_bytes());
    assert_eq!(h.raw(0, &forget, 0).unwrap().used_len, 0);

    // The device still works.
    assert_eq!(
        h.getattr(FUSE_ROOT).unwrap().mode & libc::S_IFMT,
        libc::S_IFDIR
    );
    assert_eq!(h.irq.status(), INTERRUPT_STATUS_USED_RING);
}

#[test]
fn indirect_chain() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("f"), b"abc").unwrap();
    let mem = test_mem();
    let mut h = Harness::share(&mem, dir.path(), false);
    let m = message(LOOKUP, 9, FUSE_ROOT, &cstr("f"));
    h.mem.write_slice(&m, GuestAddress(IN_BUF)).unwrap();
    let table = 0x3_0000u64;
    let entries = [
        (IN_BUF, m.len() as u32, VRING_DESC_F_NEXT as u16),
        (OUT_BUF, 4096, W),
    ];
    for (i, &(a, l, f)) in entries.iter().enumerate() {
        let d: RawDescriptor = SplitDescriptor::new(a, l, f, i as u16 + 1).into();
        h.mem
            .write_obj(d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    let len = h
        .chain(1, &[(table, 32, VRING_DESC_F_INDIRECT as u16)])
        .unwrap();
    assert_eq!(len, 16 + 128, "out header + fuse_entry_out");
    let mut out = [0u8; 144];
    h.mem.read_slice(&mut out, GuestAddress(OUT_BUF)).unwrap();
    assert_eq!(u32_at(&out, 4), 0);
    assert_eq!(Attr::parse(&out, 16 + 40).size, 3);
}

#[test]
fn impossible_avail_index_stops_only_that_queue() {
    let dir = TempDir::new();
    let mem = test_mem();
    let mut h = Harness::share(&mem, dir.path(), false);
    h.req
        .avail()
        .idx()
        .store(h.req.avail().idx().load().wrapping_add(QUEUE_SIZE + 10));
    let used = h.req.used().idx().load();
    h.kick(1);
    assert_eq!(h.req.used().idx().load(), used);
    // Stopped until reset, even once the index looks sane again.
    h.req.avail().idx().store(used);
    assert!(h
        .raw(1, &message(GETATTR, 1, FUSE_ROOT, &[0u8; 16]), OUT_LEN)
        .is_none());
    // The hiprio queue is unaffected.
    let forget = message(FORGET, 2, (1u64 << 56) | 99, &1u64.to_le_bytes());
    assert!(h.raw(0, &forget, 0).is_some());
}

#[test]
fn reset_ends_the_session_so_init_works_again() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("f"), b"abc").unwrap();
    let vfs = vfs(&dir);
    let mem = test_mem();
    {
        let mut h = Harness::new(&mem, vfs.clone());
        h.init();
        h.lookup(FUSE_ROOT, "f").unwrap();
        // A second INIT in the same session is refused.
        let r = h.raw(
            1,
            &message(
                INIT,
                50,
                0,
                &body(&[&7u32.to_le_bytes(), &38u32.to_le_bytes(), &[0u8; 8]]),
            ),
            OUT_LEN,
        );
        assert_ne!(r.unwrap().error, 0);
        // Every request was counted by its opcode, the refused one too.
        let counts: Vec<(String, u64)> =
            h.fs.stats()
                .snapshot()
                .into_iter()
                .map(|(op, s)| (crate::virtio::fs::opcode_name(op), s.count))
                .collect();
        assert_eq!(counts, vec![("INIT".into(), 2), ("LOOKUP".into(), 1)]);
        h.fs.reset();
        // After reset the device ignores its old queues.
        let used = h.req.used().idx().load();
        h.req
            .add_desc_chains(&raw_descs(&[(IN_BUF, 56, 0)]), 1000)
            .unwrap();
        h.fs.process_queue(1);
        assert_eq!(h.req.used().idx().load(), used);
    }
    // A rebooted guest (no FUSE_DESTROY) can start over on the same Vfs.
    let mut h = Harness::new(&mem, vfs);
    h.init();
    let (_, attr) = h.lookup(FUSE_ROOT, "f").unwrap();
    assert_eq!(attr.size, 3);
}

fn raw_descs(descs: &[(u64, u32, u16)]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .map(|&(a, l, f)| SplitDescriptor::new(a, l, f, 0).into())
        .collect()
}

#[test]
fn event_idx_suppresses_interrupts() {
    let dir = TempDir::new();
    let mem = test_mem();
    let m: &GuestMemory = &mem;
    let hiprio = MockSplitQueue::create(m, GuestAddress(0), QUEUE_SIZE);
    let req = MockSplitQueue::create(m, GuestAddress(0x8_0000), QUEUE_SIZE);
    let mut q: Queue = req.create_queue().unwrap();
    q.set_event_idx(true);
    let mut fs = Fs::new(
        "share",
        vfs(&dir),
        sandbox::ThreadFilter::none(sandbox::ThreadKind::FsWorker),
    )
    .unwrap();
    let irq = interrupt();
    fs.activate(
        mem.clone(),
        vec![hiprio.create_queue().unwrap(), q],
        irq.clone(),
    )
    .unwrap();
    // used_event = 2: the driver wants an interrupt once entry 2 is used.
    let used_event = req.avail_addr().0 + 4 + 2 * u64::from(QUEUE_SIZE);
    mem.write_obj(2u16, GuestAddress(used_event)).unwrap();
    let send = |i: u16| {
        let msg = message(GETATTR, u64::from(i), FUSE_ROOT, &[0u8; 16]);
        let at = IN_BUF + 0x1000 * u64::from(i);
        mem.write_slice(&msg, GuestAddress(at)).unwrap();
        let d: Vec<RawDescriptor> = vec![
            SplitDescriptor::new(at, msg.len() as u32, VRING_DESC_F_NEXT as u16, 2 * i + 1).into(),
            SplitDescriptor::new(OUT_BUF + 0x1000 * u64::from(i), 4096, W, 0).into(),
        ];
        req.add_desc_chains(&d, 2 * i).unwrap();
    };
    send(0);
    fs.process_queue(1);
    fs.wait_idle();
    assert_eq!(req.used().idx().load(), 1);
    assert_eq!(irq.status(), 0, "before used_event: no interrupt");
    send(1);
    send(2);
    fs.process_queue(1);
    fs.wait_idle();
    assert_eq!(req.used().idx().load(), 3);
    assert_eq!(irq.status(), INTERRUPT_STATUS_USED_RING);
    assert_eq!(irq.irqfd().read().unwrap(), 1);
}

#[test]
fn exposed_through_the_mmio_transport() {
    let dir = TempDir::new();
    let mem = test_mem();
    let fs = Fs::new(
        "rootfs",
        vfs(&dir),
        sandbox::ThreadFilter::none(sandbox::ThreadKind::FsWorker),
    )
    .unwrap();
    let mut t = MmioTransport::new(Box::new(fs), mem, interrupt()).unwrap();
    assert_eq!(reg_read(&mut t, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_FS);
    t.write(u64::from(VIRTIO_MMIO_QUEUE_SEL), &1u32.to_le_bytes());
    assert_eq!(
        reg_read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX),
        u32::from(QUEUE_SIZE)
    );
    assert_eq!(t.queue_events().len(), 2);
    let mut tag = [0u8; 8];
    t.read(0x100, &mut tag);
    assert_eq!(&tag, b"rootfs\0\0");
    t.write(
        u64::from(VIRTIO_MMIO_DEVICE_FEATURES_SEL),
        &1u32.to_le_bytes(),
    );
    assert_eq!(
        reg_read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES) & 1,
        1,
        "VERSION_1"
    );
}
