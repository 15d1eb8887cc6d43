//! `--jail`: minivm confines itself before building the VM. Tiny-guest runs
//! check from the host what the jailed process is (namespaces, credentials,
//! capabilities, root, limits, fds, seccomp) and that the supervisor passes
//! on signals and exit statuses and takes the jail down with it; one Linux
//! boot serves an OCI image over virtio-fs from inside a jail. Jails need
//! root: these tests fail when not run as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::*;

const T: Duration = Duration::from_secs(60);

/// The file-server capabilities a root jail with shares keeps: CHOWN,
/// DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, MKNOD, SETFCAP.
const FILE_SERVER_CAPS: u64 = 0x8800_00db;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the jail tests must run as root (jails need CAP_SYS_ADMIN)"
    );
    root
}

/// The pid of the jailed child of supervisor `sup` (waits for it).
fn jailed_child(sup: u32) -> u32 {
    let deadline = Instant::now() + T;
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            if status.lines().any(|l| l == format!("PPid:\t{sup}")) {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no jailed child of {sup}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn limit(pid: u32, name: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    let mut v = line[name.len()..].split_whitespace();
    (v.next().unwrap().into(), v.next().unwrap().into())
}

fn top_component(p: &Path) -> String {
    p.components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned()
}

struct Setup {
    dir: PathBuf,
    kernel: PathBuf,
    rootfs: PathBuf,
    share: PathBuf,
    jail: PathBuf,
}

fn setup(name: &str, end: TinyEnd) -> Setup {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir(name);
    let guest = TinyGuest {
        message: b"jailed guest running\n".to_vec(),
        boot_marker: false,
        end,
    };
    let kernel = guest.write(&dir, "guest.elf");
    let (rootfs, share, jail) = (dir.join("rootfs"), dir.join("share"), dir.join("jail"));
    for d in [&rootfs, &share, &jail] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(share.join("f"), b"shared").unwrap();
    let s = |p: &Path| std::fs::canonicalize(p).unwrap();
    Setup {
        kernel: s(&kernel),
        rootfs: s(&rootfs),
        share: s(&share),
        jail: s(&jail),
        dir,
    }
}

/// Starts a spinning tiny guest in a jail (as `user`, or root), with a
/// writable root share and a read-only share.
fn start_jailed(s: &Setup, user: Option<&str>) -> RunningVm {
    let share = format!("{}:data:ro", s.share.display());
    let mut args = vec![
        "run",
        "--kernel",
        s.kernel.to_str().unwrap(),
        "--mem",
        "16M",
        "--rootfs",
        s.rootfs.to_str().unwrap(),
        "--share",
        &share,
        "--shutdown-timeout",
        "0",
        "--jail",
        s.jail.to_str().unwrap(),
    ];
    if let Some(u) = user {
        args.extend(["--jail-user", u]);
    }
    let mut vm = RunningVm::start(args);
    assert!(
        vm.wait_for("jailed guest running", T),
        "the jailed guest did not run"
    );
    vm
}

/// Namespaces, credentials, root, mounts and limits of a jailed minivm,
/// and the supervisor outside it.
fn check_confined(s: &Setup, vm: &RunningVm, uid: u32, caps: u64) {
    let sup = vm.pid();
    let j = jailed_child(sup);
    for ns in ["mnt", "pid", "ipc", "uts", "net", "cgroup"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{j}/ns/{ns}")).unwrap();
        assert_ne!(ours, theirs, "the jail shares the {ns} namespace");
        let supervisor = std::fs::read_link(format!("/proc/{sup}/ns/{ns}")).unwrap();
        assert_eq!(ours, supervisor, "the supervisor left the {ns} namespace");
    }
    assert_eq!(
        status_field(j, "NSpid:"),
        format!("{j} 1"),
        "PID 1 in its namespace"
    );
    let ids = format!("{uid} {uid} {uid} {uid}");
    assert_eq!(status_field(j, "Uid:"), ids);
    assert_eq!(status_field(j, "Gid:"), ids);
    assert_eq!(status_field(j, "Groups:"), "");
    let hex = format!("{caps:016x}");
    for set in ["CapPrm:", "CapEff:", "CapBnd:"] {
        assert_eq!(status_field(j, set), hex, "{set}");
    }
    assert_eq!(status_field(j, "CapInh:"), "0000000000000000");
    assert_eq!(status_field(j, "CapAmb:"), "0000000000000000");
    assert_eq!(status_field(j, "NoNewPrivs:"), "1");
    let threads = thread_seccomp(j);
    assert!(threads.len() >= 3, "{threads:?}");
    assert!(
        threads.iter().all(|(_, m)| *m == 2),
        "unfiltered threads: {threads:?}"
    );

    // Its root: procfs and the paths to its files, nothing else.
    let root = PathBuf::from(format!("/proc/{j}/root"));
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let mut want = vec!["proc".to_string()];
    for p in [&s.kernel, &s.rootfs, &s.share] {
        want.push(top_component(p));
    }
    want.sort();
    want.dedup();
    assert_eq!(top, want, "the jail's /");
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(inside(&s.share).join("f")).unwrap(),
        b"shared"
    );
    let mut scratch: Vec<String> = std::fs::read_dir(inside(&s.dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    scratch.sort();
    assert_eq!(
        scratch,
        ["guest.elf", "rootfs", "share"],
        "unbound siblings are hidden"
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{j}/mountinfo")).unwrap();
    let mount_of = |p: &Path| {
        let p = p.to_str().unwrap();
        mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(p))
            .unwrap_or_else(|| panic!("{p} not mounted in {mountinfo}"))
            .to_string()
    };
    let opts = |line: &str| line.split(' ').nth(5).unwrap().to_string();
    assert!(
        opts(&mount_of(&s.share)).starts_with("ro,nosuid,nodev,noexec"),
        "{mountinfo}"
    );
    assert!(
        opts(&mount_of(&s.rootfs)).starts_with("rw,nosuid,nodev,noexec"),
        "{mountinfo}"
    );
    assert!(opts(&mount_of(&s.kernel)).starts_with("ro,"), "{mountinfo}");
    assert!(
        opts(&mount_of(Path::new("/"))).starts_with("ro,"),
        "{mountinfo}"
    );
    assert_eq!(
        mountinfo.lines().count(),
        5,
        "/, proc and three binds: {mountinfo}"
    );

    // Limits: open files as the supervisor's, no core dumps, address space bounded.
    let nofile = limit(j, "Max open files");
    assert_eq!(nofile.0, nofile.1);
    assert_eq!(limit(j, "Max core file size"), ("0".into(), "0".into()));
    let address = (16u64 << 20) + (1 << 30) + (64 << 20);
    assert_eq!(limit(j, "Max address space").0, address.to_string());

    // No directory fd but the shares' own (the file servers' inodes) and
    // their /proc/self/fd.
    for e in std::fs::read_dir(format!("/proc/{j}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(meta) = std::fs::metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            let target = std::fs::read_link(e.path()).unwrap();
            assert!(
                target.starts_with(&s.rootfs)
                    || target.starts_with(&s.share)
                    || target == Path::new(&format!("/proc/{}/fd", 1)),
                "directory fd {} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            );
        }
    }
}

#[test]
fn a_jail_as_another_user_holds_nothing_but_the_vm() {
    if !kvm_available() || !is_root() {
        return;
    }
    let s = setup("jail-user", TinyEnd::Spin);
    let vm = start_jailed(&s, Some("65534"));
    check_confined(&s, &vm, 65534, 0);
    let j = jailed_child(vm.pid());
    // SIGTERM to the supervisor reaches the VM: it stops, 128 + 15.
    vm.sigterm();
    let end = vm.finish(T);
    assert_eq!(end.code, Some(143), "{end:#?}");
    assert!(
        !Path::new(&format!("/proc/{j}")).exists(),
        "the jailed process outlived the run"
    );
}

#[test]
fn a_root_jail_keeps_only_the_file_server_capabilities() {
    if !kvm_available() || !is_root() {
        return;
    }
    let s = setup("jail-root", TinyEnd::Spin);
    let vm = start_jailed(&s, None);
    check_confined(&s, &vm, 0, FILE_SERVER_CAPS);
    // The supervisor is killed: the jail goes with it (parent-death signal).
    let j = jailed_child(vm.pid());
    vm.signal(libc::SIGKILL);
    let end = vm.finish(T);
    assert_eq!(end.code, None, "{end:#?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{j}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the jail outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_guest_status_and_errors_come_out_of_the_jail() {
    if !kvm_available() || !is_root() {
        return;
    }
    let s = setup("jail-exit", TinyEnd::Exit(7));
    let k = s.kernel.to_str().unwrap();
    let j = s.jail.to_str().unwrap();
    let out = run_minivm(["run", "--kernel", k, "--mem", "16M", "--jail", j], T);
    assert_eq!(out.code(), 7, "{out:#?}");
    assert_eq!(out.stdout, "jailed guest running\n");
    // The host's jail directory stays empty: the jail's root was a tmpfs.
    assert_eq!(std::fs::read_dir(&s.jail).unwrap().count(), 0);

    let out = run_minivm(["run", "--kernel", k, "--jail", "/nonexistent-jail"], T);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert!(
        out.stderr.contains("jail directory /nonexistent-jail"),
        "{}",
        out.stderr
    );
    let out = run_minivm(["run", "--kernel", k, "--jail-user", "65534"], T);
    assert_eq!(out.code(), 2, "--jail-user needs --jail: {out:#?}");
    let out = run_minivm(
        ["run", "--kernel", k, "--jail", j, "--jail-user", "nobody"],
        T,
    );
    assert_eq!(out.code(), 2, "{out:#?}");
    assert!(
        out.stderr.contains("not a numeric user or group id"),
        "{}",
        out.stderr
    );
}

/// A Linux guest in a root jail: an OCI image over virtio-fs (layers read
/// only, the writable layer in the jail), the guest agent's initramfs, and
/// the command's status; the writable layer is gone afterwards.
#[test]
fn an_image_over_virtiofs_runs_in_a_jail() {
    if !kvm_available() || !is_root() {
        return;
    }
    let dir = scratch_dir("jail-oci");
    let layout = dir.join("layout");
    TestImage::new(vec![busybox_layer()])
        .write_oci_layout(&layout, "1", Compression::Gzip)
        .unwrap();
    let jail = dir.join("jail");
    std::fs::create_dir(&jail).unwrap();
    let cache = dir.join("cache");
    let kernel = default_kernel();
    let reference = format!("oci:{}:1", layout.display());
    let script = "echo written >/etc/new && busybox cat /etc/new && exit 5";
    let out = run_minivm_with(
        std::process::Command::new(minivm_bin())
            .env("XDG_CACHE_HOME", &cache)
            .args(["run", "--kernel", kernel.to_str().unwrap(), "--mem", "256M"])
            .arg("--jail")
            .arg(&jail)
            .args([&reference, "--virtiofs", "--", "sh", "-c", script]),
        BOOT_TIMEOUT,
    );
    assert_eq!(out.code(), 5, "{out:#?}");
    assert!(out.stdout.contains("written\n"), "{out:#?}");
    let vms = cache.join("minivm/vms");
    let left: Vec<_> = std::fs::read_dir(&vms)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "writable layers left: {left:?}");
}
