//! The device-side contract of a virtio device ([`VirtioDevice`]) and the
//! part of it every device answers the same way ([`VirtioConfig`]).

use std::os::fd::RawFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::block::backend::Backend;
use super::console::ConsoleState;
use super::{ActivateError, Interrupt};
use crate::GuestMemory;

/// What a device saves in a snapshot beyond its queues' positions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// Nothing: the queues are all its state (virtio-rng, virtio-blk, whose
    /// disk contents are saved beside the snapshot), or it was not active.
    #[default]
    Queues,
    /// A virtio-console's ports.
    Console(ConsoleState),
}

/// What the transport asks of every device that devices answer alike:
/// identity, queue sizes, features offered and accepted, and a
/// configuration space the driver only reads.
#[derive(Debug, Clone)]
pub struct VirtioConfig {
    /// Name in log lines, e.g. `virtio-blk`.
    pub name: &'static str,
    /// Virtio device id (`virtio_ids::VIRTIO_ID_*`).
    pub device_type: u32,
    /// Maximum size of each queue; the length is the number of queues.
    pub queue_sizes: Vec<u16>,
    /// Feature bits offered to the driver.
    pub avail_features: u64,
    /// Feature bits the driver accepted (0 until it does, and after a reset).
    pub acked_features: u64,
    /// The device configuration space.
    pub config_space: Vec<u8>,
}

impl VirtioConfig {
    /// A device's fixed answers; nothing accepted yet.
    pub fn new(
        name: &'static str,
        device_type: u32,
        queue_sizes: Vec<u16>,
        avail_features: u64,
        config_space: Vec<u8>,
    ) -> VirtioConfig {
        VirtioConfig {
            name,
            device_type,
            queue_sizes,
            avail_features,
            acked_features: 0,
            config_space,
        }
    }

    /// Refuses an activation with another number of queues than the device has.
    pub fn check_queues(&self, queues: &[Queue]) -> Result<(), ActivateError> {
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        Ok(())
    }
}

/// Device logic behind a virtio transport. The identity, feature and
/// configuration-space methods have defaults over [`VirtioConfig`].
pub trait VirtioDevice: Send {
    /// The device's common answers.
    fn virtio_config(&self) -> &VirtioConfig;
    /// The same, to record accepted features.
    fn virtio_config_mut(&mut self) -> &mut VirtioConfig;
    /// Virtio device id (`virtio_ids::VIRTIO_ID_*`).
    fn device_type(&self) -> u32 {
        self.virtio_config().device_type
    }
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        &self.virtio_config().queue_sizes
    }
    /// Feature bits offered to the driver (the transport adds `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64 {
        self.virtio_config().avail_features
    }
    /// Feature bits the driver accepted (kept as a subset of `features()`).
    fn ack_features(&mut self, features: u64) {
        let c = self.virtio_config_mut();
        c.acked_features = features & c.avail_features;
    }
    /// Reads device configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.virtio_config().config_space, offset, data);
    }
    /// Writes device configuration space; unknown or read-only fields are
    /// ignored (no device here has a field the driver may write).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "{}: config write of {} bytes at {offset:#x} ignored",
            self.virtio_config().name,
            data.len()
        );
    }
    /// Starts the device with the driver's queues (all `is_valid`).
    fn activate(
        &mut self,
        mem: Arc<GuestMemory>,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// Serves queue `index` after the driver notified it. Never panics on guest data.
    fn process_queue(&mut self, index: usize);
    /// Stops the device (driver wrote Status = 0); it can be activated again.
    fn reset(&mut self);
    /// The vCPUs have stopped for good: finish what the guest queued but the
    /// event loop had not served yet (e.g. a console's last output).
    fn vcpus_stopped(&mut self) {}
    /// The live positions of the device's queues, for a snapshot, while
    /// it is activated; `None` for a device whose state is not saved (a
    /// snapshot with it is refused). Devices whose only state is their
    /// queues (virtio-rng) answer it.
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        None
    }
    /// The device's own state for a snapshot, read while it is activated.
    fn device_state(&self) -> DeviceState {
        DeviceState::Queues
    }
    /// Takes back [`Self::device_state`]'s answer after the device was
    /// activated with its saved queues; a state of another kind is refused.
    fn restore_device_state(&mut self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Queues => Ok(()),
            _ => Err(format!(
                "{}: the saved state is another device's",
                self.virtio_config().name
            )),
        }
    }
    /// A disk's storage, whose contents a snapshot saves; `None` for
    /// devices without one.
    fn disk_backend(&self) -> Option<&Backend> {
        None
    }
    /// Doorbells the device waits on in a thread of its own, one eventfd per
    /// queue: the transport gives them to KVM as the queues' ioeventfds and
    /// does not watch them in the event loop, so a guest's notification
    /// wakes the device's thread directly. `None` (the default): the
    /// transport makes its own and calls [`Self::process_queue`] from the
    /// event loop.
    fn queue_doorbells(&self) -> Option<Vec<EventFd>> {
        None
    }
    /// Host fds (e.g. a tap) the event loop watches for this device,
    /// edge-triggered for input; each event calls [`Self::process_host_event`]
    /// with the fd's index here. The fds must stay open as long as the device.
    fn host_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Host fd `index` of [`Self::host_fds`] became readable (whether or not
    /// the device is active). Never panics.
    fn process_host_event(&mut self, index: usize) {
        tracing::debug!("virtio: unexpected host event {index}");
    }
}
