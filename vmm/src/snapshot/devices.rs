//! The devices' state in a snapshot: the UART's registers and each
//! virtio-mmio transport's (with its queues), as serde mirrors of
//! vm-superio's and virtio-queue's types.

use std::sync::Mutex;

use devices::serial::SerialDevice;
use devices::virtio::mmio::TransportState;
use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

use super::{Loaded, SnapshotError};
use crate::vm::Transport;

/// The UART's registers (vm-superio's `SerialState`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SerialState {
    regs: [u8; 9],
    in_buffer: Vec<u8>,
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        SerialState {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        let r = s.regs;
        vm_superio::serial::SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// One queue (virtio-queue's `QueueState`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct QueueRecord {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// One virtio-mmio transport (`devices::virtio::mmio::TransportState`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VirtioRecord {
    device_type: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    interrupt_status: u32,
    activated: bool,
    queues: Vec<QueueRecord>,
}

/// Every device's state, in slot order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStates {
    /// The serial port.
    pub serial: SerialState,
    virtio: Vec<VirtioRecord>,
}

impl DeviceStates {
    /// Reads the devices of a stopped VM; a device whose state is not
    /// saved yet is an error naming it.
    pub fn save(
        serial: &Mutex<SerialDevice>,
        transports: &[Transport],
    ) -> Result<DeviceStates, SnapshotError> {
        let serial = serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state()
            .into();
        let virtio = transports
            .iter()
            .map(|t| {
                let s = t
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .save_state()
                    .map_err(SnapshotError::Device)?;
                Ok(VirtioRecord {
                    device_type: s.device_type,
                    device_features_sel: s.device_features_sel,
                    driver_features_sel: s.driver_features_sel,
                    driver_features: s.driver_features,
                    queue_sel: s.queue_sel,
                    status: s.status,
                    config_generation: s.config_generation,
                    interrupt_status: s.interrupt_status,
                    activated: s.activated,
                    queues: s
                        .queues
                        .iter()
                        .map(|q| QueueRecord {
                            max_size: q.max_size,
                            next_avail: q.next_avail,
                            next_used: q.next_used,
                            event_idx: q.event_idx_enabled,
                            size: q.size,
                            ready: q.ready,
                            desc_table: q.desc_table,
                            avail_ring: q.avail_ring,
                            used_ring: q.used_ring,
                        })
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>, SnapshotError>>()?;
        Ok(DeviceStates { serial, virtio })
    }
}

/// Puts the restored VM's fresh transports (made by the same set-up, so in
/// the same order) in their saved states.
pub fn restore_devices(loaded: &Loaded, transports: &[Transport]) -> Result<(), SnapshotError> {
    let saved = &loaded.snapshot.devices.virtio;
    if saved.len() != transports.len() {
        return Err(SnapshotError::Device(format!(
            "{} virtio devices saved, {} set up",
            saved.len(),
            transports.len()
        )));
    }
    for (t, s) in transports.iter().zip(saved) {
        let state = TransportState {
            device_type: s.device_type,
            device_features_sel: s.device_features_sel,
            driver_features_sel: s.driver_features_sel,
            driver_features: s.driver_features,
            queue_sel: s.queue_sel,
            status: s.status,
            config_generation: s.config_generation,
            interrupt_status: s.interrupt_status,
            activated: s.activated,
            queues: s
                .queues
                .iter()
                .map(|q| QueueState {
                    max_size: q.max_size,
                    next_avail: q.next_avail,
                    next_used: q.next_used,
                    event_idx_enabled: q.event_idx,
                    size: q.size,
                    ready: q.ready,
                    desc_table: q.desc_table,
                    avail_ring: q.avail_ring,
                    used_ring: q.used_ring,
                })
                .collect(),
        };
        t.lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore_state(&state)
            .map_err(SnapshotError::Device)?;
    }
    Ok(())
}
