//! The guest's life across reboots: by default a reboot ends minivm with 0;
//! with `--restart` minivm boots the guest again in a fresh VM of the same
//! process, keeping its disk (and copy-on-write layer) and console, and
//! releasing everything the previous VM held.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::*;

/// Boot 1 checks the VM's size, writes a random token to the root disk and
/// reboots; boot 2 (the same /init) finds the token, then waits for the power
/// button's key event and powers off, the way a shutdown ends.
const REBOOT_ONCE_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
if [ -f /lifecycle-token ]; then
  echo "MARKER boot2 token=$(cat /lifecycle-token)"
  echo "MARKER boot2 cpus=$(cat /sys/devices/system/cpu/online)"
  grep -i '^N:' /proc/bus/input/devices
  dd if=/dev/input/event0 bs=24 count=1 of=/dev/null 2>/dev/null &
  dd=$!
  # evdev drops events that no open file reads: say ready only once dd
  # holds the device open, or a quick press is lost before dd starts.
  while [ -d /proc/$dd ] && ! ls -l /proc/$dd/fd 2>/dev/null | grep -q input/event; do sleep 1; done
  echo "MARKER boot2 ready"
  wait $dd
  echo "MARKER boot2 power key pressed"
  sync
  poweroff -f
fi
echo "MARKER boot1 memtotal_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
echo "MARKER boot1 cpus=$(cat /sys/devices/system/cpu/online)"
tok=$(head -c 16 /dev/urandom | md5sum | cut -c1-32)
echo "$tok" > /lifecycle-token
sync
echo "MARKER boot1 token=$tok"
reboot -f
"#;

/// The value after `MARKER <key>=` on the console, for each line that has it.
fn markers(stdout: &str, key: &str) -> Vec<String> {
    let tag = format!("MARKER {key}=");
    stdout
        .lines()
        .filter_map(|l| Some(l[l.find(&tag)? + tag.len()..].trim().to_string()))
        .collect()
}

/// The cached disks under a minivm cache directory (`minivm/disks/KEY/disk.raw`).
fn cached_disks(cache: &Path) -> Vec<PathBuf> {
    let Ok(keys) = std::fs::read_dir(cache.join("minivm/disks")) else {
        return Vec::new();
    };
    keys.filter_map(|e| Some(e.ok()?.path().join("disk.raw")))
        .filter(|p| p.is_file())
        .collect()
}

/// Parses minivm's "boot N ended (...): open fds F, threads T, RSS R KiB
/// (peak P KiB), VmSize V KiB" log lines (`-v`) into (N, F, T, R, V).
fn boot_usage(stderr: &str) -> Vec<(u64, u64, u64, u64, u64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("boot ")? + 5..];
            let (n, rest) = rest.split_once(" ended (")?;
            let nums: Vec<u64> = rest
                .split_once("): ")?
                .1
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            match nums[..] {
                [f, t, r, _peak, v] => Some((n.parse().ok()?, f, t, r, v)),
                _ => None,
            }
        })
        .collect()
}

/// The tiny guest resets as soon as it has printed: with `--restart` it
/// boots over and over, each time in a fresh VM, until SIGTERM (with no
/// power button) stops minivm. Across 30 boots the open fds and threads stay
/// the same and the address space does not grow by a VM's memory: each VM's memory, KVM fds,
/// eventfds, epoll fd and vCPU threads are released before the next.
#[test]
fn restart_releases_each_vm_before_the_next() {
    if !kvm_available() {
        return;
    }
    const BOOTS: usize = 30;
    let dir = scratch_dir("lifecycle-tiny");
    let guest = TinyGuest {
        message: b"tiny guest up\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Reset,
    };
    let kernel = guest.write(&dir, "guest.elf");
    // A disk exercises the kept virtio-blk device (the tiny guest never reads it).
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut vm = RunningVm::start([
        "-v",
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--image",
        disk.to_str().unwrap(),
        "--mem",
        "1G",
        "--cpus",
        "2",
        "--shutdown-timeout",
        "0",
        "--restart",
    ]);
    let booted = vm.wait_for_count("tiny guest up", BOOTS, Duration::from_secs(300));
    vm.sigterm();
    let end = vm.finish(Duration::from_secs(60));
    assert!(booted, "{BOOTS} boots: {end:#?}");
    assert_eq!(end.code, Some(128 + libc::SIGTERM), "{end:#?}");
    assert!(
        end.stderr.contains("starting it again (--restart)"),
        "{}",
        end.stderr
    );
    let usage = boot_usage(&end.stderr);
    assert!(
        usage.len() >= BOOTS - 1,
        "a usage line per boot: {}",
        end.stderr
    );
    eprintln!("after boot 1: {:?}", usage[0]);
    eprintln!("after boot {}: {:?}", usage.len(), usage[usage.len() - 1]);
    let (_, fds, threads, _, size) = usage[1];
    for &(n, f, t, rss, v) in &usage[1..] {
        assert_eq!((f, t), (fds, threads), "fds and threads after boot {n}");
        // A VM left mapped adds its 1 GiB of guest memory; glibc's per-thread
        // malloc arenas (64 MiB each, one per concurrent thread at most) may
        // add a few, once.
        assert!(
            v < size + (1 << 20),
            "VmSize after boot {n}: {v} KiB against {size} KiB after boot 2 (RSS {rss} KiB)"
        );
    }
}

/// Without `--restart` the same reboot ends minivm with 0 after one boot.
#[test]
fn a_reboot_ends_minivm_without_restart() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("lifecycle-tiny-once");
    let guest = TinyGuest {
        message: b"tiny guest up\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Reset,
    };
    let kernel = guest.write(&dir, "guest.elf");
    let out = run_minivm(
        ["run", "--kernel", kernel.to_str().unwrap(), "--mem", "16M"],
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(out.stdout, "tiny guest up\n", "one boot");
    assert!(!out.stderr.contains("--restart"), "{}", out.stderr);
}

/// A busybox OCI image booted copy-on-write with `--restart --mem 4G
/// --cpus 2`: boot 1 sees 4 GiB (memory above the 32-bit MMIO gap) and two
/// CPUs, writes a random token and reboots; boot 2, in a fresh VM of the
/// same process, reads the token back from the private copy-on-write layer
/// (which a re-opened disk would have lost) and waits on its power button.
/// SIGTERM then presses the new VM's button, and the guest's poweroff ends
/// the restart loop and minivm with 0. The cached disk never sees the token,
/// and minivm holds as many fds after each boot as before the first.
#[test]
fn restart_keeps_the_disk_and_sigterm_in_boot_2_powers_off() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("lifecycle-linux");
    let mut layer = busybox_layer();
    layer.push(TestEntry::executable("init", REBOOT_ONCE_INIT));
    let layout = dir.join("layout");
    TestImage::new(vec![layer])
        .write_oci_layout(&layout, "1", Compression::Gzip)
        .unwrap();
    let cache = dir.join("cache");
    let kernel = default_kernel();
    let mut cmd = Command::new(minivm_bin());
    cmd.env("XDG_CACHE_HOME", &cache).args([
        "-v",
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--oci",
        &format!("oci:{}:1", layout.display()),
        "--size",
        "64M",
        "--quiet",
        "--mem",
        "4G",
        "--cpus",
        "2",
        "--restart",
        "--append",
        "quiet init=/init",
    ]);
    let mut vm = RunningVm::start_with(&mut cmd);
    if !vm.wait_for("MARKER boot2 ready", 2 * BOOT_TIMEOUT) {
        let end = vm.finish(Duration::from_secs(1));
        panic!("no ready marker in boot 2: {end:#?}");
    }
    vm.sigterm();
    let out = vm.finish(Duration::from_secs(300));
    assert_eq!(out.code, Some(0), "{out:#?}");
    let order: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.find("MARKER boot2 ").map(|i| l[i + 13..].trim()))
        .filter(|m| !m.contains('='))
        .collect();
    assert_eq!(order, ["ready", "power key pressed"], "{}", out.stdout);
    assert!(
        out.stdout.contains("Power Button"),
        "the guest sees the button: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("asking the guest to shut down"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("stopped by signal"), "{}", out.stderr);
    let mem: Vec<u64> = markers(&out.stdout, "boot1 memtotal_kb")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(mem.len(), 1, "boot 1 ran once: {}", out.stdout);
    assert!(mem[0] > 7 * (1 << 20) / 2, "MemTotal {} kB", mem[0]);
    assert_eq!(
        markers(&out.stdout, "boot1 cpus"),
        ["0-1"],
        "{}",
        out.stdout
    );
    assert_eq!(
        markers(&out.stdout, "boot2 cpus"),
        ["0-1"],
        "{}",
        out.stdout
    );
    let written = markers(&out.stdout, "boot1 token");
    let read = markers(&out.stdout, "boot2 token");
    assert_eq!(written.len(), 1, "{}", out.stdout);
    assert_eq!(written[0].len(), 32, "{}", out.stdout);
    assert_eq!(read, written, "boot 2 reads what boot 1 wrote");
    assert_eq!(
        out.stderr.matches("starting it again (--restart)").count(),
        1,
        "{}",
        out.stderr
    );

    let disks = cached_disks(&cache);
    assert_eq!(disks.len(), 1, "{disks:?}");
    let cached = std::fs::read(&disks[0]).unwrap();
    let token = written[0].as_bytes();
    assert!(
        !cached.windows(token.len()).any(|w| w == token),
        "the token reached the cached disk"
    );

    let usage = boot_usage(&out.stderr);
    let before = out
        .stderr
        .lines()
        .find(|l| l.contains("before the first boot"))
        .expect("usage before the first boot");
    eprintln!("{before}");
    for u in &usage {
        eprintln!(
            "after boot {}: fds {}, threads {}, RSS {} KiB, VmSize {} KiB",
            u.0, u.1, u.2, u.3, u.4
        );
    }
    assert_eq!(usage.len(), 2, "{}", out.stderr);
    // A boot's VM is parked with its reaper until the next boot (or
    // minivm's exit) releases it: one fd, the reaper's pipe.
    let fds_before = format!("open fds {},", usage[0].1 - 1);
    assert!(before.contains(&fds_before), "{before} / {usage:?}");
    assert_eq!(usage[0].1, usage[1].1, "fds after each boot");
}

/// A tiny guest that keeps rebooting, SIGTERM'd with the power button on:
/// whether the signal lands during a boot (the button is pressed, the guest
/// reboots instead of powering off) or between two, minivm ends with 0
/// rather than starting the guest again.
#[test]
fn a_shutdown_request_ends_the_restart_loop_with_0() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("lifecycle-tiny-term");
    let guest = TinyGuest {
        message: b"tiny guest up\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Reset,
    };
    let kernel = guest.write(&dir, "guest.elf");
    let mut vm = RunningVm::start([
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--mem",
        "16M",
        "--restart",
    ]);
    let booted = vm.wait_for_count("tiny guest up", 5, Duration::from_secs(120));
    vm.sigterm();
    let end = vm.finish(Duration::from_secs(60));
    assert!(booted, "{end:#?}");
    assert_eq!(end.code, Some(0), "{end:#?}");
    assert!(!end.stderr.contains("stopped by signal"), "{}", end.stderr);
}
