//! Bad command-line input: clear messages naming the file and reason, non-zero exits.
//! These need no KVM: minivm validates everything before opening /dev/kvm.

use std::time::Duration;

use testkit::*;

const T: Duration = Duration::from_secs(30);

#[test]
fn help_teaches_usage_and_exit_codes() {
    let out = run_minivm(["run", "--help"], T);
    assert_eq!(out.code(), 0);
    for needle in [
        "--image",
        "--kernel",
        "--cmdline",
        "--append",
        "--mem",
        "--cpus",
        "--readonly",
        "--initrd",
        "--restart",
        "Ctrl-A",
        "0xf4",
        "EXIT STATUS",
    ] {
        assert!(
            out.stdout.contains(needle),
            "help lacks {needle}:\n{}",
            out.stdout
        );
    }
    let out = run_minivm(["--help"], T);
    assert!(out.stdout.contains("run"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["run", "--mem", "12X"][..],
        &["run", "--mem", "1M"],
        &["run", "--cpus", "0"],
        &["run", "--cmdline", "a", "--append", "b"],
        &["run", "--bogus"],
        &["frobnicate"],
    ] {
        let out = run_minivm(args, T);
        assert_eq!(out.code(), 2, "{args:?}: {out:#?}");
        assert!(out.stderr.contains("error"), "{args:?}: {}", out.stderr);
    }
    let out = run_minivm(["run", "--mem", "12X"], T);
    assert!(out.stderr.contains("unknown unit"), "{}", out.stderr);
}

#[test]
fn missing_and_unreadable_files_are_named() {
    let dir = scratch_dir("cli-files");
    let out = run_minivm(
        [
            "run",
            "--image",
            "/nonexistent/disk.raw",
            "--kernel",
            "/bin/sh",
        ],
        T,
    );
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr
            .contains("disk image /nonexistent/disk.raw: no such file"),
        "{}",
        out.stderr
    );

    let out = run_minivm(["run", "--kernel", "/nonexistent/vmlinux"], T);
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr
            .contains("kernel /nonexistent/vmlinux: no such file"),
        "{}",
        out.stderr
    );

    let out = run_minivm(["run", "--kernel", dir.to_str().unwrap()], T);
    assert_eq!(out.code(), 1);
    assert!(out.stderr.contains("is a directory"), "{}", out.stderr);

    let out = run_minivm(
        [
            "run",
            "--kernel",
            "/bin/sh",
            "--initrd",
            "/nonexistent/initrd",
        ],
        T,
    );
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr
            .contains("initrd /nonexistent/initrd: no such file"),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_default_kernel_says_how_to_build_it() {
    let dir = scratch_dir("cli-nokernel");
    let out = run_minivm_with(
        std::process::Command::new(minivm_bin())
            .args(["run"])
            .env("XDG_CACHE_HOME", &dir),
        T,
    );
    assert_eq!(out.code(), 1);
    assert!(out.stderr.contains("kernel/build.sh"), "{}", out.stderr);
    assert!(out.stderr.contains(dir.to_str().unwrap()), "{}", out.stderr);
}

#[test]
fn not_a_kernel_is_rejected() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("cli-notkernel");
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, vec![0x90u8; 4096]).unwrap();
    let out = run_minivm(
        ["run", "--kernel", junk.to_str().unwrap(), "--mem", "16M"],
        T,
    );
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr.contains("is not a Linux kernel"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("junk.bin"), "{}", out.stderr);
}

/// The host's online CPUs, counted from /sys the way glibc's sysconf does.
fn online_cpus() -> usize {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    list.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

#[test]
fn more_cpus_than_the_host_has_are_refused() {
    let host = online_cpus();
    if host >= 254 {
        eprintln!("the host has {host} CPUs, more than --cpus allows: nothing to refuse");
        return;
    }
    let run = |cpus: usize| {
        let cpus = cpus.to_string();
        let args = [
            "run",
            "--kernel",
            "/bin/sh",
            "--image",
            "/nonexistent/disk.raw",
            "--cpus",
            &cpus,
        ];
        run_minivm(args, T)
    };
    let out = run(host + 1);
    assert_eq!(out.code(), 1, "{out:#?}");
    let expected = format!("--cpus {}: the host has only {host} CPU(s)", host + 1);
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
    // As many as the host has pass: the run fails later, on the disk.
    let out = run(host);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert!(
        out.stderr.contains("disk image /nonexistent/disk.raw"),
        "{}",
        out.stderr
    );
}

#[test]
fn exec_needs_a_running_vm_and_run_a_command() {
    let dir = scratch_dir("cli-exec");
    let sock = dir.join("exec.sock");
    let sock = sock.to_str().unwrap();
    // No VM listens: status 1, naming the socket.
    let out = run_minivm(["exec", sock, "--", "true"], T);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert!(
        out.stderr
            .contains(&format!("cannot reach the VM at {sock}")),
        "{}",
        out.stderr
    );
    // No command, or a socket with what cannot keep it: usage errors.
    for args in [
        &["exec", sock][..],
        &[
            "run",
            "--image",
            "x.raw",
            "--exec-socket",
            sock,
            "--restart",
        ],
        &[
            "run",
            "--image",
            "x.raw",
            "--exec-socket",
            sock,
            "--snapshot-to",
            "s",
        ],
    ] {
        let out = run_minivm(args, T);
        assert_eq!(out.code(), 2, "{args:?}: {out:#?}");
    }
    // A VM with no command for the agent has nothing to run processes beside.
    let (kernel, root) = (dir.join("vmlinux"), dir.join("root"));
    std::fs::write(&kernel, b"not loaded: refused before").unwrap();
    std::fs::create_dir_all(&root).unwrap();
    let out = run_minivm(
        [
            "run",
            root.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--exec-socket",
            sock,
        ],
        T,
    );
    assert_eq!(out.code(), 2, "{out:#?}");
    assert!(
        out.stderr.contains("--exec-socket is for a command"),
        "{}",
        out.stderr
    );
    assert!(
        !std::path::Path::new(sock).exists(),
        "nothing made at the socket's path"
    );
}
