//! Driving `minivm` through a pseudo-terminal, as a user at a console would:
//! it runs as a session leader with the pty as its controlling terminal (so
//! it switches the terminal to raw mode as it does for a person), and the
//! test waits for text and types keys.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Everything the console printed so far, and whether it was closed.
#[derive(Default)]
struct Screen {
    bytes: Vec<u8>,
    closed: bool,
}

/// A process whose stdin, stdout and stderr are one pseudo-terminal.
pub struct PtySession {
    child: Child,
    master: File,
    screen: Arc<(Mutex<Screen>, Condvar)>,
    /// Where [`PtySession::expect`] looks from: just past the last match.
    cursor: usize,
}

fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // A wide window, so the guest does not wrap long command lines.
    let ws = libc::winsize {
        ws_row: 50,
        ws_col: 250,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the out-pointers are valid; name and termios may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two fresh descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

impl PtySession {
    /// Starts `cmd` on a new pty; its output is collected from now on.
    pub fn spawn(mut cmd: Command) -> PtySession {
        let (master, slave) = open_pty();
        cmd.stdin(Stdio::from(slave.try_clone().expect("dup pty")))
            .stdout(Stdio::from(slave.try_clone().expect("dup pty")))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on the pty");
        // The parent's copies of the slave are gone with `cmd`'s Stdio (dropped
        // with the Command below), so the reader sees EIO once the child ends.
        drop(cmd);
        let master = File::from(master);
        let screen: Arc<(Mutex<Screen>, Condvar)> = Arc::default();
        let mut reader = master.try_clone().expect("dup pty master");
        let shared = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*shared;
                let mut s = lock.lock().unwrap();
                if n == 0 {
                    s.closed = true;
                    cv.notify_all();
                    return;
                }
                s.bytes.extend_from_slice(&buf[..n]);
                cv.notify_all();
            }
        });
        PtySession {
            child,
            master,
            screen,
            cursor: 0,
        }
    }

    /// Waits until `needle` appears after the previous match and returns the
    /// text from the previous match up to and including it. Panics, showing the
    /// tail of the screen, when `timeout` passes or the terminal closes first.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        self.expect_unless(needle, &[], timeout)
    }

    /// [`PtySession::expect`], but panics as soon as one of `fail_on`
    /// appears before `needle` (a failure that means it never will).
    pub fn expect_unless(&mut self, needle: &str, fail_on: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.screen;
        let mut s = lock.lock().unwrap();
        loop {
            let hay = &s.bytes[self.cursor.min(s.bytes.len())..];
            let found = find(hay, needle.as_bytes());
            let before = |i: usize| found.is_none_or(|f| i < f);
            if let Some(bad) = fail_on
                .iter()
                .find(|b| find(hay, b.as_bytes()).is_some_and(before))
            {
                let tail = &s.bytes[s.bytes.len().saturating_sub(3000)..];
                panic!(
                    "waiting for {needle:?}: {bad:?} came first; the screen ends with:\n{}",
                    String::from_utf8_lossy(tail)
                );
            }
            if let Some(i) = found {
                let end = self.cursor + i + needle.len();
                let text = String::from_utf8_lossy(&s.bytes[self.cursor..end]).into_owned();
                self.cursor = end;
                return text;
            }
            let now = Instant::now();
            if s.closed || now >= deadline {
                let tail = &s.bytes[s.bytes.len().saturating_sub(3000)..];
                panic!(
                    "waiting for {needle:?}: {} after {timeout:?}; the screen ends with:\n{}",
                    if s.closed {
                        "terminal closed"
                    } else {
                        "timed out"
                    },
                    String::from_utf8_lossy(tail)
                );
            }
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// Types `text` (no newline added).
    pub fn send(&mut self, text: &str) {
        self.master
            .write_all(text.as_bytes())
            .expect("write to pty");
    }

    /// Resizes the terminal, as a person resizing the window does: the
    /// kernel sends SIGWINCH to the process on it.
    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let r = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Runs one shell command line at a guest shell prompt and returns what it
    /// printed between two markers (so the echo of the typed line and the
    /// prompts are left out).
    pub fn shell(&mut self, cmd: &str, timeout: Duration) -> String {
        // Split markers, so the echoed command line itself never matches.
        self.send(&format!("echo '<<'BEGIN'>>'; {cmd}; echo '<<'END'>>'\r"));
        self.expect("<<BEGIN>>", timeout);
        let out = self.expect("<<END>>", timeout);
        out.trim_end_matches("<<END>>").trim().replace('\r', "")
    }

    /// The whole screen so far, as text.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.0.lock().unwrap().bytes).into_owned()
    }

    /// The child's pid, to signal it.
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Waits up to `timeout` for the child to exit; kills it after that.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_on_the_pty_sees_a_terminal_and_answers() {
        let mut cmd = Command::new("sh");
        cmd.env("PS1", "$ ").arg("-i");
        let mut s = PtySession::spawn(cmd);
        assert_eq!(
            s.shell("[ -t 0 ] && echo tty", Duration::from_secs(10)),
            "tty"
        );
        assert_eq!(
            s.shell("stty size", Duration::from_secs(10)),
            "50 250",
            "the window size is set"
        );
        s.send("exit 7\r");
        let st = s.wait(Duration::from_secs(10)).expect("sh exits");
        assert_eq!(st.code(), Some(7));
    }

    #[test]
    fn expect_reports_the_screen_when_the_terminal_closes() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello"]);
        let mut s = PtySession::spawn(cmd);
        s.expect("hello", Duration::from_secs(10));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.expect("never", Duration::from_secs(10))
        }));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("terminal closed"), "{msg}");
    }

    #[test]
    fn expect_unless_stops_at_a_failure_that_comes_first() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo FAILED; echo two; sleep 30"]);
        let mut s = PtySession::spawn(cmd);
        // A failure after the awaited text does not count.
        s.expect_unless("one", &["FAILED"], Duration::from_secs(10));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.expect_unless("never", &["nothing", "FAILED"], Duration::from_secs(20))
        }));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("\"FAILED\" came first"), "{msg}");
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(s.pid(), libc::SIGKILL) };
    }
}
