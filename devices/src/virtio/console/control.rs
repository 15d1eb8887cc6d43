//! The control-queue protocol of a multiport virtio-console (virtio 1.2
//! section 5.3.6.2) and the guest-buffer copies every queue of the device
//! shares.
//!
//! A control message is `struct virtio_console_control { le32 id; le16 event;
//! le16 value; }`; PORT_NAME's name bytes follow the 8-byte header in the
//! same buffer.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestMemory as _};

use super::ConsoleError;
use crate::GuestMemory;

/// Driver -> device: the driver is ready for DEVICE_ADD messages.
pub const DEVICE_READY: u16 = 0;
/// Device -> driver: a port exists.
pub const DEVICE_ADD: u16 = 1;
/// Device -> driver: a port went away (not sent by this device).
pub const DEVICE_REMOVE: u16 = 2;
/// Driver -> device: the driver set up port `id` (value 1) or failed to (0).
pub const PORT_READY: u16 = 3;
/// Device -> driver: port `id` is a console (not sent: every port here is a plain vport).
pub const CONSOLE_PORT: u16 = 4;
/// Device -> driver: console size changed (not sent).
pub const RESIZE: u16 = 5;
/// Both ways: port `id` opened (value 1) or closed (0) on the sender's side.
pub const PORT_OPEN: u16 = 6;
/// Device -> driver: the port's name follows the header.
pub const PORT_NAME: u16 = 7;

/// Size of the control header.
pub const HEADER_LEN: usize = 8;
/// Most bytes read from one device-readable chain: a control message is 8
/// bytes, and a port's tx chain is what Linux fills from one write (a page or
/// a few); more than this is a driver bug and is cut off.
pub const MAX_CHAIN_BYTES: usize = 1 << 20;
/// Most descriptors accepted in one chain.
pub const MAX_DESCRIPTORS: usize = 1024;

/// One control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// Port id the message is about.
    pub id: u32,
    /// One of the event constants above.
    pub event: u16,
    /// Event argument (e.g. 1 = open, 0 = closed).
    pub value: u16,
}

impl Control {
    /// Encodes the header, little-endian as the spec requires.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[4..6].copy_from_slice(&self.event.to_le_bytes());
        b[6..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }

    /// Decodes a message from the driver; trailing bytes are ignored (no
    /// driver -> device event carries any).
    pub fn parse(buf: &[u8]) -> Result<Control, ConsoleError> {
        if buf.len() < HEADER_LEN {
            return Err(ConsoleError::ShortControl { len: buf.len() });
        }
        Ok(Control {
            id: u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
            event: u16::from_le_bytes([buf[4], buf[5]]),
            value: u16::from_le_bytes([buf[6], buf[7]]),
        })
    }
}

/// Encodes a message with a payload after the header (PORT_NAME).
pub fn message(id: u32, event: u16, value: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Control { id, event, value }.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Collects the bytes of a chain's device-readable descriptors, in order,
/// after checking every descriptor (direction, bounds, count) first so a bad
/// chain is refused whole rather than half-consumed.
pub fn read_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Result<Vec<u8>, ConsoleError> {
    let mut bufs = Vec::new();
    let mut total = 0usize;
    for (index, d) in chain.enumerate() {
        if index >= MAX_DESCRIPTORS {
            return Err(ConsoleError::TooManyDescriptors);
        }
        if d.is_write_only() {
            return Err(ConsoleError::WrongDirection { index });
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(ConsoleError::OutOfMemory {
                addr: d.addr().raw_value(),
                len: d.len(),
            });
        }
        let n = (d.len() as usize).min(MAX_CHAIN_BYTES - total);
        total += n;
        bufs.push((d.addr(), n));
    }
    let mut out = vec![0u8; total];
    let mut at = 0;
    for (addr, n) in bufs {
        mem.read_slice(&mut out[at..at + n], addr)?;
        at += n;
    }
    Ok(out)
}

/// Capacity of a chain of device-writable descriptors, checked whole first;
/// returns the buffers to fill.
pub fn writable_buffers(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Result<Vec<(vm_memory::GuestAddress, usize)>, ConsoleError> {
    let mut bufs = Vec::new();
    for (index, d) in chain.enumerate() {
        if index >= MAX_DESCRIPTORS {
            return Err(ConsoleError::TooManyDescriptors);
        }
        if !d.is_write_only() {
            return Err(ConsoleError::WrongDirection { index });
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(ConsoleError::OutOfMemory {
                addr: d.addr().raw_value(),
                len: d.len(),
            });
        }
        bufs.push((d.addr(), d.len() as usize));
    }
    Ok(bufs)
}

/// Copies as much of `data` as fits into `bufs`; returns the bytes written.
pub fn fill_buffers(
    mem: &GuestMemory,
    bufs: &[(vm_memory::GuestAddress, usize)],
    data: &[u8],
) -> Result<usize, ConsoleError> {
    let mut at = 0;
    for &(addr, len) in bufs {
        let n = len.min(data.len() - at);
        if n == 0 {
            break;
        }
        mem.write_slice(&data[at..at + n], addr)?;
        at += n;
    }
    Ok(at)
}
