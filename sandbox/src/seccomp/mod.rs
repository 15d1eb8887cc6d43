//! A seccomp filter for each kind of minivm thread, built with seccompiler.
//!
//! The filters are compiled once ([`Policy::new`]) and each thread installs
//! its own ([`ThreadFilter::apply`]) before it handles anything from the
//! guest: vCPU threads before their first KVM_RUN, the main thread before
//! the vCPUs start, device threads when they start. A call outside the
//! thread's list raises SIGSYS, whose handler ([`sigsys`]) writes
//! `minivm: seccomp: thread T made the denied system call NAME (N)` and ends
//! the process with [`DENIED_EXIT_STATUS`].

mod rules;
mod sigsys;

use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

pub use rules::HOST_SIGNALS;

/// minivm's exit status when a thread made a denied system call (128 + SIGSYS,
/// as if the kernel had killed it).
pub const DENIED_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// What went wrong while building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// seccompiler refused the rules of one kind of thread.
    #[error("cannot build the seccomp filter of the {thread} thread: {source}")]
    Build {
        thread: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter (or no_new_privs).
    #[error("cannot install the seccomp filter of the {thread} thread: {source}")]
    Install {
        thread: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS reporting handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    /// The thread's signal mask could not be set.
    #[error("cannot block the host signals on the {thread} thread: {source}")]
    SignalMask {
        thread: ThreadKind,
        #[source]
        source: std::io::Error,
    },
}

/// The kinds of threads minivm runs; each has its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The main thread once the VM is built: device event loop (virtio-blk,
    /// virtio-net, virtio-console, virtio-rng, serial input), signals,
    /// teardown of the VM and of its work directory.
    Main,
    /// A vCPU: KVM_RUN, and the device register accesses it dispatches
    /// (which activate and reset devices).
    Vcpu,
    /// The serial console's output writer.
    Console,
    /// A virtio-fs server thread (the FUSE requests of one share).
    FsWorker,
    /// `minivm exec`'s relay between the exec socket and the agent's port.
    Exec,
    /// The process that holds the KVM VM and guest memory until minivm has
    /// exited, then releases them (`vmm::reaper`): reads a pipe, closes, ends.
    Reaper,
}

impl ThreadKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Console,
        ThreadKind::FsWorker,
        ThreadKind::Exec,
        ThreadKind::Reaper,
    ];

    /// The short name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Console => "console",
            ThreadKind::FsWorker => "virtio-fs",
            ThreadKind::Exec => "exec-relay",
            ThreadKind::Reaper => "reaper",
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the main thread must still be able to do after the guest starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct MainNeeds {
    /// `--restart`: the main thread builds the next VM itself, so it keeps
    /// the set-up calls (opening files, KVM and tap ioctls, threads).
    pub rebuild_vm: bool,
}

/// What a filter does with a call outside its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Report it and stop the process (SIGSYS).
    Stop,
    /// Let it through; the kernel logs it (for finding what a list lacks).
    Log,
}

/// The compiled filters of every kind of thread, or none (`--seccomp=off`).
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Policy {
    programs: Option<Arc<BTreeMap<ThreadKind, Arc<BpfProgram>>>>,
    /// Filters stacked under a kind's own: with `--restart`, the main
    /// thread's clone3 answer; for threads that open no files, the EACCES
    /// answer to opening one.
    extras: BTreeMap<ThreadKind, Arc<BpfProgram>>,
}

impl Policy {
    /// Compiles every thread's filter and installs the SIGSYS handler that
    /// reports denied calls.
    pub fn new(main: MainNeeds, denied: Denied) -> Result<Policy, Error> {
        let pid = std::process::id();
        let mut programs = BTreeMap::new();
        let mut extras = BTreeMap::new();
        for kind in ThreadKind::ALL {
            let program = compile(kind, rules::rules(kind, main, pid), denied)?;
            programs.insert(kind, Arc::new(program));
            if !rules::opens_files(kind, main) {
                extras.insert(kind, Arc::new(opens_refused(kind)?));
            }
        }
        if main.rebuild_vm {
            extras.insert(ThreadKind::Main, Arc::new(clone3_unavailable()?));
        }
        sigsys::install().map_err(Error::Handler)?;
        Ok(Policy {
            programs: Some(Arc::new(programs)),
            extras,
        })
    }

    /// No filters at all (`--seccomp=off`).
    pub fn off() -> Policy {
        Policy::default()
    }

    /// Whether filters are installed.
    pub fn enabled(&self) -> bool {
        self.programs.is_some()
    }

    /// The filter for threads of `kind`.
    pub fn filter(&self, kind: ThreadKind) -> ThreadFilter {
        ThreadFilter {
            kind,
            program: self.programs.as_ref().and_then(|p| p.get(&kind).cloned()),
            extra: self.extras.get(&kind).cloned(),
        }
    }
}

/// One thread's filter, handed to whatever starts that thread.
#[derive(Clone)]
pub struct ThreadFilter {
    kind: ThreadKind,
    program: Option<Arc<BpfProgram>>,
    /// A second filter stacked under the first (the stricter answer wins).
    extra: Option<Arc<BpfProgram>>,
}

impl ThreadFilter {
    /// No filter (tests, `--seccomp=off`).
    pub fn none(kind: ThreadKind) -> ThreadFilter {
        ThreadFilter {
            kind,
            program: None,
            extra: None,
        }
    }

    /// Confines the calling thread: every thread but the main one blocks the
    /// host signals (so their handlers run on the main thread), then the
    /// filter is installed (with no_new_privs). Filters stack: a thread
    /// started later inherits this one.
    pub fn apply(&self) -> Result<(), Error> {
        if self.kind != ThreadKind::Main {
            block_host_signals().map_err(|source| Error::SignalMask {
                thread: self.kind,
                source,
            })?;
        }
        let Some(program) = &self.program else {
            return Ok(());
        };
        sigsys::set_thread_kind(self.kind);
        let install = |p: &BpfProgram| {
            seccompiler::apply_filter(p).map_err(|source| Error::Install {
                thread: self.kind,
                source,
            })
        };
        if let Some(extra) = &self.extra {
            install(extra)?;
        }
        install(program)
    }

    /// The compiled programs, in the order [`ThreadFilter::apply`] installs
    /// them (none with `--seccomp=off`): for code that cannot call `apply`,
    /// such as a child sharing this process's memory but not its threads.
    pub fn programs(&self) -> Vec<Arc<BpfProgram>> {
        self.extra.iter().chain(&self.program).cloned().collect()
    }

    /// [`ThreadFilter::apply`] on a new thread, sending the outcome to the
    /// thread that waits for it before the guest may run; whether the
    /// thread may go on (false: it must end without running anything).
    pub fn apply_and_report(&self, ready: &std::sync::mpsc::Sender<Result<(), Error>>) -> bool {
        let confined = self.apply();
        let ok = confined.is_ok();
        // A waiter that is gone has given up on this thread already.
        let _ = ready.send(confined);
        ok
    }
}

fn block_host_signals() -> std::io::Result<()> {
    // SAFETY: a zeroed sigset_t is a valid argument to sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in HOST_SIGNALS {
        // SAFETY: as above; `sig` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: `set` is initialized; the old mask is not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

fn compile(
    kind: ThreadKind,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    denied: Denied,
) -> Result<BpfProgram, Error> {
    let err = |source| Error::Build {
        thread: kind,
        source,
    };
    let filter = SeccompFilter::new(
        rules,
        match denied {
            Denied::Stop => SeccompAction::Trap,
            Denied::Log => SeccompAction::Log,
        },
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    filter.try_into().map_err(err)
}

/// Opening a file answered with EACCES, for threads of `kind` (see
/// `rules::opens_files`).
fn opens_refused(kind: ThreadKind) -> Result<BpfProgram, Error> {
    let rules = rules::OPENS.iter().map(|&c| (c, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    );
    let err = |source| Error::Build {
        thread: kind,
        source,
    };
    filter.map_err(err)?.try_into().map_err(err)
}

/// clone3(2) answered with ENOSYS: its flags are in memory, out of a
/// filter's reach, and glibc then falls back to clone(2), whose flags the
/// main filter checks (Docker's default profile does the same).
fn clone3_unavailable() -> Result<BpfProgram, Error> {
    let err = |source| Error::Build {
        thread: ThreadKind::Main,
        source,
    };
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(err)?;
    filter.try_into().map_err(err)
}

#[cfg(test)]
mod tests;
