//! The system calls each kind of minivm thread may make: the one place that
//! lists them. Found by tracing every boot path (disk, `--rootfs`, `--oci
//! --virtiofs`, networking, `run -- CMD` with -i and -t, shutdown) and kept
//! to what the code calls; ioctls are checked by request number.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_regs, KVMIO};
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};

use super::{MainNeeds, ThreadKind};

/// The signals minivm handles (stop, shut down, pass on, resize): every
/// thread but the main one blocks them, so their handlers (which write(2)
/// and read the terminal size) run on the main thread only.
pub const HOST_SIGNALS: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGWINCH];

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);

/// `TUNSETOFFLOAD`, `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: u64 = 0x4004_54d0;

/// What every thread does by being a Rust thread in this process: memory,
/// locks, signals it is sent, logging to stderr, time, and ending.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // F_GETFD: Rust's standard library checks an fd is open before closing it.
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_writev,
];

/// The main thread's event loop and the VM's teardown (the work directory
/// is removed, /proc/self is read for the end-of-boot figures).
const MAIN: &[i64] = &[
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_fallocate,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_flock,
    libc::SYS_fstat,
    libc::SYS_fsync,
    libc::SYS_getdents64,
    libc::SYS_lseek,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_read,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_readv,
    libc::SYS_statx,
    // `--exec-socket`'s socket, removed when the VM ends.
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// What the main thread adds with `--restart`, to build the next VM: files,
/// guest memory, event fds, threads (ioctls are then not checked; `clone`
/// and `unshare` by their flags, below; `clone3` passes this filter but a
/// second one answers it with ENOSYS, see `clone3_unavailable`: a trap here
/// would take precedence over that errno).
const MAIN_REBUILD: &[i64] = &[
    libc::SYS_clone3,
    // The next VM's reaper closes what it must not hold; the last one is
    // waited for.
    libc::SYS_close_range,
    libc::SYS_wait4,
    libc::SYS_dup,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_ftruncate,
    libc::SYS_memfd_create,
    libc::SYS_pipe2,
    libc::SYS_prctl,
    libc::SYS_prlimit64,
    libc::SYS_rseq,
    // The new VM's threads install their own filters on top of this one.
    libc::SYS_seccomp,
    libc::SYS_set_robust_list,
    libc::SYS_umask,
    // Writing a snapshot (`--snapshot-to`, which widens the filter too).
    libc::SYS_mkdir,
    libc::SYS_rename,
    libc::SYS_pwrite64,
];

/// The reaper once confined: wait for minivm's end on a pipe, close the
/// VM's file, end (which leaves the memory it shared).
const REAPER: &[i64] = &[
    libc::SYS_read,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Namespace flags of clone(2) and unshare(2).
const CLONE_NEW_ANY: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | 0x80) as u64; // CLONE_NEWTIME

/// The virtio-fs server: a passthrough of the guest's file operations onto
/// the share (and the layer store), with per-request credentials.
const FS_WORKER: &[i64] = &[
    libc::SYS_copy_file_range,
    libc::SYS_dup,
    libc::SYS_fallocate,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_flock,
    libc::SYS_fremovexattr,
    libc::SYS_fsetxattr,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getuid,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_linkat,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_lseek,
    libc::SYS_lsetxattr,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    // Waiting on the queues' doorbells (an epoll set made before the filter).
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_read,
    libc::SYS_readlinkat,
    libc::SYS_removexattr,
    libc::SYS_renameat2,
    libc::SYS_setresgid,
    libc::SYS_setresuid,
    libc::SYS_setxattr,
    libc::SYS_statx,
    libc::SYS_symlinkat,
    libc::SYS_umask,
    libc::SYS_unlinkat,
    libc::SYS_utimensat,
];

/// `minivm exec`'s relay: polls its socket, its clients and the exec
/// port's pipes, and checks each client's user.
const EXEC: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_geteuid,
    libc::SYS_getsockopt,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
];

/// A syscall table under construction: `None` allows the call outright,
/// `Some(rules)` when any one of the rules matches.
struct Table(BTreeMap<i64, Option<Vec<SeccompRule>>>);

impl Table {
    fn new() -> Table {
        Table(BTreeMap::new())
    }

    fn allow(&mut self, calls: &[i64]) {
        for &c in calls {
            self.0.insert(c, None);
        }
    }

    fn allow_if(&mut self, call: i64, rule: SeccompRule) {
        if let Some(rules) = self.0.entry(call).or_insert_with(|| Some(Vec::new())) {
            rules.push(rule);
        }
    }

    /// ioctl(2) with one of `requests`.
    fn allow_ioctls(&mut self, requests: &[u64]) {
        for &r in requests {
            self.allow_if(libc::SYS_ioctl, arg_eq(1, r));
        }
    }

    fn into_rules(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        // seccompiler reads an empty rule list as "always allowed".
        self.0
            .into_iter()
            .map(|(c, rules)| (c, rules.unwrap_or_default()))
            .collect()
    }
}

/// A rule that holds when argument `index` equals `value`.
fn arg_eq(index: u8, value: u64) -> SeccompRule {
    let len = if value > u64::from(u32::MAX) {
        SeccompCmpArgLen::Qword
    } else {
        SeccompCmpArgLen::Dword
    };
    let cond =
        SeccompCondition::new(index, len, SeccompCmpOp::Eq, value).expect("argument index below 6");
    SeccompRule::new(vec![cond]).expect("one condition")
}

/// A rule that holds when argument `index`, masked with `mask`, equals `value`.
fn arg_masked_eq(index: u8, mask: u64, value: u64) -> SeccompRule {
    let op = SeccompCmpOp::MaskedEq(mask);
    let cond = SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .expect("argument index below 6");
    SeccompRule::new(vec![cond]).expect("one condition")
}

/// The rules of `kind`. `pid`: this process, the only one signals may go to.
pub(super) fn rules(
    kind: ThreadKind,
    main: MainNeeds,
    pid: u32,
) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut t = table(kind, main, pid);
    if !opens_files(kind, main) {
        // Passed here, answered EACCES by the stacked `opens_refused`.
        t.allow(OPENS);
    }
    t.into_rules()
}

/// The calls threads of `kind` may make, as listed.
fn table(kind: ThreadKind, main: MainNeeds, pid: u32) -> Table {
    let mut t = Table::new();
    if kind == ThreadKind::Reaper {
        // Raw system calls only, no Rust runtime: not even COMMON.
        t.allow(REAPER);
        return t;
    }
    t.allow(COMMON);
    // Signals only to our own threads (abort(3) and the vCPU kicks).
    t.allow_if(libc::SYS_tgkill, arg_eq(0, u64::from(pid)));
    match kind {
        ThreadKind::Main => {
            t.allow(MAIN);
            if main.rebuild_vm {
                // The next VM's threads start under this filter, the file
                // server's too.
                t.allow(MAIN_REBUILD);
                t.allow(FS_WORKER);
                // Threads only (glibc's fallback from clone3): no processes,
                // no namespaces, so no way out of a jail through a new user
                // namespace.
                let mask = libc::CLONE_THREAD as u64 | CLONE_NEW_ANY;
                t.allow_if(
                    libc::SYS_clone,
                    arg_masked_eq(0, mask, libc::CLONE_THREAD as u64),
                );
                // And the next VM's reaper: a process sharing this memory,
                // these flags exactly (no namespaces, no exit signal).
                t.allow_if(libc::SYS_clone, arg_eq(0, libc::CLONE_VM as u64));
                // The file server's set-up thread detaches its umask.
                t.allow_if(libc::SYS_unshare, arg_eq(0, libc::CLONE_FS as u64));
                t.allow(&[libc::SYS_ioctl]);
            } else {
                t.allow_ioctls(&[
                    libc::TCGETS,
                    libc::TCSETS,
                    libc::TCSETSW,
                    libc::TCSETSF,
                    libc::TIOCGWINSZ,
                    // A virtio-net reset when the VM stops turns the offloads off.
                    TUNSETOFFLOAD,
                ]);
            }
        }
        ThreadKind::Vcpu => {
            // Register writes activate devices here: virtio-net sets the
            // tap's offloads.
            t.allow_ioctls(&[KVM_RUN(), KVM_GET_REGS(), TUNSETOFFLOAD]);
            t.allow(&[libc::SYS_read]);
        }
        ThreadKind::Console => {}
        ThreadKind::FsWorker => t.allow(FS_WORKER),
        ThreadKind::Exec => t.allow(EXEC),
        ThreadKind::Reaper => unreachable!("listed above"),
    }
    t
}

/// The calls that open a file by name.
pub(super) const OPENS: &[i64] = &[libc::SYS_open, libc::SYS_openat, libc::SYS_openat2];

/// Whether threads of `kind` open files. Those that do not get EACCES for
/// it (the stacked filter of `opens_refused`) rather than being stopped:
/// library code opens files lazily on paths no caller chose, e.g. glibc's
/// malloc reads /proc/sys/vm/overcommit_memory the first time it shrinks a
/// thread's heap (often at that thread's exit), and takes a failure as "no".
pub(super) fn opens_files(kind: ThreadKind, main: MainNeeds) -> bool {
    table(kind, main, 0).0.contains_key(&libc::SYS_openat)
}
