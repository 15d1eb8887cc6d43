//! containerd runs images as minivm VMs through `containerd-shim-minivm-v2`:
//! Debian's containerd, started privately by the test, imports a locally
//! built busybox image (`ctr image import` of an OCI archive); `ctr run
//! --runtime` with the shim gives the same output on the same streams and
//! the same exit status as runc does; `ctr task kill` of a running VM ends
//! its command with 128+15; after `ctr task delete` no minivm, shim, mount
//! or bundle is left. What a VM cannot give (the host's network, an empty
//! root) comes back as a clear error through ctr, leaving nothing. `ctr run -t` gives the command a terminal of ctr's
//! terminal's size. Three boots, in two tests.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use testkit::*;

const IMAGE: &str = "docker.io/library/minivm-test:latest";
const SCRIPT: &str = "echo out; echo err >&2; exit 3";

fn shim() -> PathBuf {
    minivm_bin().with_file_name("containerd-shim-minivm-v2")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = text(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

/// This containerd's shims still running (tests run side by side, each with
/// a containerd of its own, so a shim is known by the socket it was given).
fn shims_of(ctd: &Containerd) -> Vec<String> {
    let socket = ctd.socket().display().to_string();
    processes_with(&shim().display().to_string())
        .into_iter()
        .filter(|cmdline| cmdline.contains(&socket))
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Nothing of container `id` is left: no bundle, no mount, no process.
fn assert_gone(ctd: &Containerd, id: &str) {
    let bundle = ctd.bundles().join(id);
    assert!(!bundle.exists(), "{} is left", bundle.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&bundle.display().to_string()),
        "a mount on {} is left",
        bundle.display()
    );
    assert_eq!(
        processes_with(&bundle.display().to_string()),
        Vec::<String>::new()
    );
}

/// A private containerd under a scratch directory named `name`, with the
/// busybox test image imported as [`IMAGE`].
fn containerd_with_image(name: &str) -> (PathBuf, Containerd) {
    let dir = scratch_dir(name);
    let archive = dir.join("image.tar");
    TestImage::new(vec![busybox_layer()])
        .write_oci_archive(&archive, "latest", Compression::Gzip)
        .unwrap();
    let ctd = Containerd::start(&dir.join("containerd"));
    let import = ctd.ctr(&[
        "image",
        "import",
        "--base-name",
        "docker.io/library/minivm-test",
        archive.to_str().unwrap(),
    ]);
    assert!(import.status.success(), "{}", show(&import));
    (dir, ctd)
}

/// What `ctr task exec` runs beside the command.
const EXEC_SCRIPT: &str = "echo exec-out $(cat /up); echo exec-err >&2; exit 4";

#[test]
fn ctr_runs_an_image_as_a_vm_like_runc() {
    if !kvm_available() {
        return;
    }
    let (dir, ctd) = containerd_with_image("containerd");
    let shim = shim();
    let shim = shim.to_str().unwrap();

    // Refused with the reason, before any VM starts.
    let host_net = ctd.ctr(&[
        "run",
        "--rm",
        "--net-host",
        "--runtime",
        shim,
        IMAGE,
        "vm3",
        "true",
    ]);
    assert!(!host_net.status.success());
    assert!(
        text(&host_net.stderr).contains("the host's network"),
        "{}",
        show(&host_net)
    );
    assert_gone(&ctd, "vm3");
    let empty = dir.join("empty-root");
    std::fs::create_dir_all(&empty).unwrap();
    let no_root = ctd.ctr(&[
        "run",
        "--rm",
        "--rootfs",
        "--runtime",
        shim,
        empty.to_str().unwrap(),
        "vm4",
        "true",
    ]);
    assert!(!no_root.status.success());
    assert!(
        text(&no_root.stderr).contains("no root file system"),
        "{}",
        show(&no_root)
    );
    assert_gone(&ctd, "vm4");
    // The reference: runc.
    let runc = ctd.ctr(&["run", "--rm", IMAGE, "ref", "sh", "-c", SCRIPT]);
    assert_eq!(runc.status.code(), Some(3), "runc: {}", show(&runc));

    // The same through the shim, in a VM: the same streams and status.
    let vm = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        shim,
        IMAGE,
        "vm1",
        "sh",
        "-c",
        SCRIPT,
    ]);
    assert_eq!(vm.status.code(), Some(3), "{}\n{}", show(&vm), ctd.log());
    assert_eq!(
        (text(&vm.stdout), text(&vm.stderr)),
        (text(&runc.stdout), text(&runc.stderr))
    );
    assert_eq!(text(&vm.stdout), "out\n");
    assert_eq!(text(&vm.stderr), "err\n");
    assert_gone(&ctd, "vm1");

    // A VM left running: ctr task kill (SIGTERM) reaches its command, which
    // ends with 128+15, as `ctr task delete` reports.
    let up = ctd.ctr(&[
        "run",
        "-d",
        "--runtime",
        shim,
        IMAGE,
        "vm2",
        "sh",
        "-c",
        "echo up > /up; exec sleep 1000",
    ]);
    assert!(up.status.success(), "{}", show(&up));
    let marker = ctd.bundles().join("vm2/rootfs/up");
    wait_for("the VM's command", BOOT_TIMEOUT, || marker.exists());
    let ls = ctd.ctr(&["task", "ls"]);
    assert!(text(&ls.stdout).contains("RUNNING"), "{}", show(&ls));
    let pids = ctd.ctr(&["task", "ps", "vm2"]);
    assert!(pids.status.success(), "{}", show(&pids));

    // ctr task exec: a second process in the running VM (it sees the
    // command's file), its streams and status as runc gives them.
    let reference = ctd.ctr(&[
        "run",
        "-d",
        IMAGE,
        "ref2",
        "sh",
        "-c",
        "echo up > /up; exec sleep 1000",
    ]);
    assert!(reference.status.success(), "{}", show(&reference));
    let runc_exec = |id: &str| {
        ctd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            id,
            "ref2",
            "sh",
            "-c",
            EXEC_SCRIPT,
        ])
    };
    let mut runc_exec_out = runc_exec("r1");
    // (runc's container may not have written /up yet.)
    for attempt in ["r2", "r3", "r4", "r5"] {
        if text(&runc_exec_out.stdout).contains("up") {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        runc_exec_out = runc_exec(attempt);
    }
    assert_eq!(
        runc_exec_out.status.code(),
        Some(4),
        "runc: {}",
        show(&runc_exec_out)
    );
    for args in [
        &["task", "delete", "-f", "ref2"][..],
        &["container", "rm", "ref2"],
    ] {
        let done = ctd.ctr(args);
        assert!(done.status.success(), "{}", show(&done));
    }
    let exec = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "vm2",
        "sh",
        "-c",
        EXEC_SCRIPT,
    ]);
    assert_eq!(
        exec.status.code(),
        Some(4),
        "{}\n{}",
        show(&exec),
        ctd.log()
    );
    assert_eq!(
        (text(&exec.stdout), text(&exec.stderr)),
        (text(&runc_exec_out.stdout), text(&runc_exec_out.stderr))
    );
    assert_eq!(text(&exec.stdout), "exec-out up\n");
    // A second exec under the same id is refused; a new id runs, and a
    // killed exec ends with 128+9 while the VM goes on.
    let again = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "vm2",
        "sh",
        "-c",
        "exit 0",
    ]);
    assert!(again.status.success(), "{}", show(&again));
    let sleeper = ctd
        .ctr_command(&["task", "exec", "--exec-id", "e3", "vm2", "sleep", "999"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the exec's process", BOOT_TIMEOUT, || {
        text(&ctd.ctr(&["task", "ps", "vm2"]).stdout)
            .lines()
            .count()
            >= 3
    });
    let kill_exec = ctd.ctr(&["task", "kill", "--exec-id", "e3", "-s", "KILL", "vm2"]);
    assert!(kill_exec.status.success(), "{}", show(&kill_exec));
    let ended = sleeper.wait_with_output().unwrap();
    assert_eq!(ended.status.code(), Some(137), "{}", show(&ended));
    let ls = ctd.ctr(&["task", "ls"]);
    assert!(
        text(&ls.stdout).contains("RUNNING"),
        "the VM goes on: {}",
        show(&ls)
    );
    let kill = ctd.ctr(&["task", "kill", "vm2"]);
    assert!(kill.status.success(), "{}", show(&kill));
    wait_for("the VM's end", BOOT_TIMEOUT, || {
        text(&ctd.ctr(&["task", "ls"]).stdout).contains("STOPPED")
    });
    // (ctr 1.6 reports a task's non-zero status as a warning.)
    let delete = ctd.ctr(&["task", "delete", "vm2"]);
    assert!(delete.status.success(), "{}", show(&delete));
    assert!(
        text(&delete.stderr).contains("exit code 143"),
        "{}",
        show(&delete)
    );
    let rm = ctd.ctr(&["container", "rm", "vm2"]);
    assert!(rm.status.success(), "{}", show(&rm));
    assert_gone(&ctd, "vm2");

    assert_eq!(shims_of(&ctd), Vec::<String>::new(), "a shim is left");
    drop(ctd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ctr run -t`: the command gets a terminal of ctr's terminal's size (ctr
/// passes the size on as a resize), and its status comes back.
#[test]
fn ctr_run_t_gives_the_command_a_terminal() {
    if !kvm_available() {
        return;
    }
    let (dir, ctd) = containerd_with_image("containerd-tty");
    let shim = shim();
    let shim = shim.to_str().unwrap();
    let mut pty = PtySession::spawn(ctd.ctr_command(&[
        "run",
        "--rm",
        "-t",
        "--runtime",
        shim,
        IMAGE,
        "vm5",
        "sh",
    ]));
    // (What is typed before the shell runs may be lost to the terminal's
    // set-up in the guest.)
    pty.expect("/ # ", BOOT_TIMEOUT);
    let size = "until [ \"$(busybox stty size)\" = '50 250' ]; do sleep 1; done; busybox tty";
    assert_eq!(pty.shell(size, BOOT_TIMEOUT), "/dev/ttyS0");
    // ctr task exec -t: a terminal of its own in the same VM, resized too.
    let mut exec =
        PtySession::spawn(ctd.ctr_command(&["task", "exec", "-t", "--exec-id", "t1", "vm5", "sh"]));
    exec.expect("/ # ", BOOT_TIMEOUT);
    let size = "until [ \"$(busybox stty size)\" = '50 250' ]; do sleep 1; done; busybox tty";
    assert_eq!(exec.shell(size, BOOT_TIMEOUT), "/dev/pts/0");
    exec.resize(40, 100);
    let resized = "until [ \"$(busybox stty size)\" = '40 100' ]; do sleep 1; done; echo resized";
    assert_eq!(exec.shell(resized, BOOT_TIMEOUT), "resized");
    exec.send("exit 5\r");
    let st = exec
        .wait(BOOT_TIMEOUT)
        .expect("ctr task exec ends with the shell");
    assert_eq!(st.code(), Some(5), "{}", exec.screen());
    pty.send("exit 7\r");
    let st = pty.wait(BOOT_TIMEOUT).expect("ctr ends with the shell");
    assert_eq!(st.code(), Some(7), "{}", pty.screen());
    assert_gone(&ctd, "vm5");
    assert_eq!(shims_of(&ctd), Vec::<String>::new(), "a shim is left");
    drop(ctd);
    let _ = std::fs::remove_dir_all(&dir);
}
