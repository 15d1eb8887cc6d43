//! Real Linux boots with the default kernel (about 2 minutes each under
//! kvm-pvm, ~100 ms on hardware). Few boots, each checking a lot.

use testkit::*;

fn file_digest(p: &std::path::Path) -> Vec<u8> {
    // A cheap exact comparison: the whole file (test disks are small).
    std::fs::read(p).unwrap()
}

const BOOT1_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "MARKER boot1 init running"
printf '\001' | dd of=/dev/port bs=1 seek=245 count=1 2>/dev/null
echo "serial=$(cat /sys/block/vda/serial)"
echo "ro=$(cat /sys/block/vda/ro)"
echo "sectors=$(cat /sys/block/vda/size)"
echo "kernel=$(uname -r)"
echo "written by boot one" > /data.txt
dd if=/dev/zero bs=4096 count=48 2>/dev/null | tr '\0' 'z' > /big.bin
md5sum /big.bin > /big.md5
sync
echo "MARKER boot1 wrote files"
# A clean unmount: the read-only boot cannot replay a journal.
mount -o remount,ro /
reboot -f
"#;

const BOOT2_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "MARKER boot2 init running"
echo "data=$(cat /data.txt)"
echo "ro=$(cat /sys/block/vda/ro)"
md5sum -c /big.md5 >/dev/null 2>&1 && echo "big=ok" || echo "big=bad"
if echo x > /newfile 2>/dev/null; then echo "write=succeeded"; else echo "write=failed"; fi
if mount -o remount,rw / 2>/dev/null; then echo "remount=succeeded"; else echo "remount=failed"; fi
if dd if=/dev/zero of=/dev/vda bs=512 count=1 seek=100 conv=notrunc 2>/dev/null; then echo "rawwrite=succeeded"; else echo "rawwrite=failed"; fi
sync
EXIT42
"#;

/// Boot, write, reboot; boot again read-only: the data is there, writes fail,
/// and the image file is byte-for-byte unchanged.
#[test]
fn disk_boot_persists_writes_and_readonly_protects_the_image() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("linux-disk");
    let boot2 = BOOT2_INIT.replace("EXIT42", &exit_port_cmd(42));
    let img = busybox_disk(
        &dir,
        "disk1",
        BOOT1_INIT,
        &[TestEntry::executable("check", boot2)],
        24,
    );
    let kernel = default_kernel();
    let (k, i) = (kernel.to_str().unwrap(), img.to_str().unwrap());

    let out = run_minivm(
        [
            "run",
            "--kernel",
            k,
            "--image",
            i,
            "--append",
            "quiet init=/init",
        ],
        BOOT_TIMEOUT,
    );
    assert_eq!(
        out.code(),
        0,
        "boot 1 should end with a clean reboot: {out:#?}"
    );
    for want in [
        "MARKER boot1 init running",
        "serial=disk1.raw",
        "ro=0",
        &format!("sectors={}", 24 * 2048),
        "-minivm",
        "MARKER boot1 wrote files",
    ] {
        assert!(
            out.stdout.contains(want),
            "boot 1 output lacks {want:?}: {out:#?}"
        );
    }
    assert!(
        out.stderr.contains("guest boot finished"),
        "no boot marker: {}",
        out.stderr
    );

    let before = file_digest(&img);
    let out = run_minivm(
        [
            "run",
            "--kernel",
            k,
            "--image",
            i,
            "--readonly",
            "--append",
            "quiet init=/check",
        ],
        BOOT_TIMEOUT,
    );
    assert_eq!(
        out.code(),
        42,
        "boot 2 should exit through the exit port: {out:#?}"
    );
    for want in [
        "MARKER boot2 init running",
        "data=written by boot one",
        "ro=1",
        "big=ok",
        "write=failed",
        "remount=failed",
        "rawwrite=failed",
    ] {
        assert!(
            out.stdout.contains(want),
            "boot 2 output lacks {want:?}: {out:#?}"
        );
    }
    assert!(
        before == file_digest(&img),
        "the read-only boot changed the image"
    );
}

/// A disk that is not ext4: the kernel cannot mount root and panics; minivm
/// ends (not hangs) with the crash status.
#[test]
fn non_ext4_disk_panics_and_minivm_exits_nonzero() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("linux-garbage");
    let img = dir.join("garbage.raw");
    std::fs::write(&img, vec![0x5au8; 8 << 20]).unwrap();
    let kernel = default_kernel();
    let out = run_minivm(
        [
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
            "--append",
            "quiet",
        ],
        BOOT_TIMEOUT,
    );
    assert_eq!(out.code(), 3, "{out:#?}");
    assert!(out.stdout.contains("Kernel panic"), "{}", out.stdout);
    assert!(
        out.stderr.contains("guest kernel panicked"),
        "{}",
        out.stderr
    );
}
