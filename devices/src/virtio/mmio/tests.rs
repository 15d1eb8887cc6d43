//! Unit tests of the virtio-mmio transport, with a fake device.
use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::{ActivateError, VirtioConfig};

// Short names keep each register access on one line.
const STATUS: u32 = VIRTIO_MMIO_STATUS;
const QSEL: u32 = VIRTIO_MMIO_QUEUE_SEL;
const QNUM: u32 = VIRTIO_MMIO_QUEUE_NUM;
const QREADY: u32 = VIRTIO_MMIO_QUEUE_READY;
const NOTIFY: u32 = VIRTIO_MMIO_QUEUE_NOTIFY;
const ISR: u32 = VIRTIO_MMIO_INTERRUPT_STATUS;
const DFSEL: u32 = VIRTIO_MMIO_DEVICE_FEATURES_SEL;
const DF: u32 = VIRTIO_MMIO_DEVICE_FEATURES;
const FEAT: u32 = ACK | DRIVER | FEATURES_OK;
const LIVE: u32 = FEAT | DRIVER_OK;
const EVENT_IDX: u32 = 1 << VIRTIO_RING_F_EVENT_IDX;
/// Offered by the fake device: bits 0, 3 and EVENT_IDX.
const FAKE_FEATURES: u64 = 0b1001 | EVENT_IDX as u64;
const V1: u32 = 1 << (VIRTIO_F_VERSION_1 - 32);

/// (size, desc, avail, used, event_idx) of one queue handed to the device.
type QueueSnapshot = (u16, u64, u64, u64, bool);

#[derive(Default)]
struct FakeState {
    acked: Option<u64>,
    /// Per activation, each queue's configuration.
    activations: Vec<Vec<QueueSnapshot>>,
    processed: Vec<usize>,
    resets: u32,
    config: Vec<(u64, Vec<u8>)>,
    fail_activate: bool,
    /// Answer `queue_states` with the activation's queues (else: not saveable).
    saveable: bool,
    /// The last activation's queues, as `Queue::state` gives them.
    live: Vec<virtio_queue::QueueState>,
    /// Doorbells the device waits on itself (none: the transport's).
    doorbells: Vec<EventFd>,
}

struct Fake(Arc<Mutex<FakeState>>, VirtioConfig);

impl VirtioDevice for Fake {
    fn virtio_config(&self) -> &VirtioConfig {
        &self.1
    }
    fn virtio_config_mut(&mut self) -> &mut VirtioConfig {
        &mut self.1
    }
    fn ack_features(&mut self, features: u64) {
        self.0.lock().unwrap().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0.lock().unwrap().config.push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _: Arc<GuestMemory>,
        queues: Vec<Queue>,
        _: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let mut s = self.0.lock().unwrap();
        if s.fail_activate {
            return Err(ActivateError::Backend("nope".into()));
        }
        let snap = |q: &Queue| {
            let idx = q.event_idx_enabled();
            (q.size(), q.desc_table(), q.avail_ring(), q.used_ring(), idx)
        };
        s.activations.push(queues.iter().map(snap).collect());
        s.live = queues.iter().map(Queue::state).collect();
        Ok(())
    }
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        let s = self.0.lock().unwrap();
        s.saveable.then(|| s.live.clone())
    }
    fn process_queue(&mut self, index: usize) {
        self.0.lock().unwrap().processed.push(index);
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
    }
    fn queue_doorbells(&self) -> Option<Vec<EventFd>> {
        let s = self.0.lock().unwrap();
        let own: Vec<_> = s.doorbells.iter().map(|d| d.try_clone().unwrap()).collect();
        (!own.is_empty()).then_some(own)
    }
}

fn fake(sizes: &[u16]) -> (io::Result<MmioTransport>, Arc<Mutex<FakeState>>) {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let config = VirtioConfig::new("fake", 42, sizes.to_vec(), FAKE_FEATURES, Vec::new());
    let dev = Box::new(Fake(state.clone(), config));
    (MmioTransport::new(dev, Arc::new(mem), irq), state)
}

fn transport() -> (MmioTransport, Arc<Mutex<FakeState>>) {
    let (t, s) = fake(&[16, 8]);
    (t.unwrap(), s)
}

use crate::virtio::mock::{reg_read as r, reg_write as w};

/// ACK, DRIVER, features (low word, high word), FEATURES_OK; returns the status read back.
fn negotiate(t: &mut MmioTransport, lo: u32, hi: u32) -> u32 {
    w(t, STATUS, ACK);
    w(t, STATUS, ACK | DRIVER);
    for (sel, v) in [(0, lo), (1, hi)] {
        w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        w(t, VIRTIO_MMIO_DRIVER_FEATURES, v);
    }
    w(t, STATUS, FEAT);
    r(t, STATUS)
}

/// Configures queue `sel` with `size` entries: rings at 0x1000 * (sel + 1) + 0/0x100/0x200.
fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32) {
    let base = 0x1000 * (sel + 1);
    w(t, QSEL, sel);
    w(t, QNUM, size);
    for (i, reg) in [
        VIRTIO_MMIO_QUEUE_DESC_LOW,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        VIRTIO_MMIO_QUEUE_USED_LOW,
    ]
    .into_iter()
    .enumerate()
    {
        w(t, reg, base + 0x100 * i as u32);
        w(t, reg + 4, 0);
    }
    w(t, QREADY, 1);
}

fn activate(t: &mut MmioTransport) {
    assert_eq!(negotiate(t, 0b1001 | EVENT_IDX, V1), FEAT);
    setup_queue(t, 0, 16);
    setup_queue(t, 1, 4);
    w(t, STATUS, LIVE);
    assert!(t.is_activated());
}

#[test]
fn identification_registers() {
    let (mut t, _) = transport();
    assert_eq!(r(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
    assert_eq!(r(&mut t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    for (sel, max) in [(0, 16), (1, 8), (2, 0), (u32::MAX, 0)] {
        w(&mut t, QSEL, sel);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), max);
    }
    assert_eq!(r(&mut t, QREADY), 0);
    assert_eq!(r(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
    // Writes to read-only registers change nothing.
    w(&mut t, VIRTIO_MMIO_MAGIC_VALUE, 0);
    w(&mut t, DF, 0);
    assert_eq!(r(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    // Queue sizes virtio does not allow are refused when the transport is built.
    assert!(fake(&[12]).0.is_err());
    assert!(fake(&[0]).0.is_err());
}

#[test]
fn feature_negotiation() {
    let (mut t, state) = transport();
    for (sel, v) in [(0, FAKE_FEATURES as u32), (1, V1), (2, 0)] {
        w(&mut t, DFSEL, sel);
        assert_eq!(r(&mut t, DF), v);
    }
    // Before DRIVER, feature writes are ignored.
    w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
    // No FEATURES_OK for a legacy driver (no VERSION_1) or one accepting
    // features never offered.
    for (lo, hi) in [(0b1, 0), (0b11, V1), (0, V1 | 2)] {
        assert_eq!(negotiate(&mut t, lo, hi), ACK | DRIVER, "{lo:#x} {hi:#x}");
        w(&mut t, STATUS, 0);
    }
    assert_eq!(state.lock().unwrap().acked, None);
    // A subset with VERSION_1 is accepted; the device sees its own bits only.
    assert_eq!(negotiate(&mut t, 0b1000, V1), FEAT);
    assert_eq!(state.lock().unwrap().acked, Some(0b1000));
    // After FEATURES_OK the features are frozen.
    w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0b1);
    assert_eq!(t.driver_features, 0b1000 | (1 << VIRTIO_F_VERSION_1));
}

#[test]
fn status_must_follow_the_spec_order() {
    let (mut t, state) = transport();
    for bad in [DRIVER, ACK | FEATURES_OK, ACK | DRIVER_OK, 0x100] {
        w(&mut t, STATUS, bad);
        assert_eq!(r(&mut t, STATUS), 0, "status {bad:#x}");
    }
    w(&mut t, STATUS, ACK);
    w(&mut t, STATUS, ACK | DRIVER);
    // Clearing a bit (other than by reset) and skipping FEATURES_OK are ignored.
    w(&mut t, STATUS, DRIVER);
    w(&mut t, STATUS, ACK | DRIVER | DRIVER_OK);
    assert_eq!(r(&mut t, STATUS), ACK | DRIVER);
    // FAILED may be set any time; afterwards only reset helps.
    w(&mut t, STATUS, ACK | DRIVER | FAILED);
    w(&mut t, STATUS, FEAT | FAILED);
    assert_eq!(r(&mut t, STATUS), ACK | DRIVER | FAILED);
    w(&mut t, STATUS, 0);

    // DRIVER_OK with queue 1 not ready: NEEDS_RESET and a config interrupt, no activation.
    negotiate(&mut t, 0, V1);
    setup_queue(&mut t, 0, 16);
    w(&mut t, STATUS, LIVE);
    assert!(!t.is_activated());
    assert_eq!(r(&mut t, STATUS), LIVE | NEEDS_RESET);
    assert_eq!(r(&mut t, ISR), INTERRUPT_STATUS_CONFIG_CHANGED);
    assert_eq!(t.interrupt().irqfd().read().unwrap(), 1);
    // Writing the value back (read-modify-write) keeps NEEDS_RESET and does nothing.
    w(&mut t, STATUS, LIVE | NEEDS_RESET);
    assert_eq!(r(&mut t, STATUS), LIVE | NEEDS_RESET);
    assert!(state.lock().unwrap().activations.is_empty());
    w(&mut t, STATUS, 0);
    assert_eq!(r(&mut t, ISR), 0);

    // A queue placed outside guest memory is not valid either.
    negotiate(&mut t, 0, V1);
    setup_queue(&mut t, 0, 16);
    setup_queue(&mut t, 1, 8);
    w(&mut t, QREADY, 0);
    w(&mut t, VIRTIO_MMIO_QUEUE_USED_HIGH, 7);
    w(&mut t, QREADY, 1);
    w(&mut t, STATUS, LIVE);
    assert_eq!(r(&mut t, STATUS), LIVE | NEEDS_RESET);
    assert!(!t.is_activated());

    // The device refusing activation has the same effect.
    w(&mut t, STATUS, 0);
    state.lock().unwrap().fail_activate = true;
    negotiate(&mut t, 0, V1);
    setup_queue(&mut t, 0, 16);
    setup_queue(&mut t, 1, 8);
    w(&mut t, STATUS, LIVE);
    assert_eq!(r(&mut t, STATUS), LIVE | NEEDS_RESET);
    assert!(!t.is_activated());
}

#[test]
fn queue_config_and_activation() {
    let (mut t, state) = transport();
    // Queue setup before FEATURES_OK is ignored.
    w(&mut t, QNUM, 4);
    w(&mut t, QREADY, 1);
    assert_eq!((r(&mut t, QNUM), r(&mut t, QREADY)), (16, 0));
    negotiate(&mut t, 0b1001 | EVENT_IDX, V1);
    // Bad sizes (too big, not a power of two, zero, beyond u16) and misaligned rings are refused.
    for bad in [32, 12, 0, 0x1_0000 | 4] {
        w(&mut t, QNUM, bad);
        assert_eq!(r(&mut t, QNUM), 16, "size {bad}");
    }
    w(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW), 0);
    // Setup of a non-existent queue is ignored.
    w(&mut t, QSEL, 9);
    w(&mut t, QNUM, 4);
    w(&mut t, QREADY, 1);
    assert_eq!(r(&mut t, QREADY), 0);

    setup_queue(&mut t, 0, 16);
    setup_queue(&mut t, 1, 4);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW), 0x2100);
    // A ready queue can no longer be reconfigured.
    w(&mut t, QNUM, 2);
    assert_eq!(r(&mut t, QNUM), 4);

    // Notifications before activation go nowhere.
    w(&mut t, NOTIFY, 0);
    w(&mut t, STATUS, LIVE);
    assert!(t.is_activated());
    let expect = vec![
        (16, 0x1000, 0x1100, 0x1200, true),
        (4, 0x2000, 0x2100, 0x2200, true),
    ];
    assert_eq!(state.lock().unwrap().activations, vec![expect]);
    // After DRIVER_OK queue registers are frozen.
    w(&mut t, QREADY, 0);
    w(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x5000);
    assert_eq!(r(&mut t, QREADY), 1);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW), 0x2200);

    for q in [1, 0, 2, u32::MAX] {
        w(&mut t, NOTIFY, q);
    }
    assert_eq!(state.lock().unwrap().processed, vec![1, 0]);

    t.interrupt().trigger(1);
    assert_eq!(r(&mut t, ISR), 1);
    w(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(r(&mut t, ISR), 0);
}

#[test]
fn reset_returns_to_power_on_state() {
    let (mut t, state) = transport();
    activate(&mut t);
    t.interrupt().trigger(1);
    w(&mut t, QSEL, 1);
    w(&mut t, STATUS, 0);
    assert!(!t.is_activated());
    assert_eq!(state.lock().unwrap().resets, 1);
    assert_eq!((r(&mut t, STATUS), r(&mut t, ISR)), (0, 0));
    assert_eq!(t.driver_features, 0);
    // QueueSel went back to 0; queue 0 is back to its defaults.
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
    assert_eq!(r(&mut t, QREADY), 0);
    assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW), 0);
    w(&mut t, NOTIFY, 0);
    assert!(state.lock().unwrap().processed.is_empty());
    // And the device can be brought up again, without EVENT_IDX this time.
    negotiate(&mut t, 0, V1);
    setup_queue(&mut t, 0, 8);
    setup_queue(&mut t, 1, 8);
    w(&mut t, STATUS, LIVE);
    assert!(t.is_activated());
    let s = state.lock().unwrap();
    assert_eq!(s.activations.len(), 2);
    assert_eq!(s.activations[1][0], (8, 0x1000, 0x1100, 0x1200, false));
}

#[test]
fn into_device_resets_it_for_the_next_vm() {
    let (mut t, state) = transport();
    activate(&mut t);
    let dev = t.into_device();
    assert_eq!(state.lock().unwrap().resets, 1);
    // A new transport (the rebooted guest's VM) activates it afresh.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(dev, Arc::new(mem), irq).unwrap();
    assert!(!t.is_activated());
    activate(&mut t);
    assert_eq!(state.lock().unwrap().activations.len(), 2);
}

#[test]
fn odd_widths_and_config_space() {
    let (mut t, state) = transport();
    // Non-32-bit accesses below 0x100: reads give zeros, writes are ignored.
    let mut b = [0xffu8; 2];
    t.read(0, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b8 = [0xffu8; 8];
    t.read(0, &mut b8);
    assert_eq!(b8, [0; 8]);
    t.write(u64::from(STATUS), &[1]);
    t.write(u64::from(STATUS), &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r(&mut t, STATUS), 0);
    // Unaligned and unknown offsets.
    let mut b4 = [0xffu8; 4];
    t.read(2, &mut b4);
    assert_eq!(b4, [0; 4]);
    t.write(0x71, &[1, 0, 0, 0]);
    t.write(0x88, &[1, 0, 0, 0]);
    assert_eq!(r(&mut t, STATUS), 0);
    // Config space takes any width and is forwarded at its own offset.
    let mut c = [0u8; 3];
    t.read(0x105, &mut c);
    assert_eq!(c, [5, 5, 5]);
    t.write(0x102, &[7]);
    t.write(0x1000, &[1, 2]);
    let expect = vec![(2, vec![7]), (0xf00, vec![1, 2])];
    assert_eq!(state.lock().unwrap().config, expect);
}

#[test]
fn queue_events_through_event_manager() {
    let (mut t, state) = transport();
    assert_eq!(t.queue_events().len(), 2);
    // Before activation a doorbell is consumed but not delivered.
    t.queue_events()[1].write(1).unwrap();
    t.process_queue_event(1);
    t.process_queue_event(5);
    assert!(state.lock().unwrap().processed.is_empty());
    activate(&mut t);

    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<MmioTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());
    t.lock().unwrap().queue_events()[1].write(1).unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert_eq!(state.lock().unwrap().processed, vec![1]);
    // The eventfd was drained: nothing more to dispatch.
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);
    t.lock().unwrap().queue_events()[0].write(3).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(state.lock().unwrap().processed, vec![1, 0]);
}

#[test]
fn a_device_waiting_on_its_own_doorbells_gets_them_and_the_event_loop_leaves_them() {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let own: Vec<_> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    state.lock().unwrap().doorbells = own.iter().map(|d| d.try_clone().unwrap()).collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let config = VirtioConfig::new("fake", 42, vec![16, 8], FAKE_FEATURES, Vec::new());
    let dev = Box::new(Fake(state.clone(), config));
    let mut t = MmioTransport::new(dev, Arc::new(mem), irq).unwrap();
    activate(&mut t);
    // What the VMM registers with KVM are the device's own eventfds.
    t.queue_events()[1].write(2).unwrap();
    assert_eq!(own[1].read().unwrap(), 2);

    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<MmioTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());
    own[0].write(1).unwrap();
    assert_eq!(
        em.run_with_timeout(50).unwrap(),
        0,
        "not watched by the event loop"
    );
    assert_eq!(
        own[0].read().unwrap(),
        1,
        "the ring is left for the device's thread"
    );
    assert!(state.lock().unwrap().processed.is_empty());
    // A QueueNotify the transport sees itself still reaches the device.
    w(&mut t.lock().unwrap(), NOTIFY, 1);
    assert_eq!(state.lock().unwrap().processed, vec![1]);
}

#[test]
fn a_device_with_the_wrong_number_of_doorbells_gets_the_transports() {
    let state = Arc::new(Mutex::new(FakeState::default()));
    state.lock().unwrap().doorbells = vec![EventFd::new(EFD_NONBLOCK).unwrap()];
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let config = VirtioConfig::new("fake", 42, vec![16, 8], FAKE_FEATURES, Vec::new());
    let mut t =
        MmioTransport::new(Box::new(Fake(state.clone(), config)), Arc::new(mem), irq).unwrap();
    assert_eq!(t.queue_events().len(), 2);
    activate(&mut t);
    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<MmioTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());
    t.lock().unwrap().queue_events()[0].write(1).unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert_eq!(state.lock().unwrap().processed, vec![0]);
}

#[test]
fn saved_state_restores_into_a_fresh_transport() {
    let (mut t, state) = transport();
    // Before activation: the driver's set-up so far.
    assert_eq!(negotiate(&mut t, 0b1001 | EVENT_IDX, V1), FEAT);
    setup_queue(&mut t, 0, 16);
    let early = t.save_state().unwrap();
    assert!(!early.activated && early.queues[0].ready && !early.queues[1].ready);
    setup_queue(&mut t, 1, 4);
    w(&mut t, STATUS, LIVE);
    let err = t.save_state().unwrap_err();
    assert!(err.contains("fake: its state is not saved yet"), "{err}");
    state.lock().unwrap().saveable = true;
    t.interrupt().trigger(1);
    let saved = t.save_state().unwrap();
    let json = serde_json::to_string(&saved).unwrap();
    let back: TransportState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, saved, "the state survives its file format");

    let (mut fresh, fresh_state) = transport();
    fresh.restore_state(&back).unwrap();
    assert!(fresh.is_activated());
    assert_eq!(r(&mut fresh, STATUS), LIVE);
    assert_eq!(r(&mut fresh, ISR), 1, "a pending interrupt stays pending");
    let f = fresh_state.lock().unwrap();
    let old = state.lock().unwrap();
    assert_eq!(f.activations, old.activations);
    assert_eq!(
        (f.acked, old.acked),
        (Some(FAKE_FEATURES), Some(FAKE_FEATURES))
    );
    assert_eq!(
        f.processed,
        [0, 1],
        "every queue is served once after restore"
    );
    drop((f, old));

    // Another device (queue count, type) is refused.
    let (other, _) = fake(&[16]);
    let err = other.unwrap().restore_state(&back).unwrap_err();
    assert!(
        err.contains("saved state is of device type 42 with 2 queues"),
        "{err}"
    );
}
