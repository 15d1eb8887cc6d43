//! virtio-net over a host TAP device.
//!
//! [`Net`] has one receive queue (0) and one transmit queue (1). Both are
//! served on the VMM's event loop, never on a thread per packet:
//! - TX: a notify of queue 1 gathers each chain (virtio-net header + frame)
//!   into one buffer and writes it to the tap in one `write`.
//! - RX: the tap fd is watched edge-triggered ([`VirtioDevice::host_fds`]);
//!   when it is readable, frames are read until `EAGAIN` and each is written
//!   into the next RX chain. With no RX buffer left, the frame read is held
//!   and the device waits for the driver's notify of queue 0.
//!
//! The 12-byte header (`struct virtio_net_hdr_v1`) passes through unchanged:
//! the tap is set to the same size (`TUNSETVNETHDRSZ`). Checksum and TSO
//! offloads are offered when the tap accepts them and switched on in the tap
//! (`TUNSETOFFLOAD`) as the driver accepts them.
//!
//! Guest garbage (wrong-direction or too-short chains, buffers outside
//! memory) is dropped with a counted, rate-limited warning.

pub mod chain;
pub mod tap;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use self::chain::MAX_FRAME_LEN;
use self::tap::{Tap, TapError, OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, VNET_HDR_LEN};
use super::{ActivateError, Interrupt, VirtioConfig, VirtioDevice, INTERRUPT_STATUS_USED_RING};
use crate::GuestMemory;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// `struct virtio_net_config` up to `mtu`: mac[6], status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened or configured.
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// A counter of one kind of trouble that logs the first few and then every
/// power of two, so a hostile guest cannot flood the log.
#[derive(Debug, Default)]
struct Trouble {
    count: u64,
}

impl Trouble {
    fn note(&mut self, tap: &str, what: &str, why: &dyn std::fmt::Display) {
        self.count += 1;
        let n = self.count;
        if crate::log::is_logged(n) {
            tracing::warn!("virtio-net {tap}: {what}: {why} ({n} so far)");
        }
    }
}

/// Counters of dropped frames, for logs and tests.
#[derive(Debug, Default)]
struct Counters {
    /// TX chains dropped for what the guest put in them.
    bad_tx: Trouble,
    /// RX chains returned unused for what the guest put in them.
    bad_rx: Trouble,
    /// Tap reads and writes that failed.
    tap: Trouble,
}

/// State that exists only between activation and reset.
struct Active {
    mem: Arc<GuestMemory>,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
    /// Set when the driver broke the ring protocol; serving stops until reset.
    broken: bool,
}

/// A virtio-net device bound to one tap.
pub struct Net {
    tap: Tap,
    virtio: VirtioConfig,
    active: Option<Active>,
    /// A frame read from the tap (`rx_buf[..rx_pending]`) waiting for an RX buffer.
    rx_pending: usize,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    counters: Counters,
}

impl Net {
    /// Opens (or creates) tap `name`; `mac` defaults to [`tap::default_mac`].
    pub fn new(name: &str, mac: Option<[u8; 6]>) -> Result<Net, NetError> {
        let tap = Tap::open(name)?;
        // Probe: offer offloads only if the tap takes them, then start with none.
        let offloads = tap
            .set_offload(OFFLOAD_CSUM | OFFLOAD_TSO4 | OFFLOAD_TSO6)
            .and_then(|()| tap.set_offload(0));
        if let Err(e) = &offloads {
            tracing::info!("virtio-net {name}: no checksum/TSO offloads: {e}");
        }
        let mac = mac.unwrap_or_else(|| tap::default_mac(name));
        Ok(Net::with_tap(tap, mac, offloads.is_ok()))
    }

    /// A device over an already open tap (or a stand-in for tests).
    pub fn with_tap(tap: Tap, mac: [u8; 6], offloads: bool) -> Net {
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_NET_F_MAC)
            | (1u64 << VIRTIO_NET_F_STATUS)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC);
        if offloads {
            avail_features |= (1u64 << VIRTIO_NET_F_CSUM)
                | (1u64 << VIRTIO_NET_F_HOST_TSO4)
                | (1u64 << VIRTIO_NET_F_HOST_TSO6)
                | (1u64 << VIRTIO_NET_F_GUEST_CSUM)
                | (1u64 << VIRTIO_NET_F_GUEST_TSO4)
                | (1u64 << VIRTIO_NET_F_GUEST_TSO6);
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        Net {
            tap,
            // The MAC is writable only by legacy drivers (VIRTIO_NET_F_CTRL_MAC_ADDR
            // era); a VERSION_1 device treats the config space as read-only.
            virtio: VirtioConfig::new(
                "virtio-net",
                VIRTIO_ID_NET,
                vec![QUEUE_SIZE; 2],
                avail_features,
                config.to_vec(),
            ),
            active: None,
            rx_pending: 0,
            rx_buf: vec![0; MAX_FRAME_LEN],
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
            counters: Counters::default(),
        }
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.virtio.config_space[..6]);
        m
    }

    /// Features the driver accepted in the last negotiation.
    pub fn acked_features(&self) -> u64 {
        self.virtio.acked_features
    }

    /// Guest chains dropped so far: (TX, RX).
    pub fn bad_chains(&self) -> (u64, u64) {
        (self.counters.bad_tx.count, self.counters.bad_rx.count)
    }

    /// The `TUN_F_*` offloads matching the driver's GUEST_* features.
    fn tap_offloads(acked: u64) -> u32 {
        let has = |bit: u32| acked & (1u64 << bit) != 0;
        if !has(VIRTIO_NET_F_GUEST_CSUM) {
            return 0;
        }
        let mut flags = OFFLOAD_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= OFFLOAD_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= OFFLOAD_TSO6;
        }
        flags
    }

    /// Moves frames from the tap into RX chains until the tap is empty or the
    /// guest has no buffer left, then interrupts if the driver wants it.
    fn serve_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.broken {
            return;
        }
        let mut used = false;
        let r = drain_rx(
            active,
            &self.tap,
            &mut self.rx_buf,
            &mut self.rx_pending,
            &mut self.counters,
            &mut used,
        );
        finish(active, RX_QUEUE, r, used);
    }

    /// Writes every TX chain to the tap.
    fn serve_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.broken {
            return;
        }
        let mut used = false;
        let r = drain_tx(
            active,
            &self.tap,
            &mut self.tx_buf,
            &mut self.counters,
            &mut used,
        );
        finish(active, TX_QUEUE, r, used);
    }
}

/// After a drain: stop the device on a ring protocol error, interrupt for
/// the chains completed (even before an error).
fn finish(active: &mut Active, q: usize, r: Result<(), virtio_queue::Error>, used: bool) {
    if let Err(e) = r {
        tracing::error!(
            "virtio-net: queue {q} broke the ring protocol, device stopped until reset: {e}"
        );
        active.broken = true;
    }
    if used {
        let queue = if q == RX_QUEUE {
            &mut active.rx
        } else {
            &mut active.tx
        };
        match queue.needs_notification(&*active.mem) {
            Ok(false) => {}
            Ok(true) => active.interrupt.trigger(INTERRUPT_STATUS_USED_RING),
            Err(e) => {
                crate::guest_warn!("virtio-net: reading used_event of queue {q}: {e}");
                active.interrupt.trigger(INTERRUPT_STATUS_USED_RING);
            }
        }
    }
}

fn drain_rx(
    active: &mut Active,
    tap: &Tap,
    buf: &mut [u8],
    pending: &mut usize,
    counters: &mut Counters,
    used: &mut bool,
) -> Result<(), virtio_queue::Error> {
    let mem = &*active.mem;
    // While frames flow, the avail ring is read directly; kicks are only
    // needed once the guest runs out of buffers.
    active.rx.disable_notification(mem)?;
    loop {
        if *pending == 0 {
            match tap.read_frame(buf) {
                // End of file: a tap never says it, a closed stand-in does.
                Ok(0) => return Ok(()),
                Ok(n) if n < VNET_HDR_LEN => {
                    counters.tap.note(tap.name(), "short read", &n);
                    continue;
                }
                Ok(n) => *pending = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    counters.tap.note(tap.name(), "read", &e);
                    return Ok(());
                }
            }
            // num_buffers: always one chain per frame (no MRG_RXBUF); the tap
            // leaves these two bytes of a 12-byte header alone.
            buf[10..12].copy_from_slice(&1u16.to_le_bytes());
        }
        let next = active.rx.iter(mem)?.next();
        let Some(chain) = next else {
            // Out of buffers: ask for a kick, unless some arrived meanwhile.
            if active.rx.enable_notification(mem)? {
                continue;
            }
            return Ok(());
        };
        let head = chain.head_index();
        let len = match chain::scatter(chain, &buf[..*pending]) {
            Ok(n) => n,
            Err(e) => {
                counters
                    .bad_rx
                    .note(tap.name(), "RX chain dropped with its frame", &e);
                0
            }
        };
        *pending = 0;
        match active.rx.add_used(mem, head, len) {
            Ok(()) => *used = true,
            Err(e) => counters
                .bad_rx
                .note(tap.name(), "adding an RX chain to the used ring", &e),
        }
    }
}

fn drain_tx(
    active: &mut Active,
    tap: &Tap,
    buf: &mut Vec<u8>,
    counters: &mut Counters,
    used: &mut bool,
) -> Result<(), virtio_queue::Error> {
    let mem = &*active.mem;
    loop {
        active.tx.disable_notification(mem)?;
        loop {
            let next = active.tx.iter(mem)?.next();
            let Some(chain) = next else { break };
            let head = chain.head_index();
            match chain::gather(chain, buf) {
                Ok(n) => {
                    if let Err(e) = tap.write_frame(&buf[..n]) {
                        counters.tap.note(tap.name(), "write (frame dropped)", &e);
                    }
                }
                Err(e) => counters.bad_tx.note(tap.name(), "TX chain dropped", &e),
            }
            match active.tx.add_used(mem, head, 0) {
                Ok(()) => *used = true,
                Err(e) => {
                    counters
                        .bad_tx
                        .note(tap.name(), "adding a TX chain to the used ring", &e)
                }
            }
        }
        if !active.tx.enable_notification(mem)? {
            return Ok(());
        }
    }
}

impl VirtioDevice for Net {
    fn virtio_config(&self) -> &VirtioConfig {
        &self.virtio
    }

    fn virtio_config_mut(&mut self) -> &mut VirtioConfig {
        &mut self.virtio
    }

    fn ack_features(&mut self, features: u64) {
        let v = &mut self.virtio;
        v.acked_features = features & v.avail_features;
        let flags = Self::tap_offloads(v.acked_features);
        if let Err(e) = self.tap.set_offload(flags) {
            // The tap accepted these when probed; without them the guest
            // still gets correct (fully checksummed, segmented) frames.
            crate::guest_warn!("virtio-net: {e}");
        }
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemory>,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            broken: false,
        });
        // Frames may have queued in the tap before the driver was ready.
        self.serve_rx();
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if self.active.is_none() {
            tracing::debug!("virtio-net: notify before activation ignored");
            return;
        }
        match index {
            RX_QUEUE => self.serve_rx(),
            TX_QUEUE => self.serve_tx(),
            _ => crate::guest_warn!("virtio-net: notify of non-existent queue {index}"),
        }
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.tap.as_raw_fd()]
    }

    fn process_host_event(&mut self, index: usize) {
        if index == 0 {
            self.serve_rx();
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = 0;
        self.virtio.acked_features = 0;
        if let Err(e) = self.tap.set_offload(0) {
            crate::guest_warn!("virtio-net: {e}");
        }
    }
}
