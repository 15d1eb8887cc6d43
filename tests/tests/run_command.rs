//! `minivm run IMAGE -- CMD`: an application image (busybox and a script as
//! Entrypoint, a user in its /etc/passwd, Env, WorkingDir and User in its
//! config) runs its command through minivm's guest agent, over the disk and
//! over virtio-fs, honouring the config or the command line's overrides,
//! and minivm exits with the command's status (128+N for a signal). The
//! image and the caches are not changed; `--timeout` stops one that does
//! not end. Three boots.

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
    // its Env, WorkingDir and User apply, and the status comes back.
    let script = "echo out; echo err >&2; \
                  echo \"RUN G=$GREETING P=$(pwd) U=$(busybox id -u):$(busybox id -g) H=$HOME\"; \
                  exit 3";
    let mut c = minivm(&cache);
    c.args(["run", "--kernel", kernel, "--mem", "256M", &reference, "--"])
        .args(["sh", "-c", script]);
    let out = run_minivm_with(&mut c, BOOT_TIMEOUT);
    assert_eq!(out.code(), 3, "{out:#?}");
    assert_eq!(
        lines_with(&out.stdout, "ENTRY args="),
        ["ENTRY args=sh -c ".to_string() + script]
    );
    assert_eq!(
        lines_with(&out.stdout, "RUN "),
        ["RUN G=hello P=/srv/app U=1000:1000 H=/home/app"]
    );
    for l in ["out", "err"] {
        assert!(
            out.stdout.lines().any(|x| x.trim_end() == l),
            "{l}: {}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains("Linux version"),
        "kernel messages in the output"
    );

    // Over virtio-fs, with the command line's overrides; a death by
    // SIGKILL is 128+9.
    let mut c = minivm(&cache);
    c.args([
        "run",
        "--kernel",
        kernel,
        "--mem",
        "256M",
        &reference,
        "--virtiofs",
    ])
    .args([
        "-e",
        "GREETING=bye",
        "-e",
        "EXTRA=1",
        "--workdir",
        "/tmp",
        "--user",
        "0:0",
    ])
    .args(["--", "sh", "-c"])
    .arg("echo \"RUN G=$GREETING E=$EXTRA P=$(pwd) U=$(busybox id -u)\"; kill -9 $$");
    let out = run_minivm_with(&mut c, BOOT_TIMEOUT);
    assert_eq!(out.code(), 137, "{out:#?}");
    assert_eq!(
        lines_with(&out.stdout, "RUN "),
        ["RUN G=bye E=1 P=/tmp U=0"]
    );
    // `--timeout` stops a command that does not end, with 124; counted from
    // minivm's start, so it leaves room for this host's slow boot.
    let mut c = minivm(&cache);
    c.args(["run", "--kernel", kernel, "--mem", "256M", &reference])
        .args(["--virtiofs", "--timeout", "200", "--"])
        .args(["sh", "-c", "echo started; exec sleep 1000"]);
    let out = run_minivm_with(&mut c, BOOT_TIMEOUT);
    assert_eq!(out.code(), 124, "{out:#?}");
    assert!(
        out.stdout.lines().any(|x| x.trim_end() == "started"),
        "the command never started: {}",
        out.stdout
    );
    // The VMs' writable layers went with them; the store keeps only layers.
    let vms = cache.join("minivm/vms");
    assert_eq!(std::fs::read_dir(&vms).map(|r| r.count()).unwrap_or(0), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
