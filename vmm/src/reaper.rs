//! A VM's teardown after minivm has exited.
//!
//! Closing the last handle on a KVM VM costs milliseconds that are mostly
//! waiting: KVM's teardown waits out SRCU grace periods (MMU notifier, irq
//! routing, irqfds), 4-5 ms on a kvm-pvm host for a VM that ran a few
//! milliseconds; unmapping the memory a guest touched costs more (2.5 ms for
//! 34 MiB). A process pays both in its own exit, before its parent's wait
//! returns. So each VM gets a reaper: a child process made with `CLONE_VM`
//! (it shares minivm's memory, so the guest memory's mappings live as long
//! as either process) holding its own copy of the VM's file and nothing
//! else. It waits on a pipe whose writing end only minivm holds:
//! - at minivm's exit the pipe closes, minivm's exit frees neither the VM
//!   (the reaper's copy of its file is the last) nor the memory (the reaper
//!   still uses it), and the reaper's own exit then does both;
//! - a VM dropped earlier (`--restart`, an error) is released at once:
//!   [`Reaper`]'s `Drop` closes the pipe and waits for the reaper.
//!
//! Everything a user can see is released by minivm itself before it exits:
//! the reaper closes every other file it was cloned with (console, disk,
//! taps, sockets) first, blocks every signal, and then runs under its own
//! seccomp filter (read, close, exit). It runs only raw system calls on a stack of
//! its own: it shares minivm's memory but none of its threads' locks.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use sandbox::{BpfProgram, ThreadFilter};

/// The reaper's stack: its frame is a few hundred bytes.
const STACK_BYTES: usize = 64 << 10;

/// A reaper's name in `ps` (at most 15 bytes).
const NAME: &[u8] = b"minivm-reaper\0";

/// What could not be set up; the VM is then released the slow way.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// pipe2(2) failed.
    #[error("cannot make the reaper's pipe: {0}")]
    Pipe(#[source] std::io::Error),
    /// The stack could not be mapped.
    #[error("cannot map the reaper's stack: {0}")]
    Stack(#[source] std::io::Error),
    /// clone(2) failed (a process limit, a filter).
    #[error("cannot start the reaper: {0}")]
    Clone(#[source] std::io::Error),
}

/// What the reaper reads, in memory it shares with minivm.
struct Args {
    /// The VM's file and the pipe's reading end: the only fds it keeps.
    vm: RawFd,
    pipe: RawFd,
    /// Its filters, installed in this order.
    filters: Vec<libc::sock_fprog>,
    /// Every signal.
    mask: libc::sigset_t,
    /// Keeps the programs `filters` points into alive.
    _programs: Vec<Arc<BpfProgram>>,
}

/// A running reaper that holds one VM. Dropping it releases the VM now;
/// [`ParkedVm::release_at_exit`] leaves that to minivm's exit.
pub struct Reaper {
    pid: libc::pid_t,
    /// The pipe's writing end: the reaper ends when it closes.
    pipe: Option<OwnedFd>,
    stack: *mut libc::c_void,
    args: *mut Args,
}

impl Reaper {
    /// Starts a reaper holding its own copy of `vm` (a KVM VM's fd), confined
    /// by `filter`.
    pub fn spawn(vm: RawFd, filter: &ThreadFilter) -> Result<Reaper, Error> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::Pipe(std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 just returned these fds, owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let programs = filter.programs();
        let filters = programs
            .iter()
            .map(|p| libc::sock_fprog {
                len: p.len() as u16,
                filter: p.as_ptr() as *mut libc::sock_filter,
            })
            .collect();
        // SAFETY: a zeroed sigset_t is valid input to sigfillset.
        let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `mask` is a sigset_t owned by this frame.
        unsafe { libc::sigfillset(&mut mask) };
        let args = Box::into_raw(Box::new(Args {
            vm,
            pipe: read.as_raw_fd(),
            filters,
            mask,
            _programs: programs,
        }));
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let stack = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            // SAFETY: `args` came from Box::into_raw above and nothing else has it.
            drop(unsafe { Box::from_raw(args) });
            return Err(Error::Stack(std::io::Error::last_os_error()));
        }
        // SAFETY: `reaper_main` only makes raw system calls and reads `args`,
        // which stays alive and unchanged until the reaper has ended (Drop
        // waits for it; `release_at_exit` leaks it); the stack is its own and
        // grows down from its top. CLONE_VM without CLONE_FILES: the reaper
        // gets a copy of the fd table, so closing its fds leaves ours open.
        let pid = unsafe {
            libc::clone(
                reaper_main,
                stack.cast::<u8>().add(STACK_BYTES).cast(),
                libc::CLONE_VM,
                args.cast(),
            )
        };
        let e = std::io::Error::last_os_error();
        let reaper = Reaper {
            pid: pid.max(0),
            pipe: Some(write),
            stack,
            args,
        };
        if pid < 0 {
            // Nothing was started: Drop only frees what was made for it.
            drop(reaper);
            return Err(Error::Clone(e));
        }
        drop(read);
        Ok(reaper)
    }

    /// The reaper's pid.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.pipe = None;
        if self.pid > 0 {
            let mut status = 0;
            loop {
                // SAFETY: waits for our own child, writing its status here.
                let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
                if r >= 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break;
                }
            }
        }
        // SAFETY: the reaper has ended (or never started): nothing uses its
        // stack or its arguments any more; both came from spawn.
        unsafe {
            libc::munmap(self.stack, STACK_BYTES);
            drop(Box::from_raw(self.args));
        }
    }
}

/// The reaper: raw system calls only (it runs beside minivm's threads in
/// the same memory, so no allocator, no locks, no thread-local state).
extern "C" fn reaper_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Args` spawn made, alive until this process ends.
    let a = unsafe { &*(arg as *const Args) };
    // SAFETY: raw system calls on memory that `Args` owns or on fds of this
    // process's own fd table.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &a.mask,
            std::ptr::null_mut::<libc::sigset_t>(),
            std::mem::size_of::<libc::c_ulong>(),
        );
        libc::syscall(libc::SYS_prctl, libc::PR_SET_NAME, NAME.as_ptr());
        // Every fd but the two kept: console, disk, taps and sockets are
        // minivm's to release when it exits.
        let (lo, hi) = (
            a.vm.min(a.pipe) as libc::c_uint,
            a.vm.max(a.pipe) as libc::c_uint,
        );
        let mut closed = 0;
        if lo > 0 {
            closed |= libc::syscall(libc::SYS_close_range, 0, lo - 1, 0);
        }
        if hi > lo + 1 {
            closed |= libc::syscall(libc::SYS_close_range, lo + 1, hi - 1, 0);
        }
        closed |= libc::syscall(libc::SYS_close_range, hi + 1, libc::c_uint::MAX, 0);
        if closed != 0 {
            // No close_range (Linux < 5.9): end now, which closes them all
            // and leaves the VM's release to minivm.
            return 0;
        }
        if !a.filters.is_empty()
            && libc::syscall(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        {
            return 0;
        }
        for f in &a.filters {
            let mode = libc::SECCOMP_SET_MODE_FILTER;
            if libc::syscall(libc::SYS_seccomp, mode, 0, f as *const libc::sock_fprog) != 0 {
                return 0;
            }
        }
        let mut byte = 0u8;
        // Ends at EOF: every writing end closed, i.e. minivm has exited or
        // dropped this reaper. No signal can interrupt it: all are blocked.
        while libc::syscall(libc::SYS_read, a.pipe, &mut byte as *mut u8, 1) > 0 {}
        // The VM before the memory: an exit unmaps the memory first, and
        // KVM would then zap the mappings of a VM still alive page by page.
        libc::syscall(libc::SYS_close, a.vm);
    }
    0
}

/// A stopped VM left to its reaper, with the guest memory it mapped.
pub struct ParkedVm {
    /// Dropped first: the VM is closed before its memory is unmapped.
    reaper: Reaper,
    _memory: Arc<boot::GuestMemory>,
}

impl ParkedVm {
    /// Parks a VM whose own handles minivm has closed but for `memory`.
    pub fn new(reaper: Reaper, memory: Arc<boot::GuestMemory>) -> ParkedVm {
        ParkedVm {
            reaper,
            _memory: memory,
        }
    }

    /// Leaves the VM and its memory to minivm's exit and the reaper's.
    pub fn release_at_exit(self) {
        std::mem::forget(self);
    }

    /// The reaper's pid.
    pub fn reaper_pid(&self) -> libc::pid_t {
        self.reaper.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox::{Denied, MainNeeds, Policy, ThreadKind};

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds, owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Whether the pipe whose reading end is `fd` has no writer left,
    /// waiting up to `ms`.
    fn closed(fd: &OwnedFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        n == 1 && p.revents & libc::POLLHUP != 0
    }

    /// A reaper under `filter` holds the "VM" (a pipe's writing end) and
    /// nothing else, until it is dropped.
    fn holds_only_the_vm(filter: &ThreadFilter) {
        let (vm_r, vm_w) = pipe();
        let (other_r, other_w) = pipe();
        let reaper = Reaper::spawn(vm_w.as_raw_fd(), filter).unwrap();
        drop((vm_w, other_w));
        assert!(closed(&other_r, 10_000), "the reaper kept another fd");
        assert!(!closed(&vm_r, 200), "the reaper let the VM go early");
        drop(reaper);
        assert!(closed(&vm_r, 0), "the VM outlived its dropped reaper");
    }

    #[test]
    fn a_reaper_holds_the_vm_until_dropped() {
        holds_only_the_vm(&ThreadFilter::none(ThreadKind::Reaper));
    }

    #[test]
    fn a_confined_reaper_holds_the_vm_until_dropped() {
        // A denied call would kill the reaper (its signals are blocked) and
        // with it the VM's copy: the VM would go early.
        let policy = Policy::new(MainNeeds::default(), Denied::Stop).unwrap();
        holds_only_the_vm(&policy.filter(ThreadKind::Reaper));
    }

    #[test]
    fn a_parked_vm_is_released_after_the_process_exits() {
        let (vm_r, vm_w) = pipe();
        let (ready_r, ready_w) = pipe();
        let (go_r, go_w) = pipe();
        // SAFETY: the child only spawns the reaper (pipe2, mmap, malloc,
        // which glibc keeps usable after fork, and clone) and ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // Only this test's fds: other tests' pipes copied by the fork
            // would keep their reapers waiting.
            let keep = [vm_w.as_raw_fd(), ready_w.as_raw_fd(), go_r.as_raw_fd()];
            for fd in (3..4096).filter(|fd| !keep.contains(fd)) {
                // SAFETY: closes fds of this single-threaded child only.
                unsafe { libc::close(fd) };
            }
            let memory = Arc::new(
                boot::GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap(),
            );
            let parked = Reaper::spawn(vm_w.as_raw_fd(), &ThreadFilter::none(ThreadKind::Reaper))
                .map(|r| ParkedVm::new(r, memory));
            drop(vm_w);
            let mut byte = [0u8];
            // SAFETY: writes and reads one byte on our own pipes, then ends.
            unsafe {
                libc::write(ready_w.as_raw_fd(), b"r".as_ptr().cast(), 1);
                libc::read(go_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1);
                parked.map(ParkedVm::release_at_exit).ok();
                libc::_exit(0);
            }
        }
        drop((vm_w, ready_w, go_r));
        let mut byte = [0u8];
        // SAFETY: reads one byte into our buffer.
        let n = unsafe { libc::read(ready_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 1, "the child never got its reaper going");
        assert!(!closed(&vm_r, 200), "the VM went before the process exited");
        drop(go_w);
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(status, 0);
        assert!(closed(&vm_r, 10_000), "the reaper never released the VM");
    }
}
