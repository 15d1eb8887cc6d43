//! virtio-console with VIRTIO_CONSOLE_F_MULTIPORT (virtio 1.2 section 5.3):
//! named ports whose guest -> host bytes go to a host sink and whose
//! host -> guest bytes come from a host fd watched on the event loop.
//!
//! Queue layout with MULTIPORT: port 0 rx = 0, tx = 1, control rx = 2,
//! control tx = 3, then port N rx = 2 + 2N, tx = 3 + 2N.
//!
//! Control handshake (Linux `drivers/char/virtio_console.c`): the driver
//! sends DEVICE_READY; the device answers DEVICE_ADD per port; the driver
//! sends PORT_READY(id, 1) per port; the device answers PORT_NAME and
//! PORT_OPEN(id, 1) (host side connected). The driver reports its own
//! opens and closes with PORT_OPEN(id, 1/0). Messages to the driver wait in
//! a host-side queue until it posts control rx buffers.
//!
//! Guest data is only delivered once the guest has the port open: Linux
//! discards rx data of a port nobody has open. At the input's EOF, once
//! every pending byte sits in the used ring, the device sends
//! PORT_OPEN(id, 0): the guest's read then returns 0. Linux's writes to a
//! port whose host side is closed block (`will_write_block`) until it opens
//! again, so an input EOF must only be sent on a port the guest reads.
//!
//! Everything runs inline on the event loop. Sink writes are blocking: a
//! slow host stdout stalls the event loop rather than losing guest output
//! (the first version's trade-off; holding chains until the sink is
//! writable would need the sink's fd on the event loop).

pub mod control;
mod state;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::{Queue, QueueT};

use super::queue::ActiveQueue;
use super::{ActivateError, Interrupt, VirtioConfig, VirtioDevice, INTERRUPT_STATUS_USED_RING};
use crate::GuestMemory;
pub use control::Control;
use control::*;
pub use state::{ConsoleState, PortState};

/// `VIRTIO_CONSOLE_F_MULTIPORT`.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1;
/// Size of every queue.
pub const QUEUE_SIZE: u16 = 128;
/// Bytes read from an input fd at once.
const INPUT_CHUNK: usize = 16 * 1024;
/// Shortest interval between two warnings.
const WARN_INTERVAL: Duration = Duration::from_secs(5);
/// Pause before retrying a sink write that would block.
const WRITE_RETRY: Duration = Duration::from_millis(1);

/// Why a chain or control message was ignored, or a host side failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A control message shorter than its 8-byte header.
    #[error("control message of {len} bytes")]
    ShortControl {
        /// Bytes the driver sent.
        len: usize,
    },
    /// A control message about a port the device does not have.
    #[error("control event {event} for unknown port {id}")]
    BadPort {
        /// The port id sent.
        id: u32,
        /// The event.
        event: u16,
    },
    /// An event the driver must not send.
    #[error("unknown control event {event} (port {id}, value {value})")]
    UnknownEvent {
        /// The port id sent.
        id: u32,
        /// The event.
        event: u16,
        /// Its value.
        value: u16,
    },
    /// A descriptor with the wrong direction for its queue.
    #[error("descriptor {index} has the wrong direction")]
    WrongDirection {
        /// Position in the chain.
        index: usize,
    },
    /// A buffer (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is not in guest memory")]
    OutOfMemory {
        /// Guest-physical start.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A chain longer than the device accepts.
    #[error("chain has too many descriptors")]
    TooManyDescriptors,
    /// Copying guest memory failed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// A host sink or source failed.
    #[error("port {port} host side: {source}")]
    Host {
        /// Port id.
        port: u32,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One port as the VMM describes it.
pub struct PortSpec {
    /// Name the guest sees in `/sys/class/virtio-ports/vport0pN/name`.
    pub name: String,
    /// Where guest -> host bytes go (None: they are dropped).
    pub output: Option<Box<dyn Write + Send>>,
    /// Host -> guest source, watched on the event loop (None: nothing to read;
    /// the host side still reads as open).
    pub input: Option<OwnedFd>,
}

/// A port's device-side state.
struct Port {
    name: String,
    output: Option<Box<dyn Write + Send>>,
    input: Option<File>,
    /// Input read from the host but not yet in a guest buffer.
    pending: VecDeque<u8>,
    /// The input reached EOF (or failed).
    input_eof: bool,
    /// PORT_OPEN(id, 0) was queued for this activation.
    eof_sent: bool,
    /// The guest has the port open (its PORT_OPEN(id, 1)).
    guest_open: bool,
}

impl Port {
    fn new(name: String, output: Option<Box<dyn Write + Send>>, input: Option<File>) -> Port {
        Port {
            name,
            output,
            input,
            pending: VecDeque::new(),
            input_eof: false,
            eof_sent: false,
            guest_open: false,
        }
    }
}

/// A receive queue (port or control rx): the driver posts empty buffers that
/// the device fills only when it has something to say.
struct RxQueue {
    queue: Queue,
    broken: bool,
}

/// Queues and resources between activation and reset.
struct Active {
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    port_rx: Vec<RxQueue>,
    port_tx: Vec<ActiveQueue>,
    ctrl_rx: RxQueue,
    ctrl_tx: ActiveQueue,
}

/// Logs at most one warning per [`WARN_INTERVAL`], counting the rest.
#[derive(Default)]
struct WarnLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    fn warn(&mut self, what: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < WARN_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        crate::guest_warn!(
            "virtio-console: {what} ({} similar warnings suppressed)",
            self.suppressed
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// A multiport virtio console (device id 3).
pub struct Console {
    virtio: VirtioConfig,
    ports: Vec<Port>,
    active: Option<Active>,
    /// Control messages waiting for control rx buffers.
    ctrl_out: VecDeque<Vec<u8>>,
    warn: WarnLimit,
}

/// What a queue index means.
enum QueueRole {
    PortRx(usize),
    PortTx(usize),
    CtrlRx,
    CtrlTx,
}

fn role(index: usize) -> QueueRole {
    match index {
        0 => QueueRole::PortRx(0),
        1 => QueueRole::PortTx(0),
        2 => QueueRole::CtrlRx,
        3 => QueueRole::CtrlTx,
        q if q % 2 == 0 => QueueRole::PortRx((q - 2) / 2),
        q => QueueRole::PortTx((q - 3) / 2),
    }
}

impl Console {
    /// A console with `ports` (port N is `ports[N]`); at least one port.
    pub fn new(ports: Vec<PortSpec>) -> Console {
        let n = ports.len().max(1);
        // cols, rows (unused: no console port), max_nr_ports, emerg_wr.
        let mut config = Vec::with_capacity(12);
        config.extend_from_slice(&0u16.to_le_bytes());
        config.extend_from_slice(&0u16.to_le_bytes());
        config.extend_from_slice(&(n as u32).to_le_bytes());
        config.extend_from_slice(&0u32.to_le_bytes());
        let mut ports: Vec<Port> = ports
            .into_iter()
            .map(|p| Port::new(p.name, p.output, p.input.map(File::from)))
            .collect();
        if ports.is_empty() {
            // Port 0's queues exist whatever the driver does; give them a home.
            ports.push(Port::new(String::new(), None, None));
        }
        Console {
            virtio: VirtioConfig::new(
                "virtio-console",
                VIRTIO_ID_CONSOLE,
                vec![QUEUE_SIZE; 2 * (n + 1)],
                (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_CONSOLE_F_MULTIPORT),
                config,
            ),
            ports,
            active: None,
            ctrl_out: VecDeque::new(),
            warn: WarnLimit::default(),
        }
    }

    /// Serves every port's tx queue once more: the guest's last writes may
    /// still be in the avail ring when the VM stops (Linux returns from
    /// write(2) once the buffer is queued, before the host has read it).
    /// Call it after the vCPUs stopped, before reset.
    pub fn flush(&mut self) {
        for p in 0..self.ports.len() {
            self.serve_tx(p);
        }
        for p in &mut self.ports {
            if let Some(o) = p.output.as_mut() {
                let _ = o.flush();
            }
        }
    }

    /// Whether the guest has port `id` open.
    pub fn guest_open(&self, id: usize) -> bool {
        self.ports.get(id).is_some_and(|p| p.guest_open)
    }

    fn queue_ctrl(&mut self, id: u32, event: u16, value: u16, payload: &[u8]) {
        self.ctrl_out.push_back(message(id, event, value, payload));
    }

    /// Moves waiting control messages into control rx buffers.
    fn send_ctrl(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(msg) = self.ctrl_out.front() {
            match push_rx(&a.mem, &mut a.ctrl_rx, msg, &mut self.warn) {
                Some(n) if n < msg.len() => {
                    // Too small for the message: the driver posts pages, so
                    // this is a broken driver; drop it rather than loop.
                    self.warn
                        .warn(&format_args!("control rx buffer of {n} bytes"));
                    used = true;
                    self.ctrl_out.pop_front();
                }
                Some(_) => {
                    used = true;
                    self.ctrl_out.pop_front();
                }
                None => break,
            }
        }
        if used {
            a.interrupt.trigger(INTERRUPT_STATUS_USED_RING);
        }
    }

    fn serve_ctrl_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut msgs = Vec::new();
        let warn = &mut self.warn;
        a.ctrl_tx.serve(|mem, chain| {
            match read_chain(mem, chain).and_then(|b| Control::parse(&b)) {
                Ok(c) => msgs.push(c),
                Err(e) => warn.warn(&e),
            }
            0
        });
        for c in msgs {
            if let Err(e) = self.handle_control(c) {
                self.warn.warn(&e);
            }
        }
        self.send_ctrl();
    }

    fn handle_control(&mut self, c: Control) -> Result<(), ConsoleError> {
        let n = self.ports.len();
        let port_ok = (c.id as usize) < n;
        match c.event {
            DEVICE_READY => {
                if c.value != 1 {
                    crate::guest_warn!("virtio-console: driver failed to initialise");
                    return Ok(());
                }
                for id in 0..n as u32 {
                    self.queue_ctrl(id, DEVICE_ADD, 0, &[]);
                }
            }
            PORT_READY if port_ok => {
                if c.value != 1 {
                    crate::guest_warn!("virtio-console: driver failed to add port {}", c.id);
                    return Ok(());
                }
                let name = self.ports[c.id as usize].name.clone().into_bytes();
                self.queue_ctrl(c.id, PORT_NAME, 1, &name);
                self.queue_ctrl(c.id, PORT_OPEN, 1, &[]);
                // A port whose input already ended is re-closed after the open.
                self.ports[c.id as usize].eof_sent = false;
                self.pump_input(c.id as usize);
            }
            PORT_OPEN if port_ok => {
                self.ports[c.id as usize].guest_open = c.value != 0;
                if c.value != 0 {
                    self.pump_input(c.id as usize);
                }
            }
            PORT_READY | PORT_OPEN => {
                return Err(ConsoleError::BadPort {
                    id: c.id,
                    event: c.event,
                })
            }
            _ => {
                return Err(ConsoleError::UnknownEvent {
                    id: c.id,
                    event: c.event,
                    value: c.value,
                })
            }
        }
        Ok(())
    }

    /// Writes the port's tx chains to its sink, in ring order.
    fn serve_tx(&mut self, p: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(q) = a.port_tx.get_mut(p) else {
            return;
        };
        let port = &mut self.ports[p];
        let warn = &mut self.warn;
        q.serve(|mem, chain| {
            match read_chain(mem, chain) {
                Ok(bytes) => {
                    if let Some(out) = port.output.as_mut() {
                        if let Err(e) = write_all(out.as_mut(), &bytes) {
                            warn.warn(&ConsoleError::Host {
                                port: p as u32,
                                source: e,
                            });
                        }
                    }
                }
                Err(e) => warn.warn(&e),
            }
            0
        });
        if let Some(o) = port.output.as_mut() {
            // Line-buffered sinks (std's Stdout) must not sit on guest output.
            let _ = o.flush();
        }
    }

    /// Moves host input into the port's rx buffers while the guest has the
    /// port open and buffers to fill; at EOF with nothing left, tells the
    /// guest the host side closed.
    fn pump_input(&mut self, p: usize) {
        if self.active.is_none() || !self.ports[p].guest_open {
            return;
        }
        let mut used = false;
        loop {
            let port = &mut self.ports[p];
            if port.pending.is_empty() && !port.input_eof {
                let Some(f) = port.input.as_mut() else { break };
                // Only read what poll says is there: the fd may be blocking
                // (a terminal's stdin), and a blocking read would stall the loop.
                if !readable(f.as_raw_fd()) {
                    break;
                }
                let mut buf = vec![0u8; INPUT_CHUNK];
                match f.read(&mut buf) {
                    Ok(0) => port.input_eof = true,
                    Ok(n) => port.pending.extend(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.warn.warn(&ConsoleError::Host {
                            port: p as u32,
                            source: e,
                        });
                        port.input_eof = true;
                    }
                }
            }
            if port.pending.is_empty() {
                if port.input_eof && !port.eof_sent {
                    port.eof_sent = true;
                    self.queue_ctrl(p as u32, PORT_OPEN, 0, &[]);
                    self.send_ctrl();
                }
                break;
            }
            let Some(a) = self.active.as_mut() else { break };
            let Some(rx) = a.port_rx.get_mut(p) else {
                break;
            };
            let data: Vec<u8> = port.pending.iter().copied().collect();
            match push_rx(&a.mem, rx, &data, &mut self.warn) {
                Some(n) => {
                    used = true;
                    port.pending.drain(..n);
                }
                // No buffer: the rest waits for the rx queue's notify.
                None => break,
            }
        }
        if used {
            if let Some(a) = self.active.as_ref() {
                a.interrupt.trigger(INTERRUPT_STATUS_USED_RING);
            }
        }
    }
}

/// Puts `data` (or what fits) in the next chain of `rx`; None when the
/// driver has no buffer posted. A bad chain is returned empty.
fn push_rx(
    mem: &GuestMemory,
    rx: &mut RxQueue,
    data: &[u8],
    warn: &mut WarnLimit,
) -> Option<usize> {
    if rx.broken {
        return None;
    }
    loop {
        let chain = rx.queue.pop_descriptor_chain(mem)?;
        let head = chain.head_index();
        let (n, ok) = match writable_buffers(mem, chain).and_then(|b| fill_buffers(mem, &b, data)) {
            Ok(n) => (n, true),
            Err(e) => {
                warn.warn(&e);
                (0, false)
            }
        };
        if let Err(e) = rx.queue.add_used(mem, head, n as u32) {
            warn.warn(&format_args!("adding chain {head} to the used ring: {e}"));
            rx.broken = true;
            return None;
        }
        if ok {
            return Some(n);
        }
    }
}

/// Writes all of `buf`, waiting out a non-blocking sink's EAGAIN so no guest
/// output is lost.
fn write_all(out: &mut dyn Write, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match out.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(WRITE_RETRY),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `fd` has data (or EOF/hang-up) to read right now.
fn readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid, exclusively borrowed pollfd; timeout 0
    // makes the call non-blocking.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

impl VirtioDevice for Console {
    fn virtio_config(&self) -> &VirtioConfig {
        &self.virtio
    }

    fn virtio_config_mut(&mut self) -> &mut VirtioConfig {
        &mut self.virtio
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemory>,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.virtio.check_queues(&queues)?;
        let mut port_rx = Vec::new();
        let mut port_tx = Vec::new();
        let mut ctrl_rx = None;
        let mut ctrl_tx = None;
        for (i, q) in queues.into_iter().enumerate() {
            match role(i) {
                QueueRole::PortRx(_) => port_rx.push(RxQueue {
                    queue: q,
                    broken: false,
                }),
                QueueRole::PortTx(_) => port_tx.push(ActiveQueue::new(
                    "virtio-console",
                    mem.clone(),
                    q,
                    interrupt.clone(),
                )),
                QueueRole::CtrlRx => {
                    ctrl_rx = Some(RxQueue {
                        queue: q,
                        broken: false,
                    })
                }
                QueueRole::CtrlTx => {
                    ctrl_tx = Some(ActiveQueue::new(
                        "virtio-console",
                        mem.clone(),
                        q,
                        interrupt.clone(),
                    ))
                }
            }
        }
        let (Some(ctrl_rx), Some(ctrl_tx)) = (ctrl_rx, ctrl_tx) else {
            return Err(ActivateError::Backend("no control queues".into()));
        };
        self.active = Some(Active {
            mem,
            interrupt,
            port_rx,
            port_tx,
            ctrl_rx,
            ctrl_tx,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if self.active.is_none() {
            tracing::debug!("virtio-console: notify before activation ignored");
            return;
        }
        if index >= self.virtio.queue_sizes.len() {
            crate::guest_warn!("virtio-console: notify of non-existent queue {index}");
            return;
        }
        match role(index) {
            QueueRole::PortRx(p) => self.pump_input(p),
            QueueRole::PortTx(p) => self.serve_tx(p),
            QueueRole::CtrlRx => self.send_ctrl(),
            QueueRole::CtrlTx => self.serve_ctrl_tx(),
        }
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.saved_queues()
    }

    fn device_state(&self) -> super::DeviceState {
        self.saved_state()
    }

    fn restore_device_state(&mut self, state: &super::DeviceState) -> Result<(), String> {
        self.restore_saved(state)
    }

    fn reset(&mut self) {
        self.active = None;
        self.ctrl_out.clear();
        for p in &mut self.ports {
            // Host-side input already read stays pending for the next driver.
            p.guest_open = false;
            p.eof_sent = false;
        }
        self.virtio.acked_features = 0;
    }

    fn vcpus_stopped(&mut self) {
        self.flush();
    }

    fn host_fds(&self) -> Vec<RawFd> {
        self.ports
            .iter()
            .filter_map(|p| p.input.as_ref().map(|f| f.as_raw_fd()))
            .collect()
    }

    fn process_host_event(&mut self, index: usize) {
        // Index `index` of host_fds: the index-th port that has an input.
        let port = self
            .ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.input.is_some())
            .nth(index)
            .map(|(i, _)| i);
        match port {
            Some(p) => self.pump_input(p),
            None => tracing::debug!("virtio-console: unexpected host event {index}"),
        }
    }
}
