//! virtio-rng: an entropy device whose single request queue the host fills
//! from its own `getrandom(2)`.
//!
//! The driver posts chains of device-writable buffers; each chain gets up to
//! [`MAX_BYTES_PER_CHAIN`] random bytes and a used length equal to what was
//! written. A chain the device cannot serve (a device-readable descriptor, a
//! buffer outside guest memory, too many descriptors) is returned with used
//! length 0 and a rate-limited warning: the driver then simply asks again.
//! Requests are served inline on the event loop, like virtio-blk's.

#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _};

use super::queue::ActiveQueue;
use super::{ActivateError, Interrupt, VirtioConfig, VirtioDevice};
use crate::GuestMemory;

/// Size of the request queue (Linux keeps one request in flight).
pub const QUEUE_SIZE: u16 = 64;
/// Most random bytes one chain gets; the rest of its buffers stay untouched.
pub const MAX_BYTES_PER_CHAIN: usize = 64 * 1024;
/// Most descriptors accepted in one chain.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// Why a chain was not served (logged; the guest sees used length 0), or
/// why the host could not supply entropy.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The device only writes; a device-readable buffer is a driver bug.
    #[error("descriptor {index} of the chain is device-readable")]
    ReadOnlyDescriptor {
        /// Position of the descriptor in the chain.
        index: usize,
    },
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is not in guest memory")]
    OutOfMemory {
        /// Guest-physical start of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// More descriptors than the device accepts in one chain.
    #[error("chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// Writing the random bytes into guest memory failed.
    #[error("writing guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The host's getrandom(2) failed.
    #[error("getrandom: {0}")]
    Entropy(#[source] std::io::Error),
}

/// What the device has served since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RngStats {
    /// Random bytes written into guest buffers.
    pub bytes: u64,
    /// Chains served with at least one byte.
    pub requests: u64,
    /// Chains returned with used length 0 because they were malformed or the
    /// host could not supply entropy.
    pub rejected: u64,
}

/// A virtio entropy device (device id 4) with one request queue.
pub struct Rng {
    virtio: VirtioConfig,
    /// The request queue, between activation and reset.
    active: Option<ActiveQueue>,
    /// Host buffer the random bytes go through on their way to the guest.
    buf: Vec<u8>,
    stats: RngStats,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// Creates an idle device; it needs no host resources but a buffer.
    pub fn new() -> Rng {
        Rng {
            // virtio-rng has no configuration space.
            virtio: VirtioConfig::new(
                "virtio-rng",
                VIRTIO_ID_RNG,
                vec![QUEUE_SIZE],
                (1u64 << VIRTIO_F_VERSION_1)
                    | (1u64 << VIRTIO_RING_F_EVENT_IDX)
                    | (1u64 << VIRTIO_RING_F_INDIRECT_DESC),
                Vec::new(),
            ),
            active: None,
            buf: vec![0; MAX_BYTES_PER_CHAIN],
            stats: RngStats::default(),
        }
    }

    /// What the device has served so far.
    pub fn stats(&self) -> RngStats {
        self.stats
    }
}

impl Drop for Rng {
    fn drop(&mut self) {
        let s = self.stats;
        tracing::info!(
            "virtio-rng: served {} bytes in {} requests ({} rejected)",
            s.bytes,
            s.requests,
            s.rejected
        );
    }
}

impl VirtioDevice for Rng {
    fn virtio_config(&self) -> &VirtioConfig {
        &self.virtio
    }

    fn virtio_config_mut(&mut self) -> &mut VirtioConfig {
        &mut self.virtio
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemory>,
        mut queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.virtio.check_queues(&queues)?;
        self.active = Some(ActiveQueue::new(
            "virtio-rng",
            mem,
            queues.remove(0),
            interrupt,
        ));
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 {
            crate::guest_warn!("virtio-rng: notify of non-existent queue {index}");
            return;
        }
        let Some(active) = self.active.as_mut() else {
            tracing::debug!("virtio-rng: notify before activation ignored");
            return;
        };
        let mut filler = Filler {
            buf: &mut self.buf,
            stats: &mut self.stats,
        };
        active.serve(|mem, chain| filler.serve(mem, chain));
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        // Not activated: nothing but the transport's registers to save.
        Some(self.active.iter().map(ActiveQueue::state).collect())
    }

    fn reset(&mut self) {
        self.active = None;
        self.virtio.acked_features = 0;
    }
}

/// Serves chains: the device's buffer and counters.
struct Filler<'a> {
    buf: &'a mut [u8],
    stats: &'a mut RngStats,
}

impl Filler<'_> {
    /// Serves one chain and returns its used length (0 when it was rejected).
    fn serve(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
        match fill_chain(mem, chain, self.buf) {
            Ok(0) => 0,
            Ok(n) => {
                self.stats.bytes += n as u64;
                self.stats.requests += 1;
                n as u32
            }
            Err(e) => {
                self.stats.rejected += 1;
                crate::guest_warn!("virtio-rng: {e}");
                0
            }
        }
    }
}

/// Checks every descriptor of `chain`, then fills its buffers in order with
/// random bytes, at most `buf.len()` in all. Returns the number written.
fn fill_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8],
) -> Result<usize, RngError> {
    let mut buffers: Vec<(GuestAddress, u32)> = Vec::new();
    for (index, d) in chain.enumerate() {
        if index >= MAX_DESCRIPTORS {
            return Err(RngError::TooManyDescriptors);
        }
        if !d.is_write_only() {
            return Err(RngError::ReadOnlyDescriptor { index });
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(RngError::OutOfMemory {
                addr: d.addr().raw_value(),
                len: d.len(),
            });
        }
        buffers.push((d.addr(), d.len()));
    }
    let mut written = 0usize;
    for (addr, len) in buffers {
        let n = (len as usize).min(buf.len() - written);
        if n == 0 {
            continue;
        }
        let chunk = &mut buf[written..written + n];
        getrandom(chunk).map_err(RngError::Entropy)?;
        mem.write_slice(chunk, addr)?;
        written += n;
    }
    Ok(written)
}

/// Fills `buf` from the host's getrandom(2), retrying short reads and EINTR.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`,
        // a live, exclusively borrowed buffer.
        let r = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += r as usize;
    }
    Ok(())
}
