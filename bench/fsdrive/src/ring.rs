//! The driver's side of a split virtqueue, as a guest's virtio-fs driver
//! keeps it: a descriptor table, an avail ring it writes, a used ring it
//! reads. One chain is in flight at a time (a guest process making one
//! system call after another), always in descriptors `0..n`.

use std::sync::atomic::Ordering;

use devices::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

/// Entries per queue (what Linux uses for virtio-fs, and both servers offer).
pub const QUEUE_SIZE: u16 = 1024;
const DESC_LEN: u64 = 16;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// Guest memory a queue's three areas take, from its base.
pub const RING_SPAN: u64 = 0x10000;

/// One buffer of a chain: guest address, length, and whether the device
/// writes it (a reply) or reads it (a request).
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

/// A split virtqueue laid out from `base`.
pub struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    last_used: u16,
}

impl Ring {
    /// A queue whose descriptor table starts at `base` (areas aligned as
    /// virtio 1.2 2.7 requires; all within [`RING_SPAN`]).
    pub fn new(base: u64) -> Ring {
        let desc = base;
        let avail = desc + DESC_LEN * u64::from(QUEUE_SIZE);
        // avail: flags, idx, ring[size], used_event.
        let used = (avail + 6 + 2 * u64::from(QUEUE_SIZE) + 0xfff) & !0xfff;
        assert!(used + 6 + 8 * u64::from(QUEUE_SIZE) <= base + RING_SPAN);
        Ring {
            desc,
            avail,
            used,
            next_avail: 0,
            last_used: 0,
        }
    }

    /// Guest addresses of the descriptor table, avail ring and used ring.
    pub fn areas(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// The device-side `Queue` a transport would hand the device once the
    /// driver set it ready (no EVENT_IDX: the device notifies every time).
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("queue size is a power of two");
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_event_idx(false);
        q.set_ready(true);
        q
    }

    /// Writes the chain `bufs` and makes it available.
    pub fn submit(
        &mut self,
        mem: &GuestMemory,
        bufs: &[Buf],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        for (i, b) in bufs.iter().enumerate() {
            let at = GuestAddress(self.desc + DESC_LEN * i as u64);
            let mut flags = if b.device_writes {
                VRING_DESC_F_WRITE
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            mem.write_obj(b.addr, at)?;
            mem.write_obj(b.len, at.unchecked_add(8))?;
            mem.write_obj(flags, at.unchecked_add(12))?;
            mem.write_obj((i + 1) as u16, at.unchecked_add(14))?;
        }
        let slot = u64::from(self.next_avail % QUEUE_SIZE);
        mem.write_obj(0u16, GuestAddress(self.avail + 4 + 2 * slot))?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The index last, after the entry it publishes (virtio 1.2 2.7.13).
        mem.store(
            self.next_avail,
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
    }

    /// The length the device wrote for the next used chain, if it has
    /// returned one.
    pub fn take_used(
        &mut self,
        mem: &GuestMemory,
    ) -> Result<Option<u32>, vm_memory::GuestMemoryError> {
        let idx: u16 = mem.load(GuestAddress(self.used + 2), Ordering::Acquire)?;
        if idx == self.last_used {
            return Ok(None);
        }
        let slot = u64::from(self.last_used % QUEUE_SIZE);
        let len: u32 = mem.read_obj(GuestAddress(self.used + 4 + 8 * slot + 4))?;
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueOwnedT;

    #[test]
    fn a_device_queue_sees_the_chain_the_driver_submits() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
        let mut ring = Ring::new(0x10000);
        let mut q = ring.device_queue();
        let bufs = [
            Buf {
                addr: 0x30000,
                len: 40,
                device_writes: false,
            },
            Buf {
                addr: 0x31000,
                len: 4096,
                device_writes: true,
            },
        ];
        for round in 0..3u32 {
            ring.submit(&mem, &bufs).unwrap();
            assert_eq!(ring.take_used(&mem).unwrap(), None);
            let chain = q.iter(&mem).unwrap().next().expect("one chain");
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            assert_eq!(descs.len(), 2);
            assert_eq!(
                (descs[0].addr().0, descs[0].len(), descs[0].is_write_only()),
                (0x30000, 40, false)
            );
            assert_eq!(
                (descs[1].addr().0, descs[1].len(), descs[1].is_write_only()),
                (0x31000, 4096, true)
            );
            q.add_used(&mem, head, 16 + round).unwrap();
            assert_eq!(ring.take_used(&mem).unwrap(), Some(16 + round));
            assert_eq!(ring.take_used(&mem).unwrap(), None);
        }
    }
}
