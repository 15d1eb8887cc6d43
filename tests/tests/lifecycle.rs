//! The guest's life across reboots: by default a reboot ends minivm with 0;
//! with `--restart` minivm boots the guest again in a fresh VM of the same
//! process, keeping its disk (and copy-on-write layer) and console, and
//! releasing everything the previous VM held.

use std::time::Duration;

use testkit::*;

/// Parses minivm's "boot N ended (...): open fds F, threads T, RSS R KiB,
/// VmSize V KiB" log lines (`-v`) into (N, F, T, R, V).
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
                [f, t, r, v] => Some((n.parse().ok()?, f, t, r, v)),
                _ => None,
            }
        })
        .collect()
}

/// The tiny guest resets as soon as it has printed: with `--restart` it
/// boots over and over, each time in a fresh VM, until SIGTERM (with no
/// power button) stops minivm. Across 30 boots the open fds and threads stay
/// the same and the address space does not grow: each VM's memory, KVM fds,
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
        "256M",
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
        // Guest memory alone is 256 MiB: a VM left mapped would show.
        assert!(
            v < size + 64 * 1024,
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
