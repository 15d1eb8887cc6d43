//! Net device tests with mock virtqueues and a SOCK_SEQPACKET socket pair
//! standing in for the tap (one message per frame, like a tap).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::{Tap, VNET_HDR_LEN};
use super::{Net, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::virtio::mock::add_chain;
use crate::virtio::{Interrupt, VirtioDevice, INTERRUPT_STATUS_USED_RING};
use crate::GuestMemory;

const W: u16 = VRING_DESC_F_WRITE as u16;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x15];
/// Where the mock queues live, and buffers for frames.
const RXQ: u64 = 0x1_0000;
const TXQ: u64 = 0x2_0000;
const BUF: u64 = 0x4_0000;
const MEM_LEN: usize = 0x10_0000;

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
    assert_eq!(r, 0);
    // SAFETY: both fds were just created and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn peer_send(peer: &OwnedFd, data: &[u8]) {
    // SAFETY: `data` is valid for reads of its length.
    let n = unsafe { libc::send(peer.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
    assert_eq!(n, data.len() as isize);
}

/// The next message the device wrote, or None.
fn peer_recv(peer: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe {
        libc::recv(
            peer.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

struct Rig<'a> {
    mem: Arc<GuestMemory>,
    rx: MockSplitQueue<'a, GuestMemory>,
    tx: MockSplitQueue<'a, GuestMemory>,
    irq: Arc<Interrupt>,
}

fn new_mem() -> Arc<GuestMemory> {
    Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_LEN)]).unwrap())
}

/// A device on a socket, activated with mock queues; returns the peer.
fn rig(mem: &Arc<GuestMemory>) -> (Net, Rig<'_>, OwnedFd) {
    let (dev_end, peer) = socketpair();
    let mut net = Net::with_tap(Tap::from_socket(dev_end, "test0").unwrap(), MAC, true);
    let rx = MockSplitQueue::create(&**mem, GuestAddress(RXQ), QUEUE_SIZE);
    let tx = MockSplitQueue::create(&**mem, GuestAddress(TXQ), QUEUE_SIZE);
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    net.activate(
        mem.clone(),
        vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()],
        irq.clone(),
    )
    .unwrap();
    let r = Rig {
        mem: mem.clone(),
        rx,
        tx,
        irq,
    };
    (net, r, peer)
}

fn used(mq: &MockSplitQueue<GuestMemory>) -> Vec<(u32, u32)> {
    let n = mq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = mq.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

/// A frame: a virtio-net header with `flags`, then `len` payload bytes.
fn frame(flags: u8, len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = flags;
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

#[test]
fn features_and_config() {
    let (a, _b) = socketpair();
    let mut net = Net::with_tap(Tap::from_socket(a, "t").unwrap(), MAC, true);
    assert_eq!(net.device_type(), VIRTIO_ID_NET);
    assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
    ] {
        assert_ne!(net.features() & (1 << bit), 0, "bit {bit}");
    }
    assert_eq!(net.features() & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
    let mut cfg = [0u8; 8];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    net.write_config(0, &[9; 6]);
    assert_eq!(net.mac(), MAC);
    // Unknown bits are not acked; the offloads follow the GUEST_* bits.
    net.ack_features(u64::MAX);
    assert_eq!(net.acked_features(), net.features());
    assert_eq!(Net::tap_offloads(net.acked_features()), 0x7);
    assert_eq!(Net::tap_offloads(1 << VIRTIO_NET_F_GUEST_TSO4), 0);

    let (a, _b) = socketpair();
    let plain = Net::with_tap(Tap::from_socket(a, "t").unwrap(), MAC, false);
    assert_eq!(plain.features() & (1 << VIRTIO_NET_F_CSUM), 0);
    assert_eq!(plain.features() & (1 << VIRTIO_NET_F_GUEST_TSO4), 0);
}

#[test]
fn tx_chain_reaches_the_tap_byte_for_byte() {
    let mem = new_mem();
    let (mut net, r, peer) = rig(&mem);
    let f = frame(1, 1500, 3);
    // Header and part of the frame in one buffer, the rest in two more.
    r.mem.write_slice(&f[..40], GuestAddress(BUF)).unwrap();
    r.mem
        .write_slice(&f[40..1000], GuestAddress(BUF + 0x1000))
        .unwrap();
    r.mem
        .write_slice(&f[1000..], GuestAddress(BUF + 0x2000))
        .unwrap();
    add_chain(
        &r.tx,
        0,
        &[
            (BUF, 40, 0),
            (BUF + 0x1000, 960, 0),
            (BUF + 0x2000, (f.len() - 1000) as u32, 0),
        ],
    );
    net.process_queue(TX_QUEUE);
    assert_eq!(peer_recv(&peer).unwrap(), f);
    assert!(peer_recv(&peer).is_none());
    assert_eq!(used(&r.tx), vec![(0, 0)]);
    assert_ne!(r.irq.status() & INTERRUPT_STATUS_USED_RING, 0);
}

#[test]
fn rx_fills_a_chain_with_header_and_frame() {
    let mem = new_mem();
    let (mut net, r, peer) = rig(&mem);
    add_chain(&r.rx, 0, &[(BUF, 64, W), (BUF + 0x1000, 2048, W)]);
    let f = frame(2, 900, 9);
    peer_send(&peer, &f);
    net.process_host_event(0);
    assert_eq!(used(&r.rx), vec![(0, f.len() as u32)]);
    let mut got = vec![0u8; f.len()];
    r.mem.read_slice(&mut got[..64], GuestAddress(BUF)).unwrap();
    r.mem
        .read_slice(&mut got[64..], GuestAddress(BUF + 0x1000))
        .unwrap();
    let mut want = f.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
    assert_eq!(got, want);
    assert_ne!(r.irq.status() & INTERRUPT_STATUS_USED_RING, 0);
}

#[test]
fn rx_without_buffers_holds_the_frame_until_the_driver_adds_one() {
    let mem = new_mem();
    let (mut net, r, peer) = rig(&mem);
    let f1 = frame(0, 100, 1);
    let f2 = frame(0, 200, 2);
    peer_send(&peer, &f1);
    peer_send(&peer, &f2);
    net.process_host_event(0);
    assert!(used(&r.rx).is_empty());
    add_chain(&r.rx, 0, &[(BUF, 4096, W)]);
    add_chain(&r.rx, 1, &[(BUF + 0x1000, 4096, W)]);
    net.process_queue(RX_QUEUE);
    assert_eq!(
        used(&r.rx),
        vec![(0, f1.len() as u32), (1, f2.len() as u32)]
    );
    let mut got = vec![0u8; f2.len()];
    r.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(got[VNET_HDR_LEN..], f2[VNET_HDR_LEN..]);
}

#[test]
fn bad_chains_are_dropped_and_counted_never_fatal() {
    let mem = new_mem();
    let (mut net, r, peer) = rig(&mem);
    let f = frame(0, 64, 5);
    r.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    // TX: a writable descriptor; shorter than the header; past guest memory;
    // longer than any frame; then a good one.
    add_chain(&r.tx, 0, &[(BUF, 12, 0), (BUF + 12, 64, W)]);
    add_chain(&r.tx, 2, &[(BUF, 8, 0)]);
    add_chain(&r.tx, 3, &[(MEM_LEN as u64 - 16, 64, 0)]);
    add_chain(&r.tx, 4, &[(BUF, 60_000, 0), (BUF, 60_000, 0)]);
    add_chain(&r.tx, 6, &[(BUF, f.len() as u32, 0)]);
    net.process_queue(TX_QUEUE);
    assert_eq!(peer_recv(&peer).unwrap(), f);
    assert!(peer_recv(&peer).is_none());
    assert_eq!(used(&r.tx).len(), 5);
    assert_eq!(net.bad_chains(), (4, 0));

    // RX: a read-only descriptor, too small, past memory: each returned with
    // length 0 and its frame dropped; the next frame lands in a good chain.
    add_chain(&r.rx, 0, &[(BUF, 4096, 0)]);
    add_chain(&r.rx, 1, &[(BUF, 20, W)]);
    add_chain(&r.rx, 2, &[(MEM_LEN as u64 - 16, 4096, W)]);
    add_chain(&r.rx, 3, &[(BUF + 0x1000, 4096, W)]);
    for seed in 0..4 {
        peer_send(&peer, &frame(0, 100, seed));
    }
    net.process_host_event(0);
    assert_eq!(
        used(&r.rx),
        vec![(0, 0), (1, 0), (2, 0), (3, (VNET_HDR_LEN + 100) as u32)]
    );
    assert_eq!(net.bad_chains(), (4, 3));
    let mut got = vec![0u8; 100];
    r.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x1000 + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, frame(0, 100, 3)[VNET_HDR_LEN..]);
}

#[test]
fn impossible_avail_index_stops_the_device_until_reset() {
    let mem = new_mem();
    let (mut net, r, peer) = rig(&mem);
    r.tx.avail().idx().store(QUEUE_SIZE + 5);
    net.process_queue(TX_QUEUE);
    net.process_queue(RX_QUEUE);
    net.process_queue(7);
    assert!(used(&r.tx).is_empty());
    peer_send(&peer, &frame(0, 10, 0));
    net.process_host_event(0);
    net.process_host_event(3);
    net.reset();
    net.process_queue(TX_QUEUE);
    net.process_host_event(0);
}

#[test]
fn events_before_activation_are_harmless() {
    let (a, peer) = socketpair();
    let mut net = Net::with_tap(Tap::from_socket(a, "t").unwrap(), MAC, true);
    peer_send(&peer, &frame(0, 10, 0));
    net.process_host_event(0);
    net.process_queue(TX_QUEUE);
    assert_eq!(net.host_fds().len(), 1);
}

#[test]
fn short_reads_and_a_closed_peer_end_the_rx_loop() {
    let mem = new_mem();
    let (mut net, r, peer) = rig(&mem);
    add_chain(&r.rx, 0, &[(BUF, 4096, W)]);
    peer_send(&peer, &[1, 2, 3]); // shorter than the header: dropped
    drop(peer);
    net.process_host_event(0);
    assert!(used(&r.rx).is_empty());
}
