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
