//! Shutdown on request when the guest does not act on it: SIGTERM presses
//! the ACPI power button, and a guest that ignores it is stopped hard after
//! `--shutdown-timeout`, or on a second SIGTERM (143). A spinning tiny guest
//! is such a guest, so these need no Linux boot; a Linux guest that handles
//! the button and powers off (exit 0) is in `lifecycle.rs`.

use std::time::{Duration, Instant};

use testkit::*;

/// A deaf guest (it spins, ignoring the button), started with `extra`
/// options and running once its message is out.
fn start_deaf(name: &str, extra: &[&str]) -> RunningVm {
    let dir = scratch_dir(name);
    let guest = TinyGuest {
        message: b"MARKER ready\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Spin,
    }
    .write(&dir, "guest.elf");
    let mut args = vec!["run", "--kernel", guest.to_str().unwrap(), "--mem", "16M"];
    args.extend_from_slice(extra);
    let mut vm = RunningVm::start(&args);
    assert!(
        vm.wait_for("MARKER ready", Duration::from_secs(60)),
        "no ready marker"
    );
    vm
}

#[test]
fn a_guest_that_ignores_the_button_is_stopped_after_the_timeout() {
    if !kvm_available() {
        return;
    }
    let vm = start_deaf("shutdown-deaf", &["--shutdown-timeout", "3"]);
    let t0 = Instant::now();
    vm.sigterm();
    let Finished {
        code,
        stdout: out,
        stderr: err,
    } = vm.finish(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(128 + libc::SIGTERM),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "stopped before the timeout"
    );
    assert!(err.contains("asking the guest to shut down"), "{err}");
    assert!(err.contains("stopped by signal 15"), "{err}");
}

#[test]
fn a_second_sigterm_stops_the_guest_hard() {
    if !kvm_available() {
        return;
    }
    let vm = start_deaf("shutdown-twice", &["--shutdown-timeout", "600"]);
    let t0 = Instant::now();
    vm.sigterm();
    std::thread::sleep(Duration::from_secs(1));
    vm.sigterm();
    let Finished {
        code,
        stdout: out,
        stderr: err,
    } = vm.finish(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(128 + libc::SIGTERM),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(600),
        "waited for the shutdown timeout"
    );
    assert!(err.contains("asking the guest to shut down"), "{err}");
    assert!(err.contains("stopped by signal 15"), "{err}");
}
