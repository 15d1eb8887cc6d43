//! The thread that serves a virtio-fs device's queues.
//!
//! One worker per device, started with it (so it is confined by its own
//! seccomp filter before the guest runs, never by a vCPU's). Each activation
//! hands it the queues; the device forwards queue notifications over a
//! channel; the worker drains the notified queue with notifications
//! suppressed, exactly like virtio-blk does inline, and raises the interrupt
//! once per batch. A thread of its own keeps slow host I/O off the VMM's
//! event loop and gives the server a private umask (below).

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
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
    /// The driver notified this queue.
    Kick(usize),
    /// The device was reset: drop the queues, end the FUSE session, reply.
    Reset(Sender<()>),
    /// Reply once every earlier message was handled.
    #[cfg(test)]
    Sync(Sender<()>),
}

/// The device's worker thread; dropping it stops and joins the thread.
pub(super) struct Worker {
    tx: Option<Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread serving `vfs` for device `tag` and waits until it
    /// has confined itself with `filter`.
    pub(super) fn spawn(tag: &str, vfs: Arc<Vfs>, filter: ThreadFilter) -> Result<Worker, FsError> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("virtio-fs-{tag}"))
            .spawn(move || {
                private_umask();
                if filter.apply_and_report(&ready_tx) {
                    run(vfs, rx);
                }
            })
            .map_err(FsError::Worker)?;
        let worker = Worker {
            tx: Some(tx),
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
        sent
    }

    /// Starts serving a driver's session.
    pub(super) fn activate(&self, session: Session) {
        self.send(Msg::Activate(Box::new(session)));
    }

    /// Asks the worker to serve queue `index`.
    pub(super) fn kick(&self, index: usize) {
        self.send(Msg::Kick(index));
    }

    /// Ends the current session; returns once the worker let go of it.
    pub(super) fn reset(&self) {
        let (done_tx, done_rx) = mpsc::channel();
        if self.send(Msg::Reset(done_tx)) {
            let _ = done_rx.recv();
        }
    }

    /// Blocks until the worker handled everything sent before this call.
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
        // Closing the channel ends the worker's receive loop.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("virtio-fs: worker thread panicked");
            }
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
    /// Queues notified in the batch being handled.
    pending: Vec<bool>,
}

impl State {
    fn new(s: Session) -> State {
        State {
            pending: vec![false; s.queues.len()],
            queues: s.queues.into_iter().map(|q| (q, false)).collect(),
            server: s.server,
            stats: s.stats,
            mem: s.mem,
            interrupt: s.interrupt,
        }
    }

    /// Serves every queue notified since the last call.
    fn serve_pending(&mut self) {
        for i in 0..self.pending.len() {
            if std::mem::take(&mut self.pending[i]) {
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

fn run(vfs: Arc<Vfs>, rx: Receiver<Msg>) {
    let mut state: Option<State> = None;
    while let Ok(msg) = rx.recv() {
        // A burst of doorbells is coalesced into one pass per queue; any
        // other message first serves the doorbells before it, in order.
        let mut next = Some(msg);
        while let Some(m) = next {
            match m {
                Msg::Kick(i) => {
                    if let Some(p) = state.as_mut().and_then(|s| s.pending.get_mut(i)) {
                        *p = true;
                    }
                }
                Msg::Activate(session) => {
                    if let Some(mut old) = state.take() {
                        old.serve_pending();
                        end_session(&vfs);
                    }
                    state = Some(State::new(*session));
                }
                Msg::Reset(done) => {
                    if let Some(mut old) = state.take() {
                        old.serve_pending();
                    }
                    end_session(&vfs);
                    let _ = done.send(());
                }
                #[cfg(test)]
                Msg::Sync(done) => {
                    if let Some(s) = &mut state {
                        s.serve_pending();
                    }
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        if let Some(s) = &mut state {
            s.serve_pending();
        }
    }
    // The device is gone (teardown).
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
