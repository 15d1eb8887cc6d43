//! `run -- CMD`'s streams: a multiport virtio-console whose ports carry the
//! command's stdout and stderr to minivm's own, and minivm's stdin to the
//! command with `-i` (`config::GuestIo::Streams`). The guest agent finds the
//! ports by name and copies the command's pipes through them.
//!
//! A console rather than vsock: its ports need no socket protocol or
//! connection set-up on either side (the agent opens a device file), the
//! guest's writes block when the queue is full (back-pressure), an input
//! EOF is the port's host side closing, and the last output the guest
//! queued before it stopped is served after the vCPUs stop.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use devices::virtio::console::{Console, PortSpec};

use crate::config::{STDERR_PORT, STDIN_PORT, STDOUT_PORT};

/// minivm's `fd` (0, 1 or 2), duplicated for a port.
fn dup(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// The console for one boot: stdout and stderr ports, and a stdin port
/// reading minivm's stdin when `stdin`.
pub fn console(stdin: bool) -> io::Result<Console> {
    let out = |fd: OwnedFd| -> Option<Box<dyn io::Write + Send>> { Some(Box::new(File::from(fd))) };
    let mut ports = vec![
        PortSpec {
            name: STDOUT_PORT.into(),
            output: out(dup(io::stdout().as_fd())?),
            input: None,
        },
        PortSpec {
            name: STDERR_PORT.into(),
            output: out(dup(io::stderr().as_fd())?),
            input: None,
        },
    ];
    if stdin {
        ports.push(PortSpec {
            name: STDIN_PORT.into(),
            output: None,
            input: Some(dup(io::stdin().as_fd())?),
        });
    }
    Ok(Console::new(ports))
}
