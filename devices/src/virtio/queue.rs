//! Serving one activated request queue: the part every request/response
//! device (virtio-blk, virtio-rng) shares. The device supplies what a chain
//! means; this module owns the ring protocol around it.

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{Interrupt, INTERRUPT_STATUS_USED_RING};
use crate::GuestMemory;

/// A queue between activation and reset, with the memory and interrupt it
/// was activated with.
pub(crate) struct ActiveQueue {
    /// Device name for log lines.
    name: &'static str,
    mem: Arc<GuestMemory>,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    /// Set when the driver broke the ring protocol; serving stops until reset.
    broken: bool,
}

impl ActiveQueue {
    pub(crate) fn new(
        name: &'static str,
        mem: Arc<GuestMemory>,
        queue: Queue,
        interrupt: Arc<Interrupt>,
    ) -> ActiveQueue {
        ActiveQueue {
            name,
            mem,
            queue,
            interrupt,
            broken: false,
        }
    }

    /// The queue's positions (for a snapshot).
    pub(crate) fn state(&self) -> virtio_queue::QueueState {
        self.queue.state()
    }

    /// Serves every available chain with `handle`, which returns the chain's
    /// used length: drains with notifications suppressed, re-enables them and
    /// repeats if the driver added buffers meanwhile, then interrupts if the
    /// driver asked for it (EVENT_IDX) or always (without EVENT_IDX). A driver
    /// that breaks the ring protocol stops the queue until reset.
    pub(crate) fn serve(
        &mut self,
        mut handle: impl FnMut(&GuestMemory, DescriptorChain<&GuestMemory>) -> u32,
    ) {
        if self.broken {
            return;
        }
        let mut used = false;
        if let Err(e) = self.drain(&mut handle, &mut used) {
            tracing::error!("{}: queue stopped until reset: {e}", self.name);
            self.broken = true;
        }
        // Chains completed before an error still deserve their interrupt.
        if used {
            self.signal_used();
        }
    }

    fn drain(
        &mut self,
        handle: &mut impl FnMut(&GuestMemory, DescriptorChain<&GuestMemory>) -> u32,
        used: &mut bool,
    ) -> Result<(), virtio_queue::Error> {
        let mem = &*self.mem;
        loop {
            self.queue.disable_notification(mem)?;
            loop {
                // `iter` re-reads avail.idx and fails on one more than a
                // queue's worth ahead of us: a broken or hostile driver.
                // Bound to a local so the iterator's borrow of the queue ends here.
                let next = self.queue.iter(mem)?.next();
                let Some(chain) = next else { break };
                let head = chain.head_index();
                let len = handle(mem, chain);
                match self.queue.add_used(mem, head, len) {
                    Ok(()) => *used = true,
                    // E.g. a head index beyond the queue: skip it, the ring moved on.
                    Err(e) => {
                        crate::guest_warn!(
                            "{}: adding chain {head} to the used ring: {e}",
                            self.name
                        )
                    }
                }
            }
            if !self.queue.enable_notification(mem)? {
                return Ok(());
            }
        }
    }

    fn signal_used(&mut self) {
        match self.queue.needs_notification(&*self.mem) {
            Ok(false) => {}
            Ok(true) => self.interrupt.trigger(INTERRUPT_STATUS_USED_RING),
            Err(e) => {
                // Better a spurious interrupt than a hung guest.
                crate::guest_warn!("{}: reading used_event: {e}", self.name);
                self.interrupt.trigger(INTERRUPT_STATUS_USED_RING);
            }
        }
    }
}
