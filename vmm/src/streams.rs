//! The guest agent's virtio-console (`config::GuestIo`): with `run -- CMD`
//! its ports carry the command's stdout and stderr to minivm's own, and
//! minivm's stdin to the command with `-i`; with the streams and with `-t`,
//! a control port carries minivm's messages to the agent (`crate::control`).
//! The agent finds the ports by name and copies the command's pipes
//! through them.
//!
//! A console rather than vsock: its ports need no socket protocol or
//! connection set-up on either side (the agent opens a device file), the
//! guest's writes block when the queue is full (back-pressure), an input
//! EOF is the port's host side closing, and the last output the guest
//! queued before it stopped is served after the vCPUs stop.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use devices::virtio::console::{Console, PortSpec};

use crate::config::{GuestIo, CONTROL_PORT, EXEC_PORT, STDERR_PORT, STDIN_PORT, STDOUT_PORT};

/// minivm's `fd` (0, 1 or 2), duplicated for a port.
fn dup(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// The host ends of the exec port (`crate::exec::relay`).
pub struct ExecPort {
    /// The write end of the port's input.
    pub to_guest: OwnedFd,
    /// The read end of the port's output.
    pub from_guest: OwnedFd,
}

/// The agent's console for one boot, and the write end of its control
/// port (non-blocking: signal handlers write it), or `None` when `io` is a
/// whole system's console; with `exec`, also the exec port's host ends.
pub fn console(
    io: GuestIo,
    exec: bool,
) -> io::Result<Option<(Console, OwnedFd, Option<ExecPort>)>> {
    let out = |fd: OwnedFd| -> Option<Box<dyn io::Write + Send>> { Some(Box::new(File::from(fd))) };
    let mut ports = Vec::new();
    // Some(whether minivm's stdin goes in) where there are stream ports.
    let stdin = match io {
        GuestIo::Console => return Ok(None),
        GuestIo::Terminal {
            stream_ports: false,
        } => None,
        GuestIo::Terminal { stream_ports: true } => Some(false),
        GuestIo::Streams { stdin } => Some(stdin),
    };
    if let Some(stdin) = stdin {
        ports.push(PortSpec {
            name: STDOUT_PORT.into(),
            output: out(dup(io::stdout().as_fd())?),
            input: None,
        });
        ports.push(PortSpec {
            name: STDERR_PORT.into(),
            output: out(dup(io::stderr().as_fd())?),
            input: None,
        });
        // Always there, so that a snapshot's agent, which opens every
        // port, can be given stdin or not when it is restored.
        ports.push(PortSpec {
            name: STDIN_PORT.into(),
            output: None,
            input: stdin.then(|| dup(io::stdin().as_fd())).transpose()?,
        });
    }
    let (read, write) = io::pipe()?;
    // SAFETY: F_SETFL on a pipe end this function owns.
    if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    ports.push(PortSpec {
        name: CONTROL_PORT.into(),
        output: None,
        input: Some(read.into()),
    });
    let exec = match exec {
        false => None,
        true => {
            let (input, to_guest) = io::pipe()?;
            let (from_guest, output) = io::pipe()?;
            ports.push(PortSpec {
                name: EXEC_PORT.into(),
                output: out(output.into()),
                input: Some(input.into()),
            });
            Some(ExecPort {
                to_guest: to_guest.into(),
                from_guest: from_guest.into(),
            })
        }
    };
    Ok(Some((Console::new(ports), write.into(), exec)))
}

/// Hands a waiting agent its job (`crate::agent::Job::message`) through the
/// control port's write end `control`: all at once, as the pipe is grown
/// to hold it (the agent reads it only once the guest runs).
pub fn send_job(control: &OwnedFd, job: &crate::agent::Job) -> io::Result<()> {
    let msg = job.message().map_err(|e| io::Error::other(e.to_string()))?;
    let want = libc::c_int::try_from(msg.len() + 4096).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_SETPIPE_SZ on a pipe end the caller owns; failing leaves it as it was.
    unsafe { libc::fcntl(control.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    io::Write::write_all(&mut File::from(control.try_clone()?), &msg).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "the job ({} bytes) does not fit the control port: {e}",
                msg.len()
            ),
        )
    })
}
