//! Moving frames between descriptor chains and host buffers: TX chains are
//! gathered into one buffer (header + frame) for a single tap write; a frame
//! read from the tap is scattered over an RX chain.
//!
//! Chains come from the guest, so each is checked before use: direction of
//! every descriptor, total length (with checked arithmetic) and, through
//! vm-memory's accessors, that every buffer lies in guest memory.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};

use super::tap::VNET_HDR_LEN;

/// Largest frame minivm moves: the header plus a 64 KiB GSO packet and its
/// Ethernet/VLAN header.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65_535 + 18;

/// What is wrong with a chain; the chain is completed without being used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A TX chain had a device-writable buffer, or an RX chain a read-only one.
    #[error("descriptor {index} of the chain has the wrong direction")]
    WrongDirection { index: usize },
    /// A TX chain shorter than the virtio-net header.
    #[error("TX chain of {0} bytes is shorter than the {VNET_HDR_LEN}-byte header")]
    TooShort(usize),
    /// A TX chain longer than any frame.
    #[error("TX chain longer than {MAX_FRAME_LEN} bytes")]
    TooLong,
    /// An RX chain with room for fewer bytes than the frame.
    #[error("RX chain of {room} bytes cannot hold a {frame}-byte frame")]
    NoRoom { room: u64, frame: usize },
    /// A buffer outside guest memory.
    #[error("buffer at {addr:#x} (+{len}) is not in guest memory")]
    Memory { addr: u64, len: u32 },
}

/// Copies the readable buffers of a TX chain into `buf` (which it clears);
/// returns the frame length, header included.
pub fn gather<M>(chain: DescriptorChain<M>, buf: &mut Vec<u8>) -> Result<usize, ChainError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    buf.clear();
    let mem = chain.memory();
    for (index, desc) in chain.clone().enumerate() {
        if desc.is_write_only() {
            return Err(ChainError::WrongDirection { index });
        }
        let len = desc.len() as usize;
        let start = buf.len();
        let end = start
            .checked_add(len)
            .filter(|&e| e <= MAX_FRAME_LEN)
            .ok_or(ChainError::TooLong)?;
        buf.resize(end, 0);
        mem.read_slice(&mut buf[start..end], desc.addr())
            .map_err(|_| ChainError::Memory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
    }
    if buf.len() < VNET_HDR_LEN {
        return Err(ChainError::TooShort(buf.len()));
    }
    Ok(buf.len())
}

/// Writes `frame` (header included) over the writable buffers of an RX chain,
/// after checking that all of them are writable and together hold it; returns
/// the bytes written, the used length.
pub fn scatter<M>(chain: DescriptorChain<M>, frame: &[u8]) -> Result<u32, ChainError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mem = chain.memory();
    let mut room: u64 = 0;
    for (index, desc) in chain.clone().enumerate() {
        if !desc.is_write_only() {
            return Err(ChainError::WrongDirection { index });
        }
        room = room.saturating_add(u64::from(desc.len()));
    }
    if room < frame.len() as u64 {
        return Err(ChainError::NoRoom {
            room,
            frame: frame.len(),
        });
    }
    let mut rest = frame;
    for desc in chain.clone() {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(desc.len() as usize);
        mem.write_slice(&rest[..n], desc.addr())
            .map_err(|_| ChainError::Memory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        rest = &rest[n..];
    }
    // At most MAX_FRAME_LEN, far below u32::MAX.
    Ok(frame.len() as u32)
}
