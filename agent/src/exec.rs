//! Extra processes in the running VM (`minivm exec`): START frames on the
//! exec port (`frame.rs`) start them beside the command, with pipes or a
//! pseudo-terminal whose bytes go back as STDOUT/STDERR frames; STDIN,
//! SIGNAL and WINSIZE frames reach them; an EXIT frame says how each ended,
//! once its output is out.
//!
//! PID 1 reaps every child (`reap`). A process is spawned and entered in
//! [`STARTED`] under one lock, which the reaper takes between seeing a
//! child end and collecting it: it never collects a pid before its entry
//! exists, nor a child std's spawn is still collecting (a failed exec).

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_int;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::frame::{self, Frame};
use crate::job::{Job, Stdio};
use crate::{control, sys, Failure};

/// How long an ended process's output copies may take.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The processes started here, by pid: where their wait status goes.
static STARTED: Mutex<BTreeMap<i32, Sender<c_int>>> = Mutex::new(BTreeMap::new());

/// Reaps the next child that ends: its pid and raw wait status (an exec'd
/// process's also goes to its waiter); `None` when none is left.
pub fn reap() -> Option<(i32, c_int)> {
    loop {
        let pid = sys::peek_child()?;
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        let Some(status) = sys::reap(pid) else {
            continue;
        };
        if let Some(waiter) = started.remove(&pid) {
            let _ = waiter.send(status);
        }
        return Some((pid, status));
    }
}

/// The exec port's writing side, shared by every process's copies.
type Port = Arc<Mutex<File>>;

fn send(port: &Port, id: u32, kind: u8, payload: &[u8]) -> io::Result<()> {
    let frame = Frame::new(id, kind, payload).encode();
    port.lock()
        .unwrap_or_else(|e| e.into_inner())
        .write_all(&frame)
}

/// A process started here, as the frame reader knows it.
struct Running {
    pid: i32,
    /// Bytes for its stdin (dropped at STDIN_EOF).
    stdin: Option<Sender<Vec<u8>>>,
    /// Its terminal's master side, for WINSIZE.
    tty: Option<File>,
    /// Set once it has ended (its pid may be reused after).
    ended: Arc<AtomicBool>,
}

/// Serves the exec port from a thread of its own; `base` is the command's
/// job (the defaults of every exec job).
pub fn serve(port: File, base: Job) {
    std::thread::spawn(move || {
        if let Err(e) = serve_port(port, &base) {
            eprintln!("minivm-agent: the exec port: {e}");
        }
    });
}

fn serve_port(port: File, base: &Job) -> io::Result<()> {
    let writer: Port = Arc::new(Mutex::new(port.try_clone()?));
    let mut reader = BufReader::new(port);
    let mut running: HashMap<u32, Running> = HashMap::new();
    while let Some(f) = frame::read(&mut reader)? {
        running.retain(|_, r| !r.ended.load(Ordering::SeqCst));
        let Some(r) = running.get_mut(&f.id) else {
            if f.kind == frame::START {
                match start(base, f.id, &f.payload, &writer) {
                    Ok(r) => {
                        running.insert(f.id, r);
                    }
                    Err((code, why)) => {
                        let mut payload = vec![code];
                        payload.extend(why.bytes().take(frame::MAX_PAYLOAD - 1));
                        send(&writer, f.id, frame::EXIT, &payload)?;
                    }
                }
            }
            continue;
        };
        match f.kind {
            frame::STDIN => {
                if let Some(stdin) = &r.stdin {
                    let _ = stdin.send(f.payload);
                }
            }
            frame::STDIN_EOF => r.stdin = None,
            frame::SIGNAL => {
                if let Some(sig) = f.number().and_then(|n| c_int::try_from(n).ok()) {
                    sys::kill_pid(r.pid, sig);
                }
            }
            frame::WINSIZE => {
                if let (Some(tty), Some((rows, cols))) = (&r.tty, f.winsize()) {
                    let _ = sys::set_window_size(tty, rows, cols);
                }
            }
            // A second START for a running id, or a kind this agent does
            // not know: skipped.
            _ => {}
        }
    }
    Ok(())
}

/// Starts the process of a START frame's `payload`, with copies of its
/// output and a waiter that sends its EXIT.
fn start(base: &Job, id: u32, payload: &[u8], port: &Port) -> Result<Running, Failure> {
    let parts = control::read_job(&mut &payload[..]).map_err(crate::setup("the exec job"))?;
    let job = base
        .exec(&parts.argv, &parts.env, &parts.text)
        .map_err(|e| (crate::EXIT_SETUP, format!("the exec job: {e}")))?;
    let (mut cmd, ids) = crate::command(&job)?;
    let own =
        |f: &dyn std::os::fd::AsFd| std::os::unix::fs::fchown(f, Some(ids.uid), Some(ids.gid));
    let stdio = |e: io::Error| (crate::EXIT_SETUP, format!("the process's stdio: {e}"));
    let mut outputs: Vec<(Box<dyn Read + Send>, u8)> = Vec::new();
    let (stdin, tty): (Option<Box<dyn Write + Send>>, _) = match job.stdio {
        Stdio::Tty { rows, cols } => {
            let (master, slave) = sys::open_pty().map_err(crate::setup("a pseudo-terminal"))?;
            if rows > 0 && cols > 0 {
                sys::set_window_size(&slave, rows, cols).map_err(crate::setup("the terminal"))?;
            }
            own(&slave).map_err(crate::setup("the terminal"))?;
            let clone = |f: &File| f.try_clone().map_err(crate::setup("the terminal"));
            cmd.stdin(clone(&slave)?)
                .stdout(clone(&slave)?)
                .stderr(slave);
            // SAFETY: take_terminal makes only async-signal-safe calls
            // (setsid, ioctl) and allocates nothing.
            unsafe { cmd.pre_exec(sys::take_terminal) };
            outputs.push((Box::new(clone(&master)?), frame::STDOUT));
            (Some(Box::new(clone(&master)?)), Some(master))
        }
        Stdio::Ports { .. } | Stdio::Console => {
            for kind in [frame::STDOUT, frame::STDERR] {
                let (r, w) = io::pipe().map_err(stdio)?;
                own(&w).map_err(stdio)?;
                match kind {
                    frame::STDOUT => cmd.stdout(w),
                    _ => cmd.stderr(w),
                };
                outputs.push((Box::new(r), kind));
            }
            match job.stdio {
                Stdio::Ports { stdin: true } => {
                    let (r, w) = io::pipe().map_err(stdio)?;
                    own(&r).map_err(stdio)?;
                    cmd.stdin(r);
                    (Some(Box::new(w)), None)
                }
                _ => {
                    cmd.stdin(std::process::Stdio::null());
                    (None, None)
                }
            }
        }
    };
    let (status_tx, status_rx) = mpsc::channel();
    let pid = {
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn().map_err(|e| crate::spawn_failure(&job, e))?;
        let pid = child.id() as i32;
        started.insert(pid, status_tx);
        pid
    };
    // Our copies of the process's ends close with `cmd`: its output's EOF
    // then means it (and what it started) is done writing.
    drop(cmd);
    let (done_tx, done_rx) = mpsc::channel();
    let copies = outputs.len();
    for (from, kind) in outputs {
        let (port, done) = (port.clone(), done_tx.clone());
        std::thread::spawn(move || {
            copy_out(from, &port, id, kind);
            let _ = done.send(());
        });
    }
    let stdin = stdin.map(|to| {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut to = to;
            for bytes in rx {
                if to.write_all(&bytes).is_err() {
                    return;
                }
            }
        });
        tx
    });
    let ended = Arc::new(AtomicBool::new(false));
    let waiter = (port.clone(), ended.clone());
    std::thread::spawn(move || {
        let (port, ended) = waiter;
        let code = status_rx.recv().map_or(crate::EXIT_SETUP, sys::exit_code);
        ended.store(true, Ordering::SeqCst);
        wait_for_copies(&done_rx, copies);
        let _ = send(&port, id, frame::EXIT, &[code]);
    });
    Ok(Running {
        pid,
        stdin,
        tty,
        ended,
    })
}

/// Sends what `from` yields as `kind` frames until its end (a terminal's
/// master reads EIO once the process is gone).
fn copy_out(mut from: Box<dyn Read + Send>, port: &Port, id: u32, kind: u8) {
    let mut buf = vec![0u8; frame::MAX_PAYLOAD];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if send(port, id, kind, &buf[..n]).is_err() {
            return;
        }
    }
}

/// Waits (boundedly: a background process may hold the output open) for
/// `copies` output copies to end.
fn wait_for_copies(done: &Receiver<()>, copies: usize) {
    let deadline = Instant::now() + DRAIN_WAIT;
    for _ in 0..copies {
        let left = deadline.saturating_duration_since(Instant::now());
        if done.recv_timeout(left).is_err() {
            return;
        }
    }
}
