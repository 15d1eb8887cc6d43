//! Running the `minivm` binary under test: where it and the default kernel
//! are, whether KVM is usable, scratch directories, runs with a timeout.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a real Linux boot may take: about 80-130 s to init on the
/// nested CI machines (kvm-pvm), ~100 ms on hardware.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

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

/// What a minivm run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status (None if it had to be killed at the timeout).
    pub status: Option<ExitStatus>,
    /// Guest console output (or a command's stdout), as text.
    pub stdout: String,
    /// The same, byte for byte.
    pub stdout_bytes: Vec<u8>,
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
pub fn run_minivm<I, S>(args: I, timeout: Duration) -> RunOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_minivm_with(Command::new(minivm_bin()).args(args), timeout)
}

/// The `run` arguments that boot a busybox initramfs whose `/init` is
/// `init_script` (written under `dir`) on the default kernel, quietly; more
/// `run` options may follow them.
pub fn initramfs_boot_args(dir: &Path, init_script: &str) -> Vec<String> {
    let initrd = crate::busybox_initramfs(dir, init_script);
    let kernel = default_kernel();
    [
        "run",
        "--kernel",
        path_str(&kernel),
        "--initrd",
        path_str(&initrd),
        "--append",
        "quiet rdinit=/init",
    ]
    .map(String::from)
    .to_vec()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Runs a prepared command (stdout/stderr captured, stdin null) with a timeout.
pub fn run_minivm_with(cmd: &mut Command, timeout: Duration) -> RunOutput {
    run_minivm_input(cmd, None, timeout)
}

/// [`run_minivm_with`], with `input` (if any) written to minivm's stdin by
/// a thread of its own (then closed: EOF).
pub fn run_minivm_input(cmd: &mut Command, input: Option<Vec<u8>>, timeout: Duration) -> RunOutput {
    let start = Instant::now();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn minivm");
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&data);
        });
    }
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
    let stdout_bytes = t_out.join().unwrap();
    let stdout = String::from_utf8_lossy(&stdout_bytes).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    RunOutput {
        status,
        stdout,
        stdout_bytes,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// The request counts by opcode that `--fs-stats` printed for share `tag`.
pub fn fs_stats(stderr: &str, tag: &str) -> BTreeMap<String, u64> {
    let head = format!("minivm: virtio-fs {tag}: ");
    let mut lines = stderr.lines().skip_while(|l| !l.starts_with(&head));
    assert!(
        lines.next().is_some(),
        "no --fs-stats dump for {tag}:\n{stderr}"
    );
    lines
        .skip(1) // the column titles
        .map_while(|l| {
            let mut f = l.split_whitespace();
            let (op, count) = (f.next()?, f.next()?.parse().ok()?);
            l.starts_with("  ").then(|| (op.to_string(), count))
        })
        .collect()
}
