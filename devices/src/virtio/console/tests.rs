//! virtio-console against mock virtqueues (virtio-queue's `test-utils`).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::control::*;
use super::{Console, PortSpec, QUEUE_SIZE};
use crate::virtio::mock::add_chain;
use crate::virtio::{Interrupt, VirtioDevice};
use crate::GuestMemory;

const MEM_SIZE: usize = 0x20_0000;
/// Queue i lives at QBASE + i * QSTRIDE.
const QBASE: u64 = 0x1_0000;
const QSTRIDE: u64 = 0x1_0000;
/// Buffers.
const BUF: u64 = 0x10_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

/// A shared byte sink.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // Short writes on purpose, to exercise the write loop.
        let n = b.len().min(3);
        self.0.lock().unwrap().extend_from_slice(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

struct Rig<'a> {
    mem: Arc<GuestMemory>,
    qs: Vec<MockSplitQueue<'a, GuestMemory>>,
    /// Next free descriptor index per queue.
    next_desc: Vec<u16>,
    /// Next buffer address.
    next_buf: u64,
    /// Used entries already looked at, per queue.
    seen: Vec<usize>,
    /// Buffer address of each posted rx chain, by (queue, head).
    rx_addr: std::collections::HashMap<(usize, u16), u64>,
}

impl Rig<'_> {
    /// Posts a chain of device-writable buffers of `len` bytes on queue `q`;
    /// returns its address.
    fn post_rx(&mut self, q: usize, len: u32) -> u64 {
        let a = self.next_buf;
        self.next_buf += 0x1000;
        add_chain(&self.qs[q], self.next_desc[q], &[(a, len, W)]);
        self.rx_addr.insert((q, self.next_desc[q]), a);
        self.next_desc[q] += 1;
        a
    }

    /// Posts `data` as a device-readable chain split into `parts` descriptors.
    fn post_tx(&mut self, q: usize, data: &[u8], parts: usize) {
        let mut descs = Vec::new();
        let per = data.len().div_ceil(parts).max(1);
        for chunk in data.chunks(per) {
            let a = self.next_buf;
            self.next_buf += 0x1000;
            self.mem.write_slice(chunk, GuestAddress(a)).unwrap();
            descs.push((a, chunk.len() as u32, 0));
        }
        add_chain(&self.qs[q], self.next_desc[q], &descs);
        self.next_desc[q] += descs.len() as u16;
    }

    fn send_ctrl(&mut self, dev: &mut Console, id: u32, event: u16, value: u16) {
        self.post_tx(3, &Control { id, event, value }.encode(), 1);
        dev.process_queue(3);
    }

    /// New used entries of rx queue `q` as (descriptor id, bytes), reading
    /// each single-descriptor chain's buffer.
    fn take_used(&mut self, q: usize) -> Vec<Vec<u8>> {
        let idx = self.qs[q].used().idx().load() as usize;
        let mut out = Vec::new();
        while self.seen[q] < idx {
            let e = self.qs[q]
                .used()
                .ring()
                .ref_at(self.seen[q])
                .unwrap()
                .load();
            let a = self.rx_addr[&(q, e.id() as u16)];
            let mut v = vec![0u8; e.len() as usize];
            self.mem.read_slice(&mut v, GuestAddress(a)).unwrap();
            out.push(v);
            self.seen[q] += 1;
        }
        out
    }

    /// Control messages the device sent, decoded.
    fn ctrl(&mut self) -> Vec<(Control, Vec<u8>)> {
        self.take_used(2)
            .into_iter()
            .map(|b| (Control::parse(&b).unwrap(), b[HEADER_LEN..].to_vec()))
            .collect()
    }
}

fn rig<'a>(mem: &'a Arc<GuestMemory>, dev: &mut Console) -> Rig<'a> {
    let n = dev.queue_max_sizes().len();
    let qs: Vec<_> = (0..n)
        .map(|i| {
            MockSplitQueue::create(&**mem, GuestAddress(QBASE + i as u64 * QSTRIDE), QUEUE_SIZE)
        })
        .collect();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    dev.activate(
        mem.clone(),
        qs.iter().map(|q| q.create_queue().unwrap()).collect(),
        irq,
    )
    .unwrap();
    Rig {
        mem: mem.clone(),
        qs,
        next_desc: vec![0; n],
        next_buf: BUF,
        seen: vec![0; n],
        rx_addr: Default::default(),
    }
}

fn mem() -> Arc<GuestMemory> {
    Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

fn ctl(id: u32, event: u16, value: u16) -> Control {
    Control { id, event, value }
}

/// stdout, stderr (sinks) and stdin (a pipe); returns the sinks and the pipe's writer.
fn three_ports() -> (Console, Sink, Sink, std::io::PipeWriter) {
    let (out, err) = (Sink::default(), Sink::default());
    let (r, w) = std::io::pipe().unwrap();
    let dev = Console::new(vec![
        PortSpec {
            name: "minivm.stdout".into(),
            output: Some(Box::new(out.clone())),
            input: None,
        },
        PortSpec {
            name: "minivm.stderr".into(),
            output: Some(Box::new(err.clone())),
            input: None,
        },
        PortSpec {
            name: "minivm.stdin".into(),
            output: None,
            input: Some(OwnedFd::from(r)),
        },
    ]);
    (dev, out, err, w)
}

/// Runs the handshake for every port; returns the messages sent.
fn handshake(r: &mut Rig, dev: &mut Console, ports: u32) -> Vec<(Control, Vec<u8>)> {
    for _ in 0..16 {
        r.post_rx(2, 4096);
    }
    dev.process_queue(2);
    r.send_ctrl(dev, 0, DEVICE_READY, 1);
    for id in 0..ports {
        r.send_ctrl(dev, id, PORT_READY, 1);
    }
    r.ctrl()
}

#[test]
fn config_and_queues() {
    let (dev, ..) = three_ports();
    assert_eq!(dev.device_type(), 3);
    assert_eq!(dev.queue_max_sizes().len(), 8);
    assert_ne!(dev.features() & (1 << super::VIRTIO_CONSOLE_F_MULTIPORT), 0);
    let mut b = [0u8; 12];
    dev.read_config(0, &mut b);
    assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 3);
    assert_eq!(dev.host_fds().len(), 1);
}

#[test]
fn handshake_adds_names_and_opens_ports() {
    let m = mem();
    let (mut dev, ..) = three_ports();
    let mut r = rig(&m, &mut dev);
    let msgs = handshake(&mut r, &mut dev, 3);
    let mut want = vec![
        (ctl(0, DEVICE_ADD, 0), vec![]),
        (ctl(1, DEVICE_ADD, 0), vec![]),
        (ctl(2, DEVICE_ADD, 0), vec![]),
    ];
    for (id, name) in [
        (0, "minivm.stdout"),
        (1, "minivm.stderr"),
        (2, "minivm.stdin"),
    ] {
        want.push((ctl(id, PORT_NAME, 1), name.as_bytes().to_vec()));
        want.push((ctl(id, PORT_OPEN, 1), vec![]));
    }
    assert_eq!(msgs, want);
}

#[test]
fn control_waits_for_rx_buffers() {
    let m = mem();
    let (mut dev, ..) = three_ports();
    let mut r = rig(&m, &mut dev);
    r.send_ctrl(&mut dev, 0, DEVICE_READY, 1);
    assert!(r.ctrl().is_empty());
    r.post_rx(2, 4096);
    dev.process_queue(2);
    assert_eq!(r.ctrl().len(), 1);
    r.post_rx(2, 4096);
    r.post_rx(2, 4096);
    dev.process_queue(2);
    assert_eq!(r.ctrl().len(), 2);
}

#[test]
fn tx_reaches_the_right_sink_in_order() {
    let m = mem();
    let (mut dev, out, err, _w) = three_ports();
    let mut r = rig(&m, &mut dev);
    handshake(&mut r, &mut dev, 3);
    let mut want_out = Vec::new();
    for i in 0..10u8 {
        let data: Vec<u8> = (0..100)
            .map(|j| i.wrapping_mul(31).wrapping_add(j))
            .collect();
        r.post_tx(1, &data, 1 + i as usize % 3);
        want_out.extend_from_slice(&data);
    }
    r.post_tx(5, b"to stderr", 2); // port 1 tx = 3 + 2
    dev.process_queue(1);
    dev.process_queue(5);
    assert_eq!(out.bytes(), want_out);
    assert_eq!(err.bytes(), b"to stderr");
}

#[test]
fn flush_serves_unnotified_chains() {
    let m = mem();
    let (mut dev, out, err, _w) = three_ports();
    let mut r = rig(&m, &mut dev);
    r.post_tx(1, b"last words", 1);
    r.post_tx(5, b"last error", 3);
    assert!(out.bytes().is_empty());
    dev.flush();
    assert_eq!(out.bytes(), b"last words");
    assert_eq!(err.bytes(), b"last error");
}

#[test]
fn rx_data_then_eof() {
    let m = mem();
    let (mut dev, _out, _err, mut w) = three_ports();
    let mut r = rig(&m, &mut dev);
    handshake(&mut r, &mut dev, 3);
    w.write_all(b"hello guest").unwrap();
    // Port 2's rx queue is 2 + 2 * 2 = 6. Data waits until the guest opens the port.
    r.post_rx(6, 4);
    dev.process_host_event(0);
    assert!(r.take_used(6).is_empty());
    r.send_ctrl(&mut dev, 2, PORT_OPEN, 1);
    assert!(dev.guest_open(2));
    assert_eq!(r.take_used(6), vec![b"hell".to_vec()]);
    r.post_rx(6, 64);
    dev.process_queue(6);
    assert_eq!(r.take_used(6), vec![b"o guest".to_vec()]);
    assert!(r.ctrl().is_empty());
    drop(w);
    dev.process_host_event(0);
    assert_eq!(r.ctrl(), vec![(ctl(2, PORT_OPEN, 0), vec![])]);
    // Only once.
    dev.process_host_event(0);
    dev.process_queue(6);
    assert!(r.ctrl().is_empty());
}

#[test]
fn eof_waits_for_pending_data() {
    let m = mem();
    let (mut dev, _out, _err, mut w) = three_ports();
    let mut r = rig(&m, &mut dev);
    handshake(&mut r, &mut dev, 3);
    r.send_ctrl(&mut dev, 2, PORT_OPEN, 1);
    w.write_all(b"abc").unwrap();
    drop(w);
    dev.process_host_event(0);
    assert!(r.ctrl().is_empty(), "no EOF before the data is delivered");
    r.post_rx(6, 64);
    dev.process_queue(6);
    assert_eq!(r.take_used(6), vec![b"abc".to_vec()]);
    assert_eq!(r.ctrl(), vec![(ctl(2, PORT_OPEN, 0), vec![])]);
}

#[test]
fn malformed_control_and_chains_are_ignored() {
    let m = mem();
    let (mut dev, out, ..) = three_ports();
    let mut r = rig(&m, &mut dev);
    for _ in 0..8 {
        r.post_rx(2, 4096);
    }
    dev.process_queue(2);
    r.send_ctrl(&mut dev, 99, PORT_READY, 1);
    r.send_ctrl(&mut dev, 99, PORT_OPEN, 1);
    r.send_ctrl(&mut dev, 0, 0x7777, 1);
    r.send_ctrl(&mut dev, 0, DEVICE_ADD, 1);
    r.send_ctrl(&mut dev, 0, DEVICE_READY, 0);
    r.post_tx(3, &[1, 2, 3], 1); // short control message
    dev.process_queue(3);
    // A control chain outside memory, and a device-writable one.
    add_chain(&r.qs[3], r.next_desc[3], &[(MEM_SIZE as u64 - 4, 8, 0)]);
    r.next_desc[3] += 1;
    add_chain(&r.qs[3], r.next_desc[3], &[(BUF, 8, W)]);
    r.next_desc[3] += 1;
    dev.process_queue(3);
    assert!(r.ctrl().is_empty());
    // A tx chain outside memory is dropped; the next one still arrives.
    add_chain(&r.qs[1], r.next_desc[1], &[(u64::MAX - 8, 8, 0)]);
    r.next_desc[1] += 1;
    r.post_tx(1, b"ok", 1);
    dev.process_queue(1);
    assert_eq!(out.bytes(), b"ok");
    // Unknown queue indexes and host events.
    dev.process_queue(100);
    dev.process_host_event(7);
    // A control rx buffer too small for PORT_NAME: dropped, not looped on.
    r.post_rx(2, 4);
    dev.process_queue(2);
    r.send_ctrl(&mut dev, 0, PORT_READY, 1);
    let msgs = r.take_used(2);
    assert!(!msgs.is_empty());
}

#[test]
fn reset_and_reactivate() {
    let m = mem();
    let (mut dev, out, ..) = three_ports();
    {
        let mut r = rig(&m, &mut dev);
        handshake(&mut r, &mut dev, 3);
        r.send_ctrl(&mut dev, 2, PORT_OPEN, 1);
        assert!(dev.guest_open(2));
    }
    dev.reset();
    assert!(!dev.guest_open(2));
    // Notifies after reset are ignored.
    dev.process_queue(1);
    dev.flush();
    let mut r = rig(&m, &mut dev);
    let msgs = handshake(&mut r, &mut dev, 3);
    assert_eq!(msgs.len(), 9);
    r.post_tx(1, b"again", 1);
    dev.process_queue(1);
    assert_eq!(out.bytes(), b"again");
}

#[test]
fn a_restored_console_goes_on_with_the_saved_ports_and_queues() {
    use crate::virtio::DeviceState;
    let m = mem();
    let (mut dev, ..) = three_ports();
    let mut r = rig(&m, &mut dev);
    handshake(&mut r, &mut dev, 3);
    // The guest opens stdin and posts a buffer for it, then the VM is saved.
    r.send_ctrl(&mut dev, 2, PORT_OPEN, 1);
    r.post_rx(6, 64); // port 2 rx = 2 + 2 * 2
    let queues = dev
        .queue_states()
        .expect("an active console saves its queues");
    assert_eq!(queues.len(), 8);
    let state = dev.device_state();
    let DeviceState::Console(s) = &state else {
        panic!("{state:?}")
    };
    let open: Vec<bool> = s.ports.iter().map(|p| p.guest_open).collect();
    assert_eq!(open, [false, false, true]);

    // A fresh console of the same ports (new host ends), restored.
    let (mut restored, _, _, mut w) = three_ports();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let qs = queues
        .iter()
        .map(|q| virtio_queue::Queue::try_from(*q).unwrap())
        .collect();
    restored.activate(m.clone(), qs, irq).unwrap();
    restored.restore_device_state(&state).unwrap();
    assert!(restored.guest_open(2) && !restored.guest_open(0));
    w.write_all(b"after restore").unwrap();
    restored.process_host_event(0);
    assert_eq!(r.take_used(6), [b"after restore".to_vec()]);

    // Other ports, or another device's state, are refused.
    let mut other = Console::new(vec![PortSpec {
        name: "minivm.control".into(),
        output: None,
        input: None,
    }]);
    let err = other.restore_device_state(&state).unwrap_err();
    assert!(err.contains("saved ports [minivm.stdout"), "{err}");
    assert!(other.restore_device_state(&DeviceState::Queues).is_err());
}
