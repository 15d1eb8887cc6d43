//! Devices seen from a real Linux guest (one busybox initramfs boot, about
//! a minute under kvm-pvm): the virtio-rng entropy device, and two vCPUs.

use testkit::*;

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "MARKER devices init running"
echo "cmdline=$(cat /proc/cmdline)"
grep MemTotal /proc/meminfo
echo "cpus_online=$(cat /sys/devices/system/cpu/online)"
echo "rng_available=$(cat /sys/class/misc/hw_random/rng_available)"
echo "rng_current=$(cat /sys/class/misc/hw_random/rng_current)"
for d in /sys/bus/virtio/devices/*; do echo "virtio_device=$(cat $d/device)"; done
[ -e /dev/hwrng ] || mknod /dev/hwrng c 10 183
head -c 4096 /dev/hwrng > /rng1
head -c 4096 /dev/hwrng > /rng2
echo "rng1_bytes=$(wc -c < /rng1) rng2_bytes=$(wc -c < /rng2)"
if cmp -s /rng1 /rng2; then echo "rng_reads=same"; else echo "rng_reads=differ"; fi
head -c 4096 /dev/zero > /zero
for f in /rng1 /rng2; do
  if cmp -s $f /zero; then echo "$f=zero"; else echo "$f=nonzero"; fi
done
echo "MARKER devices done"
EXIT
"#;

/// An initramfs boot with a replaced command line: the guest finds
/// virtio-rng (device id 4) as its current hardware RNG and reads two
/// different, non-zero 4 KiB blocks from /dev/hwrng; with `--cpus 2` both
/// vCPUs are online, and `--mem 256M` is the memory it sees.
#[test]
fn virtio_rng_gives_the_guest_random_bytes() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("devices-boot");
    let initrd = busybox_initramfs(&dir, &INIT.replace("EXIT", &exit_port_cmd(7)));
    let kernel = default_kernel();
    let out = run_minivm(
        [
            "-v",
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--mem",
            "256M",
            "--cpus",
            "2",
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 pci=off quiet rdinit=/init custom.flag=1",
        ],
        BOOT_TIMEOUT,
    );
    println!("guest output:\n{}", out.stdout);
    assert_eq!(out.code(), 7, "{out:#?}");
    let current = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("rng_current="))
        .unwrap_or_else(|| panic!("no rng_current line: {out:#?}"))
        .trim();
    // drivers/char/hw_random/virtio-rng.c names it "virtio_rng.%d".
    assert!(
        current.starts_with("virtio_rng."),
        "rng_current={current:?}"
    );
    for want in [
        "MARKER devices init running",
        // --cpus 2: both vCPUs came up (ACPI MADT, SMP boot).
        "cpus_online=0-1",
        "virtio_device=0x0004",
        "rng1_bytes=4096 rng2_bytes=4096",
        "rng_reads=differ",
        "/rng1=nonzero",
        "/rng2=nonzero",
        "MARKER devices done",
    ] {
        assert!(
            out.stdout.contains(want),
            "guest output lacks {want:?}: {out:#?}"
        );
    }
    // --cmdline replaces the default command line (no root disk), and
    // --mem sizes the guest.
    let cmdline = out
        .stdout
        .lines()
        .find(|l| l.starts_with("cmdline="))
        .expect("cmdline line");
    assert!(cmdline.contains("custom.flag=1"), "{cmdline}");
    assert!(!cmdline.contains("root=/dev/vda"), "{cmdline}");
    let kb: u64 = out
        .stdout
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("MemTotal line");
    assert!(
        kb > 180 * 1024 && kb <= 256 * 1024,
        "MemTotal {kb} kB for --mem 256M"
    );
    // minivm counts what it served: at least the two reads.
    let served: u64 = out
        .stderr
        .lines()
        .find_map(|l| l.split("virtio-rng: served ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no virtio-rng statistics: {}", out.stderr));
    println!("minivm: virtio-rng served {served} bytes");
    assert!(served >= 8192, "served {served} bytes");
}

/// Without ACPI the kernel learns the devices from `virtio_mmio.device=`:
/// the entropy device is there by default (here the only virtio device, so
/// the first slot) and gone with `--no-rng`. A tiny guest, no Linux boot.
#[test]
fn virtio_rng_is_on_the_acpi_off_command_line_unless_no_rng() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("devices-cmdline");
    let guest = TinyGuest {
        message: vec![],
        boot_marker: false,
        end: TinyEnd::Exit(0),
    }
    .write(&dir, "guest.elf");
    let g = guest.to_str().unwrap();
    let timeout = std::time::Duration::from_secs(60);
    let run = |extra: &[&str]| {
        let mut args = vec!["-v", "run", "--kernel", g, "--mem", "16M"];
        args.extend_from_slice(extra);
        let out = run_minivm(&args, timeout);
        assert_eq!(out.code(), 0, "{out:#?}");
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains("command line:"))
            .unwrap_or_else(|| panic!("no command line logged: {out:#?}"))
            .to_string();
        line
    };
    let device = "virtio_mmio.device=4K@0xd0000000:5";
    let line = run(&["--cmdline", "console=ttyS0 acpi=off"]);
    assert!(line.contains(device), "{line}");
    let line = run(&["--cmdline", "console=ttyS0 acpi=off", "--no-rng"]);
    assert!(!line.contains("virtio_mmio.device="), "{line}");
    // With ACPI the DSDT describes it and the command line does not.
    let line = run(&["--cmdline", "console=ttyS0"]);
    assert!(!line.contains("virtio_mmio.device="), "{line}");
}
