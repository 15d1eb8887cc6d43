//! Virtio devices: the device-side contract ([`VirtioDevice`]) and the
//! virtio-mmio transport that exposes a device to the guest.
//!
//! The transport owns the register file, the feature/status handshake and the
//! queue configuration; a device only sees activated queues and requests.

pub mod block;
pub mod console;
mod device;
pub mod fs;
pub mod mmio;
#[cfg(test)]
pub(crate) mod mock;
pub mod net;
mod queue;
pub mod rng;

use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

pub use device::{DeviceState, VirtioConfig, VirtioDevice};

/// `VIRTIO_MMIO_INT_VRING`: the device used buffers.
pub const INTERRUPT_STATUS_USED_RING: u32 = 0x1;
/// `VIRTIO_MMIO_INT_CONFIG`: the configuration space changed.
pub const INTERRUPT_STATUS_CONFIG_CHANGED: u32 = 0x2;

/// Errors a device reports when it cannot be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    /// The device failed to set up its backend.
    #[error("device backend: {0}")]
    Backend(String),
}

/// The interrupt line of one virtio-mmio device: the InterruptStatus register
/// and the irqfd that raises the guest interrupt.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    /// Wraps an irqfd (registered with KVM by the VMM).
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Sets `bits` in InterruptStatus and raises the interrupt.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            crate::guest_warn!("virtio interrupt: irqfd write failed: {e}");
        }
    }

    /// Current InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Sets InterruptStatus to a saved value, without raising the
    /// interrupt (a restored VM's interrupt controllers hold its state).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// Clears `bits` (the driver's InterruptACK write).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears everything (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The irqfd, for registration with KVM.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// Copies configuration space `config` from `offset` into `data`; bytes past
/// its end (or an absurd offset) read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
