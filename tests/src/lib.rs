//! Helpers for minivm's integration tests: the tiny test guest, busybox disks,
//! and running the `minivm` binary with a timeout.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Whether KVM tests may run. Without /dev/kvm a test fails, unless
/// `MINIVM_ALLOW_NO_KVM=1` is set, in which case it returns false (and the
/// test should stop, having printed why).
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if ok {
        return true;
    }
    if std::env::var("MINIVM_ALLOW_NO_KVM").as_deref() == Ok("1") {
        eprintln!("/dev/kvm is not usable; MINIVM_ALLOW_NO_KVM=1, so this KVM test does nothing");
        return false;
    }
    panic!("/dev/kvm is missing or not accessible: KVM tests need it (set MINIVM_ALLOW_NO_KVM=1 to allow this)");
}

/// The `minivm` binary of the build these tests belong to.
pub fn minivm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MINIVM_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/minivm
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("minivm");
    assert!(
        p.is_file(),
        "{} does not exist: run `cargo build` before `cargo test`",
        p.display()
    );
    p
}

/// The default guest kernel built by kernel/build.sh.
pub fn default_kernel() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let p = cache.join("minivm/kernel/default/vmlinux");
    assert!(
        p.is_file(),
        "{} does not exist: run kernel/build.sh first",
        p.display()
    );
    p
}

/// A fresh directory for one test's files.
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("minivm-tests");
    let d = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What the tiny guest does: print `message` on the serial port, optionally
/// write the boot marker, then end one way or another.
#[derive(Debug, Clone)]
pub struct TinyGuest {
    /// Bytes written to COM1.
    pub message: Vec<u8>,
    /// Write to the boot-marker port first.
    pub boot_marker: bool,
    /// How it ends.
    pub end: TinyEnd,
}

/// How the tiny guest ends.
#[derive(Debug, Clone, Copy)]
pub enum TinyEnd {
    /// Write this status to the exit port.
    Exit(u8),
    /// Pulse reset through the i8042 (what `reboot` does).
    Reset,
    /// Execute UD2 with no IDT: a triple fault.
    TripleFault,
    /// Spin forever (to test external stops).
    Spin,
}

/// Where the tiny guest is loaded (and entered).
pub const TINY_GUEST_ADDR: u64 = 0x10_0000;

impl TinyGuest {
    /// Hand-assembled 64-bit code. The VMM enters it in long mode.
    pub fn code(&self) -> Vec<u8> {
        let mut c: Vec<u8> = Vec::new();
        if self.boot_marker {
            c.extend([0xb0, 0x01, 0xe6, 0xf5]); // mov al,1; out 0xf5,al
        }
        c.extend([0x66, 0xba, 0xf8, 0x03]); // mov dx,0x3f8
        let lea_at = c.len();
        c.extend([0x48, 0x8d, 0x35, 0, 0, 0, 0]); // lea rsi,[rip+msg]
                                                  // loop: lodsb; test al,al; jz done; out dx,al; jmp loop
        c.extend([0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8]);
        match self.end {
            TinyEnd::Exit(s) => c.extend([0xb0, s, 0xe6, 0xf4]), // mov al,s; out 0xf4,al
            TinyEnd::Reset => c.extend([0xb0, 0xfe, 0xe6, 0x64]), // mov al,0xfe; out 0x64,al
            TinyEnd::TripleFault => c.extend([0x0f, 0x0b]),      // ud2
            TinyEnd::Spin => {}
        }
        c.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp hlt (spin)
        let msg_at = c.len();
        let rel = (msg_at - (lea_at + 7)) as i32;
        c[lea_at + 3..lea_at + 7].copy_from_slice(&rel.to_le_bytes());
        c.extend(&self.message);
        c.push(0);
        c
    }

    /// An ELF64 file with the code as one loadable segment.
    pub fn elf(&self) -> Vec<u8> {
        let code = self.code();
        let paddr = TINY_GUEST_ADDR;
        let mut f = vec![0u8; 0x78];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&paddr.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f.extend_from_slice(&code);
        f
    }

    /// Writes the ELF into `dir` and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.elf()).unwrap();
        p
    }
}

/// What a minivm run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status (None if it had to be killed at the timeout).
    pub status: Option<ExitStatus>,
    /// Guest console output.
    pub stdout: String,
    /// minivm's own messages.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl RunOutput {
    /// The exit code, panicking with the output if minivm timed out or was killed.
    pub fn code(&self) -> i32 {
        match self.status.and_then(|s| s.code()) {
            Some(c) => c,
            None => panic!("minivm did not exit by itself: {self:#?}"),
        }
    }
}

/// Runs `minivm` with `args`, stdin from /dev/null, killing it after `timeout`.
pub fn run_minivm(args: &[&str], timeout: Duration) -> RunOutput {
    run_minivm_with(Command::new(minivm_bin()).args(args), timeout)
}

/// Runs a prepared command (stdout/stderr captured, stdin null) with a timeout.
pub fn run_minivm_with(cmd: &mut Command, timeout: Duration) -> RunOutput {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn minivm");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    RunOutput {
        status,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// Applets linked into the test rootfs.
const APPLETS: &[&str] = &[
    "sh", "mount", "umount", "cat", "echo", "dd", "printf", "reboot", "poweroff", "ls", "stat",
    "sync", "mkdir", "rm", "sleep", "uname", "grep", "test", "[", "touch", "head", "wc", "cmp",
    "md5sum", "true", "false", "id",
];

/// Makes a bootable ext4 disk image (`size_mib`) holding busybox-static and
/// `/init` = `init_script`, without root (mkfs.ext4 -d). Extra files: (path, contents).
pub fn busybox_disk(
    dir: &Path,
    name: &str,
    init_script: &str,
    extra: &[(&str, &[u8])],
    size_mib: u32,
) -> PathBuf {
    let root = dir.join(format!("{name}.root"));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("busybox-static is not installed (apt install busybox-static)");
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    write_exec(&root.join("init"), init_script);
    for (path, data) in extra {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        if data.starts_with(b"#!") {
            set_exec(&p);
        }
    }
    let img = dir.join(format!("{name}.raw"));
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&img)
        .arg(format!("{size_mib}M"))
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success(), "mkfs.ext4 failed");
    img
}

fn set_exec(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn write_exec(p: &Path, script: &str) {
    std::fs::write(p, script).unwrap();
    set_exec(p);
}

/// The shell line that exits the VM with `status` through the exit port.
pub fn exit_port_cmd(status: u8) -> String {
    format!(
        "printf '\\{:03o}' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null",
        status
    )
}

/// Makes a gzip-less newc initramfs with busybox and `/init` (uses `cpio`).
pub fn busybox_initramfs(dir: &Path, init_script: &str) -> PathBuf {
    let root = dir.join("initramfs.root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is needed");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    write_exec(&root.join("init"), init_script);
    let out = dir.join("initramfs.cpio");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
            root.display(),
            out.display()
        ))
        .status()
        .expect("sh");
    assert!(st.success(), "cpio failed (apt install cpio)");
    out
}
