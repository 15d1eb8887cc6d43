//! Network tests in a private network namespace: the test binary re-runs one
//! test under `unshare --net`, where it makes a tap with the host side's
//! address, serves TCP to the guest, and checks what crosses byte for byte.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The tap the tests create inside their namespace.
pub const TEST_TAP: &str = "mvtap0";
/// The host side of the tap.
pub const HOST_IP: &str = "10.0.2.1";
/// The guest's address (scripts/make-debian-image.sh configures the same).
pub const GUEST_IP: &str = "10.0.2.15";
/// The guest's MAC address.
pub const GUEST_MAC: &str = "02:00:00:0a:02:0f";

const INNER_ENV: &str = "MINIVM_TEST_IN_NETNS";

/// Runs test `name` of the current test binary again inside a new network
/// namespace (mapping root when not root) and returns false; inside the
/// namespace it returns true, and the caller does the work there.
pub fn in_private_netns(name: &str) -> bool {
    if std::env::var_os(INNER_ENV).is_some() {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        cmd.arg("--map-root-user");
    }
    let st = cmd
        .args(["--net", "--"])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--include-ignored"])
        .env(INNER_ENV, "1")
        .status()
        .expect("unshare (util-linux) is needed");
    assert!(st.success(), "the test inside the network namespace failed");
    false
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "`{cmd}` failed");
}

/// Brings up loopback and [`TEST_TAP`] with [`HOST_IP`]/24 (inside the
/// namespace only).
pub fn make_test_tap() {
    sh("ip link set lo up");
    sh(&format!("ip tuntap add dev {TEST_TAP} mode tap"));
    sh(&format!("ip addr add {HOST_IP}/24 dev {TEST_TAP}"));
    sh(&format!("ip link set {TEST_TAP} up"));
}

/// The `--net` argument for the test tap and MAC.
pub fn test_net_arg() -> String {
    format!("tap={TEST_TAP},mac={GUEST_MAC}")
}

/// Deterministic pseudo-random bytes (xorshift64*), so corruption or
/// reordering cannot go unnoticed.
pub fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves one connection from the guest on `port` with `f`.
fn serve<T: Send + 'static>(
    port: u16,
    f: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> JoinHandle<T> {
    let l = TcpListener::bind((HOST_IP, port)).expect("bind inside the namespace");
    std::thread::spawn(move || {
        let (s, peer) = l.accept().expect("accept");
        assert_eq!(peer.ip().to_string(), GUEST_IP);
        f(s)
    })
}

/// Sends `data` to the first guest that connects to `port`, then waits for
/// the guest to close (so every byte was taken); returns the time it took.
pub fn send_to_guest(port: u16, data: std::sync::Arc<Vec<u8>>) -> JoinHandle<Duration> {
    serve(port, move |mut s| {
        let t = Instant::now();
        s.write_all(&data).expect("send to guest");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = s.read(&mut [0u8; 1]);
        t.elapsed()
    })
}

/// Receives exactly `total` bytes (or until EOF) from the first guest that
/// connects to `port`, then closes; returns the count, their SHA-256 (hex)
/// and the time it took.
pub fn receive_from_guest(port: u16, total: usize) -> JoinHandle<(usize, String, Duration)> {
    serve(port, move |mut s| {
        let t = Instant::now();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0usize;
        while n < total {
            let want = buf.len().min(total - n);
            let r = s.read(&mut buf[..want]).expect("receive from guest");
            if r == 0 {
                break;
            }
            h.update(&buf[..r]);
            n += r;
        }
        (n, hex(&h.finalize()), t.elapsed())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_deterministic_and_not_constant() {
        let a = payload(4096);
        assert_eq!(a, payload(4096));
        assert_eq!(a.len(), 4096);
        assert_ne!(a[..8], a[8..16]);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
