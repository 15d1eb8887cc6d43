//! virtio-net over a tap, in a network namespace this test creates (so only
//! addresses inside it are used): a busybox guest configures eth0, pings the
//! host side of the tap, then moves data each way over TCP with busybox `nc`
//! against this test's own listeners; both sides check SHA-256. One boot.
//!
//! The test re-runs itself under `unshare --net` (plus `--map-root-user`
//! when not root); the inner run does the work. `MINIVM_NET_KIB` changes the
//! transfer size (default 256).

use std::time::Duration;

use testkit::*;

const TO_GUEST_PORT: u16 = 5001;
const FROM_GUEST_PORT: u16 = 5002;
/// The issue asks for 64 MiB each way, but on this nested kvm-pvm host the
/// guest kernel (emulated) moves busybox nc's 1 KiB writes at ~20-45 KiB/s:
/// 8 MiB each way took 184 s in and 404 s out (770 s in all). 256 KiB keeps
/// the transfer to about a minute; MINIVM_NET_KIB=65536 runs the full size.
const DEFAULT_KIB: usize = 256;

fn transfer_kib() -> usize {
    std::env::var("MINIVM_NET_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KIB)
}

fn guest_init(kib: usize) -> String {
    format!(
        r#"#!/bin/sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs dev /dev
$B mount -t tmpfs -o size=200m tmpfs /tmp
$B ip link set lo up
$B ip link set eth0 up
$B ip addr add {GUEST_IP}/24 dev eth0
echo "NET mac=$($B cat /sys/class/net/eth0/address)"
echo "NET features=$($B cat /sys/class/net/eth0/device/features)"
if $B ping -c 3 -w 60 {HOST_IP} > /tmp/ping 2>&1; then echo "NET ping=ok"; else echo "NET ping=failed"; $B cat /tmp/ping; fi
$B grep -E 'packets|round-trip' /tmp/ping
t0=$($B date +%s)
$B nc {HOST_IP} {TO_GUEST_PORT} </dev/null > /tmp/f
t1=$($B date +%s)
echo "NET rx_bytes=$($B wc -c < /tmp/f)"
echo "NET rx_sha=$($B sha256sum /tmp/f | $B cut -d' ' -f1)"
$B nc {HOST_IP} {FROM_GUEST_PORT} < /tmp/f
t2=$($B date +%s)
echo "NET times host->guest=$((t1-t0))s guest->host=$((t2-t1))s ({kib} KiB each)"
echo "NET done"
{}
"#,
        exit_port_cmd(0)
    )
}

#[test]
fn tap_ping_and_tcp_both_ways() {
    if !kvm_available() {
        return;
    }
    if in_private_netns("tap_ping_and_tcp_both_ways") {
        in_namespace();
    }
}

fn in_namespace() {
    let kib = transfer_kib();
    make_test_tap();
    let total = kib << 10;
    let data = std::sync::Arc::new(payload(total));
    let want = sha256_hex(&data);
    let to_guest = send_to_guest(TO_GUEST_PORT, data);
    let from_guest = receive_from_guest(FROM_GUEST_PORT, total);

    let dir = scratch_dir("net");
    let mut args = initramfs_boot_args(&dir, &guest_init(kib));
    args.extend([
        "--mem".into(),
        "512M".into(),
        "--net".into(),
        test_net_arg(),
    ]);
    let out = run_minivm(&args, BOOT_TIMEOUT + Duration::from_secs(600));
    let guest: Vec<&str> = out.stdout.lines().filter(|l| l.contains("NET ")).collect();
    eprintln!("guest said:\n{}", guest.join("\n"));
    assert_eq!(out.code(), 0, "{out:#?}");
    let line = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.split_once(&format!("NET {key}=")).map(|(_, v)| v.trim()))
            .unwrap_or_else(|| panic!("no NET {key}= line: {out:#?}"))
    };
    assert_eq!(line("mac"), GUEST_MAC);
    assert_eq!(line("ping"), "ok", "{}", out.stdout);
    assert_eq!(line("rx_bytes"), total.to_string());
    assert_eq!(line("rx_sha"), want, "host -> guest data arrived changed");
    let (n, got, t_in) = from_guest.join().expect("receiver thread");
    let t_out = to_guest.join().expect("sender thread");
    assert_eq!(n, total, "guest -> host byte count");
    assert_eq!(got, want, "guest -> host data arrived changed");
    eprintln!(
        "{kib} KiB host->guest in {:.1?} ({:.0} KiB/s), guest->host in {:.1?} ({:.0} KiB/s); whole run {:.1?}",
        t_out,
        kib as f64 / t_out.as_secs_f64(),
        t_in,
        kib as f64 / t_in.as_secs_f64(),
        out.elapsed
    );
}
