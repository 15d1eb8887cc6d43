//! One container's processes: its VM, the `minivm run` process the shim
//! starts with the container's stdio (the FIFOs or log file containerd
//! names), and each exec, a `minivm exec` process into that VM; their exit
//! statuses, which the shim's reaper reports.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
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
    /// No pseudo-terminal for a container's terminal.
    #[error("cannot set up the container's terminal: {source}")]
    Pty {
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
    /// The same for stderr (none with a terminal).
    pub stderr: String,
    /// Whether the command gets a terminal: minivm runs with `-t` on a
    /// pseudo-terminal whose other side the shim copies to and from the
    /// FIFOs.
    pub terminal: bool,
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
    /// The pseudo-terminal's master side, with a terminal.
    pty: Mutex<Option<File>>,
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

    /// Resizes the terminal (the kernel tells minivm with SIGWINCH, and
    /// minivm the command).
    pub fn resize(&self, cols: u32, rows: u32) -> io::Result<()> {
        let pty = self.pty.lock().unwrap();
        let pty = pty
            .as_ref()
            .ok_or_else(|| io::Error::other("the container has no terminal"))?;
        let size = libc::winsize {
            ws_row: u16::try_from(rows).unwrap_or(u16::MAX),
            ws_col: u16::try_from(cols).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
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

/// Starts `vm` as `minivm args` in `bundle` with the process's `stdio`,
/// its pid written to `pid_file` (in the bundle) if given; `on_exit` runs
/// once when it has ended (and its terminal output has been copied out).
pub fn start(
    vm: &Arc<Vm>,
    bundle: &Path,
    args: &[OsString],
    stdio: &StdioPaths,
    pid_file: Option<&str>,
    on_exit: impl FnOnce(&Vm) + Send + 'static,
) -> Result<u32, VmError> {
    let path = minivm_binary();
    let mut cmd = Command::new(&path);
    cmd.args(args).current_dir(bundle);
    let mut output_copy = None;
    if stdio.terminal {
        let (master, slave) = open_pty().map_err(|source| VmError::Pty { source })?;
        let dup = |f: &File| {
            f.try_clone()
                .map_err(|source| VmError::Pty { source })
                .map(Stdio::from)
        };
        cmd.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(slave);
        // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork
        // and exec: minivm gets the terminal as its controlling one, so
        // that a resize signals it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let out = output_file(&stdio.stdout, "stdout")?;
        let reader = master
            .try_clone()
            .map_err(|source| VmError::Pty { source })?;
        output_copy = Some(std::thread::spawn(move || copy(reader, out)));
        if !stdio.stdin.is_empty() {
            let writer = master
                .try_clone()
                .map_err(|source| VmError::Pty { source })?;
            copy_stdin(stdio.stdin.clone(), writer);
        }
        *vm.pty.lock().unwrap() = Some(master);
    } else {
        cmd.stdout(Stdio::from(output_file(&stdio.stdout, "stdout")?))
            .stderr(Stdio::from(output_file(&stdio.stderr, "stderr")?))
            .stdin(if stdio.stdin.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            });
    }
    // The shim's reaper collects every child: subscribe before the spawn
    // so that an early exit is not missed.
    let exits = monitor_subscribe(Topic::Pid).map_err(VmError::Monitor)?;
    let mut child = cmd.spawn().map_err(|source| VmError::Spawn {
        path: path.clone(),
        source,
    })?;
    // The slave's copies went with `cmd`: the master reads EIO (the end)
    // once minivm has exited.
    drop(cmd);
    if let Some(pipe) = child.stdin.take() {
        copy_stdin(stdio.stdin.clone(), pipe);
    }
    let pid = child.id();
    vm.pid.store(pid, Ordering::SeqCst);
    if let Some(f) = pid_file {
        let _ = std::fs::write(bundle.join(f), pid.to_string());
    }
    let watched = vm.clone();
    std::thread::spawn(move || {
        let code = wait_pid(pid as i32, exits);
        if let Some(t) = output_copy {
            let _ = t.join();
        }
        if watched.set_exit(code as u32) {
            on_exit(&watched);
        }
    });
    Ok(pid)
}

/// A new pseudo-terminal: (master, slave).
fn open_pty() -> io::Result<(File, File)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into valid pointers; the name,
    // termios and window size arguments may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh descriptors that nothing else owns.
    unsafe { Ok((File::from_raw_fd(master), File::from_raw_fd(slave))) }
}

/// Copies until EOF or an error (EIO: the terminal's other side closed).
fn copy(mut from: File, mut to: File) {
    let _ = io::copy(&mut from, &mut to);
}

/// stdout or stderr: a FIFO opened read-write (so the open does not wait
/// for a reader; the reader sees EOF once minivm has exited, as the shim
/// keeps no copy), a `file://` log appended to, or /dev/null.
fn output_file(uri: &str, which: &'static str) -> Result<File, VmError> {
    let (path, append) = match uri.split_once("://") {
        _ if uri.is_empty() => ("/dev/null", false),
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
    o.open(path).map_err(|source| VmError::Stdio {
        which,
        path: path.to_string(),
        source,
    })
}

/// Copies the stdin FIFO into minivm's stdin (a pipe, or the terminal) on
/// a thread of its own: opening a FIFO for reading waits for its writer,
/// and with a pipe its close at the FIFO's EOF is the command's EOF.
fn copy_stdin(fifo: String, mut to: impl io::Write + Send + 'static) {
    std::thread::spawn(move || match File::open(&fifo) {
        Ok(mut f) => {
            let _ = io::copy(&mut f, &mut to);
        }
        Err(e) => log::warn!("cannot open the container's stdin {fifo}: {e}"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_uris_are_fifos_logs_or_nothing() {
        let dir = std::env::temp_dir().join(format!("shim-stdio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Nothing: /dev/null.
        assert!(output_file("", "stdout").is_ok());
        // A file:// log is created and appended to.
        let log = dir.join("out.log");
        std::fs::write(&log, "before\n").unwrap();
        let mut f = output_file(&format!("file://{}", log.display()), "stdout").unwrap();
        io::Write::write_all(&mut f, b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "before\nafter\n");
        // A FIFO opens at once, with no reader yet.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(output_file(fifo.to_str().unwrap(), "stderr").is_ok());
        // Other schemes (containerd's binary:// loggers) and missing paths
        // are refused, naming the stream.
        let e = output_file("binary:///usr/bin/logger", "stdout").unwrap_err();
        assert!(
            e.to_string().contains("stdout binary:///usr/bin/logger"),
            "{e}"
        );
        let e = output_file("/nonexistent/dir/fifo", "stderr").unwrap_err();
        assert!(
            e.to_string().contains("stderr /nonexistent/dir/fifo"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
