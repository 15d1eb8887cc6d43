//! Fast tests of the VMM's own paths with a few instructions of guest code.

use std::time::Duration;

use testkit::*;

const T: Duration = Duration::from_secs(60);

fn run_tiny(guest: &TinyGuest, name: &str, extra: &[&str]) -> RunOutput {
    let dir = scratch_dir(name);
    let k = guest.write(&dir, "guest.elf");
    let mut args = vec!["run", "--kernel", k.to_str().unwrap(), "--mem", "16M"];
    args.extend_from_slice(extra);
    run_minivm(&args, T)
}

#[test]
fn serial_output_and_exit_status() {
    if !kvm_available() {
        return;
    }
    let g = TinyGuest {
        message: b"hello from the tiny guest\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Exit(7),
    };
    let out = run_tiny(&g, "exit7", &[]);
    assert_eq!(out.code(), 7, "{out:#?}");
    assert_eq!(out.stdout, "hello from the tiny guest\n");
}

#[test]
fn timings_split_minivm_from_the_guest() {
    if !kvm_available() {
        return;
    }
    let g = TinyGuest {
        message: b"timed\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Exit(0),
    };
    let out = run_tiny(&g, "timings", &["--timings"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    let line = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("minivm: timings: "))
        .unwrap_or_else(|| panic!("no timings: {}", out.stderr));
    // "start to guest entry A ms, guest B ms, guest exit to end C ms"
    let ms: Vec<f64> = line
        .split(", ")
        .map(|part| {
            let v = part.trim_end_matches(" ms").rsplit(' ').next().unwrap();
            v.parse().unwrap_or_else(|_| panic!("{line}"))
        })
        .collect();
    assert_eq!(ms.len(), 3, "{line}");
    let total: f64 = ms.iter().sum();
    assert!(
        ms.iter().all(|v| *v >= 0.0) && total <= out.elapsed.as_secs_f64() * 1000.0,
        "{line} in {:?}",
        out.elapsed
    );
    // Then the phases, "  A ms  PHASE" each, in order: they add up to
    // the start-to-entry and exit-to-end shares (the last is the
    // removal of the work directory, after the last mark).
    let phases: Vec<(f64, &str)> = out
        .stderr
        .lines()
        .skip_while(|l| !l.starts_with("minivm: by phase"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let (v, phase) = l.trim_start().split_once(" ms  ").expect("A ms  PHASE");
            (v.trim().parse().unwrap(), phase)
        })
        .collect();
    let names: Vec<&str> = phases.iter().map(|(_, p)| *p).collect();
    let at = |name: &str| {
        names
            .iter()
            .position(|p| *p == name)
            .unwrap_or_else(|| panic!("no {name} in {names:?}"))
    };
    assert!(at("VM created") < at("kernel loaded"), "{names:?}");
    assert!(at("vCPUs created") < at("guest's end"), "{names:?}");
    assert!(at("guest's end") < at("VM closed"), "{names:?}");
    let entry = at("guest's first instruction");
    let before: f64 = phases[..=entry].iter().map(|(v, _)| v).sum();
    assert!(
        (before - ms[0]).abs() < 0.01 * names.len() as f64,
        "{before} vs {line}"
    );
    assert!(phases.iter().all(|(v, _)| *v >= 0.0), "{phases:?}");
}

#[test]
fn exit_status_zero_and_255() {
    if !kvm_available() {
        return;
    }
    for status in [0u8, 255] {
        let g = TinyGuest {
            message: vec![],
            boot_marker: false,
            end: TinyEnd::Exit(status),
        };
        let out = run_tiny(&g, &format!("exit{status}"), &[]);
        assert_eq!(out.code(), i32::from(status), "{out:#?}");
        assert_eq!(out.stdout, "");
    }
}

#[test]
fn boot_marker_is_logged_with_time() {
    if !kvm_available() {
        return;
    }
    let g = TinyGuest {
        message: b"x".to_vec(),
        boot_marker: true,
        end: TinyEnd::Exit(0),
    };
    let out = run_tiny(&g, "marker", &[]);
    assert_eq!(out.code(), 0, "{out:#?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("guest boot finished"))
        .expect("boot marker line");
    let ms: f64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a time in the line");
    assert!(ms > 0.0, "{line}");
}

#[test]
fn reset_through_i8042_exits_zero() {
    if !kvm_available() {
        return;
    }
    let g = TinyGuest {
        message: b"rebooting\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Reset,
    };
    let out = run_tiny(&g, "reset", &[]);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(out.stdout, "rebooting\n");
}

#[test]
fn triple_fault_is_a_crash() {
    if !kvm_available() {
        return;
    }
    let g = TinyGuest {
        message: b"about to fault\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::TripleFault,
    };
    let out = run_tiny(&g, "triple", &[]);
    assert_eq!(out.code(), 3, "{out:#?}");
    assert!(out.stderr.contains("guest crashed"), "{}", out.stderr);
    assert_eq!(out.stdout, "about to fault\n");
}

#[test]
fn sigterm_stops_a_spinning_guest() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("sigterm");
    let g = TinyGuest {
        message: b"spinning\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Spin,
    };
    let k = g.write(&dir, "guest.elf");
    let mut child = std::process::Command::new(minivm_bin())
        .args([
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--mem",
            "16M",
            "--shutdown-timeout",
            "0",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the guest's output, which proves the vCPU is running.
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 9];
    std::io::Read::read_exact(&mut stdout, &mut buf).unwrap();
    assert_eq!(&buf, b"spinning\n");
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
}

#[test]
fn large_output_is_not_lost_with_a_reading_consumer() {
    if !kvm_available() {
        return;
    }
    let msg: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let g = TinyGuest {
        message: msg.clone(),
        boot_marker: false,
        end: TinyEnd::Exit(0),
    };
    let out = run_tiny(&g, "bigout", &[]);
    assert_eq!(out.code(), 0);
    assert_eq!(out.stdout.as_bytes(), &msg[..]);
}

#[test]
fn kernel_beyond_memory_is_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let g = TinyGuest {
        message: vec![],
        boot_marker: false,
        end: TinyEnd::Exit(0),
    };
    // The guest loads at 1 MiB, which 4 MiB of RAM holds; tell the loader to
    // put it nowhere near: a tiny RAM is fine, so use an oversized image instead.
    let dir = scratch_dir("toobig");
    let mut elf = g.elf();
    // p_paddr and e_entry at 64 MiB, beyond 16 MiB of RAM.
    let addr = (64u64 << 20).to_le_bytes();
    elf[24..32].copy_from_slice(&addr);
    elf[64 + 16..64 + 24].copy_from_slice(&addr);
    elf[64 + 24..64 + 32].copy_from_slice(&addr);
    let k = dir.join("high.elf");
    std::fs::write(&k, elf).unwrap();
    let out = run_minivm(["run", "--kernel", k.to_str().unwrap(), "--mem", "16M"], T);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert!(
        out.stderr.contains("outside guest memory"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("high.elf"), "{}", out.stderr);
}

/// The short forms set up what the long ones do (the tiny guest then exits
/// at once): `minivm --image DISK` (no `run`), and `minivm run IMAGE` with a
/// disk file, a root directory, or an image reference (to a disk, and with
/// `--virtiofs` to layers; the image's command, an init, becomes `init=`).
/// Wrong ones are refused before anything boots.
#[test]
fn short_forms_boot_like_the_long_ones() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("short-forms");
    let g = TinyGuest {
        message: b"tiny\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Exit(5),
    };
    let k = g.write(&dir, "guest.elf");
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let layout = dir.join("layout");
    // A system image: its command is an init, which minivm boots as such.
    TestImage::new(vec![vec![TestEntry::file("etc/motd", "short\n")]])
        .with_cmd(&["/lib/systemd/systemd"])
        .write_oci_layout(&layout, "1", Compression::Gzip)
        .unwrap();
    let reference = format!("oci:{}:1", layout.display());
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(minivm_bin());
        c.env("XDG_CACHE_HOME", dir.join("cache"))
            .args(["-v", "--kernel", k.to_str().unwrap(), "--mem", "16M"])
            .args(args);
        run_minivm_with(&mut c, T)
    };
    let disk_s = disk.to_str().unwrap();
    let root_s = root.to_str().unwrap();
    for (args, root_param) in [
        (vec!["--image", disk_s], "root=/dev/vda rw"),
        (vec!["--readonly", disk_s], "root=/dev/vda ro"),
        (vec![root_s], "root=minivm-root rootfstype=virtiofs rw"),
        (
            vec![reference.as_str()],
            "root=/dev/vda rw init=/lib/systemd/systemd",
        ),
        (
            vec![reference.as_str(), "--virtiofs"],
            "root=minivm-root rootfstype=virtiofs rw init=/lib/systemd/systemd",
        ),
    ] {
        // "--kernel" first: `run` is implied before it, and IMAGE follows.
        let out = run(&args);
        assert_eq!(out.code(), 5, "{args:?}: {out:#?}");
        assert_eq!(out.stdout, "tiny\n");
        assert!(out.stderr.contains(root_param), "{args:?}: {}", out.stderr);
    }

    // Wrong short forms: a usage error (2) or a missing file (1), named.
    std::fs::write(dir.join("oci:layout"), b"").unwrap();
    let mut c = std::process::Command::new(minivm_bin());
    c.current_dir(&dir)
        .args(["run", "--kernel", k.to_str().unwrap(), "oci:layout"]);
    let out = run_minivm_with(&mut c, T);
    assert_eq!(out.code(), 2, "{out:#?}");
    assert!(
        out.stderr
            .contains("both an image reference and an existing file"),
        "{}",
        out.stderr
    );
    for (args, code, says) in [
        (
            vec![root_s, "--virtiofs"],
            2,
            "--virtiofs needs an OCI image",
        ),
        (
            vec![disk_s, "--persist", "x"],
            2,
            "--persist needs an OCI image",
        ),
        (
            vec!["Not:A:Name"],
            2,
            "not a file, a directory or an image reference",
        ),
        (
            vec!["./missing.raw"],
            1,
            "./missing.raw: no such file or directory",
        ),
        (vec![disk_s, "--image", disk_s], 2, "cannot be used with"),
    ] {
        let out = run(&args);
        assert_eq!(out.code(), code, "{args:?}: {out:#?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
}

/// `--timeout` stops a guest that does not end, with 124 and a message.
#[test]
fn timeout_stops_a_spinning_guest_with_124() {
    if !kvm_available() {
        return;
    }
    let g = TinyGuest {
        message: b"spinning\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Spin,
    };
    let out = run_tiny(&g, "timeout", &["--timeout", "2"]);
    assert_eq!(out.code(), 124, "{out:#?}");
    assert_eq!(out.stdout, "spinning\n");
    assert!(out.stderr.contains("--timeout passed"), "{}", out.stderr);
    assert!(out.elapsed >= Duration::from_secs(2), "{out:#?}");
    // Zero is refused: it would never let a guest run.
    assert_eq!(run_tiny(&g, "timeout0", &["--timeout", "0"]).code(), 2);
}

/// A guest hammering a virtio-mmio device: a flood of queue notifications
/// (ioeventfd writes, coalesced by the event loop) and of writes to a
/// read-only register (each an MMIO exit and a warning). minivm stays
/// responsive (the guest's exit status arrives) and its log stays short:
/// guest-triggered warnings are rate-limited.
#[test]
fn a_guest_flooding_a_device_neither_stalls_nor_floods_the_log() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("flood");
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    // The root share is the first virtio-mmio device, at 0xd000_0000.
    for (name, reg, writes, status) in [("notify", 0x50, 100_000, 9), ("magic", 0x0, 20_000, 10)] {
        let g = TinyGuest {
            message: format!("flooding {name}\n").into_bytes(),
            boot_marker: false,
            end: TinyEnd::FloodThenExit {
                addr: 0xd000_0000 + reg,
                writes,
                status,
            },
        };
        let share = share.to_str().unwrap();
        let out = run_tiny(&g, name, &["--rootfs", share, "--no-rng"]);
        assert_eq!(out.code(), i32::from(status), "{out:#?}");
        assert_eq!(out.stdout, format!("flooding {name}\n"));
        let warnings = out.stderr.lines().filter(|l| l.contains("WARN")).count();
        assert!(warnings <= 30, "{warnings} warnings: {}", out.stderr);
        if name == "magic" {
            // 1-10, then powers of two up to 16384: 14 lines, the last one counted.
            assert!(out.stderr.contains("(16384 so far)"), "{}", out.stderr);
        }
    }
}
