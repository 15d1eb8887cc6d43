//! The virtio-mmio transport, version 2 ("modern", virtio 1.x) register layout.
//!
//! [`MmioTransport`] owns the register file, the feature and status handshake
//! and the driver's queue configuration. On `DRIVER_OK` it hands copies of the
//! configured queues to the [`VirtioDevice`]; afterwards it only forwards queue
//! notifications (from the QueueNotify register or from the ioeventfds the VMM
//! registers with KVM) to [`VirtioDevice::process_queue`].
//!
//! Everything here is driven by the guest, so every value is checked and bad
//! accesses are logged and ignored rather than trusted.

use std::io;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Interrupt, VirtioDevice, INTERRUPT_STATUS_CONFIG_CHANGED};
use crate::bus::BusDevice;
use crate::GuestMemory;

/// "virt" in little endian.
const MMIO_MAGIC: u32 = 0x7472_6976;
/// The non-legacy register layout.
const MMIO_VERSION: u32 = 2;
/// "QEMU", as QEMU reports it; Linux does not care.
const VENDOR_ID: u32 = 0x554d_4551;

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

/// The only status values (ignoring FAILED) a driver may move through, in order
/// (virtio 1.2, 3.1.1 "Driver Requirements: Device Initialization").
const INIT_STEPS: [u32; 4] = [
    ACK,
    ACK | DRIVER,
    ACK | DRIVER | FEATURES_OK,
    ACK | DRIVER | FEATURES_OK | DRIVER_OK,
];

/// A virtio device exposed to the guest through a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    /// The driver's view of each queue; copies go to the device on activation.
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    /// The doorbells are the device's own, waited on by its thread.
    device_waits: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`, with one non-blocking doorbell eventfd per queue: the
    /// device's own if it waits on them itself, else new ones.
    ///
    /// Fails if an eventfd cannot be created or the device reports a queue size
    /// virtio does not allow (zero, above 32768 or not a power of two).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemory>,
        interrupt: Arc<Interrupt>,
    ) -> io::Result<Self> {
        let max_sizes = device.queue_max_sizes();
        let mut queues = Vec::with_capacity(max_sizes.len());
        for &max in max_sizes {
            let q = Queue::new(max).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("queue size {max}: {e}"),
                )
            })?;
            queues.push(q);
        }
        let own_doorbells = device.queue_doorbells().filter(|d| d.len() == queues.len());
        let device_waits = own_doorbells.is_some();
        let queue_evts = match own_doorbells {
            Some(d) => d,
            None => (0..queues.len())
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<io::Result<_>>()?,
        };
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            device_waits,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// One doorbell per queue, in queue order. The VMM registers each as a KVM
    /// ioeventfd on `base + 0x50` with datamatch = queue index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt line (InterruptStatus plus irqfd).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The Status register as the driver would read it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device was activated (DRIVER_OK accepted) and not reset since.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Lets an activated device finish what the guest queued, once the
    /// vCPUs have stopped.
    pub fn vcpus_stopped(&mut self) {
        if self.activated {
            self.device.vcpus_stopped();
        }
    }

    /// The device behind the transport (e.g. a disk's storage, to save it).
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Gives the device back, reset (its queues and guest memory released),
    /// so that a rebooted guest's next VM can attach it again.
    pub fn into_device(mut self) -> Box<dyn VirtioDevice> {
        self.device.reset();
        self.device
    }

    /// Consumes a pending doorbell of queue `idx` and lets the device serve it.
    pub fn process_queue_event(&mut self, idx: usize) {
        let Some(evt) = self.queue_evts.get(idx) else {
            crate::guest_warn!("virtio-mmio: event for unknown queue {idx}");
            return;
        };
        match evt.read() {
            Ok(_) => {}
            // Nothing pending: a spurious wakeup, or the counter was already drained.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => crate::guest_warn!("virtio-mmio: reading queue {idx} eventfd: {e}"),
        }
        self.notify(idx);
    }

    fn notify(&mut self, idx: usize) {
        if !self.activated {
            tracing::debug!("virtio-mmio: notify of queue {idx} before activation ignored");
            return;
        }
        if idx >= self.queues.len() {
            crate::guest_warn!("virtio-mmio: notify of non-existent queue {idx}");
            return;
        }
        self.device.process_queue(idx);
    }

    /// Feature bits offered to the driver: the device's plus VERSION_1.
    fn device_features(&self) -> u64 {
        self.device.features() | (1u64 << VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The selected queue, if the driver may still change its configuration.
    fn configurable_queue(&mut self) -> Option<&mut Queue> {
        if self.status & FEATURES_OK == 0 || self.status & (DRIVER_OK | FAILED) != 0 {
            crate::guest_warn!(
                "virtio-mmio: queue setup in status {:#x} ignored",
                self.status
            );
            return None;
        }
        let sel = self.queue_sel;
        match self.selected_queue() {
            Some(q) if q.ready() => {
                crate::guest_warn!("virtio-mmio: queue {sel} is ready, setup write ignored");
                None
            }
            Some(q) => Some(q),
            None => {
                crate::guest_warn!("virtio-mmio: setup of non-existent queue {sel} ignored");
                None
            }
        }
    }

    fn read_reg(&self, reg: u32) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match reg {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_NUM => q.map_or(0, |q| u32::from(q.size())),
            VIRTIO_MMIO_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_QUEUE_DESC_LOW => q.map_or(0, |q| q.desc_table() as u32),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => q.map_or(0, |q| (q.desc_table() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.map_or(0, |q| q.avail_ring() as u32),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.map_or(0, |q| (q.avail_ring() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_USED_LOW => q.map_or(0, |q| q.used_ring() as u32),
            VIRTIO_MMIO_QUEUE_USED_HIGH => q.map_or(0, |q| (q.used_ring() >> 32) as u32),
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!("virtio-mmio: read of unknown register {reg:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, reg: u32, v: u32) {
        match reg {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(v),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.configurable_queue() {
                    match u16::try_from(v) {
                        // set_size rejects (and logs) sizes above max or not a power of two.
                        Ok(size) => q.set_size(size),
                        Err(_) => crate::guest_warn!("virtio-mmio: queue size {v} ignored"),
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if self.status & FEATURES_OK == 0 || self.status & (DRIVER_OK | FAILED) != 0 {
                    crate::guest_warn!(
                        "virtio-mmio: QueueReady in status {:#x} ignored",
                        self.status
                    );
                } else if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                } else {
                    crate::guest_warn!("virtio-mmio: QueueReady of non-existent queue ignored");
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW..=VIRTIO_MMIO_QUEUE_USED_HIGH => {
                self.write_queue_addr(reg, v)
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v as usize),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_STATUS => self.write_status(v),
            _ => crate::guest_warn!(
                "virtio-mmio: write {v:#x} to read-only or unknown register {reg:#x} ignored"
            ),
        }
    }

    /// Queue{Desc,Driver,Device}{Low,High}: each 64-bit address is two registers.
    fn write_queue_addr(&mut self, reg: u32, v: u32) {
        type Setter = fn(&mut Queue, Option<u32>, Option<u32>);
        let set: Setter = match reg & !4 {
            VIRTIO_MMIO_QUEUE_DESC_LOW => Queue::set_desc_table_address,
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => Queue::set_avail_ring_address,
            VIRTIO_MMIO_QUEUE_USED_LOW => Queue::set_used_ring_address,
            _ => {
                crate::guest_warn!("virtio-mmio: write to unknown register {reg:#x} ignored");
                return;
            }
        };
        let (low, high) = if reg & 4 == 0 {
            (Some(v), None)
        } else {
            (None, Some(v))
        };
        // Misaligned addresses are rejected (and logged) inside virtio-queue.
        if let Some(q) = self.configurable_queue() {
            set(q, low, high);
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & DRIVER == 0 || self.status & (FEATURES_OK | FAILED) != 0 {
            crate::guest_warn!(
                "virtio-mmio: DriverFeatures in status {:#x} ignored",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            // No features exist above bit 63; a set bit there could never be a subset.
            sel if v != 0 => {
                crate::guest_warn!("virtio-mmio: driver features {v:#x} in word {sel} ignored")
            }
            _ => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET belongs to the device; drivers write it back read-modify-write.
        let needs_reset = self.status & NEEDS_RESET;
        let old = self.status & !NEEDS_RESET;
        let new = value & !NEEDS_RESET;
        if new & old != old || (old & FAILED != 0 && new != old) {
            crate::guest_warn!(
                "virtio-mmio: status {old:#x} -> {new:#x} ignored: only reset may clear bits"
            );
            return;
        }
        if !INIT_STEPS.contains(&(new & !FAILED)) {
            crate::guest_warn!("virtio-mmio: status {old:#x} -> {new:#x} ignored: out of order");
            return;
        }
        let mut accepted = new;
        if new & FEATURES_OK != 0 && old & FEATURES_OK == 0 && !self.negotiate_features() {
            // The driver re-reads Status and gives up when FEATURES_OK did not stick.
            accepted &= !(FEATURES_OK | DRIVER_OK);
        }
        self.status = accepted | needs_reset;
        if accepted & DRIVER_OK != 0 && old & DRIVER_OK == 0 {
            self.activate();
        }
    }

    /// Checks the driver's feature choice; passes it to the device if acceptable.
    fn negotiate_features(&mut self) -> bool {
        let offered = self.device_features();
        let wanted = self.driver_features;
        if wanted & (1u64 << VIRTIO_F_VERSION_1) == 0 {
            crate::guest_warn!(
                "virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (legacy driver?)"
            );
            return false;
        }
        if wanted & !offered != 0 {
            crate::guest_warn!(
                "virtio-mmio: driver accepted features {:#x} never offered",
                wanted & !offered
            );
            return false;
        }
        self.device.ack_features(wanted & self.device.features());
        true
    }

    fn activate(&mut self) {
        let mem = &*self.mem;
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| !q.ready() || !q.is_valid(mem))
        {
            self.fail_activation(&format!("queue {i} is not ready or not valid"));
            return;
        }
        let event_idx = self.driver_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|q| copy_queue(q, event_idx))
            .collect();
        let queues = match queues {
            Ok(q) => q,
            Err(e) => return self.fail_activation(&format!("copying queues: {e}")),
        };
        match self
            .device
            .activate(self.mem.clone(), queues, self.interrupt.clone())
        {
            Ok(()) => self.activated = true,
            Err(e) => self.fail_activation(&e.to_string()),
        }
    }

    fn fail_activation(&mut self, why: &str) {
        crate::guest_warn!(
            "virtio-mmio: activation of device type {} failed: {why}",
            self.device.device_type()
        );
        self.status |= NEEDS_RESET;
        self.interrupt.trigger(INTERRUPT_STATUS_CONFIG_CHANGED);
    }

    /// Driver wrote Status = 0: back to the power-on state.
    fn reset(&mut self) {
        self.device.reset();
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.reset();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
    }
}

/// A fresh `Queue` with the driver's configuration (`Queue` is not `Clone`).
fn copy_queue(q: &Queue, event_idx: bool) -> Result<Queue, virtio_queue::Error> {
    let mut n = Queue::new(q.max_size())?;
    n.try_set_size(q.size())?;
    n.try_set_desc_table_address(vm_memory::GuestAddress(q.desc_table()))?;
    n.try_set_avail_ring_address(vm_memory::GuestAddress(q.avail_ring()))?;
    n.try_set_used_ring_address(vm_memory::GuestAddress(q.used_ring()))?;
    n.set_event_idx(event_idx);
    n.set_ready(q.ready());
    Ok(n)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        data.fill(0);
        if data.len() != 4 {
            crate::guest_warn!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        let v = self.read_reg(offset as u32);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            crate::guest_warn!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        self.write_reg(offset as u32, u32::from_le_bytes(bytes));
    }
}

impl MutEventSubscriber for MmioTransport {
    fn init(&mut self, ops: &mut EventOps) {
        let watched = if self.device_waits {
            &[][..]
        } else {
            &self.queue_evts[..]
        };
        for (idx, evt) in watched.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, idx as u32, EventSet::IN)) {
                crate::guest_warn!("virtio-mmio: cannot watch queue {idx} eventfd: {e}");
            }
        }
        // The device's own host fds follow the doorbells in the data numbering.
        let first = self.queue_evts.len();
        for (i, fd) in self.device.host_fds().into_iter().enumerate() {
            let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
            match ops.add(Events::with_data_raw(fd, (first + i) as u32, set)) {
                // A regular file (stdin redirected from one) is always
                // readable and cannot be watched: the device reads it when
                // the guest asks.
                Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EPERM => {
                    tracing::debug!("virtio-mmio: host fd {i} cannot be watched; read on demand");
                }
                Err(e) => {
                    crate::guest_warn!("virtio-mmio: cannot watch host fd {i} of the device: {e}")
                }
                Ok(()) => {}
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let idx = events.data() as usize;
        let set = events.event_set();
        if let Some(host) = idx.checked_sub(self.queue_evts.len()) {
            // A hang-up (a pipe's writer gone) may come with the last data:
            // the device reads it, and its EOF, before the fd is dropped.
            self.device.process_host_event(host);
            if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                tracing::debug!("virtio-mmio: host fd {host} reported {set:?}; no longer watched");
                if let Err(e) = ops.remove(events) {
                    crate::guest_warn!("virtio-mmio: removing host fd {host}: {e}");
                }
            }
            return;
        }
        if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            crate::guest_warn!(
                "virtio-mmio: queue {idx} eventfd reported {set:?}; no longer watched"
            );
            if let Err(e) = ops.remove(events) {
                crate::guest_warn!("virtio-mmio: removing queue {idx} eventfd: {e}");
            }
            return;
        }
        if set.contains(EventSet::IN) {
            self.process_queue_event(idx);
        }
    }
}

mod state;
#[cfg(test)]
mod tests;

pub use state::TransportState;
