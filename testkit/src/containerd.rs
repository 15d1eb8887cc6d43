//! A private containerd (Debian's package) for shim tests: its own root,
//! state and socket under a scratch directory, driven with `ctr`, stopped
//! with every task it still has on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A containerd started for one test.
pub struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    /// Starts containerd with everything under `dir`; panics (naming the
    /// package) when containerd or ctr is not installed.
    pub fn start(dir: &Path) -> Containerd {
        for tool in ["containerd", "ctr"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is missing: install Debian's containerd package (scripts/setup-debian.sh)"
            );
        }
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            dir: dir.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    /// `ctr --address SOCK args...` with its output.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().expect("run ctr")
    }

    /// The gRPC socket containerd listens on (and passes to its shims).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The same, to run as the caller likes.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Where containerd keeps the running tasks' bundles (namespace `default`).
    pub fn bundles(&self) -> PathBuf {
        self.dir.join("state/io.containerd.runtime.v2.task/default")
    }

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks' shims outlive containerd: take them down first.
        let tasks = self.ctr(&["task", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
            let _ = self.ctr(&["task", "delete", "-f", id]);
        }
        // SAFETY: kill(2) on our own child's pid, not yet waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
