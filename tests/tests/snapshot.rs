//! `run --snapshot-to DIR` and `minivm restore DIR`: a tiny guest counting
//! in a register is saved mid-count and restored three times, each copy
//! going on from the saved count to the right exit status; the snapshot is
//! not changed by restoring it; damaged or foreign snapshots are refused
//! with a clear error before anything starts. Linux guests: a busybox
//! initramfs saved after boot, and a busybox image whose agent waits in
//! the snapshot and runs a different command in each of five parallel
//! restores.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use testkit::*;

const T: Duration = Duration::from_secs(60);

/// Every file's name and content under `dir`.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn counting_guest(dir: &Path) -> String {
    let g = TinyGuest {
        message: b"count:".to_vec(),
        boot_marker: false,
        end: TinyEnd::Count { to: 9, marker: 3 },
    };
    g.write(dir, "count.elf").to_str().unwrap().to_string()
}

#[test]
fn a_counting_guest_is_saved_mid_count_and_restored_three_times() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("snapshot-count");
    let k = counting_guest(&dir);
    let snap = dir.join("snap");
    let s = snap.to_str().unwrap();

    // Without a snapshot the guest counts A..I and exits with 9.
    let out = run_minivm(["run", "--kernel", &k, "--mem", "32M", "--no-rng"], T);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (9, "count:ABCDEFGHI"),
        "{out:#?}"
    );

    let out = run_minivm(
        [
            "run",
            "--kernel",
            &k,
            "--mem",
            "32M",
            "--no-rng",
            "--snapshot-to",
            s,
        ],
        T,
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(out.stdout, "count:ABC", "stops at the snapshot point");
    assert!(out.stderr.contains("snapshot written to"), "{}", out.stderr);
    let saved = contents(&snap);
    let names: Vec<&str> = saved.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["memory", "state"]);
    assert_eq!(
        saved[0].1.len(),
        32 << 20,
        "the memory file is the guest's RAM"
    );
    let allocated = std::fs::metadata(snap.join("memory")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    assert!(allocated.unwrap() < 1 << 20, "zero pages are holes");

    for _ in 0..3 {
        let out = run_minivm(["restore", s], T);
        assert_eq!(out.code(), 9, "{out:#?}");
        assert_eq!(out.stdout, "DEFGHI", "goes on from the saved count");
    }
    assert!(contents(&snap) == saved, "restoring changed the snapshot");

    // An existing directory is not overwritten.
    let out = run_minivm(["run", "--kernel", &k, "--no-rng", "--snapshot-to", s], T);
    assert_eq!(out.code(), 2, "{out:#?}");
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
}

#[test]
fn damaged_or_foreign_snapshots_are_refused() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("snapshot-bad");
    let k = counting_guest(&dir);
    let good = dir.join("good");
    let out = run_minivm(
        [
            "run",
            "--kernel",
            &k,
            "--mem",
            "16M",
            "--no-rng",
            "--snapshot-to",
            good.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(out.code(), 0, "{out:#?}");
    let state = std::fs::read(good.join("state")).unwrap();
    let copy = |name: &str, state: &[u8], memory_len: Option<u64>| {
        let d = dir.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("state"), state).unwrap();
        std::fs::copy(good.join("memory"), d.join("memory")).unwrap();
        if let Some(len) = memory_len {
            std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("memory"))
                .unwrap()
                .set_len(len)
                .unwrap();
        }
        d
    };
    let mut flipped = state.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 0x01;
    let first_line = state.iter().position(|&b| b == b'\n').unwrap();
    let other_version = [&b"minivm-snapshot 99"[..], &state[first_line..]].concat();
    let cases = [
        (
            copy("truncated", &state[..state.len() / 2], None),
            "checksum does not match",
        ),
        (copy("flipped", &flipped, None), "checksum does not match"),
        (
            copy("version", &other_version, None),
            "made in format \"99\"",
        ),
        (
            copy("short-memory", &state, Some(4096)),
            "4096 bytes, the state says",
        ),
        (
            copy("not-a-snapshot", b"hello\n", None),
            "not a minivm snapshot",
        ),
    ];
    for (d, want) in &cases {
        let out = run_minivm(["restore", d.to_str().unwrap()], T);
        assert_eq!(out.code(), 1, "{out:#?}");
        assert!(out.stderr.contains(want), "{}: {}", d.display(), out.stderr);
        assert_eq!(out.stdout, "", "nothing ran");
    }
    let out = run_minivm(["restore", dir.join("missing").to_str().unwrap()], T);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert!(out.stderr.contains("state: no such file"), "{}", out.stderr);

    // What cannot be saved yet is refused before the VM starts.
    let share = format!("{}:data", dir.display());
    let to = dir.join("s");
    let to = to.to_str().unwrap();
    let out = run_minivm(
        [
            "run",
            "--kernel",
            &k,
            "--share",
            &share,
            "--snapshot-to",
            to,
        ],
        T,
    );
    assert_eq!(out.code(), 2, "{out:#?}");
    let want = "saving shares (virtio-fs) and networks (virtio-net) is not supported";
    assert!(out.stderr.contains(want), "{}", out.stderr);
}

/// A busybox Linux guest (initramfs, virtio-rng) saved at its
/// boot-finished port and restored twice: each copy goes on after the
/// port write, keeps time (three one-second sleeps: the LAPIC timer and
/// clocks came back), reads its virtio-rng (the queue goes on where it
/// was) and exits with its status.
#[test]
fn a_linux_guest_is_saved_after_boot_and_restored() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("snapshot-linux");
    let init = format!(
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t devtmpfs dev /dev\necho BEFORE-SNAPSHOT\n\
         printf '\\001' | dd of=/dev/port bs=1 seek=245 count=1 2>/dev/null\necho AFTER-POINT\n\
         for i in 1 2 3; do sleep 1; echo \"tick $i\"; done\n\
         [ -e /dev/hwrng ] || mknod /dev/hwrng c 10 183\n\
         echo \"rng=$(head -c 4096 /dev/hwrng | wc -c) from $(cat /sys/class/misc/hw_random/rng_current)\"\n{}\n",
        exit_port_cmd(33)
    );
    let snap = dir.join("snap");
    let mut args = initramfs_boot_args(&dir, &init);
    args.extend(["--mem", "128M", "--snapshot-to"].map(String::from));
    args.push(snap.to_str().unwrap().to_string());
    let out = run_minivm(&args, BOOT_TIMEOUT);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(out.stdout.contains("BEFORE-SNAPSHOT"), "{out:#?}");
    assert!(
        !out.stdout.contains("AFTER-POINT"),
        "stopped at the point: {out:#?}"
    );
    for _ in 0..2 {
        let out = run_minivm(["restore", snap.to_str().unwrap()], BOOT_TIMEOUT);
        assert_eq!(out.code(), 33, "{out:#?}");
        assert!(!out.stdout.contains("BEFORE-SNAPSHOT"), "{out:#?}");
        let after = out
            .stdout
            .find("AFTER-POINT")
            .expect("goes on after the point");
        let ticks = &out.stdout[after..];
        assert!(
            ticks.contains("tick 1") && ticks.contains("tick 3"),
            "{out:#?}"
        );
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A busybox image saved once with its agent waiting (by a run that goes on
/// with its own command: `--snapshot-and-continue`), then five restores
/// in parallel, each running its own `sh -c '... exit N'` over its own
/// copy-on-write view of the saved disk: each returns its N and prints its
/// own line, no restore sees another's file, each gets its own random
/// numbers (a fresh seed), its own hostname and the host's time (the clock
/// is stepped, not left at the snapshot's). A sixth restore with -i reads stdin and finds
/// the saved disk clean, one with -t gets a terminal in a pseudo-terminal;
/// the snapshot directory is byte-identical after all
/// of them. What cannot be saved or restored is refused with exit 2.
#[test]
fn an_image_is_saved_once_and_five_parallel_restores_run_their_own_commands() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("snapshot-image");
    let layout = dir.join("layout");
    TestImage::new(vec![busybox_layer()])
        .with_cmd(&["sh", "-c", "echo image default; exit 4"])
        .write_oci_layout(&layout, "1", Compression::Gzip)
        .unwrap();
    let reference = format!("oci:{}:1", layout.display());
    let cache = dir.join("cache");
    let minivm = |args: &[&str]| {
        let mut c = Command::new(minivm_bin());
        c.env("XDG_CACHE_HOME", &cache).args(args);
        c
    };
    let kernel = default_kernel();
    let kernel = kernel.to_str().unwrap();
    let snap = dir.join("snap");
    let s = snap.to_str().unwrap();

    let out = run_minivm_with(
        &mut minivm(&[
            "run",
            &reference,
            "--kernel",
            kernel,
            "--mem",
            "256M",
            "--snapshot-to",
            s,
            "--snapshot-and-continue",
            "--hostname",
            "saver",
            "--",
            "sh",
            "-c",
            "echo continued on $(busybox hostname); exit 6",
        ]),
        BOOT_TIMEOUT,
    );
    // --snapshot-and-continue: the run goes on with its own command, which
    // the snapshot does not hold.
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (6, "continued on saver\n"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("snapshot written to"), "{out:#?}");
    let saved = contents(&snap);
    let names: Vec<&str> = saved.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["disk", "memory", "state"]);
    // Restores that start later than the snapshot would see its time
    // without the clock step.
    std::thread::sleep(Duration::from_secs(8));

    let before = unix_now();
    let script = "test -e /mark && echo LEAK; echo $N > /mark; sync; \
                  echo \"out-$(cat /mark) rand=$(busybox head -c 16 /dev/urandom | busybox od -An -tx1 | busybox tr -d ' \\n') \
                  time=$(busybox date +%s) host=$(busybox hostname)\"; echo err-$N >&2; exit $N";
    let restores: Vec<_> = (1..=5)
        .map(|n| {
            let mut c = minivm(&[
                "restore",
                s,
                "-e",
                &format!("N={n}"),
                "--",
                "sh",
                "-c",
                script,
            ]);
            std::thread::spawn(move || (n, run_minivm_with(&mut c, BOOT_TIMEOUT)))
        })
        .collect();
    let (mut rands, mut hosts) = (Vec::new(), Vec::new());
    for r in restores {
        let (n, out) = r.join().unwrap();
        let after = unix_now();
        assert_eq!(out.code(), n, "{out:#?}");
        assert!(
            !out.stdout.contains("LEAK"),
            "another restore's file: {out:#?}"
        );
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("out-"))
            .unwrap_or_else(|| panic!("no output line: {out:#?}"));
        assert!(line.starts_with(&format!("out-{n} ")), "{line}");
        assert!(out.stderr.contains(&format!("err-{n}")), "{out:#?}");
        let field = |k: &str| {
            line.split(k)
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let rand = field("rand=");
        assert_eq!(rand.len(), 32, "{line}");
        rands.push(rand);
        let host = field("host=");
        assert!(host.starts_with("minivm-"), "{line}");
        hosts.push(host);
        let time: u64 = field("time=").parse().unwrap();
        assert!(
            (before - 1..=after + 1).contains(&time),
            "the guest's clock {time} is not the host's ({before}..{after}): {line}"
        );
    }
    rands.sort();
    rands.dedup();
    assert_eq!(rands.len(), 5, "each restore has its own random numbers");
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 5, "each restore has its own hostname");

    let mut c = minivm(&[
        "restore",
        s,
        "-i",
        "--",
        "sh",
        "-c",
        "cat; test -e /mark || echo clean",
    ]);
    let out = run_minivm_input(&mut c, Some(b"hello from stdin\n".to_vec()), BOOT_TIMEOUT);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (0, "hello from stdin\nclean\n"),
        "{out:#?}"
    );
    let out = run_minivm_with(&mut minivm(&["restore", s]), BOOT_TIMEOUT);
    assert_eq!(out.code(), 4, "the image's own command: {out:#?}");
    assert_eq!(out.stdout, "image default\n");
    // -t: the restored command gets the serial console as its terminal,
    // with the host terminal's size.
    let mut pty = PtySession::spawn(minivm(&["restore", s, "-t", "--", "sh"]));
    assert_eq!(
        pty.shell("stty size; tty; echo $((6*7))", BOOT_TIMEOUT),
        "50 250\n/dev/ttyS0\n42"
    );
    pty.send("exit 7\r");
    let st = pty.wait(BOOT_TIMEOUT).expect("minivm ends with the shell");
    assert_eq!(st.code(), Some(7), "{}", pty.screen());
    assert!(contents(&snap) == saved, "restoring changed the snapshot");

    // Refused before anything starts.
    let to = dir.join("never");
    let to = to.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "run",
                &reference,
                "--kernel",
                kernel,
                "--virtiofs",
                "--snapshot-to",
                to,
            ],
            "a virtio-fs root",
        ),
        (
            &[
                "run",
                &reference,
                "--kernel",
                kernel,
                "--snapshot-to",
                to,
                "--",
                "true",
            ],
            "go to `minivm restore DIR`",
        ),
        (
            &[
                "run",
                &reference,
                "--kernel",
                kernel,
                "--snapshot-to",
                to,
                "--snapshot-and-continue",
                "-i",
            ],
            "-i and -t cannot go with it",
        ),
    ];
    for (args, want) in cases {
        let out = run_minivm_with(&mut minivm(args), T);
        assert_eq!(out.code(), 2, "{args:?}: {out:#?}");
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    assert!(!Path::new(to).exists());
}
