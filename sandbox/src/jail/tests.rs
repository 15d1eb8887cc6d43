//! Unit tests of the jail's pieces that run without root; the whole jail is
//! tested by `tests/tests/jail.rs`, which boots guests in it.

use super::*;

fn jail(dir: &str) -> Jail {
    Jail {
        dir: PathBuf::from(dir),
        uid: 0,
        gid: 0,
        binds: Vec::new(),
        limits: Limits {
            open_files: 1024,
            address_space: None,
        },
        keep_file_caps: false,
    }
}

#[test]
fn the_directory_must_be_an_existing_absolute_directory() {
    let e = check(&jail("relative")).unwrap_err().to_string();
    assert!(e.contains("must be an absolute path"), "{e}");
    let e = check(&jail("/nonexistent-minivm-jail"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent-minivm-jail"), "{e}");
    assert!(e.contains("No such file"), "{e}");
    let e = check(&jail("/proc/self/status")).unwrap_err().to_string();
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn binds_must_be_absolute() {
    let mut j = jail("/tmp");
    j.binds.push(Bind {
        path: PathBuf::from("disk.img"),
        writable: false,
    });
    let e = check(&j).unwrap_err().to_string();
    assert!(e.contains("disk.img: jail paths must be absolute"), "{e}");
}

#[test]
fn a_threaded_process_is_refused() {
    // The test harness itself runs tests on threads besides main.
    let _t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(2)));
    assert!(matches!(check(&jail("/tmp")), Err(JailError::Threads(n)) if n > 1));
}

#[test]
fn root_keeps_the_file_server_capabilities_only_when_asked() {
    assert_eq!(caps::kept_mask(0, false), 0);
    assert_eq!(caps::kept_mask(1000, true), 0);
    let m = caps::kept_mask(0, true);
    assert_eq!(m.count_ones(), 8);
    // CAP_SYS_ADMIN (21), CAP_NET_ADMIN (12), CAP_SYS_PTRACE (19) never stay.
    for cap in [21, 12, 19] {
        assert_eq!(m & (1 << cap), 0, "capability {cap}");
    }
}

/// What the jailed process sees, one `key=value` line each.
fn facts(base: &Path) -> String {
    let ls = |p: &str| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v.join(",")
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    let write = |p: &Path| match std::fs::write(p, b"x") {
        Ok(()) => "ok".to_string(),
        Err(e) => e.raw_os_error().unwrap_or(0).to_string(),
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut name = [0u8; 64];
    // SAFETY: gethostname writes at most the buffer's length.
    unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    let name = String::from_utf8_lossy(&name)
        .trim_end_matches('\0')
        .to_string();
    [
        format!("pid={}", std::process::id()),
        format!("root={}", ls("/")),
        format!("base={}", ls(base.to_str().unwrap())),
        format!("proc_sys={}", !host.is_empty()),
        format!(
            "ro_read={}",
            std::fs::read_to_string(base.join("ro/f")).unwrap_or_default()
        ),
        format!("ro_write={}", write(&base.join("ro/g"))),
        format!("root_write={}", write(Path::new("/x"))),
        format!("share_write={}", write(&base.join("share/w"))),
        format!("uid={}", field("Uid:")),
        format!("gid={}", field("Gid:")),
        format!("groups={}", field("Groups:")),
        format!("cap_eff={}", field("CapEff:")),
        format!("cap_bnd={}", field("CapBnd:")),
        format!("no_new_privs={}", field("NoNewPrivs:")),
        format!("nofile={}/{}", rl.rlim_cur, rl.rlim_max),
        format!("hostname={name}"),
    ]
    .join("\n")
}

/// The whole jail, entered by a forked child of this test (single-threaded,
/// as minivm is at that point), as user 65534: as root (`unprivileged`
/// false) it drops to that user; otherwise the child first becomes that
/// user and enters through a user namespace. Checks namespaces, the root,
/// binds, credentials, limits from inside.
fn enter_as_nobody(unprivileged: bool) {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(format!(
        "minivm-jail-test-{}-{unprivileged}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&base);
    for d in ["root", "share", "ro", "secret"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
        std::fs::set_permissions(base.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // World-writable, so only the mount's flags stand in the way.
    for d in ["share", "ro"] {
        std::fs::set_permissions(base.join(d), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(base.join("ro/f"), b"visible").unwrap();
    std::fs::write(base.join("secret/s"), b"hidden").unwrap();
    let j = Jail {
        dir: base.join("root"),
        uid: 65534,
        gid: 65534,
        binds: vec![
            Bind {
                path: base.join("share"),
                writable: true,
            },
            Bind {
                path: base.join("ro"),
                writable: false,
            },
        ],
        limits: Limits {
            open_files: 256,
            address_space: Some(16 << 30),
        },
        keep_file_caps: false,
    };
    // SAFETY: the child only runs the jail set-up and plain file I/O, then _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        if unprivileged {
            // SAFETY: plain id changes of this (forked, single-threaded) child.
            let dropped = unsafe {
                libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setresgid(65534, 65534, 65534) == 0
                    && libc::setresuid(65534, 65534, 65534) == 0
                    // As a process the user started: changing ids made it
                    // undumpable, which hides its /proc/self/uid_map.
                    && libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) == 0
            };
            if !dropped {
                // SAFETY: ends the forked child.
                unsafe { libc::_exit(97) };
            }
        }
        let code = match enter(&j) {
            Ok(Role::Supervisor(s)) => s.wait(),
            Ok(Role::Jailed) => {
                let f = facts(&base);
                let ok = std::fs::write(base.join("share/facts"), f).is_ok();
                if ok {
                    0
                } else {
                    98
                }
            }
            Err(e) => {
                eprintln!("{e}");
                99
            }
        };
        // SAFETY: ends the forked child without the test harness's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let facts = std::fs::read_to_string(base.join("share/facts")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&base);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}; {facts}"
    );
    let get = |k: &str| {
        facts
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {facts}"))
            .to_string()
    };
    assert_eq!(get("pid"), "1", "PID 1 of its own namespace");
    let top = base.iter().nth(1).unwrap().to_string_lossy().into_owned();
    assert_eq!(
        get("root"),
        format!("proc,{top}"),
        "only procfs and the binds' top"
    );
    assert_eq!(
        get("base"),
        "ro,share",
        "the jail directory and unbound siblings are hidden"
    );
    assert_eq!(get("proc_sys"), "false", "procfs shows processes only");
    assert_eq!(get("ro_read"), "visible");
    assert_eq!(get("ro_write"), libc::EROFS.to_string());
    assert_eq!(get("root_write"), libc::EROFS.to_string());
    assert_eq!(get("share_write"), "ok");
    assert_eq!(get("uid"), "65534 65534 65534 65534");
    assert_eq!(get("gid"), "65534 65534 65534 65534");
    assert_eq!(get("groups"), "");
    assert_eq!(get("cap_eff"), "0000000000000000");
    assert_eq!(get("cap_bnd"), "0000000000000000");
    assert_eq!(get("no_new_privs"), "1");
    assert_eq!(get("nofile"), "256/256");
    assert_eq!(get("hostname"), "minivm");
}

/// Run as root (as CI does): the root path, and the user-namespace path of
/// a user without privileges.
#[test]
fn root_enters_the_jail_as_another_user() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the jail tests run as root");
    enter_as_nobody(false);
}

#[test]
fn an_unprivileged_user_enters_the_jail_through_a_user_namespace() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the jail tests run as root");
    enter_as_nobody(true);
}

#[test]
fn without_root_the_jail_user_is_the_caller() {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    let mut j = jail("/tmp");
    j.uid = own + 1;
    match check(&j) {
        // Root may pick any user; here the harness's threads are refused.
        Err(JailError::Threads(_)) if own == 0 => {}
        Err(JailError::ForeignUser { uid, .. }) => assert_eq!(uid, own + 1),
        other => panic!("{other:?}"),
    }
}
