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
//!   (`0`/`1`), `winsize` (`ROWSxCOLS`, for `tty`), `wait` (`1`: the
//!   argv and env are empty; set the VM up, open every port, signal that
//!   it is ready and wait for the job on the control port) and `exec`
//!   (`1`: serve `minivm exec` on the port `minivm.exec`, `exec.rs`).
//!
//! An extra process's job (`minivm exec`) comes in a START frame: the same
//! three parts; its env entries override the command's, and its workdir
//! and user default to the command's.
//!
//! A waiting agent's job comes from a restored snapshot (`control.rs`):
//! the same three parts, whose text may leave out the root lines and adds
//! `seed` (hex bytes for the random pool) and `clock` (`SECS.NANOS`, the
//! host's real time).
//!
//! Values cannot hold a newline (minivm refuses them); names and arguments
//! are bytes.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

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
    /// Wait for the job on the control port (a snapshot's agent).
    pub wait: bool,
    /// Bytes for the random pool (a restored VM's fresh seed).
    pub seed: Vec<u8>,
    /// The host's real time, seconds and nanoseconds (a restored VM's clock).
    pub clock: Option<(i64, i64)>,
    /// Serve `minivm exec` on the exec port.
    pub exec: bool,
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
        let mut j = Job {
            argv: nul_list(argv),
            env: nul_list(env),
            root: Root::Block(String::new()),
            read_only: false,
            workdir: String::new(),
            user: String::new(),
            hostname: String::new(),
            stdio: Stdio::Console,
            wait: false,
            seed: Vec::new(),
            clock: None,
            exec: false,
        };
        if !j.apply(job)? {
            return Err(JobError("the job names no root".into()));
        }
        if j.argv.is_empty() && !j.wait {
            return Err(JobError("no command to run".into()));
        }
        Ok(j)
    }

    /// The job a waiting agent got on the control port, on top of this
    /// one (which names the root).
    pub fn resume(&self, argv: &[u8], env: &[u8], job: &str) -> Result<Job, JobError> {
        let mut j = Job {
            argv: nul_list(argv),
            env: nul_list(env),
            stdio: Stdio::Console,
            wait: false,
            ..self.clone()
        };
        j.apply(job)?;
        if j.argv.is_empty() {
            return Err(JobError("no command to run".into()));
        }
        if j.wait {
            return Err(JobError("a restored job cannot wait again".into()));
        }
        Ok(j)
    }

    /// An extra process's job in the VM this job runs (`minivm exec`).
    pub fn exec(&self, argv: &[u8], env: &[u8], job: &str) -> Result<Job, JobError> {
        let base = Job {
            exec: false,
            seed: Vec::new(),
            clock: None,
            ..self.clone()
        };
        let given = base.resume(argv, env, job)?;
        let key = |kv: &OsString| {
            let b = kv.as_bytes();
            b[..b.iter().position(|c| *c == b'=').unwrap_or(b.len())].to_vec()
        };
        let mut env: Vec<OsString> = self
            .env
            .iter()
            .filter(|kv| !given.env.iter().any(|g| key(g) == key(kv)))
            .cloned()
            .collect();
        env.extend(given.env.iter().cloned());
        if given.exec
            || given.hostname != self.hostname
            || given.clock.is_some()
            || !given.seed.is_empty()
        {
            return Err(JobError("an exec job sets only its process".into()));
        }
        Ok(Job { env, ..given })
    }

    /// Sets what the `key=value` lines of `job` say; whether they named a root.
    fn apply(&mut self, job: &str) -> Result<bool, JobError> {
        let mut root = false;
        let (mut stdio, mut stdin, mut winsize) = ("console", false, (0, 0));
        for line in job.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| JobError(format!("job line without '=': {line:?}")))?;
            match k {
                "root" => {
                    root = true;
                    self.root = match v.split_once(':') {
                        Some(("blk", dev)) => Root::Block(dev.to_string()),
                        Some(("virtiofs", tag)) => Root::VirtioFs(tag.to_string()),
                        _ => return Err(JobError(format!("bad root {v:?}"))),
                    }
                }
                "readonly" => self.read_only = v == "1",
                "workdir" => self.workdir = v.to_string(),
                "user" => self.user = v.to_string(),
                "hostname" => self.hostname = v.to_string(),
                "stdio" => stdio = v,
                "stdin" => stdin = v == "1",
                "winsize" => {
                    winsize = v
                        .split_once('x')
                        .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
                        .ok_or_else(|| JobError(format!("bad winsize {v:?}")))?
                }
                "wait" => self.wait = v == "1",
                "exec" => self.exec = v == "1",
                "seed" => self.seed = hex(v).ok_or_else(|| JobError(format!("bad seed {v:?}")))?,
                "clock" => {
                    let clock = v
                        .split_once('.')
                        .and_then(|(s, n)| Some((s.parse().ok()?, n.parse().ok()?)))
                        .filter(|&(s, n): &(i64, i64)| s >= 0 && (0..1_000_000_000).contains(&n));
                    self.clock = Some(clock.ok_or_else(|| JobError(format!("bad clock {v:?}")))?);
                }
                // Newer minivm, older agent: never, they ship together.
                _ => return Err(JobError(format!("unknown job key {k:?}"))),
            }
        }
        self.stdio = match stdio {
            "console" => Stdio::Console,
            "ports" => Stdio::Ports { stdin },
            "tty" => Stdio::Tty {
                rows: winsize.0,
                cols: winsize.1,
            },
            _ => return Err(JobError(format!("bad stdio {stdio:?}"))),
        };
        Ok(root)
    }
}

/// Bytes from an even number of hex digits.
fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
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
        assert!(!b.wait && b.seed.is_empty() && b.clock.is_none());
    }

    #[test]
    fn a_waiting_agent_gets_its_job_later() {
        let w = Job::parse(
            b"",
            b"",
            "root=blk:/dev/vda\nreadonly=0\nhostname=minivm\nstdio=ports\nstdin=1\nwait=1\n",
        )
        .unwrap();
        assert!(w.wait && w.argv.is_empty());
        assert_eq!(w.stdio, Stdio::Ports { stdin: true });
        let j = w
            .resume(
                b"sh\0-c\0exit 3\0",
                b"PATH=/bin\0",
                "workdir=/w\nuser=1:2\nstdio=ports\nstdin=0\nseed=00ff10\nclock=1700000000.000000123\n",
            )
            .unwrap();
        assert_eq!(j.argv, ["sh", "-c", "exit 3"]);
        assert_eq!(j.env, ["PATH=/bin"]);
        assert_eq!(
            j.root,
            Root::Block("/dev/vda".into()),
            "kept from the waiting job"
        );
        assert_eq!(j.hostname, "minivm");
        assert_eq!((j.workdir.as_str(), j.user.as_str()), ("/w", "1:2"));
        assert_eq!(j.stdio, Stdio::Ports { stdin: false });
        assert_eq!(j.seed, [0x00, 0xff, 0x10]);
        assert_eq!(j.clock, Some((1_700_000_000, 123)));
        assert!(!j.wait);
        for bad in [
            "seed=0",
            "seed=zz",
            "clock=1",
            "clock=1.1000000000",
            "clock=-1.0",
            "wait=1",
        ] {
            assert!(w.resume(b"x\0", b"", bad).is_err(), "{bad}");
        }
        assert!(w.resume(b"", b"", "stdio=ports").is_err(), "no command");
        assert!(
            Job::parse(b"", b"", "root=blk:/dev/vda\n").is_err(),
            "no command, no wait"
        );
    }

    #[test]
    fn an_exec_job_runs_beside_the_command() {
        let main = Job::parse(
            b"sleep\0inf\0",
            b"PATH=/bin\0A=1\0",
            "root=blk:/dev/vda\nworkdir=/srv\nuser=app\nhostname=h\nstdio=ports\nexec=1\n",
        )
        .unwrap();
        assert!(main.exec);
        let e = main
            .exec(b"sh\0", b"A=2\0B=3\0", "stdio=tty\nwinsize=50x250\n")
            .unwrap();
        assert_eq!(e.argv, ["sh"]);
        assert_eq!(
            e.env,
            ["PATH=/bin", "A=2", "B=3"],
            "overrides the command's"
        );
        assert_eq!((e.workdir.as_str(), e.user.as_str()), ("/srv", "app"));
        assert_eq!(
            e.stdio,
            Stdio::Tty {
                rows: 50,
                cols: 250
            }
        );
        let e = main.exec(b"id\0", b"", "user=0\nworkdir=/\n").unwrap();
        assert_eq!((e.workdir.as_str(), e.user.as_str()), ("/", "0"));
        assert_eq!(e.env, main.env);
        for bad in ["exec=1", "hostname=other", "wait=1", "clock=1.0", "x=1"] {
            assert!(main.exec(b"x\0", b"", bad).is_err(), "{bad}");
        }
        assert!(main.exec(b"", b"", "").is_err(), "no command");
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
