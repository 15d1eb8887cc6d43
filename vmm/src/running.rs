//! A VM's vCPU threads while it runs: started behind a gate that opens
//! once every vCPU thread and the main thread have confined themselves
//! (seccomp), and stopped by kicks that give the vCPUs back, so that a
//! snapshot can read them and `--snapshot-and-continue` start them again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sandbox::ThreadKind;
use vmm_sys_util::signal::{Killable, SIGRTMIN};

use crate::session::Session;
use crate::vcpu::{StartGate, Vcpu};
use crate::vm::VmError;

/// How long stopping the vCPU threads may take.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The running vCPU threads.
pub struct Running {
    threads: Vec<JoinHandle<Option<Vcpu>>>,
    done: Receiver<()>,
    stop: Arc<AtomicBool>,
}

/// Starts a thread per vCPU; the guest runs once every thread and the main
/// thread are confined. `entered` records the first guest entry.
pub fn start_vcpus(
    vcpus: Vec<Vcpu>,
    session: &mut Session,
    entered: &Arc<OnceLock<Instant>>,
) -> Result<Running, VmError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let gate = Arc::new(StartGate::default());
    let mut running = Running {
        threads: Vec::new(),
        done,
        stop: stop.clone(),
    };
    let mut spawned = Ok(());
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let (stop, done, ready) = (stop.clone(), done_tx.clone(), ready_tx.clone());
        let (gate, entered) = (gate.clone(), entered.clone());
        let filter = session.seccomp().filter(ThreadKind::Vcpu);
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let mut kept = None;
                if filter.apply_and_report(&ready) && gate.wait() {
                    entered.get_or_init(Instant::now);
                    kept = Some(vcpu.run(stop));
                }
                let _ = done.send(());
                kept
            });
        match t {
            Ok(t) => running.threads.push(t),
            Err(e) => {
                spawned = Err(VmError::Host {
                    what: "vCPU thread",
                    source: e,
                });
                break;
            }
        }
    }
    drop((done_tx, ready_tx));
    let confined = spawned.and_then(|()| {
        for _ in 0..running.threads.len() {
            ready_rx
                .recv()
                .map_err(|_| VmError::Host {
                    what: "vCPU thread",
                    source: std::io::Error::other("ended before it started"),
                })?
                .map_err(VmError::Seccomp)?;
        }
        session.confine_main().map_err(VmError::Seccomp)
    });
    gate.open(confined.is_ok());
    match confined {
        Ok(()) => Ok(running),
        Err(e) => {
            drop(running.stop());
            Err(e)
        }
    }
}

impl Running {
    /// Stops the vCPU threads (kicking them out of KVM_RUN until all have
    /// stopped: a kick can land just before a thread enters it) and gives
    /// back the vCPUs of those that ran.
    pub fn stop(self) -> Vec<Vcpu> {
        self.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + STOP_WAIT;
        let mut left = self.threads.len();
        while left > 0 && Instant::now() < deadline {
            for t in self.threads.iter().filter(|t| !t.is_finished()) {
                let _ = t.kill(SIGRTMIN());
            }
            match self.done.recv_timeout(Duration::from_millis(2)) {
                Ok(()) => left -= 1,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => left = 0,
            }
        }
        if left > 0 {
            tracing::warn!("{left} vCPU thread(s) did not stop");
            return Vec::new();
        }
        // Every thread has left its run loop; joining only waits for its last instructions.
        self.threads
            .into_iter()
            .filter_map(|t| t.join().ok().flatten())
            .collect()
    }
}
