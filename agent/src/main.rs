//! minivm's guest agent: PID 1 of a `minivm run IMAGE -- CMD` VM.
//!
//! minivm boots it from a small initramfs of its own (the image and its
//! caches are never changed), with the job in `/minivm/` (see `job.rs`).
//! It mounts the image's root (the virtio-blk disk or the virtio-fs share),
//! makes it `/`, mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /tmp and
//! /run, sets the host name, then runs the command as its child with the
//! image's (or the user's) environment, working directory and user. As PID
//! 1 it reaps every orphan and forwards SIGTERM, SIGINT and SIGHUP to the
//! command, and a press of the VM's power button (minivm's SIGTERM) as
//! SIGTERM. The command's stdio is set up by `stdio.rs`. When the command ends, it stops what is left, flushes the disk
//! and ends the VM through minivm's exit port with the command's status (a
//! death by signal N as 128+N), which minivm returns.
//!
//! Failures before the command runs end the VM with 125 (the agent could
//! not set up), 126 (the command cannot be run) or 127 (not found), as
//! `docker run` does.

mod button;
mod control;
mod exec;
mod frame;
mod job;
mod stdio;
mod sys;
mod user;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use job::{Job, Root, Stdio};

/// The agent could not set the VM up.
const EXIT_SETUP: u8 = 125;
/// The command exists but cannot be run.
const EXIT_CANNOT_RUN: u8 = 126;
/// The command was not found.
const EXIT_NOT_FOUND: u8 = 127;

/// The command's pid, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// The power button (SIGTERM to minivm): SIGTERM to the command.
fn power_pressed() {
    forward(sys::SIGTERM);
}

extern "C" fn forward(sig: std::ffi::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        sys::kill_pid(pid, sig);
    }
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("minivm-agent: this is minivm's guest init; it runs only as PID 1 of a VM");
        std::process::exit(2);
    }
    let mut outputs = stdio::Outputs::default();
    let code = match run(&mut outputs) {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("minivm-agent: {msg}");
            code
        }
    };
    shut_down(outputs);
    sys::end_vm(PORT.get(), code);
}

type Failure = (u8, String);

fn setup(what: &str) -> impl FnOnce(io::Error) -> Failure + '_ {
    move |e| (EXIT_SETUP, format!("{what}: {e}"))
}

/// minivm's exit port, opened through the initramfs's /dev before the
/// image's root hides it (the image may have no /dev of its own).
static PORT: OnceLock<std::fs::File> = OnceLock::new();

fn run(outputs: &mut stdio::Outputs) -> Result<u8, Failure> {
    // The initramfs has no /dev of its own beyond the console.
    sys::mount_fs("devtmpfs", "/dev", "devtmpfs", sys::MS_NOSUID, "")
        .map_err(setup("mount /dev"))?;
    if let Ok(port) = std::fs::OpenOptions::new().write(true).open("/dev/port") {
        let _ = PORT.set(port);
    }
    let read = |p: &str| std::fs::read(p).map_err(setup(p));
    let job_text = String::from_utf8(read("/minivm/job")?)
        .map_err(|_| (EXIT_SETUP, "/minivm/job is not UTF-8".to_string()))?;
    let job = Job::parse(&read("/minivm/argv")?, &read("/minivm/env")?, &job_text)
        .map_err(|e| (EXIT_SETUP, format!("the job: {e}")))?;
    let button = button::open();
    let (opened, control) =
        stdio::open(job.stdio).map_err(setup("the command's stdin/stdout/stderr"))?;
    let exec_port = job
        .exec
        .then(stdio::open_exec_port)
        .transpose()
        .map_err(setup("the exec port"))?;
    // A second handle on the terminal, for window size changes.
    let tty = opened.tty().map(File::try_clone).transpose();
    let tty = tty.map_err(setup("the terminal"))?;
    // The image may have no /dev of its own: open it from the initramfs's.
    let urandom = match job.wait {
        true => Some(File::open("/dev/urandom").map_err(setup("/dev/urandom"))?),
        false => None,
    };
    switch_root(&job)?;
    mount_api_filesystems();
    if !job.hostname.is_empty() {
        sys::set_hostname(&job.hostname).map_err(setup("sethostname"))?;
    }
    let control = control.map(BufReader::new);
    let (job, opened, control) = match urandom {
        Some(urandom) => wait_for_job(&job, opened, control, &urandom)?,
        None => (job, opened, control),
    };
    let (mut cmd, ids) = command(&job)?;
    for sig in [sys::SIGTERM, sys::SIGINT, sys::SIGHUP] {
        sys::on_signal(sig, forward);
    }
    *outputs = opened
        .attach(&mut cmd, ids.uid, ids.gid)
        .map_err(setup("the command's stdin/stdout/stderr"))?;
    let spawned = cmd.spawn();
    // The agent's ends of the command's pipes close with `cmd`, so the
    // output copies see EOF when the command's processes are gone.
    drop(cmd);
    let child = spawned.map_err(|e| spawn_failure(&job, e))?;
    let main_pid = child.id() as i32;
    CHILD.store(main_pid, Ordering::SeqCst);
    if let Some(b) = button {
        button::watch(b, power_pressed);
    }
    if let Some(c) = control {
        control::watch(c, tty, |sig| forward(sig));
    }
    if let Some(port) = exec_port {
        exec::serve(port, job);
    }
    // Reap everything; the command's own end decides the status.
    while let Some((pid, status)) = exec::reap() {
        if pid == main_pid {
            return Ok(sys::exit_code(status));
        }
    }
    Err((EXIT_SETUP, "the command vanished without a status".into()))
}

/// The command of `job`, as the user it names, in its environment and
/// working directory; the user's ids.
fn command(job: &Job) -> Result<(Command, user::Ids), Failure> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let ids = user::resolve(&job.user, &passwd, &group).map_err(|e| (EXIT_SETUP, e))?;
    let mut cmd = Command::new(&job.argv[0]);
    cmd.args(&job.argv[1..]).env_clear();
    let mut keys = Vec::new();
    for kv in &job.env {
        let bytes = kv.as_bytes();
        if let Some(i) = bytes.iter().position(|b| *b == b'=') {
            let (k, v) = (&bytes[..i], &bytes[i + 1..]);
            keys.push(k);
            cmd.env(OsStr::from_bytes(k), OsStr::from_bytes(v));
        }
    }
    if !keys.contains(&&b"HOME"[..]) {
        cmd.env("HOME", ids.home.as_deref().unwrap_or("/"));
    }
    // minivm's kvm-pvm work-around reaches the agent on the kernel command line.
    if let (false, Some(t)) = (
        keys.contains(&&b"GLIBC_TUNABLES"[..]),
        std::env::var_os("GLIBC_TUNABLES"),
    ) {
        cmd.env("GLIBC_TUNABLES", t);
    }
    // std drops the supplementary groups itself when it changes the uid.
    cmd.current_dir(workdir(job)).uid(ids.uid).gid(ids.gid);
    Ok((cmd, ids))
}

fn workdir(job: &Job) -> &str {
    match job.workdir.as_str() {
        "" => "/",
        w => w,
    }
}

/// Why `job`'s command did not start, and the status that says so.
fn spawn_failure(job: &Job, e: io::Error) -> Failure {
    let code = match e.kind() {
        io::ErrorKind::NotFound => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_RUN,
    };
    let prog = job.argv[0].to_string_lossy();
    (
        code,
        format!("cannot run {prog} (in {}): {e}", workdir(job)),
    )
}

/// A snapshot's agent: says it is ready (the snapshot point), then waits
/// on the control port for the job of the `minivm restore` that restored
/// it, and freshens what every restored copy would otherwise share: the
/// random pool and the clock.
fn wait_for_job(
    waiting: &Job,
    opened: stdio::Opened,
    control: Option<BufReader<File>>,
    urandom: &File,
) -> Result<(Job, stdio::Opened, Option<BufReader<File>>), Failure> {
    let mut control = control.ok_or((EXIT_SETUP, "no control port to wait on".into()))?;
    sys::signal_ready(PORT.get()).map_err(setup("minivm's ready port"))?;
    let parts = control::read_job(&mut control).map_err(setup("the job"))?;
    let job = waiting
        .resume(&parts.argv, &parts.env, &parts.text)
        .map_err(|e| (EXIT_SETUP, format!("the job: {e}")))?;
    if !job.seed.is_empty() {
        sys::reseed(urandom, &job.seed).map_err(setup("reseed the random pool"))?;
    }
    if let Some((secs, nanos)) = job.clock {
        sys::set_clock(secs, nanos).map_err(setup("set the clock"))?;
    }
    if !job.hostname.is_empty() && job.hostname != waiting.hostname {
        sys::set_hostname(&job.hostname).map_err(setup("sethostname"))?;
    }
    let opened = match (job.stdio, opened) {
        (
            Stdio::Ports { stdin },
            stdio::Opened::Ports {
                stdout,
                stderr,
                stdin: port,
            },
        ) => stdio::Opened::Ports {
            stdout,
            stderr,
            stdin: port.filter(|_| stdin),
        },
        // (-t: the stream ports, opened before the snapshot, go unused.)
        (Stdio::Tty { rows, cols }, stdio::Opened::Ports { .. }) => {
            stdio::open_tty(rows, cols).map_err(setup("the terminal"))?
        }
        _ => {
            return Err((
                EXIT_SETUP,
                "a restored job's stdio must be minivm's ports or its terminal".into(),
            ))
        }
    };
    Ok((job, opened, Some(control)))
}

/// Mounts the image's root on /newroot and makes it `/`.
fn switch_root(job: &Job) -> Result<(), Failure> {
    std::fs::create_dir_all("/newroot").map_err(setup("mkdir /newroot"))?;
    let ro = if job.read_only { sys::MS_RDONLY } else { 0 };
    let (source, fstype) = match &job.root {
        Root::Block(dev) => (dev.as_str(), "ext4"),
        Root::VirtioFs(tag) => (tag.as_str(), "virtiofs"),
    };
    sys::mount_fs(source, "/newroot", fstype, ro, "")
        .map_err(setup(&format!("mount {source} ({fstype})")))?;
    std::env::set_current_dir("/newroot").map_err(setup("chdir /newroot"))?;
    sys::mount_fs(".", "/", "", sys::MS_MOVE, "").map_err(setup("move the root onto /"))?;
    sys::chroot_here().map_err(setup("chroot"))?;
    std::env::set_current_dir("/").map_err(setup("chdir /"))
}

/// /proc, /sys, /dev and friends, where the image has the directories (a
/// read-only image without them simply goes without).
fn mount_api_filesystems() {
    let mounts: [(&str, &str, &str, std::ffi::c_ulong, &str); 7] = [
        (
            "proc",
            "/proc",
            "proc",
            sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC,
            "",
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC,
            "",
        ),
        ("devtmpfs", "/dev", "devtmpfs", sys::MS_NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            sys::MS_NOSUID | sys::MS_NOEXEC,
            "ptmxmode=0666,mode=0620",
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            sys::MS_NOSUID | sys::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            sys::MS_NOSUID | sys::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            sys::MS_NOSUID | sys::MS_NODEV,
            "mode=0755",
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        if std::fs::create_dir_all(target).is_ok() {
            if let Err(e) = sys::mount_fs(source, target, fstype, flags, data) {
                eprintln!("minivm-agent: mount {target}: {e}");
            }
        }
    }
    // What udev or a container runtime would add and devtmpfs lacks.
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
}

/// Stops what the command left running, sends its last output and leaves
/// the root clean.
fn shut_down(outputs: stdio::Outputs) {
    sys::kill_pid(-1, sys::SIGKILL);
    while sys::wait_any().is_some() {}
    outputs.drain();
    sys::flush_disks();
    // A clean ext4 for a --persist disk; fails harmlessly on a read-only root.
    let _ = sys::mount_fs("", "/", "", sys::MS_REMOUNT | sys::MS_RDONLY, "");
}
