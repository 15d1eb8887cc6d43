//! A console's state in a snapshot: which ports the guest has open, what
//! the host side has told it, input not yet delivered and control messages
//! not yet sent. The host ends (sinks, input fds) are the restoring
//! minivm's own; the ports must be the same, by name and in order.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

use super::{role, Console, QueueRole};
use crate::virtio::DeviceState;

/// One port's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortState {
    /// The port's name, checked on restore.
    pub name: String,
    /// The guest has the port open.
    pub guest_open: bool,
    /// The guest was told that the host side closed.
    pub eof_sent: bool,
    /// Host input read but not yet in a guest buffer.
    pub pending: Vec<u8>,
}

/// A console's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// Each port, in order.
    pub ports: Vec<PortState>,
    /// Control messages waiting for control rx buffers.
    pub ctrl_out: Vec<Vec<u8>>,
}

impl Console {
    /// Every queue's position, in queue-index order, while activated.
    pub(super) fn saved_queues(&self) -> Option<Vec<QueueState>> {
        let a = self.active.as_ref()?;
        (0..self.virtio.queue_sizes.len())
            .map(|i| match role(i) {
                QueueRole::PortRx(p) => a.port_rx.get(p).map(|q| q.queue.state()),
                QueueRole::PortTx(p) => a.port_tx.get(p).map(|q| q.state()),
                QueueRole::CtrlRx => Some(a.ctrl_rx.queue.state()),
                QueueRole::CtrlTx => Some(a.ctrl_tx.state()),
            })
            .collect()
    }

    pub(super) fn saved_state(&self) -> DeviceState {
        DeviceState::Console(ConsoleState {
            ports: self
                .ports
                .iter()
                .map(|p| PortState {
                    name: p.name.clone(),
                    guest_open: p.guest_open,
                    eof_sent: p.eof_sent,
                    pending: p.pending.iter().copied().collect(),
                })
                .collect(),
            ctrl_out: self.ctrl_out.iter().cloned().collect(),
        })
    }

    pub(super) fn restore_saved(&mut self, state: &DeviceState) -> Result<(), String> {
        let DeviceState::Console(s) = state else {
            return Err("virtio-console: the saved state is another device's".into());
        };
        let names = |v: Vec<&str>| v.join(", ");
        let saved: Vec<&str> = s.ports.iter().map(|p| p.name.as_str()).collect();
        let here: Vec<&str> = self.ports.iter().map(|p| p.name.as_str()).collect();
        if saved != here {
            return Err(format!(
                "virtio-console: saved ports [{}], set up [{}]",
                names(saved),
                names(here)
            ));
        }
        for (p, saved) in self.ports.iter_mut().zip(&s.ports) {
            p.guest_open = saved.guest_open;
            p.eof_sent = saved.eof_sent;
            p.pending = saved.pending.iter().copied().collect();
        }
        self.ctrl_out = s.ctrl_out.iter().cloned().collect();
        Ok(())
    }
}
