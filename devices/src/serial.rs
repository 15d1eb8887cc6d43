//! The 8250/16550A UART (COM1 in `boot::ports`), emulated by vm-superio.
//!
//! Guest output goes to a [`ConsoleOutput`] whose writer never blocks the
//! vCPU: bytes are queued and a separate thread writes them to the sink. If the
//! sink stalls and the queue fills, further bytes are dropped and counted.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sandbox::ThreadFilter;
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Ports spanned by the UART.
pub const SERIAL_PORTS_LEN: u64 = 8;
/// Bytes of guest output held while the sink is slow; beyond it bytes are dropped.
pub const OUTPUT_QUEUE_LIMIT: usize = 4 << 20;

/// An irqfd as the UART's interrupt trigger.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Signals, through an event fd, that the guest drained the input FIFO so the
/// VMM can feed it more.
pub struct InputEvents {
    /// Readable when the guest emptied the receive FIFO.
    pub in_buffer_empty: EventFd,
}

impl SerialEvents for InputEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.in_buffer_empty.write(1);
    }
}

struct OutQueue {
    state: Mutex<OutState>,
    cond: Condvar,
    dropped: AtomicU64,
}

struct OutState {
    buf: VecDeque<u8>,
    closed: bool,
}

/// The writing end handed to the UART: appends to a bounded queue, never blocks.
#[derive(Clone)]
pub struct ConsoleWriter {
    queue: Arc<OutQueue>,
}

impl Write for ConsoleWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut st = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        let room = OUTPUT_QUEUE_LIMIT.saturating_sub(st.buf.len());
        let n = room.min(data.len());
        st.buf.extend(&data[..n]);
        if n < data.len() {
            self.queue
                .dropped
                .fetch_add((data.len() - n) as u64, Ordering::Relaxed);
        }
        // Report the whole write as done: the UART cannot wait, and losses are counted.
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.queue.cond.notify_one();
        Ok(())
    }
}

/// Owns the thread that copies guest output to the real sink.
pub struct ConsoleOutput {
    queue: Arc<OutQueue>,
    thread: Option<JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl ConsoleOutput {
    /// Starts the output thread writing to `sink` (stdout, a file, ...),
    /// confined by `filter` before it writes anything.
    pub fn new(mut sink: Box<dyn Write + Send>, filter: ThreadFilter) -> io::Result<Self> {
        let queue = Arc::new(OutQueue {
            state: Mutex::new(OutState {
                buf: VecDeque::new(),
                closed: false,
            }),
            cond: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let q = queue.clone();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || {
                // Dropped on every return: tells finish() the thread is done.
                let _done = done_tx;
                if !filter.apply_and_report(&ready_tx) {
                    return;
                }
                let mut chunk = Vec::with_capacity(64 << 10);
                loop {
                    {
                        let mut st = q.state.lock().unwrap_or_else(|e| e.into_inner());
                        while st.buf.is_empty() && !st.closed {
                            st = q.cond.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                        if st.buf.is_empty() && st.closed {
                            return;
                        }
                        let n = st.buf.len().min(64 << 10);
                        chunk.extend(st.buf.drain(..n));
                    }
                    // A vanished reader (closed pipe) just ends the copying.
                    if sink.write_all(&chunk).and_then(|_| sink.flush()).is_err() {
                        return;
                    }
                    chunk.clear();
                }
            })?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io::Error::other(e)),
            Err(_) => return Err(io::Error::other("the console thread ended at start")),
        }
        Ok(ConsoleOutput {
            queue,
            thread: Some(thread),
            done,
        })
    }

    /// A writer for the UART.
    pub fn writer(&self) -> ConsoleWriter {
        ConsoleWriter {
            queue: self.queue.clone(),
        }
    }

    /// Bytes dropped because the sink was too slow.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }

    /// Writes out what is queued, waiting at most `timeout` for a stalled sink.
    pub fn finish(mut self, timeout: Duration) {
        {
            let mut st = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
            st.closed = true;
        }
        self.queue.cond.notify_one();
        if let Some(t) = self.thread.take() {
            // The sender is dropped when the thread returns; a stalled sink is left behind.
            if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                self.done.recv_timeout(timeout)
            {
                let _ = t.join();
            }
        }
    }
}

/// The UART as a bus device.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, Arc<InputEvents>, ConsoleWriter>,
}

impl SerialDevice {
    /// `irq` raises the UART's interrupt; `events.in_buffer_empty` fires when the guest drained its input.
    pub fn new(irq: EventFd, events: Arc<InputEvents>, out: ConsoleWriter) -> Self {
        SerialDevice {
            serial: Serial::with_events(IrqTrigger(irq), events, out),
        }
    }

    /// A UART in the state `state` (a snapshot's); a state vm-superio
    /// refuses (an over-full FIFO) is an error.
    pub fn from_state(
        state: &vm_superio::serial::SerialState,
        irq: EventFd,
        events: Arc<InputEvents>,
        out: ConsoleWriter,
    ) -> Result<Self, String> {
        let serial = Serial::from_state(state, IrqTrigger(irq), events, out)
            .map_err(|e| format!("{e:?}"))?;
        Ok(SerialDevice { serial })
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.serial.state()
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        if input.is_empty() || self.serial.fifo_capacity() == 0 {
            return 0;
        }
        self.serial.enqueue_raw_bytes(input).unwrap_or_else(|e| {
            tracing::warn!("serial input: {e}");
            0
        })
    }

    /// Free room in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.serial.write(off, b) {
                tracing::debug!("serial write: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox::ThreadKind;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn device(sink: Sink) -> (SerialDevice, ConsoleOutput, EventFd, Arc<InputEvents>) {
        let out =
            ConsoleOutput::new(Box::new(sink), ThreadFilter::none(ThreadKind::Console)).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let events = Arc::new(InputEvents {
            in_buffer_empty: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        });
        let dev = SerialDevice::new(irq.try_clone().unwrap(), events.clone(), out.writer());
        (dev, out, irq, events)
    }

    #[test]
    fn output_reaches_sink_and_raises_irq() {
        let sink = Sink::default();
        let (mut dev, out, irq, _) = device(sink.clone());
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        for b in b"hello" {
            dev.write(0, &[*b]);
        }
        out.finish(Duration::from_secs(5));
        assert_eq!(&*sink.0.lock().unwrap(), b"hello");
        assert!(irq.read().unwrap() >= 1);
    }

    #[test]
    fn lsr_reset_value_says_transmitter_empty() {
        let (mut dev, out, _, _) = device(Sink::default());
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
        out.finish(Duration::from_secs(1));
    }

    #[test]
    fn input_is_bounded_by_fifo_and_drain_is_signalled() {
        let (mut dev, out, _, events) = device(Sink::default());
        let cap = dev.input_capacity();
        assert!(cap > 0);
        let big = vec![b'a'; cap + 10];
        assert_eq!(dev.enqueue_input(&big), cap);
        assert_eq!(dev.enqueue_input(b"x"), 0);
        let mut b = [0u8];
        for _ in 0..cap {
            dev.read(0, &mut b);
            assert_eq!(b[0], b'a');
        }
        assert_eq!(events.in_buffer_empty.read().unwrap(), 1);
        out.finish(Duration::from_secs(1));
    }

    #[test]
    fn writer_drops_and_counts_beyond_limit() {
        let out = ConsoleOutput::new(
            Box::new(io::sink()),
            ThreadFilter::none(ThreadKind::Console),
        )
        .unwrap();
        let mut w = out.writer();
        let data = vec![0u8; OUTPUT_QUEUE_LIMIT + 100];
        assert_eq!(w.write(&data).unwrap(), data.len());
        // One write into an empty queue: exactly the excess is dropped.
        assert_eq!(out.dropped(), 100);
        out.finish(Duration::from_secs(5));
    }
}
