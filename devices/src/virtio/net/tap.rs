//! A host TAP interface opened through `/dev/net/tun`, with the virtio-net
//! header on every frame (`IFF_VNET_HDR`) and a non-blocking fd.
//!
//! `TUNSETIFF` attaches to an existing tap (its owner, or anyone with
//! `CAP_NET_ADMIN`) or creates one (`CAP_NET_ADMIN`); a tap minivm created
//! disappears when the fd is closed (on [`Drop`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Where the TUN/TAP clone device lives.
const TUN_DEV: &str = "/dev/net/tun";
/// `IFNAMSIZ`: interface names are at most 15 bytes plus the NUL.
const IFNAMSIZ: usize = 16;
/// The virtio-net header of a VERSION_1 device (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

/// Offloads (`TUN_F_*`) minivm asks of a tap.
pub const OFFLOAD_CSUM: u32 = libc::TUN_F_CSUM;
/// TCP segmentation over IPv4.
pub const OFFLOAD_TSO4: u32 = libc::TUN_F_TSO4;
/// TCP segmentation over IPv6.
pub const OFFLOAD_TSO6: u32 = libc::TUN_F_TSO6;

/// Why a tap could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long or has a NUL or `/`.
    #[error("tap name {0:?} is not a valid interface name (1-15 bytes, no '/', NUL or spaces)")]
    BadName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_DEV}: {0}")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` failed: no permission to attach or create, or a tun (not tap) of that name.
    #[error("cannot attach to or create tap {name:?}: {source} (an existing tap needs its owner or CAP_NET_ADMIN; creating one needs CAP_NET_ADMIN)")]
    SetIff { name: String, source: io::Error },
    /// The tap refused the 12-byte virtio-net header.
    #[error("tap {name:?}: cannot set the virtio-net header size: {source}")]
    VnetHdrSize { name: String, source: io::Error },
    /// The fd could not be made non-blocking.
    #[error("tap {name:?}: cannot make it non-blocking: {source}")]
    NonBlocking { name: String, source: io::Error },
    /// Changing the offloads failed.
    #[error("tap {name:?}: TUNSETOFFLOAD {flags:#x}: {source}")]
    Offload {
        name: String,
        flags: u32,
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags (a union in C).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap: frames in and out with a 12-byte virtio-net header in front.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    /// Whether `ioctl`s apply (false for a test socket standing in for a tap).
    real: bool,
}

impl Tap {
    /// Attaches to tap `name`, creating it if it does not exist (and minivm may).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty()
            || name.len() >= IFNAMSIZ
            || name
                .bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
        {
            return Err(TapError::BadName(name.to_string()));
        }
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEV)
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and writes back) a `struct ifreq`; `req` is one,
        // properly sized and alive for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if r < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if r < 0 {
            return Err(TapError::VnetHdrSize {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            fd: file.into(),
            name: name.to_string(),
            real: true,
        };
        // No offloads until the driver accepts them.
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// Wraps a datagram socket (one message per frame) standing in for a tap,
    /// for tests: no ioctls are made and every offload is "accepted".
    pub fn from_socket(fd: OwnedFd, name: &str) -> Result<Tap, TapError> {
        let tap = Tap {
            fd,
            name: name.to_string(),
            real: false,
        };
        let fd = tap.fd.as_raw_fd();
        // SAFETY: fcntl on an fd we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above; only adds O_NONBLOCK.
        let set = (flags >= 0)
            && unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } >= 0;
        if !set {
            return Err(TapError::NonBlocking {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the offloads (`TUN_F_*`) of frames the tap hands to us: which
    /// partial checksums and GSO frames the guest will have to accept.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        if !self.real {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        };
        if r < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (header included); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (header included).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A locally administered unicast MAC derived from the tap name, so a VM on a
/// given tap keeps its address across runs (FNV-1a of the name).
pub fn default_mac(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    // Bit 1 of the first octet: locally administered; bit 0 clear: unicast.
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mac_is_local_unicast_and_stable() {
        let a = default_mac("tap0");
        assert_eq!(a, default_mac("tap0"));
        assert_ne!(a, default_mac("tap1"));
        assert_eq!(a[0] & 0x03, 0x02);
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for n in ["", "a/b", "sixteen-chars-xx", "a b"] {
            assert!(matches!(Tap::open(n), Err(TapError::BadName(_))), "{n:?}");
        }
    }
}
