//! The command's stdin, stdout and stderr (`job::Stdio`).
//!
//! With minivm's virtio-console ports the command gets pipes, and threads of
//! the agent copy them to and from the ports. Linux lets one opener at a
//! time have a port, so a command that reopens its output
//! (`echo x >/dev/stderr`) would fail on the port itself; a pipe reopens
//! fine. And the pipes reaching EOF tell the agent when every byte of
//! output is out, so nothing is lost when the VM ends.
//!
//! Ports and the terminal are opened from the initramfs, before the image's
//! root replaces it: the image may have no /dev or /sys of its own.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::job::Stdio;
use crate::sys;

/// Where Linux lists virtio-console ports, with their names.
const PORTS: &str = "/sys/class/virtio-ports";
/// How long to wait for minivm's ports: the driver adds them while the
/// device announces them, which can trail the start of init.
const PORT_WAIT: Duration = Duration::from_secs(120);
/// The serial console (minivm's `console=ttyS0`).
const TTY: &str = "/dev/ttyS0";
/// How long the output copies may take once the command's processes are gone.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// The command's stdio, opened.
pub enum Opened {
    /// Inherit the agent's (/dev/console).
    Console,
    /// minivm's ports.
    Ports {
        stdout: File,
        stderr: File,
        stdin: Option<File>,
    },
    /// The serial console as a terminal.
    Tty(File),
}

impl Opened {
    /// The command's terminal, if it has one.
    pub fn tty(&self) -> Option<&File> {
        match self {
            Opened::Tty(tty) => Some(tty),
            _ => None,
        }
    }
}

/// Opens what `stdio` names, and minivm's control port (`control.rs`) where
/// it has one; needs /dev mounted (devtmpfs).
pub fn open(stdio: Stdio) -> io::Result<(Opened, Option<File>)> {
    match stdio {
        Stdio::Console => Ok((Opened::Console, None)),
        Stdio::Ports { stdin } => {
            let mut names = vec!["minivm.control", "minivm.stdout", "minivm.stderr"];
            if stdin {
                names.push("minivm.stdin");
            }
            let mut found = find_ports(&names)?.into_iter();
            let mut next = || found.next().expect("one per name");
            let control = File::open(next())?;
            let write = |p: PathBuf| File::options().write(true).open(p);
            let opened = Opened::Ports {
                stdout: write(next())?,
                stderr: write(next())?,
                stdin: stdin.then(|| File::open(next())).transpose()?,
            };
            Ok((opened, Some(control)))
        }
        Stdio::Tty { rows, cols } => {
            let control = File::open(&find_ports(&["minivm.control"])?[0])?;
            Ok((open_tty(rows, cols)?, Some(control)))
        }
    }
}

/// The port `minivm exec` is served on (`exec.rs`), for reading and writing.
pub fn open_exec_port() -> io::Result<File> {
    let path = &find_ports(&["minivm.exec"])?[0];
    File::options().read(true).write(true).open(path)
}

/// The serial console as the command's terminal, `rows` x `cols` where known.
pub fn open_tty(rows: u16, cols: u16) -> io::Result<Opened> {
    let tty = File::options().read(true).write(true).open(TTY)?;
    if rows > 0 && cols > 0 {
        sys::set_window_size(&tty, rows, cols)?;
    }
    Ok(Opened::Tty(tty))
}

/// The device files of the ports `names`, in order, once all are there
/// (sysfs is mounted for the search only).
fn find_ports(names: &[&str]) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all("/sys")?;
    sys::mount_fs("sysfs", "/sys", "sysfs", 0, "")?;
    let found = wait_for_ports(names);
    let _ = sys::unmount("/sys");
    found
}

fn wait_for_ports(names: &[&str]) -> io::Result<Vec<PathBuf>> {
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        let mut found: Vec<Option<PathBuf>> = vec![None; names.len()];
        for entry in std::fs::read_dir(PORTS).into_iter().flatten().flatten() {
            let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
            if let Some(i) = names.iter().position(|n| *n == name.trim_end()) {
                let dev = PathBuf::from("/dev").join(entry.file_name());
                if dev.exists() {
                    found[i] = Some(dev);
                }
            }
        }
        if let Some(all) = found.into_iter().collect::<Option<Vec<_>>>() {
            return Ok(all);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("minivm's console ports did not appear in {PORTS}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies `from` to `to` until EOF with read and write. Not `io::copy`: it
/// splices from a pipe, and Linux's virtio-console returns 0 from a splice
/// while the pipe is merely empty, which `io::copy` takes for the end.
fn pump(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

/// The copies of the command's output, to wait for at the end.
#[derive(Default)]
pub struct Outputs(Vec<JoinHandle<()>>);

impl Opened {
    /// Gives `cmd`, which runs as `uid:gid`, its stdio; output copies start now.
    pub fn attach(self, cmd: &mut Command, uid: u32, gid: u32) -> io::Result<Outputs> {
        let mut outputs = Outputs::default();
        match self {
            Opened::Console => {}
            Opened::Ports {
                stdout,
                stderr,
                stdin,
            } => {
                // The command's own pipes, so it may reopen them
                // (`/dev/stderr` is /proc/self/fd/2, checked against the pipe's owner).
                let own = |fd: &dyn std::os::fd::AsFd| {
                    std::os::unix::fs::fchown(fd, Some(uid), Some(gid))
                };
                let out = outputs.copy_to(stdout)?;
                let err = outputs.copy_to(stderr)?;
                own(&out)?;
                own(&err)?;
                cmd.stdout(out).stderr(err);
                match stdin {
                    Some(port) => {
                        let (r, mut w) = io::pipe()?;
                        own(&r)?;
                        // Not waited for: the command may stop reading early.
                        std::thread::spawn(move || {
                            let mut port = port;
                            let _ = pump(&mut port, &mut w);
                        });
                        cmd.stdin(r);
                    }
                    None => {
                        cmd.stdin(std::process::Stdio::null());
                    }
                }
            }
            Opened::Tty(tty) => {
                cmd.stdin(tty.try_clone()?)
                    .stdout(tty.try_clone()?)
                    .stderr(tty);
                // SAFETY: take_terminal makes only async-signal-safe calls
                // (setsid, ioctl) and allocates nothing.
                unsafe { cmd.pre_exec(sys::take_terminal) };
            }
        }
        Ok(outputs)
    }
}

impl Outputs {
    /// A pipe whose bytes a new thread copies into `port`; the write end.
    fn copy_to(&mut self, port: File) -> io::Result<io::PipeWriter> {
        let (mut r, w) = io::pipe()?;
        self.0.push(std::thread::spawn(move || {
            let mut port = port;
            if let Err(e) = pump(&mut r, &mut port) {
                eprintln!("minivm-agent: copying the command's output: {e}");
            }
        }));
        Ok(w)
    }

    /// Waits until every output pipe reached EOF and was copied out (the
    /// command and whatever it started must be gone, or the bound passes).
    pub fn drain(self) {
        let deadline = Instant::now() + DRAIN_WAIT;
        for t in self.0 {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                eprintln!("minivm-agent: the command's output did not end; some may be lost");
            }
        }
    }
}
