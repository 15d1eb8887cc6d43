//! The few system calls std does not wrap, declared by hand: the agent has
//! no dependencies, so vmm/build.rs can build it with rustc alone.

use std::ffi::{c_char, c_int, c_ulong, c_void, CString};
use std::io;
use std::os::fd::AsRawFd;

pub const MS_RDONLY: c_ulong = 1;
pub const MS_NOSUID: c_ulong = 2;
pub const MS_NODEV: c_ulong = 4;
pub const MS_NOEXEC: c_ulong = 8;
pub const MS_REMOUNT: c_ulong = 32;
pub const MS_MOVE: c_ulong = 8192;
pub const SIGKILL: c_int = 9;
pub const SIGTERM: c_int = 15;
pub const SIGINT: c_int = 2;
pub const SIGHUP: c_int = 1;
const RB_POWER_OFF: c_int = 0x4321_fedc_u32 as c_int;

extern "C" {
    fn mount(
        source: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    fn sethostname(name: *const c_char, len: usize) -> c_int;
    fn ioperm(from: c_ulong, num: c_ulong, on: c_int) -> c_int;
    fn reboot(cmd: c_int) -> c_int;
    fn sync();
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn signal(sig: c_int, handler: usize) -> usize;
    fn chroot(path: *const c_char) -> c_int;
    fn umount2(target: *const c_char, flags: c_int) -> c_int;
    fn setsid() -> c_int;
    fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    fn clock_settime(clock: c_int, tp: *const Timespec) -> c_int;
    fn waitid(idtype: c_int, id: u32, info: *mut SigInfo, options: c_int) -> c_int;
}

/// The start of Linux's 128-byte `siginfo_t` as waitid fills it for a child.
#[repr(C)]
struct SigInfo {
    signo: c_int,
    errno: c_int,
    code: c_int,
    _pad: c_int,
    pid: c_int,
    uid: u32,
    status: c_int,
    _rest: [u8; 100],
}

const P_ALL: c_int = 0;
const WEXITED: c_int = 4;
const WNOWAIT: c_int = 0x0100_0000;
const WNOHANG: c_int = 1;
const TIOCSPTLCK: c_ulong = 0x4004_5431;
const TIOCGPTN: c_ulong = 0x8004_5430;

#[repr(C)]
struct Timespec {
    secs: i64,
    nanos: i64,
}

const CLOCK_REALTIME: c_int = 0;
/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: c_ulong = 0x5207;

const TIOCSCTTY: c_ulong = 0x540e;
const TIOCSWINSZ: c_ulong = 0x5414;
const MNT_DETACH: c_int = 2;

#[repr(C)]
struct Winsize {
    rows: u16,
    cols: u16,
    xpixel: u16,
    ypixel: u16,
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(r: c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2); `source`/`fstype` may be empty (NULL).
pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    let ptr = |c: &CString, empty: bool| if empty { std::ptr::null() } else { c.as_ptr() };
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or NULL.
    check(unsafe {
        mount(
            ptr(&s, source.is_empty()),
            t.as_ptr(),
            ptr(&f, fstype.is_empty()),
            flags,
            ptr(&d, data.is_empty()).cast(),
        )
    })
}

/// Makes the current directory the root (after it was moved onto `/`).
pub fn chroot_here() -> io::Result<()> {
    // SAFETY: a static NUL-terminated path.
    check(unsafe { chroot(c".".as_ptr()) })
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { sethostname(name.as_ptr().cast(), name.len()) })
}

/// An input device's name (EVIOCGNAME).
pub fn input_device_name(fd: c_int) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 256];
    // _IOC(_IOC_READ, 'E', 0x06, len)
    let request = (2 << 30) | ((buf.len() as c_ulong) << 16) | (0x45 << 8) | 0x06;
    // SAFETY: EVIOCGNAME writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { ioctl(fd, request, buf.as_mut_ptr()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let name = &buf[..(n as usize).min(buf.len())];
    Ok(name.split(|b| *b == 0).next().unwrap_or_default().to_vec())
}

/// Detaches the mount on `target`.
pub fn unmount(target: &str) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: a valid C string; umount2 only reads it.
    check(unsafe { umount2(t.as_ptr(), MNT_DETACH) })
}

/// Sets a terminal's window size.
pub fn set_window_size(tty: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = Winsize {
        rows,
        cols,
        xpixel: 0,
        ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one struct winsize, which `ws` is.
    check(unsafe { ioctl(tty.as_raw_fd(), TIOCSWINSZ, &ws as *const Winsize) })
}

/// In a new child before exec: a session of its own with stdin (a
/// terminal) as its controlling terminal. Async-signal-safe.
pub fn take_terminal() -> io::Result<()> {
    // SAFETY: setsid has no arguments; the child is not a group leader.
    check(unsafe { setsid() })?;
    // SAFETY: TIOCSCTTY on fd 0 takes an int argument, 0: do not steal.
    check(unsafe { ioctl(0, TIOCSCTTY, 0 as c_int) })
}

pub fn flush_disks() {
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { sync() }
}

pub fn kill_pid(pid: i32, sig: c_int) {
    // SAFETY: kill only sends a signal.
    unsafe { kill(pid, sig) };
}

/// Reaps one child: `(pid, raw wait status)`, or `None` when there is none left.
pub fn wait_any() -> Option<(i32, c_int)> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer for the call.
        let pid = unsafe { waitpid(-1, &mut status, 0) };
        if pid > 0 {
            return Some((pid, status));
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// Waits until a child has ended and says which, leaving it to be reaped
/// (`reap`); `None` when there are no children.
pub fn peek_child() -> Option<i32> {
    loop {
        // SAFETY: zeroed is a valid SigInfo (plain integers).
        let mut info: SigInfo = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a writable siginfo_t-sized buffer.
        let r = unsafe { waitid(P_ALL, 0, &mut info, WEXITED | WNOWAIT) };
        if r == 0 {
            return Some(info.pid);
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// Reaps the ended child `pid`: its raw wait status, or `None` when
/// someone else reaped it.
pub fn reap(pid: i32) -> Option<c_int> {
    let mut status = 0;
    // SAFETY: status is a valid out pointer for the call.
    (unsafe { waitpid(pid, &mut status, WNOHANG) } == pid).then_some(status)
}

/// A new pseudo-terminal: its master and slave sides (devpts on /dev/pts).
pub fn open_pty() -> io::Result<(std::fs::File, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    const O_NOCTTY: c_int = 0o400;
    let open = |p: &str| {
        std::fs::File::options()
            .read(true)
            .write(true)
            .custom_flags(O_NOCTTY)
            .open(p)
    };
    let master = open("/dev/pts/ptmx").or_else(|_| open("/dev/ptmx"))?;
    let (unlock, mut n): (c_int, c_int) = (0, 0);
    // SAFETY: TIOCSPTLCK reads an int, TIOCGPTN writes one; both pointers are valid.
    unsafe {
        check(ioctl(
            master.as_raw_fd(),
            TIOCSPTLCK,
            &unlock as *const c_int,
        ))?;
        check(ioctl(master.as_raw_fd(), TIOCGPTN, &mut n as *mut c_int))?;
    }
    let slave = open(&format!("/dev/pts/{n}"))?;
    Ok((master, slave))
}

/// Installs `handler` for `sig`.
pub fn on_signal(sig: c_int, handler: extern "C" fn(c_int)) {
    // SAFETY: the handler is an extern "C" fn that only makes async-signal-safe calls.
    unsafe { signal(sig, handler as usize) };
}

/// The exit status of a raw wait status: the code, or 128 + the signal.
pub fn exit_code(status: c_int) -> u8 {
    if status & 0x7f == 0 {
        ((status >> 8) & 0xff) as u8
    } else {
        128u8.wrapping_add((status & 0x7f) as u8)
    }
}

/// Tells minivm that the VM is set up (its "boot finished" port, 0xf5):
/// with `run --snapshot-to`, the snapshot point.
pub fn signal_ready(port: Option<&std::fs::File>) -> io::Result<()> {
    let p = port.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    std::os::unix::fs::FileExt::write_at(p, &[1], 0xf5).map(drop)
}

/// Steps CLOCK_REALTIME to `secs`.`nanos`.
pub fn set_clock(secs: i64, nanos: i64) -> io::Result<()> {
    let tp = Timespec { secs, nanos };
    // SAFETY: clock_settime reads the struct we pass.
    check(unsafe { clock_settime(CLOCK_REALTIME, &tp) })
}

/// Mixes `seed` into the kernel's random pool, credited as entropy, and
/// reseeds the generator at once, so that no two VMs restored from one
/// snapshot share their random numbers.
pub fn reseed(urandom: &std::fs::File, seed: &[u8]) -> io::Result<()> {
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as c_int).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as c_int).to_ne_bytes());
    info.extend_from_slice(seed);
    info.resize(info.len().next_multiple_of(4), 0);
    let fd = urandom.as_raw_fd();
    // SAFETY: RNDADDENTROPY reads the rand_pool_info in `info` (header plus
    // buf_size bytes); RNDRESEEDCRNG takes no argument.
    unsafe {
        check(ioctl(fd, RNDADDENTROPY, info.as_ptr()))?;
        check(ioctl(fd, RNDRESEEDCRNG))
    }
}

/// Ends the VM with `code` through minivm's exit port (0xf4): written
/// through `/dev/port` (`port`, opened early) or with `out` after ioperm;
/// powers off when neither reaches it.
pub fn end_vm(port: Option<&std::fs::File>, code: u8) -> ! {
    if let Some(p) = port {
        let _ = std::os::unix::fs::FileExt::write_at(p, &[code], 0xf4);
    }
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { ioperm(0xf4, 1, 1) } == 0 {
        // SAFETY: port 0xf4 is minivm's exit port; writing it ends the VM.
        unsafe { std::arch::asm!("out dx, al", in("dx") 0xf4u16, in("al") code) };
    }
    eprintln!("minivm-agent: no exit port; powering off (status {code} is lost)");
    // SAFETY: reboot(2) with a valid command; PID 1 may power off.
    unsafe { reboot(RB_POWER_OFF) };
    // PID 1 ending panics the kernel, which minivm reports.
    std::process::exit(i32::from(code))
}
