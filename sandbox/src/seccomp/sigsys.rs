//! Reporting of denied system calls: the filters answer a call they do not
//! allow with SIGSYS (SECCOMP_RET_TRAP), and this handler names the call and
//! the thread on stderr, then ends the process. It only reads a thread-local
//! byte, formats into a stack buffer and calls write(2) and _exit(2), which
//! every filter allows.

use std::cell::Cell;

use super::{ThreadKind, DENIED_EXIT_STATUS};

thread_local! {
    /// The kind of the calling thread, once it installed its filter.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Records the calling thread's kind for the report.
pub(super) fn set_thread_kind(kind: ThreadKind) {
    KIND.with(|k| k.set(Some(kind)));
}

/// The SIGSYS part of `siginfo_t` (`_sigsys` in the kernel's union, after
/// signo, errno, code and padding).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// `si_code` of a seccomp trap.
const SYS_SECCOMP: libc::c_int = 1;

/// A fixed buffer that formats without allocating.
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The report line for a denied call `nr` made by a `kind` thread.
fn report(kind: Option<ThreadKind>, nr: i64) -> Line {
    let mut l = Line {
        buf: [0; 192],
        len: 0,
    };
    l.push(b"minivm: seccomp: the ");
    l.push(kind.map_or("unfiltered", ThreadKind::name).as_bytes());
    l.push(b" thread made a system call outside its filter: ");
    let name = usize::try_from(nr)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map_or("unknown", |s| s.name());
    l.push(name.as_bytes());
    l.push(b" (");
    match u64::try_from(nr) {
        Ok(n) => l.push_num(n),
        Err(_) => l.push(b"negative"),
    }
    l.push(b"); stopping\n");
    l
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler;
    // for SIGSYS its union holds the _sigsys layout read here.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    if info.code != SYS_SECCOMP {
        return;
    }
    let kind = KIND.with(Cell::get);
    let line = report(kind, i64::from(info.syscall));
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is
    // valid for its length.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(DENIED_EXIT_STATUS);
    }
}

/// Installs the process-wide SIGSYS handler.
pub(super) fn install() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the fields set below complete it.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `act.sa_mask` is a valid sigset_t owned by `act`.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: `act` is fully initialized; the old action is not wanted. The
    // handler only makes async-signal-safe calls.
    if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(l: &Line) -> &str {
        std::str::from_utf8(&l.buf[..l.len]).unwrap()
    }

    #[test]
    fn report_names_the_call_and_the_thread() {
        let l = report(Some(ThreadKind::Vcpu), libc::SYS_openat);
        assert_eq!(
            text(&l),
            "minivm: seccomp: the vcpu thread made a system call outside its filter: openat (257); stopping\n"
        );
        let l = report(None, 100_000);
        assert!(text(&l).contains("unfiltered thread"), "{}", text(&l));
        assert!(text(&l).contains("unknown (100000)"), "{}", text(&l));
        assert!(text(&report(None, -1)).contains("unknown (negative)"));
    }
}
