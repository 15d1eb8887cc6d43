//! The thread that serves a virtio-fs device's queues.
//!
//! One worker per activation owns the queues. The device forwards queue
//! notifications over a channel; the worker drains the notified queue with
//! notifications suppressed, exactly like virtio-blk does inline, and raises
//! the interrupt once per batch. A thread of its own keeps slow host I/O off
//! the VMM's event loop and gives the server a private umask (below).

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
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::stats::FsStats;
use crate::virtio::{Interrupt, INTERRUPT_STATUS_USED_RING};
use crate::GuestMemory;

/// The FUSE server the device runs requests through.
pub type FuseServer = Server<Arc<Vfs>>;

enum Msg {
    /// The driver notified this queue.
    Kick(usize),
    /// Reply once every earlier message was handled.
    #[cfg(test)]
    Sync(Sender<()>),
}

/// A running worker; dropping it stops and joins the thread.
pub(super) struct Worker {
    tx: Option<Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts serving `queues` (0 = hiprio, 1.. = requests) on a new thread.
    pub(super) fn spawn(
        tag: &str,
        server: Arc<FuseServer>,
        vfs: Arc<Vfs>,
        stats: Arc<FsStats>,
        mem: Arc<GuestMemory>,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> io::Result<Worker> {
        let (tx, rx) = mpsc::channel();
        let state = State {
            server,
            stats,
            mem,
            queues: queues.into_iter().map(|q| (q, false)).collect(),
            interrupt,
        };
        let thread = std::thread::Builder::new()
            .name(format!("virtio-fs-{tag}"))
            .spawn(move || run(state, vfs, rx))?;
        Ok(Worker {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Asks the worker to serve queue `index`.
    pub(super) fn kick(&self, index: usize) {
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Kick(index)).is_err() {
                tracing::error!("virtio-fs: worker thread is gone; request dropped");
            }
        }
    }

    /// Blocks until the worker handled everything sent before this call.
    #[cfg(test)]
    pub(super) fn wait_idle(&self) {
        let (done_tx, done_rx) = mpsc::channel();
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Sync(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
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

struct State {
    server: Arc<FuseServer>,
    stats: Arc<FsStats>,
    mem: Arc<GuestMemory>,
    /// Each queue and whether the driver broke it (served no more until reset).
    queues: Vec<(Queue, bool)>,
    interrupt: Arc<Interrupt>,
}

fn run(mut state: State, vfs: Arc<Vfs>, rx: Receiver<Msg>) {
    private_umask();
    while let Ok(msg) = rx.recv() {
        // Coalesce a burst of doorbells into one pass per queue.
        let mut pending = vec![false; state.queues.len()];
        let mut next = Some(msg);
        #[cfg(test)]
        let mut syncs = Vec::new();
        while let Some(m) = next {
            match m {
                Msg::Kick(i) => {
                    if let Some(p) = pending.get_mut(i) {
                        *p = true;
                    }
                }
                #[cfg(test)]
                Msg::Sync(done) => syncs.push(done),
            }
            next = rx.try_recv().ok();
        }
        for (i, p) in pending.into_iter().enumerate() {
            if p {
                state.serve(i);
            }
        }
        #[cfg(test)]
        for done in syncs {
            let _ = done.send(());
        }
    }
    // Device reset or teardown: end the FUSE session so that a new driver's
    // FUSE_INIT is accepted (a rebooting guest never sends FUSE_DESTROY).
    if vfs.initialized() {
        vfs.destroy();
    }
}

/// Gives this thread its own umask of 0, as PassthroughFs expects: it applies
/// the guest's umask itself, and a process-wide umask of 0 would make every
/// file the rest of the VMM creates world-writable.
fn private_umask() {
    if let Err(e) = unshare_fs() {
        tracing::warn!(
            "virtio-fs: unshare(CLONE_FS) failed ({e}); the process umask also applies to \
             files the guest creates"
        );
        return;
    }
    // SAFETY: umask cannot fail and only changes this thread's (now private) mask.
    unsafe { libc::umask(0) };
}

/// Runs `f` on a short-lived thread with a private umask, so that a
/// `umask(0)` inside it (PassthroughFs's `import`) never reaches the rest of
/// the process. Falls back to saving and restoring the umask around `f`.
pub(super) fn with_private_umask<T: Send>(f: impl Fn() -> T + Sync) -> T {
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
                    tracing::warn!("virtio-fs: reading used_event: {e}");
                    self.interrupt.trigger(INTERRUPT_STATUS_USED_RING);
                }
            }
        }
    }
}

fn drain(
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
                Err(e) => tracing::warn!("virtio-fs: adding chain {head} to the used ring: {e}"),
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
            tracing::warn!("virtio-fs: chain {head}: readable buffers: {e}");
            return 0;
        }
    };
    // The server decodes the header again from its own reader; this copy
    // only names the request for the accounting.
    let opcode = reader.read_obj::<InHeader>().ok().map(|h| h.opcode);
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("virtio-fs: chain {head}: readable buffers: {e}");
            return 0;
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("virtio-fs: chain {head}: writable buffers: {e}");
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
            tracing::warn!("virtio-fs: chain {head}: FUSE message dropped: {e}");
            0
        }
    }
}
