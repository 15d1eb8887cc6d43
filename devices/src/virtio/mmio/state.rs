//! The transport's state for a snapshot, and restoring it into a fresh
//! transport around the same kind of device.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::MmioTransport;
use crate::virtio::DeviceState;

/// A transport's registers and queues, and its device's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The device behind it (`virtio_ids::VIRTIO_ID_*`), checked on restore.
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Status.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Whether the device was activated (then `queues` are its live ones).
    pub activated: bool,
    /// Each queue: the device's own positions when activated, else the
    /// driver's set-up so far.
    #[serde(with = "queue_list")]
    pub queues: Vec<QueueState>,
    /// What the device holds beyond its queues (when activated).
    pub device: DeviceState,
}

/// virtio-queue's `QueueState`, for serde.
#[derive(Serialize, Deserialize)]
#[serde(remote = "QueueState")]
struct QueueStateDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

mod queue_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use virtio_queue::QueueState;

    #[derive(Serialize, Deserialize)]
    struct Q(#[serde(with = "super::QueueStateDef")] QueueState);

    pub fn serialize<S: Serializer>(v: &[QueueState], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|q| Q(*q)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<QueueState>, D::Error> {
        Ok(Vec::<Q>::deserialize(d)?.into_iter().map(|q| q.0).collect())
    }
}

impl MmioTransport {
    /// The transport's state; an error names a device whose state is not
    /// saved yet.
    pub fn save_state(&self) -> Result<TransportState, String> {
        let name = self.device.virtio_config().name;
        let device = if self.activated {
            self.device.device_state()
        } else {
            DeviceState::Queues
        };
        let queues = if self.activated {
            let live = self
                .device
                .queue_states()
                .ok_or_else(|| format!("{name}: its state is not saved yet"))?;
            if live.len() != self.queues.len() {
                return Err(format!(
                    "{name}: {} of {} queues",
                    live.len(),
                    self.queues.len()
                ));
            }
            live
        } else {
            self.queues.iter().map(Queue::state).collect()
        };
        Ok(TransportState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
            queues,
            device,
        })
    }

    /// Puts a fresh transport (same kind of device, not yet used) in the
    /// saved state; an activated device is activated again with its queues
    /// where they were and its own state, then served once: the guest may
    /// have queued buffers that the saved VM's device had not seen yet.
    pub fn restore_state(&mut self, s: &TransportState) -> Result<(), String> {
        let name = self.device.virtio_config().name;
        if s.device_type != self.device.device_type() || s.queues.len() != self.queues.len() {
            return Err(format!(
                "{name}: saved state is of device type {} with {} queues",
                s.device_type,
                s.queues.len()
            ));
        }
        // `Queue` is not `Clone`: the transport and the device get one each.
        let build = || {
            s.queues
                .iter()
                .map(|q| Queue::try_from(*q).map_err(|e| format!("{name}: saved queue: {e}")))
                .collect::<Result<Vec<Queue>, String>>()
        };
        let queues = build()?;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.interrupt.set_status(s.interrupt_status);
        if s.activated {
            self.device
                .ack_features(s.driver_features & self.device.features());
            self.device
                .activate(self.mem.clone(), build()?, self.interrupt.clone())
                .map_err(|e| format!("{name}: {e}"))?;
            self.activated = true;
            self.device.restore_device_state(&s.device)?;
            for q in 0..s.queues.len() {
                self.device.process_queue(q);
            }
        }
        self.queues = queues;
        Ok(())
    }
}
