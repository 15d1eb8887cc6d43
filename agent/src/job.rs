//! What minivm asks the agent to run, as it writes it into the initramfs
//! (`vmm/src/agent.rs` is the writer; the format is defined here):
//!
//! * `/minivm/argv`: the command and its arguments, each ending in NUL;
//! * `/minivm/env`: `KEY=VALUE` entries, each ending in NUL;
//! * `/minivm/job`: `key=value` lines: `root` (`blk:DEVICE` or
//!   `virtiofs:TAG`), `readonly` (`0`/`1`), `workdir`, `user`, `hostname`,
//!   `stdio` (`console`, the default; `ports`: minivm's virtio-console ports
//!   `minivm.stdout`, `minivm.stderr` and, with `stdin=1`, `minivm.stdin`;
//!   `tty`: the serial console as the command's terminal), `stdin`
//!   (`0`/`1`) and `winsize` (`ROWSxCOLS`, for `tty`).
//!
//! Values cannot hold a newline (minivm refuses them); names and arguments
//! are bytes.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// Where the image's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// A block device holding ext4.
    Block(String),
    /// A virtio-fs tag.
    VirtioFs(String),
}

/// Where the command's stdin, stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// The agent's own: /dev/console.
    Console,
    /// minivm's virtio-console ports; stdin from `minivm.stdin` or /dev/null.
    Ports {
        /// Whether minivm attached its stdin (`-i`).
        stdin: bool,
    },
    /// The serial console as the command's controlling terminal (`-t`).
    Tty {
        /// Rows and columns of the host's terminal (0: unknown).
        rows: u16,
        cols: u16,
    },
}

/// One run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The program and its arguments.
    pub argv: Vec<OsString>,
    /// The environment, `KEY=VALUE` each.
    pub env: Vec<OsString>,
    /// The root to switch to.
    pub root: Root,
    /// Mount the root read-only.
    pub read_only: bool,
    /// Working directory; empty: `/`.
    pub workdir: String,
    /// `user[:group]`, names or numbers; empty: root.
    pub user: String,
    /// The VM's host name.
    pub hostname: String,
    /// The command's stdio.
    pub stdio: Stdio,
}

/// Why the job files make no job.
#[derive(Debug, PartialEq, Eq)]
pub struct JobError(pub String);

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn nul_list(bytes: &[u8]) -> Vec<OsString> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect()
}

impl Job {
    /// Reads the three files' contents.
    pub fn parse(argv: &[u8], env: &[u8], job: &str) -> Result<Job, JobError> {
        let argv = nul_list(argv);
        if argv.is_empty() {
            return Err(JobError("no command to run".into()));
        }
        let mut root = None;
        let mut j = Job {
            argv,
            env: nul_list(env),
            root: Root::Block(String::new()),
            read_only: false,
            workdir: String::new(),
            user: String::new(),
            hostname: String::new(),
            stdio: Stdio::Console,
        };
        let (mut stdio, mut stdin, mut winsize) = ("console", false, (0, 0));
        for line in job.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| JobError(format!("job line without '=': {line:?}")))?;
            match k {
                "root" => {
                    root = Some(match v.split_once(':') {
                        Some(("blk", dev)) => Root::Block(dev.to_string()),
                        Some(("virtiofs", tag)) => Root::VirtioFs(tag.to_string()),
                        _ => return Err(JobError(format!("bad root {v:?}"))),
                    })
                }
                "readonly" => j.read_only = v == "1",
                "workdir" => j.workdir = v.to_string(),
                "user" => j.user = v.to_string(),
                "hostname" => j.hostname = v.to_string(),
                "stdio" => stdio = v,
                "stdin" => stdin = v == "1",
                "winsize" => {
                    winsize = v
                        .split_once('x')
                        .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
                        .ok_or_else(|| JobError(format!("bad winsize {v:?}")))?
                }
                // Newer minivm, older agent: never, they ship together.
                _ => return Err(JobError(format!("unknown job key {k:?}"))),
            }
        }
        j.root = root.ok_or_else(|| JobError("the job names no root".into()))?;
        j.stdio = match stdio {
            "console" => Stdio::Console,
            "ports" => Stdio::Ports { stdin },
            "tty" => Stdio::Tty {
                rows: winsize.0,
                cols: winsize.1,
            },
            _ => return Err(JobError(format!("bad stdio {stdio:?}"))),
        };
        Ok(j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_minivm_writes() {
        let j = Job::parse(
            b"sh\0-c\0echo a  b\0",
            b"PATH=/bin\0A=1\0",
            "root=virtiofs:minivm-root\nreadonly=1\nworkdir=/srv\nuser=app:1\nhostname=h\n",
        )
        .unwrap();
        assert_eq!(j.argv, ["sh", "-c", "echo a  b"]);
        assert_eq!(j.env, ["PATH=/bin", "A=1"]);
        assert_eq!(j.root, Root::VirtioFs("minivm-root".into()));
        assert!(j.read_only);
        assert_eq!((j.workdir.as_str(), j.user.as_str()), ("/srv", "app:1"));
        assert_eq!(j.hostname, "h");
        assert_eq!(j.stdio, Stdio::Console);
        let b = Job::parse(b"true\0", b"", "root=blk:/dev/vda\n").unwrap();
        assert_eq!(b.root, Root::Block("/dev/vda".into()));
        let p = Job::parse(b"cat\0", b"", "root=blk:/dev/vda\nstdio=ports\nstdin=1\n").unwrap();
        assert_eq!(p.stdio, Stdio::Ports { stdin: true });
        let t = Job::parse(
            b"sh\0",
            b"",
            "root=blk:/dev/vda\nstdio=tty\nwinsize=40x132\n",
        );
        assert_eq!(
            t.unwrap().stdio,
            Stdio::Tty {
                rows: 40,
                cols: 132
            }
        );
        assert!(!b.read_only && b.env.is_empty() && b.workdir.is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        assert!(Job::parse(b"", b"", "root=blk:/dev/vda").is_err());
        assert!(Job::parse(b"x\0", b"", "").is_err());
        assert!(Job::parse(b"x\0", b"", "root=nfs:x").is_err());
        assert!(Job::parse(b"x\0", b"", "root=blk:/dev/vda\nmystery=1").is_err());
        assert!(Job::parse(b"x\0", b"", "root").is_err());
        assert!(Job::parse(b"x\0", b"", "root=blk:/dev/vda\nstdio=pipe").is_err());
        assert!(Job::parse(b"x\0", b"", "root=blk:/dev/vda\nwinsize=80").is_err());
    }
}
