//! Helpers for device tests over virtio-queue's mock split queues.

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;

use crate::bus::BusDevice;
use crate::virtio::mmio::MmioTransport;
use crate::GuestMemory;

/// Appends to the avail ring a chain of `descs` (`(addr, len, flags)`, NEXT
/// added where another follows) that occupies descriptors `first..`.
pub(crate) fn add_chain(mq: &MockSplitQueue<GuestMemory>, first: u16, descs: &[(u64, u32, u16)]) {
    mq.add_desc_chains(&chain_descriptors(first, descs), first)
        .unwrap();
}

/// The descriptors of such a chain, linked in order from `first`.
pub(crate) fn chain_descriptors(first: u16, descs: &[(u64, u32, u16)]) -> Vec<RawDescriptor> {
    let n = descs.len() as u16;
    descs
        .iter()
        .enumerate()
        .map(|(i, &(a, l, f))| {
            let i = i as u16;
            let flags = if i + 1 < n {
                f | VRING_DESC_F_NEXT as u16
            } else {
                f
            };
            SplitDescriptor::new(a, l, flags, first + i + 1).into()
        })
        .collect()
}

/// Writes a 32-bit virtio-mmio register, as a driver does.
pub(crate) fn reg_write(t: &mut MmioTransport, reg: u32, v: u32) {
    t.write(u64::from(reg), &v.to_le_bytes());
}

/// Reads a 32-bit virtio-mmio register, as a driver does.
pub(crate) fn reg_read(t: &mut MmioTransport, reg: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(reg), &mut b);
    u32::from_le_bytes(b)
}
