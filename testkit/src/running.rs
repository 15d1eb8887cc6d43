//! A `minivm` run the test interacts with while it runs: waiting for
//! console lines, sending signals, then collecting the end.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::minivm::minivm_bin;

/// A running `minivm` (stdin from /dev/null, stdout read line by line).
pub struct RunningVm {
    child: Child,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

/// How a [`RunningVm`] ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit code; `None` if it was killed at the timeout or by a signal.
    pub code: Option<i32>,
    /// The guest console, all of it.
    pub stdout: String,
    /// minivm's own messages.
    pub stderr: String,
}

impl RunningVm {
    /// Starts the `minivm` binary with `args`.
    pub fn start<I, S>(args: I) -> RunningVm
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        RunningVm::start_with(Command::new(minivm_bin()).args(args))
    }

    /// Starts a prepared command (its stdio is replaced).
    pub fn start_with(cmd: &mut Command) -> RunningVm {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn minivm");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        RunningVm {
            child,
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Collects stdout until `count` lines in all contain `marker`; false on
    /// timeout or EOF.
    pub fn wait_for_count(&mut self, marker: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut seen = self.stdout.iter().filter(|l| l.contains(marker)).count();
        while seen < count {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    seen += usize::from(l.contains(marker));
                    self.stdout.push(l);
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Collects stdout until a line contains `marker`; false on timeout or EOF.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> bool {
        let before = self.stdout.iter().filter(|l| l.contains(marker)).count();
        self.wait_for_count(marker, before + 1, timeout)
    }

    /// minivm's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to minivm.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Each minivm thread's name and seccomp mode (`Seccomp:` in its
    /// /proc status: 0 none, 2 filtered).
    pub fn thread_seccomp(&self) -> Vec<(String, u32)> {
        thread_seccomp(self.child.id())
    }

    /// Waits for the exit, killing minivm after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.stdout.extend(self.lines.iter());
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        Finished {
            code,
            stdout: std::mem::take(&mut self.stdout).join("\n"),
            stderr,
        }
    }
}

impl Drop for RunningVm {
    /// A test that failed midway leaves no minivm behind (a jailed one
    /// follows its supervisor).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Each thread of process `pid`: its name and seccomp mode (`Seccomp:` in
/// its /proc status: 0 none, 2 filtered).
pub fn thread_seccomp(pid: u32) -> Vec<(String, u32)> {
    let tasks = format!("/proc/{pid}/task");
    let mut threads = Vec::new();
    for task in std::fs::read_dir(&tasks).expect("minivm's /proc/PID/task") {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a Seccomp: line");
        threads.push((comm.trim_end().to_string(), mode));
    }
    threads.sort();
    threads
}
