//! The filters run for real in forked children: allowed calls pass, denied
//! ones end the child with the report on its stderr.

use std::io::Read;
use std::os::fd::FromRawFd;

use super::*;

/// Forks; the child applies `kind`'s filter, runs `body` and exits 0 if it
/// returns. Gives back the child's exit status and what it wrote to stderr.
fn in_child(kind: ThreadKind, body: fn()) -> (i32, String) {
    in_child_with(kind, MainNeeds::default(), body)
}

/// [`in_child`] with the main thread's needs `main`.
fn in_child_with(kind: ThreadKind, main: MainNeeds, body: fn()) -> (i32, String) {
    let policy = Policy::new(main, Denied::Stop).expect("filters compile");
    let filter = policy.filter(kind);
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes async-signal-safe calls (dup2, the
    // filter's prctl/seccomp/sigprocmask, the body's raw syscalls, _exit).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain fd operations in the child.
        unsafe {
            libc::dup2(fds[1], libc::STDERR_FILENO);
            libc::close(fds[0]);
        }
        if filter.apply().is_err() {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(99) };
        }
        body();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: the parent owns both ends; the write end is closed here so the
    // read below ends when the child does.
    let mut r = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut err = String::new();
    r.read_to_string(&mut err).unwrap();
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "child died by a signal: {status:#x}"
    );
    (libc::WEXITSTATUS(status), err)
}

#[test]
fn every_kind_compiles() {
    let p = Policy::new(MainNeeds { rebuild_vm: true }, Denied::Log).unwrap();
    assert!(p.enabled());
    for kind in ThreadKind::ALL {
        assert!(p.programs.as_ref().unwrap()[&kind].len() > 10, "{kind}");
    }
    assert!(!Policy::off().enabled());
}

#[test]
fn allowed_calls_pass() {
    let (status, err) = in_child(ThreadKind::Console, || {
        // SAFETY: plain system calls with no memory arguments.
        unsafe {
            libc::getpid();
            libc::write(libc::STDERR_FILENO, b"still here\n".as_ptr().cast(), 11);
        }
    });
    assert_eq!((status, err.as_str()), (0, "still here\n"));
}

#[test]
fn a_denied_call_is_named_and_ends_the_process() {
    let (status, err) = in_child(ThreadKind::Console, || {
        // SAFETY: the call is meant to be denied; no memory arguments.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    });
    assert_eq!(status, DENIED_EXIT_STATUS);
    assert_eq!(
        err,
        "minivm: seccomp: the console thread made a system call outside its filter: socket (41); stopping\n"
    );
}

#[test]
fn ioctls_are_checked_by_request() {
    // KVM_RUN on a non-KVM fd is allowed through (and fails with an errno).
    let (status, err) = in_child(ThreadKind::Vcpu, || {
        // SAFETY: fd 0 is not a vCPU; the call fails harmlessly.
        let r = unsafe { libc::ioctl(0, rules_kvm_run()) };
        assert_eq!(r, -1);
    });
    assert_eq!((status, err.as_str()), (0, ""));
    // A terminal ioctl is not a vCPU's business.
    let (status, err) = in_child(ThreadKind::Vcpu, || {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: `ws` is a valid winsize; the call is meant to be denied.
        unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    });
    assert_eq!(status, DENIED_EXIT_STATUS);
    assert!(
        err.contains("vcpu thread") && err.contains("ioctl (16)"),
        "{err}"
    );
}

#[test]
fn signals_go_only_to_this_process() {
    let (status, err) = in_child(ThreadKind::Main, || {
        // SAFETY: signal 0 only checks that the target exists (pid 1 does).
        unsafe { libc::syscall(libc::SYS_tgkill, 1, 1, 0) };
    });
    assert_eq!(status, DENIED_EXIT_STATUS);
    assert!(
        err.contains("main thread") && err.contains("tgkill"),
        "{err}"
    );
}

#[test]
fn worker_threads_block_the_host_signals() {
    let (status, err) = in_child(ThreadKind::FsWorker, || {
        // SAFETY: a zeroed sigset_t is valid for pthread_sigmask to fill.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: reads this thread's mask into `set`.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set) };
        for sig in HOST_SIGNALS {
            // SAFETY: `set` is initialized.
            if unsafe { libc::sigismember(&set, sig) } != 1 {
                // SAFETY: ends the child.
                unsafe { libc::_exit(10 + sig) };
            }
        }
    });
    assert_eq!((status, err.as_str()), (0, ""));
}

fn rules_kvm_run() -> libc::c_ulong {
    super::rules::KVM_RUN()
}

const REBUILD: MainNeeds = MainNeeds { rebuild_vm: true };

/// With `--restart` the main thread starts the next VM's threads: glibc's
/// clone3 gets ENOSYS and its clone fallback, with thread flags, passes.
#[test]
fn a_rebuilding_main_thread_starts_threads_through_clone() {
    let (status, err) = in_child_with(ThreadKind::Main, REBUILD, || {
        // SAFETY: clone3 with a null argument; the filter answers first.
        let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let t = std::thread::spawn(|| 7).join().unwrap();
        let msg = format!("clone3 {r} {errno}, thread {t}\n");
        // SAFETY: writes a live buffer.
        unsafe { libc::write(libc::STDERR_FILENO, msg.as_ptr().cast(), msg.len()) };
    });
    assert_eq!(
        (status, err.as_str()),
        (0, &*format!("clone3 -1 {}, thread 7\n", libc::ENOSYS))
    );
}

/// ... but no new namespace: a new user namespace would give back the
/// capabilities a jail took away.
#[test]
fn a_rebuilding_main_thread_cannot_make_namespaces() {
    let (status, err) = in_child_with(ThreadKind::Main, REBUILD, || {
        // SAFETY: the call is meant to be denied.
        unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    });
    assert_eq!(status, DENIED_EXIT_STATUS);
    assert!(err.contains("outside its filter: unshare (272)"), "{err}");
    let (status, err) = in_child_with(ThreadKind::Main, REBUILD, || {
        // SAFETY: a fork-like clone with a new user namespace, meant to be denied.
        unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWUSER | libc::SIGCHLD,
                0,
                0,
                0,
                0,
            )
        };
    });
    assert_eq!(status, DENIED_EXIT_STATUS);
    assert!(err.contains("outside its filter: clone (56)"), "{err}");
}

#[test]
fn an_exec_relay_thread_polls_and_relays_but_opens_nothing() {
    // What the relay calls passes (on bad fds: failing harmlessly).
    let (status, err) = in_child(ThreadKind::Exec, || {
        // SAFETY: every call gets fd -1 or no fds and null or valid pointers.
        unsafe {
            assert_eq!(libc::poll(std::ptr::null_mut(), 0, 0), 0);
            let mut b = [0u8; 1];
            assert_eq!(libc::recv(-1, b.as_mut_ptr().cast(), 1, 0), -1);
            assert_eq!(libc::send(-1, b.as_ptr().cast(), 1, 0), -1);
            assert_eq!(
                libc::accept4(-1, std::ptr::null_mut(), std::ptr::null_mut(), 0),
                -1
            );
            let mut len = 0;
            assert_eq!(
                libc::getsockopt(-1, 1, 17, b.as_mut_ptr().cast(), &mut len),
                -1
            );
            libc::geteuid();
        }
    });
    assert_eq!((status, err.as_str()), (0, ""));
    // Opening a file is refused (EACCES), not fatal: see `opens_are_refused_...`.
    let (status, err) = in_child(ThreadKind::Exec, || {
        let e = std::fs::File::open("/etc/hostname").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    });
    assert_eq!((status, err.as_str()), (0, ""));
    let (status, err) = in_child(ThreadKind::Exec, || {
        // SAFETY: the call is meant to be denied; no memory arguments.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    });
    assert_eq!(status, DENIED_EXIT_STATUS);
    assert!(
        err.contains("exec-relay thread") && err.contains("socket"),
        "{err}"
    );
}

/// glibc's malloc opens /proc/sys/vm/overcommit_memory the first time it
/// shrinks a thread's heap, at whatever point that comes (a relay thread
/// ending stopped minivm with SIGSYS this way): a thread that opens no
/// files gets EACCES for every way of opening one, which glibc takes as
/// "no", while the threads that open files still may.
#[test]
fn opens_are_refused_not_fatal_where_no_file_is_opened() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Console, ThreadKind::Exec] {
        let (status, err) = in_child(kind, || {
            // SAFETY: valid C strings; the calls are meant to be refused.
            unsafe {
                let p = c"/proc/sys/vm/overcommit_memory".as_ptr();
                assert_eq!(libc::openat(libc::AT_FDCWD, p, libc::O_RDONLY), -1);
                assert_eq!(*libc::__errno_location(), libc::EACCES);
                assert_eq!(libc::syscall(libc::SYS_open, p, libc::O_RDONLY), -1);
                assert_eq!(*libc::__errno_location(), libc::EACCES);
            }
        });
        assert_eq!((status, err.as_str()), (0, ""), "{kind}");
    }
    for kind in [ThreadKind::Main, ThreadKind::FsWorker] {
        let (status, err) = in_child(kind, || {
            assert!(std::fs::File::open("/proc/sys/vm/overcommit_memory").is_ok());
        });
        assert_eq!((status, err.as_str()), (0, ""), "{kind}");
    }
}
