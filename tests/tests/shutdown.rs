//! Shutdown on request: SIGTERM presses the guest's ACPI power button; a
//! guest that acts on it powers off cleanly (exit 0); one that does not is
//! stopped hard after --shutdown-timeout, or on a second SIGTERM (143).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use testkit::*;

/// Waits for the power button's key event on the first input device (the
/// ACPI button driver's), then powers off the way a shutdown ends.
const HANDLER_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
ev=/dev/input/event0
[ -e $ev ] || echo "MARKER no input device"
cat /proc/bus/input/devices | grep -i '^N:'
dd if=$ev bs=24 count=1 of=/dev/null 2>/dev/null &
dd=$!
# evdev drops events that no open file reads: say ready only once dd holds
# the device open, or a quick press is lost before dd starts.
while [ -d /proc/$dd ] && ! ls -l /proc/$dd/fd 2>/dev/null | grep -q input/event; do sleep 1; done
echo "MARKER ready"
wait $dd
echo "MARKER power key pressed"
sync
poweroff -f
"#;

/// Ignores the power button.
const DEAF_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
echo "MARKER ready"
while true; do sleep 1; done
"#;

struct Running {
    child: Child,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

fn start(init: &str, name: &str, extra: &[&str]) -> Running {
    let dir = scratch_dir(name);
    let mut args = initramfs_boot_args(&dir, init);
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut child = Command::new(minivm_bin())
        .args(&args)
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
    Running {
        child,
        lines,
        stdout: Vec::new(),
        stderr,
    }
}

impl Running {
    /// Collects stdout until a line contains `marker`; false on timeout or EOF.
    fn wait_for(&mut self, marker: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(marker);
                    self.stdout.push(l);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    fn sigterm(&self) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Waits for the exit (killing after `timeout`): code, stdout, stderr.
    fn finish(mut self, timeout: Duration) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
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
        let stderr = self.stderr.join().unwrap();
        (status, self.stdout.join("\n"), stderr)
    }
}

#[test]
fn sigterm_powers_off_a_guest_that_handles_the_power_button() {
    if !kvm_available() {
        return;
    }
    let mut vm = start(HANDLER_INIT, "shutdown-handler", &[]);
    let ready = vm.wait_for("MARKER ready", BOOT_TIMEOUT);
    if !ready {
        let (code, out, err) = vm.finish(Duration::from_secs(1));
        panic!("no ready marker ({code:?}):\n{out}\n{err}");
    }
    vm.sigterm();
    let (code, out, err) = vm.finish(Duration::from_secs(300));
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("MARKER power key pressed"), "{out}");
    assert!(
        out.contains("Power Button"),
        "the guest sees the button: {out}"
    );
    assert!(err.contains("asking the guest to shut down"), "{err}");
    assert!(!err.contains("stopped by signal"), "{err}");
}

#[test]
fn a_guest_that_ignores_the_button_is_stopped_after_the_timeout() {
    if !kvm_available() {
        return;
    }
    let mut vm = start(DEAF_INIT, "shutdown-deaf", &["--shutdown-timeout", "5"]);
    assert!(vm.wait_for("MARKER ready", BOOT_TIMEOUT), "no ready marker");
    let t0 = Instant::now();
    vm.sigterm();
    let (code, out, err) = vm.finish(Duration::from_secs(300));
    assert_eq!(
        code,
        Some(128 + libc::SIGTERM),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(5),
        "stopped before the timeout"
    );
    assert!(err.contains("stopped by signal 15"), "{err}");
}

#[test]
fn a_second_sigterm_stops_the_guest_hard() {
    if !kvm_available() {
        return;
    }
    let mut vm = start(DEAF_INIT, "shutdown-twice", &["--shutdown-timeout", "600"]);
    assert!(vm.wait_for("MARKER ready", BOOT_TIMEOUT), "no ready marker");
    vm.sigterm();
    std::thread::sleep(Duration::from_secs(1));
    vm.sigterm();
    let (code, out, err) = vm.finish(Duration::from_secs(120));
    assert_eq!(
        code,
        Some(128 + libc::SIGTERM),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(err.contains("stopped by signal 15"), "{err}");
}
