//! The thread that serves a virtio-fs device's queues.
//!
//! One worker per device, started with it (so it is confined by its own
//! seccomp filter before the guest runs, never by a vCPU's). Each activation
//! hands it the queues over a channel; the guest's queue notifications ring
//! the queues' doorbells (KVM's ioeventfds), which the worker polls itself;
//! it drains the notified queue with notifications suppressed, exactly like
//! virtio-blk does inline, and raises the interrupt once per batch. A thread
//! of its own keeps slow host I/O off the VMM's event loop and gives the
//! server a private umask (below).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use fuse_backend_rs::abi::fuse_abi::InHeader;
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::Vfs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use sandbox::ThreadFilter;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::error::FsError;
use super::stats::FsStats;
use crate::virtio::{Interrupt, INTERRUPT_STATUS_USED_RING};
use crate::GuestMemory;

/// The FUSE server the device runs requests through.
pub type FuseServer = Server<Arc<Vfs>>;

/// What one activation gives the worker.
pub(super) struct Session {
    pub server: Arc<FuseServer>,
    pub stats: Arc<FsStats>,
    pub mem: Arc<GuestMemory>,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<Interrupt>,
}

enum Msg {
    /// The driver set DRIVER_OK: serve these queues (ending a session that
    /// was never reset).
    Activate(Box<Session>),
    /// The device was reset: drop the queues, end the FUSE session, reply.
    Reset(Sender<()>),
    /// Reply once every earlier message and doorbell was handled.
    #[cfg(test)]
    Sync(Sender<()>),
}

/// The device's worker thread; dropping it stops and joins the thread.
pub(super) struct Worker {
    tx: Option<Sender<Msg>>,
    /// Rung after each message, so the thread's poll sees it.
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread serving `vfs` for device `tag`, woken by the
    /// queues' `doorbells` (one per queue), and waits until it has confined
    /// itself with `filter`.
    pub(super) fn spawn(
        tag: &str,
        vfs: Arc<Vfs>,
        filter: ThreadFilter,
        doorbells: &[EventFd],
    ) -> Result<Worker, FsError> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK).map_err(FsError::Worker)?;
        // Made here: the worker's filter allows waiting, not setting up.
        let bells = Bells::new(&wake, doorbells).map_err(FsError::Worker)?;
        let queues = doorbells.len();
        let thread = std::thread::Builder::new()
            .name(format!("virtio-fs-{tag}"))
            .spawn(move || {
                private_umask();
                if filter.apply_and_report(&ready_tx) {
                    run(vfs, rx, bells, queues);
                }
            })
            .map_err(FsError::Worker)?;
        let worker = Worker {
            tx: Some(tx),
            wake,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => Err(FsError::Confine(e)),
            Err(_) => Err(FsError::Worker(io::Error::other(
                "the thread ended at start",
            ))),
        }
    }

    fn send(&self, msg: Msg) -> bool {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(msg).is_ok());
        if !sent {
            tracing::error!("virtio-fs: worker thread is gone; request dropped");
        }
        sent && self.ring_wake()
    }

    fn ring_wake(&self) -> bool {
        match self.wake.write(1) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("virtio-fs: waking the worker: {e}");
                false
            }
        }
    }

    /// Starts serving a driver's session.
    pub(super) fn activate(&self, session: Session) {
        self.send(Msg::Activate(Box::new(session)));
    }

    /// Ends the current session; returns once the worker let go of it.
    pub(super) fn reset(&self) {
        let (done_tx, done_rx) = mpsc::channel();
        if self.send(Msg::Reset(done_tx)) {
            let _ = done_rx.recv();
        }
    }

    /// Blocks until the worker handled everything sent, and every doorbell
    /// rung, before this call.
    #[cfg(test)]
    pub(super) fn wait_idle(&self) {
        let (done_tx, done_rx) = mpsc::channel();
        if self.send(Msg::Sync(done_tx)) {
            let _ = done_rx.recv();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A closed channel ends the worker's loop once it wakes.
        self.tx = None;
        self.ring_wake();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("virtio-fs: worker thread panicked");
            }
        }
    }
}

/// What the worker waits on: its wake-up for messages, and the queues'
/// doorbells, in one epoll set. Edge-triggered, so an eventfd's count is
/// never read: each ring (a write, or KVM's ioeventfd signal) is one event,
/// and a wake-up costs the worker one system call, not a poll and a read.
struct Bells {
    epoll: Epoll,
    /// Kept open for as long as they are in the set.
    _fds: Vec<EventFd>,
}

/// The wake-up's data in the epoll set; queue `i`'s is `i + 1`.
const WAKE: u64 = 0;

impl Bells {
    fn new(wake: &EventFd, doorbells: &[EventFd]) -> io::Result<Bells> {
        let epoll = Epoll::new()?;
        let fds = std::iter::once(wake)
            .chain(doorbells)
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        for (data, fd) in fds.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, data as u64),
            )?;
        }
        Ok(Bells { epoll, _fds: fds })
    }

    /// Waits up to `timeout_ms` (-1: for ever) for rings; marks in
    /// `pending` the queues that rang.
    fn wait(&self, timeout_ms: i32, pending: &mut [bool]) -> io::Result<()> {
        let mut events = [EpollEvent::default(); 8];
        let n = self.epoll.wait(timeout_ms, &mut events)?;
        for e in &events[..n] {
            if e.data() != WAKE {
                if let Some(p) = usize::try_from(e.data() - 1)
                    .ok()
                    .and_then(|i| pending.get_mut(i))
                {
                    *p = true;
                }
            }
        }
        Ok(())
    }

    /// Marks in `pending` every queue that rang, without waiting.
    fn poll_now(&self, pending: &mut [bool]) {
        if let Err(e) = self.wait(0, pending) {
            tracing::error!("virtio-fs: checking the doorbells: {e}");
        }
    }
}

/// A session being served.
struct State {
    server: Arc<FuseServer>,
    stats: Arc<FsStats>,
    mem: Arc<GuestMemory>,
    /// Each queue and whether the driver broke it (served no more until reset).
    queues: Vec<(Queue, bool)>,
    interrupt: Arc<Interrupt>,
}

impl State {
    fn new(s: Session) -> State {
        State {
            queues: s.queues.into_iter().map(|q| (q, false)).collect(),
            server: s.server,
            stats: s.stats,
            mem: s.mem,
            interrupt: s.interrupt,
        }
    }

    /// Serves every queue marked in `pending`, clearing the marks.
    fn serve_pending(&mut self, pending: &mut [bool]) {
        for (i, p) in pending.iter_mut().enumerate() {
            if std::mem::take(p) {
                self.serve(i);
            }
        }
    }
}

/// Ends the FUSE session so that a new driver's FUSE_INIT is accepted (a
/// rebooting guest never sends FUSE_DESTROY).
fn end_session(vfs: &Vfs) {
    if vfs.initialized() {
        vfs.destroy();
    }
}

fn run(vfs: Arc<Vfs>, rx: Receiver<Msg>, bells: Bells, queues: usize) {
    let mut state: Option<State> = None;
    // Doorbells rung and not served yet. Kept without a session too: the
    // guest may notify before the worker took the activation that the
    // transport sent first (serving a queue with nothing new is harmless).
    let mut pending = vec![false; queues];
    loop {
        if let Err(e) = bells.wait(-1, &mut pending) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("virtio-fs: waiting for requests: {e}; the device stops");
            break;
        }
        // Messages are rare (activation, reset); each first serves the
        // doorbells rung before it, in order.
        loop {
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => break,
                // The device is gone (teardown).
                Err(TryRecvError::Disconnected) => {
                    end_session(&vfs);
                    return;
                }
            };
            bells.poll_now(&mut pending);
            if let Some(s) = &mut state {
                s.serve_pending(&mut pending);
            }
            match msg {
                Msg::Activate(session) => {
                    if state.take().is_some() {
                        end_session(&vfs);
                    }
                    state = Some(State::new(*session));
                }
                Msg::Reset(done) => {
                    state = None;
                    end_session(&vfs);
                    let _ = done.send(());
                }
                #[cfg(test)]
                Msg::Sync(done) => {
                    let _ = done.send(());
                }
            }
        }
        if let Some(s) = &mut state {
            s.serve_pending(&mut pending);
        }
    }
    end_session(&vfs);
}

/// Gives this thread its own umask of 0, as PassthroughFs expects: it applies
/// the guest's umask itself, and a process-wide umask of 0 would make every
/// file the rest of the VMM creates world-writable.
fn private_umask() {
    if let Err(e) = unshare_fs() {
        crate::guest_warn!(
            "virtio-fs: unshare(CLONE_FS) failed ({e}); the process umask also applies to \
             files the guest creates"
        );
        return;
    }
    // SAFETY: umask cannot fail and only changes this thread's (now private) mask.
    unsafe { libc::umask(0) };
    PRIVATE_UMASK.with(|p| p.set(true));
}

thread_local! {
    /// Whether this thread's umask is its own (a worker's, after [`private_umask`]).
    static PRIVATE_UMASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on a short-lived thread with a private umask, so that a
/// `umask(0)` inside it (PassthroughFs's `import`) never reaches the rest of
/// the process. Falls back to saving and restoring the umask around `f`.
pub(super) fn with_private_umask<T: Send>(f: impl Fn() -> T + Sync) -> T {
    // A worker's umask is already private (and its filter allows no threads).
    if PRIVATE_UMASK.with(|p| p.get()) {
        return f();
    }
    let on_helper = std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("virtio-fs-setup".into())
            .spawn_scoped(s, || unshare_fs().ok().map(|()| f()));
        match helper {
            Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            Err(_) => None,
        }
    });
    on_helper.unwrap_or_else(|| {
        // SAFETY: umask cannot fail and only swaps the file mode creation mask.
        let old = unsafe { libc::umask(0) };
        let res = f();
        // SAFETY: as above; puts the caller's mask back.
        unsafe { libc::umask(old) };
        res
    })
}

/// Detaches the calling thread's cwd, root and umask from the process.
fn unshare_fs() -> io::Result<()> {
    // SAFETY: unshare(CLONE_FS) only copies this thread's fs attributes into a
    // private struct; it touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl State {
    /// Drains queue `index` and interrupts if the driver wants it; a ring
    /// protocol violation stops the queue until reset.
    fn serve(&mut self, index: usize) {
        let Some((queue, broken)) = self.queues.get_mut(index) else {
            return;
        };
        if *broken {
            return;
        }
        let mem = &*self.mem;
        let mut used = false;
        if let Err(e) = drain(queue, mem, &self.server, &self.stats, &mut used) {
            tracing::error!("virtio-fs: queue {index} stopped until reset: {e}");
            *broken = true;
        }
        // Chains completed before an error still deserve their interrupt.
        if used {
            match queue.needs_notification(mem) {
                Ok(false) => {}
                Ok(true) => self.interrupt.trigger(INTERRUPT_STATUS_USED_RING),
                Err(e) => {
                    // Better a spurious interrupt than a hung guest.
                    crate::guest_warn!("virtio-fs: reading used_event: {e}");
                    self.interrupt.trigger(INTERRUPT_STATUS_USED_RING);
                }
            }
        }
    }
}

/// Serves every chain the driver made available, until notifications are
/// re-enabled with nothing new; `used` tells whether any chain completed.
pub(crate) fn drain(
    queue: &mut Queue,
    mem: &GuestMemory,
    server: &FuseServer,
    stats: &FsStats,
    used: &mut bool,
) -> Result<(), virtio_queue::Error> {
    loop {
        queue.disable_notification(mem)?;
        loop {
            // `iter` re-reads avail.idx and fails when it is more than a
            // queue's worth ahead of us: a broken or hostile driver.
            let next = queue.iter(mem)?.next();
            let Some(chain) = next else { break };
            let head = chain.head_index();
            let len = handle_chain(server, stats, mem, chain);
            match queue.add_used(mem, head, len) {
                Ok(()) => *used = true,
                // E.g. a head index beyond the queue: skip it, the ring moved on.
                Err(e) => {
                    crate::guest_warn!("virtio-fs: adding chain {head} to the used ring: {e}")
                }
            }
        }
        if !queue.enable_notification(mem)? {
            return Ok(());
        }
    }
}

/// Runs one FUSE request; returns the bytes written into the chain (0 when the
/// chain was unusable or the message could not be answered).
fn handle_chain(
    server: &FuseServer,
    stats: &FsStats,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> u32 {
    let head = chain.head_index();
    let mut reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            crate::guest_warn!("virtio-fs: chain {head}: readable buffers: {e}");
            return 0;
        }
    };
    // The server decodes the header again from its own reader; this copy
    // only names the request for the accounting.
    let opcode = reader.read_obj::<InHeader>().ok().map(|h| h.opcode);
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            crate::guest_warn!("virtio-fs: chain {head}: readable buffers: {e}");
            return 0;
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(w) => w,
        Err(e) => {
            crate::guest_warn!("virtio-fs: chain {head}: writable buffers: {e}");
            return 0;
        }
    };
    let started = Instant::now();
    let res = server.handle_message(reader, writer.into(), None, None);
    if let Some(op) = opcode {
        stats.record(op, started.elapsed());
    }
    match res {
        // A reply never exceeds the chain's writable bytes, which fit in u32.
        Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
        Err(e) => {
            crate::guest_warn!("virtio-fs: chain {head}: FUSE message dropped: {e}");
            0
        }
    }
}
