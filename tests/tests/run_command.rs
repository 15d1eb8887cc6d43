//! `minivm run IMAGE -- CMD`: an application image (busybox and a script as
//! Entrypoint, a user in its /etc/passwd, Env, WorkingDir and User in its
//! config) runs its command through minivm's guest agent, over the disk and
//! over virtio-fs, honouring the config or the command line's overrides,
//! and minivm exits with the command's status (128+N for a signal). The
//! image and the caches are not changed; `--timeout` stops one that does
//! not end; stdout and stderr arrive apart, -i gives the command stdin and
//! -t a terminal. Four boots.

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::*;

const ENTRY: &str = "#!/bin/sh\necho \"ENTRY args=$*\"\nexec \"$@\"\n";

fn app_image(layout: &Path) {
    let app = vec![
        TestEntry::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        ),
        TestEntry::file("etc/group", "root:x:0:\napp:x:1000:\n"),
        TestEntry::dir("home"),
        TestEntry::dir("home/app").owner(1000, 1000),
        TestEntry::dir("srv"),
        TestEntry::dir("srv/app").owner(1000, 1000),
        TestEntry::executable("usr/bin/entry.sh", ENTRY),
    ];
    let mut image = TestImage::new(vec![busybox_layer(), app])
        .with_entrypoint(&["/usr/bin/entry.sh"])
        .with_cmd(&["sh", "-c", "echo default command"])
        .with_env("GREETING=hello");
    image.working_dir = Some("/srv/app".into());
    image.user = Some("app".into());
    image
        .write_oci_layout(layout, "1", Compression::Gzip)
        .unwrap();
}

fn minivm(cache: &Path) -> Command {
    let mut c = Command::new(minivm_bin());
    c.env("XDG_CACHE_HOME", cache);
    c
}

/// The console lines that start with `key`.
fn lines_with<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with(key))
        .collect()
}

#[test]
fn an_application_image_runs_its_command_and_returns_its_status() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("run-command");
    let layout = dir.join("layout");
    app_image(&layout);
    let reference = format!("oci:{}:1", layout.display());
    let cache: PathBuf = dir.join("cache");
    let kernel = default_kernel();
    let kernel = kernel.to_str().unwrap();

    // Over the disk, as the image says: its Entrypoint wraps the command,
    // its Env, WorkingDir and User apply, and the status comes back. stdout
    // and stderr arrive apart, and stdin (-i: a line, then 1 MiB of binary)
    // goes through `cat` byte for byte, EOF included.
    let script = "echo out; echo err >&2; echo err2 >/dev/stderr; \
                  echo \"RUN G=$GREETING P=$(pwd) U=$(busybox id -u):$(busybox id -g) H=$HOME\"; \
                  cat; exit 3";
    let mut input = b"hello\n".to_vec();
    input.extend(payload(1 << 20));
    let mut c = minivm(&cache);
    c.args([
        "run", "-i", "--kernel", kernel, "--mem", "256M", &reference, "--",
    ])
    .args(["sh", "-c", script]);
    let out = run_minivm_input(&mut c, Some(input.clone()), BOOT_TIMEOUT);
    assert_eq!(out.code(), 3, "{}", out.stderr);
    let mut expected =
        format!("ENTRY args=sh -c {script}\nout\nRUN G=hello P=/srv/app U=1000:1000 H=/home/app\n")
            .into_bytes();
    expected.extend(&input);
    assert!(
        out.stdout_bytes == expected,
        "stdout is not the command's output: {} bytes, {} expected; stderr: {}",
        out.stdout_bytes.len(),
        expected.len(),
        out.stderr
    );
    let err_lines: Vec<&str> = out.stderr.lines().map(str::trim_end).collect();
    assert!(
        err_lines.contains(&"err") && err_lines.contains(&"err2"),
        "{}",
        out.stderr
    );
    assert!(!err_lines.contains(&"out"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("Linux version"),
        "kernel messages without --verbose"
    );

    // Over virtio-fs, with the command line's overrides. SIGINT to minivm
    // goes to the command (which traps it here) and leaves minivm running;
    // SIGTERM reaches the command through the power button, and its death
    // by SIGTERM is 128+15.
    let mut c = minivm(&cache);
    c.args(["run", "--kernel", kernel, "--mem", "256M", &reference])
        .args(["--virtiofs", "-e", "GREETING=bye", "-e", "EXTRA=1"])
        .args(["--workdir", "/tmp", "--user", "0:0", "--", "sh", "-c"])
        .arg(
            "trap 'echo got-INT' INT; \
             echo \"RUN G=$GREETING E=$EXTRA P=$(pwd) U=$(busybox id -u)\"; \
             while :; do sleep 1000 & wait $!; done",
        );
    let mut vm = RunningVm::start_with(&mut c);
    assert!(
        vm.wait_for("RUN G=bye", BOOT_TIMEOUT),
        "the command never ran"
    );
    // Every minivm thread runs under its seccomp filter (on by default).
    let threads = vm.thread_seccomp();
    // (Thread names are cut to 15 bytes.)
    for kind in ["minivm", "vcpu0", "console-out", "virtio-fs-"] {
        assert!(
            threads.iter().any(|(name, _)| name.starts_with(kind)),
            "no {kind} thread: {threads:?}"
        );
    }
    assert!(threads.iter().all(|(_, mode)| *mode == 2), "{threads:?}");
    vm.signal(libc::SIGINT);
    assert!(
        vm.wait_for("got-INT", BOOT_TIMEOUT),
        "SIGINT did not reach the command"
    );
    vm.sigterm();
    let out = vm.finish(BOOT_TIMEOUT);
    assert_eq!(out.code, Some(143), "{out:#?}");
    assert_eq!(
        lines_with(&out.stdout, "RUN "),
        ["RUN G=bye E=1 P=/tmp U=0"]
    );

    // (`--timeout` ends the VM from the host whatever runs in it: the tiny
    // guest's `timeout_stops_a_spinning_guest_with_124` covers it without a
    // boot, and this host's slow boot would make the wait long here.)
    // -t: the command gets a terminal; Ctrl-C stops what runs in it, not
    // minivm; the window size is the host terminal's, and follows it.
    let mut c = minivm(&cache);
    c.args(["run", "-t", "--kernel", kernel, "--mem", "256M", &reference])
        .args(["--virtiofs", "--", "sh"]);
    let mut pty = PtySession::spawn(c);
    pty.expect("ENTRY args=sh", BOOT_TIMEOUT);
    assert_eq!(
        pty.shell("stty size; tty", BOOT_TIMEOUT),
        "50 250\n/dev/ttyS0"
    );
    pty.send("sleep 1000; echo slept\r");
    std::thread::sleep(std::time::Duration::from_secs(5));
    pty.send("\x03");
    assert_eq!(pty.shell("echo after-$((6*7))", BOOT_TIMEOUT), "after-42");
    assert!(
        !pty.screen().lines().any(|l| l.trim_end() == "slept"),
        "sleep was not interrupted: {}",
        pty.screen()
    );
    pty.resize(60, 200);
    assert_eq!(
        pty.shell(
            "until [ \"$(stty size)\" = '60 200' ]; do sleep 1; done; echo resized",
            BOOT_TIMEOUT
        ),
        "resized"
    );
    pty.send("exit 7\r");
    let st = pty.wait(BOOT_TIMEOUT).expect("minivm ends with the shell");
    assert_eq!(st.code(), Some(7), "{}", pty.screen());

    // The VMs' writable layers went with them; the store keeps only layers.
    let vms = cache.join("minivm/vms");
    assert_eq!(std::fs::read_dir(&vms).map(|r| r.count()).unwrap_or(0), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
