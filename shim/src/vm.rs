//! One container's VM: the `minivm run` process the shim starts with the
//! container's stdio (the FIFOs or log file containerd names), and its exit
//! status, which the shim's reaper reports.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use containerd_shim::monitor::{monitor_subscribe, wait_pid, Topic};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

/// Where the shim keeps the VM's pid in the bundle, for `delete` after a
/// shim crash.
pub const PID_FILE: &str = "minivm.pid";

/// Errors starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A stdio path containerd gave could not be opened.
    #[error("cannot open the container's {which} {path}: {source}")]
    Stdio {
        /// stdin, stdout or stderr.
        which: &'static str,
        /// The FIFO or file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// A stdio URI scheme other than a path or `file://`.
    #[error("the container's {which} {uri} is not supported (a FIFO or a file:// log only)")]
    StdioScheme {
        /// stdin, stdout or stderr.
        which: &'static str,
        /// What containerd gave.
        uri: String,
    },
    /// minivm could not be started.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The minivm binary.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The shim's process monitor refused a subscription.
    #[error("cannot watch the VM's exit: {0}")]
    Monitor(containerd_shim::Error),
}

/// The container's stdio as containerd names it ("" for none).
#[derive(Clone, Debug, Default)]
pub struct StdioPaths {
    /// A FIFO minivm's stdin is copied from.
    pub stdin: String,
    /// A FIFO or `file://` log for the command's stdout.
    pub stdout: String,
    /// The same for stderr.
    pub stderr: String,
}

/// How a process ended: its status (128+N for a death by signal N) and when.
#[derive(Clone, Debug)]
pub struct Exit {
    /// The exit status containerd reports.
    pub status: u32,
    /// When the shim saw it.
    pub at: Timestamp,
}

/// A container's VM, from its creation (not started: pid 0) to its end;
/// shared by the RPCs that wait for it, signal it and report it.
#[derive(Debug, Default)]
pub struct Vm {
    pid: AtomicU32,
    exit: Mutex<Option<Exit>>,
    exited: Condvar,
}

impl Vm {
    /// minivm's pid, 0 before [`start`].
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Blocks until the VM has ended (or was deleted unstarted).
    pub fn wait(&self) -> Exit {
        let mut exit = self.exit.lock().unwrap();
        loop {
            if let Some(e) = exit.as_ref() {
                return e.clone();
            }
            exit = self.exited.wait(exit).unwrap();
        }
    }

    /// How the VM ended, if it has.
    pub fn exited(&self) -> Option<Exit> {
        self.exit.lock().unwrap().clone()
    }

    /// Records the end (the first one counts) and wakes the waiters;
    /// whether this was the first.
    pub fn set_exit(&self, status: u32) -> bool {
        let mut exit = self.exit.lock().unwrap();
        if exit.is_some() {
            return false;
        }
        *exit = Some(Exit {
            status,
            at: containerd_shim::util::timestamp().unwrap_or_default(),
        });
        self.exited.notify_all();
        true
    }

    /// Sends `signal` to minivm, which passes SIGTERM (through the guest's
    /// power button), SIGINT and SIGHUP on to the command; SIGKILL stops
    /// the VM at once. ESRCH once it has ended.
    pub fn signal(&self, signal: u32) -> io::Result<()> {
        let pid = self.pid();
        if pid == 0 || self.exited().is_some() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        let signal =
            i32::try_from(signal).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: kill(2) on minivm's pid, which stays ours (a zombie, not
        // reused) until the reaper has collected it and set `exit`.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The minivm binary: beside the shim's own (where the README installs
/// both), else `minivm` on PATH.
pub fn minivm_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("minivm")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("minivm"))
}

/// Starts `vm` as `minivm args` in `bundle` with the container's `stdio`;
/// `on_exit` runs once when it has ended.
pub fn start(
    vm: &Arc<Vm>,
    bundle: &Path,
    args: &[OsString],
    stdio: &StdioPaths,
    on_exit: impl FnOnce(&Vm) + Send + 'static,
) -> Result<u32, VmError> {
    let stdout = output(&stdio.stdout, "stdout")?;
    let stderr = output(&stdio.stderr, "stderr")?;
    let path = minivm_binary();
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .current_dir(bundle)
        .stdout(stdout)
        .stderr(stderr)
        .stdin(if stdio.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        });
    // The shim's reaper collects every child: subscribe before the spawn
    // so that an early exit is not missed.
    let exits = monitor_subscribe(Topic::Pid).map_err(VmError::Monitor)?;
    let mut child = cmd.spawn().map_err(|source| VmError::Spawn {
        path: path.clone(),
        source,
    })?;
    if let Some(pipe) = child.stdin.take() {
        copy_stdin(stdio.stdin.clone(), pipe);
    }
    let pid = child.id();
    vm.pid.store(pid, Ordering::SeqCst);
    let _ = std::fs::write(bundle.join(PID_FILE), pid.to_string());
    let watched = vm.clone();
    std::thread::spawn(move || {
        let code = wait_pid(pid as i32, exits);
        if watched.set_exit(code as u32) {
            on_exit(&watched);
        }
    });
    Ok(pid)
}

/// stdout or stderr: a FIFO opened read-write (so the open does not wait
/// for a reader; the reader sees EOF once minivm has exited, as the shim
/// keeps no copy), a `file://` log appended to, or nothing.
fn output(uri: &str, which: &'static str) -> Result<Stdio, VmError> {
    if uri.is_empty() {
        return Ok(Stdio::null());
    }
    let (path, append) = match uri.split_once("://") {
        None => (uri, false),
        Some(("file", p)) => (p, true),
        Some(_) => {
            return Err(VmError::StdioScheme {
                which,
                uri: uri.to_string(),
            })
        }
    };
    let mut o = std::fs::OpenOptions::new();
    if append {
        o.append(true).create(true).mode(0o640);
    } else {
        o.read(true).write(true);
    }
    let f = o.open(path).map_err(|source| VmError::Stdio {
        which,
        path: path.to_string(),
        source,
    })?;
    Ok(f.into())
}

/// Copies the stdin FIFO into minivm's stdin pipe on a thread of its own:
/// opening a FIFO for reading waits for its writer, and the pipe's close
/// at the FIFO's EOF is the command's EOF.
fn copy_stdin(fifo: String, mut pipe: std::process::ChildStdin) {
    std::thread::spawn(move || match File::open(&fifo) {
        Ok(mut f) => {
            let _ = io::copy(&mut f, &mut pipe);
        }
        Err(e) => log::warn!("cannot open the container's stdin {fifo}: {e}"),
    });
}
