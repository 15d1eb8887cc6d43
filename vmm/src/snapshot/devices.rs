//! The devices' state in a snapshot: the UART's registers (vm-superio's
//! `SerialState`, through a serde remote definition) and each virtio-mmio
//! transport's (`devices::virtio::mmio::TransportState`, with its queues
//! and its device's own state).

use std::sync::Mutex;

use devices::serial::SerialDevice;
use devices::virtio::mmio::TransportState;
use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

use super::{Loaded, SnapshotError};
use crate::vm::Transport;

/// vm-superio's `SerialState`, for serde.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// Every device's state, in slot order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStates {
    /// The serial port.
    #[serde(with = "SerialStateDef")]
    pub serial: SerialState,
    virtio: Vec<TransportState>,
}

impl DeviceStates {
    /// Reads the devices of a stopped VM; a device whose state is not
    /// saved yet is an error naming it.
    pub fn save(
        serial: &Mutex<SerialDevice>,
        transports: &[Transport],
    ) -> Result<DeviceStates, SnapshotError> {
        let serial = serial.lock().unwrap_or_else(|e| e.into_inner()).state();
        let virtio = transports
            .iter()
            .map(|t| {
                t.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .save_state()
                    .map_err(SnapshotError::Device)
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
        t.lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore_state(s)
            .map_err(SnapshotError::Device)?;
    }
    Ok(())
}
