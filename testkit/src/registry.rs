//! A throwaway local registry (Debian's `docker-registry`, i.e. the CNCF
//! distribution registry) and skopeo, for tests that push and pull.

use crate::error::TestImageError;
use crate::tempdir::TempDir;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// User name of [`bcrypt_htpasswd_line`].
pub const HTPASSWD_USER: &str = "minivm";
/// Password of [`bcrypt_htpasswd_line`].
pub const HTPASSWD_PASSWORD: &str = "good-password";

/// An htpasswd line for [`HTPASSWD_USER`] / [`HTPASSWD_PASSWORD`] (bcrypt,
/// cost 4, precomputed so tests need no htpasswd tool).
pub fn bcrypt_htpasswd_line() -> String {
    format!("{HTPASSWD_USER}:$2b$04$FXQKbcsMg.pQf0/TojIz7.oPOO.44/or5lsegX9GRNEcKmhV2GKpm\n")
}

/// A free TCP port on 127.0.0.1 (free when this returns; racy but fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

fn tool_missing(
    tool: &'static str,
    package: &'static str,
) -> impl FnOnce(std::io::Error) -> TestImageError {
    move |source| TestImageError::ToolMissing {
        tool,
        package,
        source,
    }
}

/// Runs `skopeo --insecure-policy copy EXTRA.. SRC DST`; the error holds skopeo's stderr.
pub fn skopeo_copy(src: &str, dst: &str, extra: &[&str]) -> Result<(), TestImageError> {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .arg("copy")
        .args(extra)
        .args([src, dst])
        .output()
        .map_err(tool_missing("skopeo", "skopeo"))?;
    if !out.status.success() {
        return Err(TestImageError::ToolFailed {
            what: format!("skopeo copy {src} {dst}"),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// A `docker-registry serve` child process on 127.0.0.1, storing into a temp
/// dir; killed (and its storage removed) on drop, also when a test panics.
pub struct TestRegistry {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl TestRegistry {
    /// Starts a registry; with `htpasswd` (file contents, e.g.
    /// [`bcrypt_htpasswd_line`]) it requires HTTP Basic authentication.
    /// Waits until it answers.
    pub fn start(htpasswd: Option<&str>) -> Result<TestRegistry, TestImageError> {
        let dir = TempDir::new("registry").map_err(TestImageError::io("creating a temp dir"))?;
        let port = free_port();
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: minivm-test\n",
            storage.display()
        );
        if let Some(h) = htpasswd {
            let hp = dir.path().join("htpasswd");
            std::fs::write(&hp, h).map_err(TestImageError::io("writing htpasswd"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: minivm-test\n    path: {}\n",
                hp.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).map_err(TestImageError::io("writing the registry config"))?;
        let log = std::fs::File::create(dir.path().join("registry.log"))
            .map_err(TestImageError::io("creating the registry log"))?;
        let log2 = log
            .try_clone()
            .map_err(TestImageError::io("cloning the log handle"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(tool_missing("docker-registry", "docker-registry"))?;
        let mut reg = TestRegistry { child, port, dir };
        reg.wait_ready()?;
        Ok(reg)
    }

    fn wait_ready(&mut self) -> Result<(), TestImageError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TestImageError::ToolFailed {
                    what: "docker-registry serve".into(),
                    status,
                    stderr: self.log(),
                });
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 12];
                if s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && buf.starts_with(b"HTTP/1.")
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(TestImageError::RegistryNotReady {
            port: self.port,
            log: self.log(),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
