//! minivm's side of `minivm exec` (`run --exec-socket PATH`): a thread that
//! accepts connections on the socket and relays frames (`frame.rs`)
//! between each one and the agent's exec port, giving each connection a
//! process id of its own. From a client it takes one START, then STDIN,
//! STDIN_EOF, SIGNAL and WINSIZE; from the guest it passes on STDOUT,
//! STDERR and EXIT for a connected process and drops the rest. A client
//! that goes away before its EXIT has its process killed.
//!
//! One thread polls everything with non-blocking fds and bounded buffers:
//! a client that does not read stops the guest's frames (the port's output,
//! like the command's stdout, then holds the event loop: the console's
//! trade-off), a guest that does not read stops the clients' frames. A
//! malformed frame from the guest ends every exec (the stream cannot be
//! followed further); from a client it ends that client.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use sandbox::seccomp::ThreadFilter;
use vmm_sys_util::eventfd::EventFd;

use super::frame::{self, Decoder, Frame};

/// Bytes buffered towards one side before its sources stop being read.
const HIGH_WATER: usize = 1 << 20;

/// What went wrong setting up the exec socket.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The socket could not be created at the path.
    #[error("cannot listen on the exec socket {path}: {source}")]
    Bind {
        /// `--exec-socket`.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The relay thread could not be started or confined.
    #[error("cannot start the exec relay: {0}")]
    Thread(String),
}

/// The relay thread, stopped (and its socket removed) on drop.
pub struct Relay {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Relay {
    /// Listens on `path` (which must not exist) and relays between its
    /// clients and the exec port: `to_guest` is the port's input, `from_guest`
    /// its output. The thread installs `filter` before anything else.
    pub fn start(
        path: &Path,
        to_guest: OwnedFd,
        from_guest: OwnedFd,
        filter: ThreadFilter,
    ) -> Result<Relay, RelayError> {
        let bind = |source| RelayError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind)?;
        // Only this user may connect (checked again per client, see `peer_allowed`).
        let chmod =
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        let guard = Removed(path.to_path_buf());
        chmod.map_err(bind)?;
        let thread_err = |e: io::Error| RelayError::Thread(e.to_string());
        for fd in [listener.as_fd(), to_guest.as_fd(), from_guest.as_fd()] {
            set_nonblocking(fd).map_err(thread_err)?;
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(thread_err)?;
        let stop_fd = stop.try_clone().map_err(thread_err)?;
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("exec-relay".into())
            .spawn(move || {
                if !filter.apply_and_report(&ready_tx) {
                    return;
                }
                let mut state = State::new(File::from(to_guest), File::from(from_guest));
                if let Err(e) = state.run(&listener, &stop_fd) {
                    tracing::error!("the exec relay stopped: {e}");
                }
            })
            .map_err(thread_err)?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RelayError::Thread(e.to_string())),
            Err(_) => return Err(RelayError::Thread("it ended at start".into())),
        }
        std::mem::forget(guard);
        Ok(Relay {
            stop,
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes the socket when set-up fails half-way.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd the caller holds.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether the peer of `s` runs as this process's user (or root).
fn peer_allowed(s: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid cannot fail.
    r == 0 && (cred.uid == 0 || cred.uid == unsafe { libc::geteuid() })
}

/// One connection: its process's id towards the guest.
struct Client {
    stream: UnixStream,
    decoder: Decoder,
    /// Frames waiting to be written to it.
    out: Vec<u8>,
    /// Its START went to the guest.
    started: bool,
    /// Its EXIT came: closed once `out` is written.
    exited: bool,
    /// It is to be closed now (gone, broken or refused).
    dead: bool,
}

struct State {
    to_guest: File,
    from_guest: File,
    guest_decoder: Decoder,
    /// Frames waiting to be written to the guest.
    guest_out: Vec<u8>,
    /// The guest's side ended or broke the stream.
    guest_gone: bool,
    clients: BTreeMap<u32, Client>,
    next_id: u32,
}

impl State {
    fn new(to_guest: File, from_guest: File) -> State {
        State {
            to_guest,
            from_guest,
            guest_decoder: Decoder::default(),
            guest_out: Vec::new(),
            guest_gone: false,
            clients: BTreeMap::new(),
            next_id: 1,
        }
    }

    fn run(&mut self, listener: &UnixListener, stop: &EventFd) -> io::Result<()> {
        loop {
            let clients_ok = self.guest_out.len() < HIGH_WATER;
            let guest_ok =
                !self.guest_gone && self.clients.values().all(|c| c.out.len() < HIGH_WATER);
            let mut fds = vec![
                poll_fd(stop.as_raw_fd(), libc::POLLIN),
                poll_fd(listener.as_raw_fd(), libc::POLLIN),
                poll_fd(
                    self.from_guest.as_raw_fd(),
                    if guest_ok { libc::POLLIN } else { 0 },
                ),
                poll_fd(
                    self.to_guest.as_raw_fd(),
                    if self.guest_out.is_empty() || self.guest_gone {
                        0
                    } else {
                        libc::POLLOUT
                    },
                ),
            ];
            let ids: Vec<u32> = self.clients.keys().copied().collect();
            for c in self.clients.values() {
                let mut events = if clients_ok { libc::POLLIN } else { 0 };
                if !c.out.is_empty() {
                    events |= libc::POLLOUT;
                }
                fds.push(poll_fd(c.stream.as_raw_fd(), events));
            }
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[0].revents != 0 {
                return Ok(());
            }
            if fds[1].revents != 0 {
                self.accept(listener);
            }
            if fds[2].revents != 0 {
                self.read_guest();
            }
            if fds[3].revents != 0 {
                self.write_guest();
            }
            for (id, fd) in ids.iter().zip(&fds[4..]) {
                if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read_client(*id);
                }
                if fd.revents & libc::POLLOUT != 0 {
                    self.write_client(*id);
                }
            }
            self.reap_clients();
        }
    }

    fn accept(&mut self, listener: &UnixListener) {
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("exec socket: accept: {e}");
                    return;
                }
            };
            if !peer_allowed(&stream) {
                tracing::warn!("exec socket: refused a client of another user");
                continue;
            }
            if set_nonblocking(stream.as_fd()).is_err() {
                continue;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let dead = self.guest_gone;
            self.clients.insert(
                id,
                Client {
                    stream,
                    decoder: Decoder::default(),
                    out: Vec::new(),
                    started: false,
                    exited: false,
                    dead,
                },
            );
        }
    }

    fn read_guest(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        match self.from_guest.read(&mut buf) {
            Ok(0) => self.guest_ended(),
            Ok(n) => {
                self.guest_decoder.push(&buf[..n]);
                loop {
                    match self.guest_decoder.next_frame() {
                        Ok(Some(f)) => self.route_guest_frame(f),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!("the guest's exec port: {e}; every exec ends");
                            self.guest_ended();
                            break;
                        }
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => self.guest_ended(),
        }
    }

    /// The guest's side is gone: clients still waiting get their end of stream.
    fn guest_ended(&mut self) {
        self.guest_gone = true;
        for c in self.clients.values_mut() {
            if !c.exited {
                c.dead = true;
            }
        }
    }

    fn route_guest_frame(&mut self, f: Frame) {
        let Some(c) = self
            .clients
            .get_mut(&f.id)
            .filter(|c| c.started && !c.exited)
        else {
            devices::guest_warn!("exec port: a frame for no running process ({})", f.id);
            return;
        };
        match f.kind {
            frame::STDOUT | frame::STDERR => {}
            frame::EXIT => c.exited = true,
            kind => {
                devices::guest_warn!("exec port: a frame of unknown kind {kind}");
                return;
            }
        }
        c.out.extend(f.encode());
    }

    fn write_guest(&mut self) {
        match self.to_guest.write(&self.guest_out) {
            Ok(n) => {
                self.guest_out.drain(..n);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => self.guest_ended(),
        }
    }

    fn read_client(&mut self, id: u32) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        match c.stream.read(&mut buf) {
            Ok(0) => c.dead = true,
            Ok(n) => c.decoder.push(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => c.dead = true,
        }
        loop {
            let f = match c.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    c.dead = true;
                    break;
                }
            };
            let allowed = match f.kind {
                frame::START => !c.started,
                frame::STDIN | frame::STDIN_EOF | frame::SIGNAL | frame::WINSIZE => c.started,
                _ => false,
            };
            if !allowed || c.exited {
                c.dead = !c.exited;
                break;
            }
            c.started = true;
            self.guest_out.extend(Frame { id, ..f }.encode());
        }
    }

    fn write_client(&mut self, id: u32) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        match c.stream.write(&c.out) {
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => c.dead = true,
        }
    }

    /// Closes the dead clients and the finished ones; a process whose
    /// client went before its end is killed.
    fn reap_clients(&mut self) {
        let done: Vec<u32> = self
            .clients
            .iter()
            .filter(|(_, c)| c.dead || (c.exited && c.out.is_empty()))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let c = self.clients.remove(&id).expect("listed");
            if c.started && !c.exited && !self.guest_gone {
                let kill = Frame::new(id, frame::SIGNAL, &(libc::SIGKILL as u32).to_le_bytes());
                self.guest_out.extend(kill.encode());
            }
        }
    }
}

fn poll_fd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[cfg(test)]
mod tests;
