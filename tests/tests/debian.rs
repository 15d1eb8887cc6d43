//! The big fat VM, slow (MINIVM_SLOW_TESTS=1; about 10-40 minutes each on a
//! nested host): a stock Debian 12 systemd image, built by
//! scripts/make-debian-image.sh with debootstrap and packed as OCI, boots over
//! virtio-blk and over virtio-fs to `running` with no failed unit; a user
//! logs in on the serial console through a pseudo-terminal, edits a line,
//! interrupts a command with Ctrl-C and logs out with Ctrl-D; the network
//! works (ping and TCP both ways with checksums, in a private namespace);
//! the kvm-pvm glibc work-around reaches services and none crashed; SIGTERM
//! shuts the guest down cleanly (exit 0); and the disk is clean afterwards.
//!
//! Without MINIVM_SLOW_TESTS=1 these tests only say that they were not run.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testkit::*;

const TO_GUEST_PORT: u16 = 5001;
const FROM_GUEST_PORT: u16 = 5002;
/// Bytes each way; the guest kernel is emulated here, so keep it modest.
const NET_BYTES: usize = 4 << 20;
/// Process start to the login prompt: ~5 min over virtio-blk on a quiet
/// nested host; much more over virtio-fs or with other VMs running.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const CMD_TIMEOUT: Duration = Duration::from_secs(600);
/// A Debian guest is big; one at a time is all the host can give.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn slow_tests_enabled() -> bool {
    if std::env::var("MINIVM_SLOW_TESTS").as_deref() == Ok("1") {
        return kvm_available();
    }
    eprintln!("not run: this slow test needs MINIVM_SLOW_TESTS=1");
    false
}

/// The Debian image's OCI layout, built (as root, a few minutes) or cached.
fn debian_oci() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-debian-image.sh");
    let out = Command::new(&script)
        .output()
        .expect("run make-debian-image.sh");
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn debian_over_virtio_blk() {
    if slow_tests_enabled() && in_private_netns("debian_over_virtio_blk") {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = scratch_dir("debian-blk");
        let disk = dir.join("debian.raw");
        let disk_arg = disk.to_str().unwrap().to_string();
        boot_and_live_in_it(&["--persist", &disk_arg]);
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(&disk)
            .output()
            .expect("e2fsck");
        assert!(
            fsck.status.success(),
            "e2fsck -fn on the persisted disk: {}\n{}",
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
}

#[test]
fn debian_over_virtio_fs() {
    if slow_tests_enabled() && in_private_netns("debian_over_virtio_fs") {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        boot_and_live_in_it(&["--virtiofs", "--fs-stats"]);
    }
}

/// Boots the image with `root_args` on a pty and does what a user would.
fn boot_and_live_in_it(root_args: &[&str]) {
    let oci = debian_oci();
    make_test_tap();
    let data = std::sync::Arc::new(payload(NET_BYTES));
    let want = sha256_hex(&data);
    let to_guest = send_to_guest(TO_GUEST_PORT, data);
    let from_guest = receive_from_guest(FROM_GUEST_PORT, NET_BYTES);

    let mut cmd = Command::new(minivm_bin());
    cmd.args(["run", "--oci"])
        .arg(format!("oci:{}:latest", oci.display()))
        .args(["--cpus", "2", "--mem", "1G", "--net"])
        .arg(test_net_arg())
        .args(root_args);
    let start = Instant::now();
    let mut vm = PtySession::spawn(cmd);

    // The console's getty gives up on its device after 90 s: no prompt will come.
    vm.expect_unless(
        "debian-minivm login:",
        &[
            "Failed to start serial-getty@ttyS0",
            "Dependency failed for serial-getty@ttyS0",
        ],
        LOGIN_TIMEOUT,
    );
    let t_login = start.elapsed();
    vm.send("root\r");
    vm.expect("Password:", CMD_TIMEOUT);
    vm.send("minivm\r");
    vm.expect("root@debian-minivm:~#", CMD_TIMEOUT);

    // The system came up whole.
    let state = vm.shell("systemctl is-system-running --wait", CMD_TIMEOUT);
    let failed = vm.shell("systemctl --failed --no-legend --plain", CMD_TIMEOUT);
    assert!(
        state == "running" && failed.is_empty(),
        "system state {state:?}; failed units:\n{failed}\n{}",
        vm.shell(
            "systemctl list-jobs --no-pager; journalctl -b -p warning --no-pager | tail -40",
            CMD_TIMEOUT
        )
    );
    let blame = vm.shell(
        "systemd-analyze time; systemd-analyze blame --no-pager | head -8",
        CMD_TIMEOUT,
    );

    // kvm-pvm: the glibc tunable reached a service, and nothing crashed.
    let tunable = vm.shell(
        "tr '\\0' '\\n' < /proc/$(pidof systemd-logind)/environ | grep -c '^GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX'",
        CMD_TIMEOUT,
    );
    assert_eq!(
        tunable, "1",
        "systemd-logind lacks the GLIBC_TUNABLES work-around"
    );
    let crashes = vm.shell(
        "journalctl -b --no-pager | grep -E 'SIGSEGV|SIGILL|dumped core|status=(4|11)/' | head",
        CMD_TIMEOUT,
    );
    assert!(crashes.is_empty(), "crashes in this boot:\n{crashes}");

    // Line editing: a typed character erased with Backspace never runs.
    vm.send("echo ed-abcX\x7fd\r");
    vm.expect("\r\ned-abcd\r\n", CMD_TIMEOUT);
    // Ctrl-C interrupts the guest's command, not minivm.
    vm.send("sleep 1000\r");
    vm.expect("sleep 1000", CMD_TIMEOUT);
    std::thread::sleep(Duration::from_secs(5));
    vm.send("\x03");
    assert_eq!(vm.shell("pgrep -c -x sleep || true", CMD_TIMEOUT), "0");

    // The network, as systemd-networkd set it up from the image's config.
    let addr = vm.shell("ip -4 -o addr show dev eth0", CMD_TIMEOUT);
    assert!(addr.contains(&format!("{GUEST_IP}/24")), "eth0: {addr}");
    let ping = vm.shell(&format!("ping -c 3 -W 10 {HOST_IP} | tail -2"), CMD_TIMEOUT);
    assert!(ping.contains("3 received"), "ping {HOST_IP}: {ping}");
    let rx = vm.shell(
        &format!(
            "nc {HOST_IP} {TO_GUEST_PORT} </dev/null >/tmp/f; stat -c %s /tmp/f; sha256sum </tmp/f"
        ),
        CMD_TIMEOUT,
    );
    assert_eq!(rx, format!("{NET_BYTES}\n{want}  -"), "host -> guest");
    vm.shell(
        &format!("nc -N {HOST_IP} {FROM_GUEST_PORT} </tmp/f"),
        CMD_TIMEOUT,
    );
    let (n, got, _) = from_guest.join().expect("receiver thread");
    to_guest.join().expect("sender thread");
    assert_eq!((n, got), (NET_BYTES, want), "guest -> host");

    // Ctrl-D logs out and the getty asks again.
    vm.send("\x04");
    vm.expect("debian-minivm login:", CMD_TIMEOUT);

    // SIGTERM: the power button; systemd shuts down and minivm ends with 0.
    let t_term = Instant::now();
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    assert_eq!(unsafe { libc::kill(vm.pid(), libc::SIGTERM) }, 0);
    let st = vm.wait(CMD_TIMEOUT);
    let screen = vm.screen();
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "minivm after SIGTERM: {st:?}; the screen ends with:\n{}",
        tail(&screen, 3000)
    );
    assert!(
        screen.contains("reboot: Power down"),
        "the guest did not power off: {}",
        tail(&screen, 3000)
    );
    // --fs-stats: the boot's FUSE requests, for the notes.
    let stats = screen
        .find("minivm: virtio-fs ")
        .map_or("", |i| &screen[i..]);
    eprintln!(
        "debian {root_args:?}: login prompt after {t_login:.0?}, shut down in {:.0?}\n{blame}\n{stats}",
        t_term.elapsed()
    );
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}
