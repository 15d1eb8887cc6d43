//! virtio-rng against mock virtqueues (virtio-queue's `test-utils`).

use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Rng, RngStats, MAX_BYTES_PER_CHAIN, QUEUE_SIZE};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::mock::{add_chain, reg_read, reg_write};
use crate::virtio::{Interrupt, VirtioDevice, INTERRUPT_STATUS_USED_RING};
use crate::GuestMemory;

/// Guest memory size: 1 MiB from 0.
const MEM_SIZE: u64 = 0x10_0000;
/// Where tests put the guest's buffers.
const BUF: u64 = 0x2_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

fn mem() -> Arc<GuestMemory> {
    Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap())
}

fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()))
}

/// Used-ring entry `i` as (head, len).
fn used(mq: &MockSplitQueue<GuestMemory>, i: usize) -> (u32, u32) {
    let e = mq.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// An activated device over a fresh mock queue.
fn active_rng<'a>(
    mem: &'a Arc<GuestMemory>,
    irq: &Arc<Interrupt>,
) -> (Rng, MockSplitQueue<'a, GuestMemory>) {
    let mq = MockSplitQueue::new(&**mem, QUEUE_SIZE);
    let mut rng = Rng::new();
    rng.activate(mem.clone(), vec![mq.create_queue().unwrap()], irq.clone())
        .unwrap();
    (rng, mq)
}

#[test]
fn identity_features_and_empty_config() {
    let mut rng = Rng::new();
    assert_eq!(rng.device_type(), VIRTIO_ID_RNG);
    assert_eq!(rng.device_type(), 4);
    assert_eq!(rng.queue_max_sizes(), &[QUEUE_SIZE]);
    let f = rng.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
    }
    rng.ack_features(u64::MAX);
    assert_eq!(rng.virtio.acked_features, f);
    let mut w = [0xffu8; 8];
    rng.read_config(0, &mut w);
    assert_eq!(w, [0; 8]);
    rng.read_config(u64::MAX, &mut w);
    assert_eq!(w, [0; 8]);
    rng.write_config(0, &[1, 2, 3]);
    // Not active: a notify does nothing, and a second queue is refused.
    rng.process_queue(0);
    let m = mem();
    let mq = MockSplitQueue::new(&*m, QUEUE_SIZE);
    let two = vec![mq.create_queue().unwrap(), mq.create_queue().unwrap()];
    assert!(rng.activate(m.clone(), two, interrupt()).is_err());
}

#[test]
fn good_chain_gets_random_bytes_and_two_requests_differ() {
    let m = mem();
    let irq = interrupt();
    let (mut rng, mq) = active_rng(&m, &irq);

    add_chain(&mq, 0, &[(BUF, 4096, W)]);
    // Two buffers in one chain: filled in order, 100 + 200 bytes.
    add_chain(&mq, 2, &[(BUF + 0x2000, 100, W), (BUF + 0x3000, 200, W)]);
    rng.process_queue(0);
    rng.process_queue(3); // no such queue

    assert_eq!(mq.used().idx().load(), 2);
    assert_eq!(used(&mq, 0), (0, 4096));
    assert_eq!(used(&mq, 1), (2, 300));
    let first = read(&m, BUF, 4096);
    assert!(first.iter().any(|&b| b != 0), "all zero");
    assert!(read(&m, BUF + 0x2000, 100).iter().any(|&b| b != 0));
    assert!(read(&m, BUF + 0x3000, 200).iter().any(|&b| b != 0));
    // Bytes past a buffer stay untouched.
    assert_eq!(read(&m, BUF + 0x2000 + 100, 16), [0; 16]);
    assert_eq!(irq.status(), INTERRUPT_STATUS_USED_RING);
    assert_eq!(irq.irqfd().read().unwrap(), 1);

    // The same buffer asked again gets different bytes.
    add_chain(&mq, 5, &[(BUF, 4096, W)]);
    rng.process_queue(0);
    assert_eq!(used(&mq, 2), (5, 4096));
    assert_ne!(read(&m, BUF, 4096), first);
    assert_eq!(
        rng.stats(),
        RngStats {
            bytes: 4096 + 300 + 4096,
            requests: 3,
            rejected: 0
        }
    );

    // After reset the queue is ignored until activated again.
    rng.reset();
    add_chain(&mq, 7, &[(BUF, 16, W)]);
    rng.process_queue(0);
    assert_eq!(mq.used().idx().load(), 3);
}

#[test]
fn a_chain_gets_at_most_the_cap() {
    let m = mem();
    let (mut rng, mq) = active_rng(&m, &interrupt());
    let big = 2 * MAX_BYTES_PER_CHAIN as u32;
    add_chain(&mq, 0, &[(BUF, big, W)]);
    // Cap reached inside the first buffer: the second one is left alone.
    add_chain(&mq, 1, &[(BUF, big, W), (BUF + u64::from(big), 4096, W)]);
    rng.process_queue(0);
    assert_eq!(used(&mq, 0), (0, MAX_BYTES_PER_CHAIN as u32));
    assert_eq!(used(&mq, 1), (1, MAX_BYTES_PER_CHAIN as u32));
    let tail = read(
        &m,
        BUF + MAX_BYTES_PER_CHAIN as u64,
        MAX_BYTES_PER_CHAIN + 4096,
    );
    assert!(tail.iter().all(|&b| b == 0), "bytes past the cap written");
    assert_eq!(rng.stats().bytes, 2 * MAX_BYTES_PER_CHAIN as u64);
}

#[test]
fn bad_chains_get_used_len_zero() {
    let m = mem();
    let irq = interrupt();
    let (mut rng, mq) = active_rng(&m, &irq);
    // 0: a device-readable buffer.
    add_chain(&mq, 0, &[(BUF, 64, 0)]);
    // 1: writable then readable: rejected before anything is written.
    add_chain(&mq, 1, &[(BUF + 0x1000, 64, W), (BUF + 0x2000, 64, 0)]);
    // 3: a buffer running past the end of guest memory, and one wholly beyond it.
    add_chain(&mq, 3, &[(MEM_SIZE - 16, 64, W)]);
    add_chain(&mq, 4, &[(BUF + 0x3000, 64, W), (1 << 40, 64, W)]);
    // 6: a zero-length buffer.
    add_chain(&mq, 6, &[(BUF + 0x4000, 0, W)]);
    // 7: an empty indirect table (the chain has no buffers at all).
    mq.add_desc_chains(
        &[SplitDescriptor::new(0x8000, 0, VRING_DESC_F_INDIRECT as u16, 0).into()],
        7,
    )
    .unwrap();
    // 8: a good chain after all that is still served.
    add_chain(&mq, 8, &[(BUF + 0x5000, 32, W)]);
    rng.process_queue(0);

    assert_eq!(mq.used().idx().load(), 7);
    for (i, head) in [0u32, 1, 3, 4, 6, 7].into_iter().enumerate() {
        assert_eq!(used(&mq, i), (head, 0), "chain {head}");
    }
    assert_eq!(used(&mq, 6), (8, 32));
    assert_eq!(read(&m, BUF, 0x5000), vec![0u8; 0x5000]);
    assert_eq!(
        rng.stats(),
        RngStats {
            bytes: 32,
            requests: 1,
            // The zero-length and empty chains are not errors, just empty.
            rejected: 4
        }
    );
    assert_eq!(irq.status(), INTERRUPT_STATUS_USED_RING);
}

#[test]
fn impossible_avail_index_stops_the_queue_until_reset() {
    let m = mem();
    let irq = interrupt();
    let (mut rng, mq) = active_rng(&m, &irq);
    add_chain(&mq, 0, &[(BUF, 16, W)]);
    mq.avail().idx().store(QUEUE_SIZE + 10);
    rng.process_queue(0);
    mq.avail().idx().store(1);
    rng.process_queue(0);
    assert_eq!(mq.used().idx().load(), 0);
    assert_eq!(irq.status(), 0);
    rng.reset();
    let (mut rng2, mq) = active_rng(&m, &irq);
    add_chain(&mq, 0, &[(BUF, 16, W)]);
    rng2.process_queue(0);
    assert_eq!(used(&mq, 0), (0, 16));
}

/// An rng device activated through the transport on a mock queue.
fn activated_rng(
    m: &std::sync::Arc<GuestMemory>,
) -> (MmioTransport, MockSplitQueue<'_, GuestMemory>) {
    let irq = interrupt();
    let mut tr = MmioTransport::new(Box::new(Rng::new()), m.clone(), irq.clone()).unwrap();
    assert_eq!(reg_read(&mut tr, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_RNG);

    reg_write(&mut tr, VIRTIO_MMIO_STATUS, 1);
    reg_write(&mut tr, VIRTIO_MMIO_STATUS, 3);
    reg_write(&mut tr, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    reg_write(&mut tr, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    reg_write(&mut tr, VIRTIO_MMIO_STATUS, 0xb);
    assert_eq!(reg_read(&mut tr, VIRTIO_MMIO_STATUS), 0xb);

    let mq = MockSplitQueue::create(&**m, GuestAddress(0x4_0000), QUEUE_SIZE);
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
    reg_write(
        &mut tr,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        mq.avail_addr().0 as u32,
    );
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_USED_LOW, mq.used_addr().0 as u32);
    reg_write(&mut tr, VIRTIO_MMIO_QUEUE_READY, 1);
    reg_write(&mut tr, VIRTIO_MMIO_STATUS, 0xf);
    assert!(tr.is_activated());

    (tr, mq)
}

#[test]
fn full_path_through_mmio_transport() {
    let m = mem();
    let (mut tr, mq) = activated_rng(&m);
    // Notified through the queue eventfd, as KVM's ioeventfd would.
    add_chain(&mq, 0, &[(BUF, 512, W)]);
    tr.queue_events()[0].write(1).unwrap();
    tr.process_queue_event(0);
    assert_eq!(used(&mq, 0), (0, 512));
    assert!(read(&m, BUF, 512).iter().any(|&b| b != 0));
    assert_eq!(
        reg_read(&mut tr, VIRTIO_MMIO_INTERRUPT_STATUS),
        INTERRUPT_STATUS_USED_RING
    );
}

/// A snapshot of an activated rng's transport, restored into a fresh
/// transport around a fresh device, goes on where the first left off.
#[test]
fn transport_state_round_trips() {
    let m = mem();
    let (mut tr, mq) = activated_rng(&m);
    add_chain(&mq, 0, &[(BUF, 16, W)]);
    tr.queue_events()[0].write(1).unwrap();
    tr.process_queue_event(0);
    assert_eq!(used(&mq, 0), (0, 16));
    let state = tr.save_state().unwrap();
    assert!(state.activated);
    assert_eq!(state.queues[0].next_avail, 1);
    assert_eq!(state.queues[0].next_used, 1);

    let mut fresh = MmioTransport::new(Box::new(Rng::new()), m.clone(), interrupt()).unwrap();
    fresh.restore_state(&state).unwrap();
    assert!(fresh.is_activated());
    assert_eq!(reg_read(&mut fresh, VIRTIO_MMIO_STATUS), 0xf);
    assert_eq!(fresh.save_state().unwrap(), state);
    add_chain(&mq, 1, &[(BUF + 0x1000, 32, W)]);
    fresh.queue_events()[0].write(1).unwrap();
    fresh.process_queue_event(0);
    assert_eq!(
        used(&mq, 1),
        (1, 32),
        "the second chain, not the first again"
    );

    // A state saved from another kind of device is refused.
    let mut wrong = state.clone();
    wrong.device_type = 2;
    let mut fresh = MmioTransport::new(Box::new(Rng::new()), m.clone(), interrupt()).unwrap();
    let e = fresh.restore_state(&wrong).unwrap_err();
    assert!(e.contains("device type 2"), "{e}");
    assert!(!fresh.is_activated());
}
