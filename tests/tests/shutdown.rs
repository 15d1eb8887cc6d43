//! Shutdown on request: SIGTERM presses the guest's ACPI power button; a
//! guest that acts on it powers off cleanly (exit 0); one that does not is
//! stopped hard after --shutdown-timeout, or on a second SIGTERM (143).

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

fn start(init: &str, name: &str, extra: &[&str]) -> RunningVm {
    let dir = scratch_dir(name);
    let mut args = initramfs_boot_args(&dir, init);
    args.extend(extra.iter().map(|a| a.to_string()));
    RunningVm::start(&args)
}

#[test]
fn sigterm_powers_off_a_guest_that_handles_the_power_button() {
    if !kvm_available() {
        return;
    }
    let mut vm = start(HANDLER_INIT, "shutdown-handler", &[]);
    let ready = vm.wait_for("MARKER ready", BOOT_TIMEOUT);
    if !ready {
        let Finished {
            code,
            stdout: out,
            stderr: err,
        } = vm.finish(Duration::from_secs(1));
        panic!("no ready marker ({code:?}):\n{out}\n{err}");
    }
    vm.sigterm();
    let Finished {
        code,
        stdout: out,
        stderr: err,
    } = vm.finish(Duration::from_secs(300));
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
    let Finished {
        code,
        stdout: out,
        stderr: err,
    } = vm.finish(Duration::from_secs(300));
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
    let Finished {
        code,
        stdout: out,
        stderr: err,
    } = vm.finish(Duration::from_secs(120));
    assert_eq!(
        code,
        Some(128 + libc::SIGTERM),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(err.contains("stopped by signal 15"), "{err}");
}
