//! The host side of the serial console: raw mode for an interactive terminal
//! (always restored), and stdin forwarded to the guest with an escape key.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock};

use devices::serial::SerialDevice;
use devices::{ExitHandle, ExitReason};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

/// Ctrl-A: the escape prefix, as in QEMU and screen.
pub const ESCAPE: u8 = 0x01;

static SAVED_TERMIOS: OnceLock<libc::termios> = OnceLock::new();

/// Puts stdin in raw mode while alive, if stdin is a terminal.
pub struct RawMode {
    active: bool,
}

fn restore_saved() {
    if let Some(t) = SAVED_TERMIOS.get() {
        // SAFETY: tcsetattr reads a valid termios struct; fd 0 is stdin.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
    }
}

impl RawMode {
    /// Enters raw mode when stdin is a TTY; also restores the terminal if minivm panics.
    pub fn enter() -> Self {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return RawMode { active: false };
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above, `t` is a valid, writable termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return RawMode { active: false };
        }
        let _ = SAVED_TERMIOS.set(t);
        let prev_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_saved();
            prev_hook(info);
        }));
        let mut raw = t;
        // SAFETY: cfmakeraw edits the struct in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so host-side messages still start at column 0.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: valid termios for stdin.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) };
        RawMode { active: true }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.active {
            restore_saved();
        }
    }
}

/// What the escape state machine makes of an input byte.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    /// Forward these bytes to the guest.
    Send(Vec<u8>),
    /// The user asked to quit.
    Quit,
    /// Show the escape help.
    Help,
}

#[derive(Default)]
struct Escape {
    pending: bool,
}

impl Escape {
    fn feed(&mut self, b: u8) -> Key {
        if !self.pending {
            if b == ESCAPE {
                self.pending = true;
                return Key::Send(vec![]);
            }
            return Key::Send(vec![b]);
        }
        self.pending = false;
        match b {
            b'x' | b'X' => Key::Quit,
            ESCAPE => Key::Send(vec![ESCAPE]),
            b'h' | b'H' | b'?' => Key::Help,
            other => Key::Send(vec![ESCAPE, other]),
        }
    }
}

const STDIN_DATA: u32 = 0;
const FIFO_DRAINED: u32 = 1;

/// Forwards stdin to the UART's receive FIFO, holding back input while the FIFO
/// is full (no byte is dropped) and resuming when the guest drains it.
pub struct StdinForwarder {
    serial: Arc<Mutex<SerialDevice>>,
    drained: Arc<devices::serial::InputEvents>,
    exit: ExitHandle,
    pending: VecDeque<u8>,
    escape: Escape,
    interactive: bool,
    stdin_registered: bool,
}

impl StdinForwarder {
    /// `interactive`: stdin is a terminal, so the Ctrl-A escapes apply.
    pub fn new(
        serial: Arc<Mutex<SerialDevice>>,
        drained: Arc<devices::serial::InputEvents>,
        exit: ExitHandle,
        interactive: bool,
    ) -> Self {
        StdinForwarder {
            serial,
            drained,
            exit,
            pending: VecDeque::new(),
            escape: Escape::default(),
            interactive,
            stdin_registered: false,
        }
    }

    fn stdin_events() -> Events {
        Events::with_data_raw(libc::STDIN_FILENO, STDIN_DATA, EventSet::IN)
    }

    fn flush_pending(&mut self) {
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        while !self.pending.is_empty() {
            let (a, _) = self.pending.as_slices();
            let n = serial.enqueue_input(a);
            if n == 0 {
                break;
            }
            self.pending.drain(..n);
        }
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        // SAFETY: reads into a stack buffer of the given length.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                // EOF or error: stop watching stdin; the guest keeps running.
                let _ = ops.remove(Self::stdin_events());
                self.stdin_registered = false;
            }
            return;
        }
        for &b in &buf[..n as usize] {
            if !self.interactive {
                self.pending.push_back(b);
                continue;
            }
            match self.escape.feed(b) {
                Key::Send(bytes) => self.pending.extend(bytes),
                Key::Quit => {
                    self.exit.request(ExitReason::UserQuit);
                    return;
                }
                Key::Help => eprint!(
                    "\r\nminivm: Ctrl-A x  quit\r\nminivm: Ctrl-A Ctrl-A  send Ctrl-A\r\nminivm: Ctrl-A h  this help\r\n"
                ),
            }
        }
        self.flush_pending();
        // Back-pressure: stop reading until the guest drains the FIFO.
        if !self.pending.is_empty() && self.stdin_registered {
            let _ = ops.remove(Self::stdin_events());
            self.stdin_registered = false;
        }
    }
}

impl MutEventSubscriber for StdinForwarder {
    fn init(&mut self, ops: &mut EventOps) {
        // stdin may be /dev/null or a file, which epoll refuses: then there is no input.
        self.stdin_registered = ops.add(Self::stdin_events()).is_ok();
        if let Err(e) = ops.add(Events::with_data(
            &self.drained.in_buffer_empty,
            FIFO_DRAINED,
            EventSet::IN,
        )) {
            tracing::warn!("serial input: cannot watch the FIFO: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STDIN_DATA => {
                if events
                    .event_set()
                    .intersects(EventSet::HANG_UP | EventSet::ERROR)
                    && !events.event_set().contains(EventSet::IN)
                {
                    let _ = ops.remove(events);
                    self.stdin_registered = false;
                } else {
                    self.read_stdin(ops);
                }
            }
            _ => {
                let _ = self.drained.in_buffer_empty.read();
                self.flush_pending();
                if self.pending.is_empty() && !self.stdin_registered {
                    self.stdin_registered = ops.add(Self::stdin_events()).is_ok();
                }
            }
        }
    }
}

/// Stops the event loop when an exit is requested.
pub struct ExitWatcher {
    evt: EventFd,
}

impl ExitWatcher {
    /// Watches `exit`'s event fd.
    pub fn new(exit: &ExitHandle) -> std::io::Result<Self> {
        Ok(ExitWatcher {
            evt: exit.event_fd().try_clone()?,
        })
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("cannot watch the exit event: {e}");
        }
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Leave the fd readable: the run loop checks the reason after each round.
    }
}

/// Raw fd of stdin, for diagnostics.
/// The host terminal's (rows, columns), from stdin or stdout.
pub fn window_size() -> Option<(u16, u16)> {
    [libc::STDIN_FILENO, libc::STDOUT_FILENO]
        .into_iter()
        .find_map(|fd| {
            // SAFETY: an all-zero winsize is valid.
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
            let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
            (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
        })
}

pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(std::io::stdin().as_raw_fd()) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut e = Escape::default();
        assert_eq!(e.feed(b'a'), Key::Send(vec![b'a']));
        assert_eq!(e.feed(ESCAPE), Key::Send(vec![]));
        assert_eq!(e.feed(ESCAPE), Key::Send(vec![ESCAPE]));
        assert_eq!(e.feed(ESCAPE), Key::Send(vec![]));
        assert_eq!(e.feed(b'c'), Key::Send(vec![ESCAPE, b'c']));
        assert_eq!(e.feed(ESCAPE), Key::Send(vec![]));
        assert_eq!(e.feed(b'h'), Key::Help);
        assert_eq!(e.feed(b'x'), Key::Send(vec![b'x']));
        assert_eq!(e.feed(ESCAPE), Key::Send(vec![]));
        assert_eq!(e.feed(b'x'), Key::Quit);
    }
}
