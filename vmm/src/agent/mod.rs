//! `minivm run IMAGE -- CMD`: the job for the guest agent (`agent/`), and
//! the initramfs that carries both into the VM. The image, the disk cache
//! and the layer store stay untouched: the agent and its job live only in
//! this initramfs, a memory file that goes with the VM.
//!
//! What runs follows `docker run`: `--entrypoint` replaces the image's
//! Entrypoint and drops its Cmd; arguments after `--` replace Cmd; the
//! image's Env, then `-e`, make the environment (PATH defaults as in
//! Docker); `--workdir` and `--user` replace WorkingDir and User.

use imagefs::process::ImageProcess;

mod initrd;

pub use initrd::AgentInitrd;

/// The agent, built static for the guest by build.rs.
static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/minivm-agent"));

/// The PATH Docker gives a process whose image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why no job could be made.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nothing to run.
    #[error("the image has no command (Entrypoint/Cmd): give one after --")]
    NoCommand,
    /// A hostname the guest would refuse or the job cannot carry.
    #[error("--hostname {0:?}: want 1-64 letters, digits, '-' or '.'")]
    BadHostname(String),
    /// A value the job format cannot carry.
    #[error("{what} {value:?} contains a newline or NUL")]
    BadValue { what: &'static str, value: String },
    /// An argument or variable with a NUL byte.
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    /// `-e NAME` for a variable the host does not have.
    #[error("-e {0}: no such variable in minivm's environment (write -e {0}=VALUE)")]
    NoHostVar(String),
    /// The memory file for the initramfs.
    #[error("cannot make the agent's initramfs: {0}")]
    Memfd(#[source] std::io::Error),
    /// No random seed for a restored guest.
    #[error("cannot read a random seed for the restored guest: {0}")]
    Random(#[source] std::io::Error),
}

/// What the user asked to change of the image's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Arguments after `--`.
    pub command: Vec<String>,
    /// `--entrypoint`.
    pub entrypoint: Option<String>,
    /// `-e KEY=VALUE` or `-e KEY`.
    pub env: Vec<String>,
    /// `--workdir`.
    pub workdir: Option<String>,
    /// `--user`.
    pub user: Option<String>,
    /// `-i`: minivm's stdin goes to the command.
    pub interactive: bool,
    /// `-t`: the command gets a terminal (the serial console).
    pub tty: bool,
    /// `--hostname`.
    pub hostname: Option<String>,
}

impl From<&crate::cli::JobArgs> for Overrides {
    fn from(a: &crate::cli::JobArgs) -> Overrides {
        Overrides {
            command: a.command.clone(),
            entrypoint: a.entrypoint.clone(),
            env: a.env.clone(),
            workdir: a.workdir.clone(),
            user: a.user.clone(),
            interactive: a.interactive,
            tty: a.tty,
            hostname: a.hostname.clone(),
        }
    }
}

impl Overrides {
    /// Whether the user asked for the agent at all.
    pub fn any(&self) -> bool {
        !self.command.is_empty() || self.entrypoint.is_some()
    }
}

/// Where the agent finds the image's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRoot {
    /// virtio-blk `/dev/vda`.
    Disk,
    /// The virtio-fs share with this tag.
    Share(String),
}

/// One run for the agent, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    /// The `stdio`, `stdin` and `winsize` lines of the job file.
    pub stdio: String,
    pub hostname: String,
    /// Serve `minivm exec` (`run --exec-socket`).
    pub exec: bool,
}

/// The guest's hostname unless `--hostname` says otherwise.
pub const DEFAULT_HOSTNAME: &str = "minivm";

/// A hostname for a restored VM: each restore gets its own, so copies of
/// one snapshot can tell themselves apart.
pub fn fresh_hostname() -> Result<String, AgentError> {
    let mut id = [0u8; 4];
    getrandom(&mut id).map_err(AgentError::Random)?;
    Ok(format!(
        "{DEFAULT_HOSTNAME}-{}",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

fn check_hostname(name: &str) -> Result<(), AgentError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(AgentError::BadHostname(name.to_string()))
    }
}

impl Job {
    /// The image's process with the user's overrides applied.
    pub fn new(image: &ImageProcess, o: &Overrides) -> Result<Job, AgentError> {
        let entrypoint = match &o.entrypoint {
            Some(e) if e.is_empty() => vec![],
            Some(e) => vec![e.clone()],
            None => image.entrypoint.clone(),
        };
        let cmd = match (&o.entrypoint, o.command.is_empty()) {
            (_, false) => o.command.clone(),
            (Some(_), true) => vec![],
            (None, true) => image.cmd.clone(),
        };
        let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if argv.is_empty() {
            return Err(AgentError::NoCommand);
        }
        let mut env: Vec<String> = image.env.clone();
        for e in &o.env {
            let kv = env_entry(e)?;
            let key = kv.split('=').next().unwrap_or_default().to_string();
            env.retain(|old| old.split('=').next() != Some(key.as_str()));
            env.push(kv);
        }
        if !env.iter().any(|kv| kv.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        let workdir = o
            .workdir
            .clone()
            .unwrap_or_else(|| image.working_dir.clone());
        let user = o.user.clone().unwrap_or_else(|| image.user.clone());
        check_values(&argv, &env, &workdir, &user)?;
        let stdio = stdio_lines(o.tty, o.interactive);
        let hostname = o
            .hostname
            .clone()
            .unwrap_or_else(|| DEFAULT_HOSTNAME.to_string());
        check_hostname(&hostname)?;
        Ok(Job {
            argv,
            env,
            workdir,
            user,
            stdio,
            hostname,
            exec: false,
        })
    }

    /// The three job files, as `agent/src/job.rs` reads them.
    fn files(&self, root: &AgentRoot, read_only: bool) -> [(&'static str, Vec<u8>); 3] {
        let job = format!(
            "{}hostname={}\nworkdir={}\nuser={}\n{}exec={}\n",
            root_lines(root, read_only),
            self.hostname,
            self.workdir,
            self.user,
            self.stdio,
            u8::from(self.exec)
        );
        [
            ("minivm/argv", nul_list(&self.argv)),
            ("minivm/env", nul_list(&self.env)),
            ("minivm/job", job.into_bytes()),
        ]
    }

    /// The control-port message that hands this job to an agent waiting in
    /// a restored snapshot (`agent/src/control.rs` reads it): the line
    /// `job ARGV ENV TEXT` (byte counts), then the argv and env lists and
    /// the job text with a fresh random `seed` and the host's `clock`.
    pub fn message(&self) -> Result<Vec<u8>, AgentError> {
        let mut seed = [0u8; 32];
        getrandom(&mut seed).map_err(AgentError::Random)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!(
            "hostname={}\nworkdir={}\nuser={}\n{}seed={hex}\nclock={}.{:09}\n",
            self.hostname,
            self.workdir,
            self.user,
            self.stdio,
            now.as_secs(),
            now.subsec_nanos()
        );
        Ok(job_message(&self.argv, &self.env, &text))
    }
}

/// `KEY=VALUE` as it is, `KEY` with minivm's own value (`-e`).
pub fn env_entry(e: &str) -> Result<String, AgentError> {
    match e.split_once('=') {
        Some(_) => Ok(e.to_string()),
        None => {
            let v = std::env::var(e).map_err(|_| AgentError::NoHostVar(e.to_string()))?;
            Ok(format!("{e}={v}"))
        }
    }
}

/// Refuses what the job format cannot carry.
pub fn check_values(
    argv: &[String],
    env: &[String],
    workdir: &str,
    user: &str,
) -> Result<(), AgentError> {
    for (what, list) in [("an argument", argv), ("a variable", env)] {
        if list.iter().any(|s| s.contains('\0')) {
            return Err(AgentError::Nul { what });
        }
    }
    for (what, value) in [("--workdir", workdir), ("--user", user)] {
        if value.contains(['\n', '\0']) {
            return Err(AgentError::BadValue {
                what,
                value: value.to_string(),
            });
        }
    }
    Ok(())
}

/// The job's `stdio` lines: the serial console as a terminal of this
/// terminal's size (`-t`), or the stream ports with or without stdin.
pub fn stdio_lines(tty: bool, interactive: bool) -> String {
    if tty {
        let (rows, cols) = crate::terminal::window_size().unwrap_or((0, 0));
        format!("stdio=tty\nwinsize={rows}x{cols}\n")
    } else {
        format!("stdio=ports\nstdin={}\n", u8::from(interactive))
    }
}

/// A job as one message (`agent/src/control.rs` reads it): the line `job
/// ARGV ENV TEXT` (byte counts), then the argv and env lists and the text.
pub fn job_message(argv: &[String], env: &[String], text: &str) -> Vec<u8> {
    let (argv, env) = (nul_list(argv), nul_list(env));
    let mut msg = format!("job {} {} {}\n", argv.len(), env.len(), text.len()).into_bytes();
    msg.extend(argv);
    msg.extend(env);
    msg.extend(text.bytes());
    msg
}

fn nul_list(l: &[String]) -> Vec<u8> {
    l.iter().flat_map(|s| s.bytes().chain([0])).collect()
}

/// The job lines that say where the root is; the same for a waiting agent
/// and the job it gets later.
fn root_lines(root: &AgentRoot, read_only: bool) -> String {
    let root = match root {
        AgentRoot::Disk => "blk:/dev/vda".to_string(),
        AgentRoot::Share(tag) => format!("virtiofs:{tag}"),
    };
    format!("root={root}\nreadonly={}\n", u8::from(read_only))
}

/// The job files of an agent that sets the VM up, opens every console
/// port, signals that it is ready (the snapshot point) and waits for its
/// job on the control port.
fn waiting_files(root: &AgentRoot, read_only: bool) -> [(&'static str, Vec<u8>); 3] {
    let job = format!(
        "{}hostname={DEFAULT_HOSTNAME}\nstdio=ports\nstdin=1\nwait=1\n",
        root_lines(root, read_only)
    );
    [
        ("minivm/argv", Vec::new()),
        ("minivm/env", Vec::new()),
        ("minivm/job", job.into_bytes()),
    ]
}

/// Fills `buf` from the kernel's random pool.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most the rest of `buf`, which we own.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageProcess {
        ImageProcess {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["A=1".into(), "B=2".into()],
            working_dir: "/srv".into(),
            user: "app".into(),
        }
    }

    #[test]
    fn overrides_follow_docker_run() {
        let j = Job::new(&image(), &Overrides::default()).unwrap();
        assert_eq!(j.argv, ["/entry", "default"]);
        assert_eq!(
            j.env[0], DEFAULT_PATH,
            "PATH defaults when the image has none"
        );
        assert_eq!((j.workdir.as_str(), j.user.as_str()), ("/srv", "app"));
        assert_eq!(j.stdio, "stdio=ports\nstdin=0\n");
        let i = Overrides {
            interactive: true,
            ..Overrides::default()
        };
        assert_eq!(
            Job::new(&image(), &i).unwrap().stdio,
            "stdio=ports\nstdin=1\n"
        );
        let t = Overrides {
            tty: true,
            ..Overrides::default()
        };
        assert!(Job::new(&image(), &t)
            .unwrap()
            .stdio
            .starts_with("stdio=tty\nwinsize="));
        let o = Overrides {
            command: vec!["x".into(), "y".into()],
            env: vec!["B=3".into(), "C=4".into()],
            workdir: Some("/w".into()),
            user: Some("0:0".into()),
            ..Overrides::default()
        };
        let j = Job::new(&image(), &o).unwrap();
        assert_eq!(
            j.argv,
            ["/entry", "x", "y"],
            "CMD replaces Cmd, not Entrypoint"
        );
        assert_eq!(j.env[1..], ["A=1", "B=3", "C=4"]);
        assert_eq!((j.workdir.as_str(), j.user.as_str()), ("/w", "0:0"));
        let e = Overrides {
            entrypoint: Some("/bin/sh".into()),
            ..Overrides::default()
        };
        assert_eq!(
            Job::new(&image(), &e).unwrap().argv,
            ["/bin/sh"],
            "--entrypoint drops Cmd"
        );
        let none = Job::new(&ImageProcess::default(), &Overrides::default());
        assert!(matches!(none, Err(AgentError::NoCommand)));
        let bad = Overrides {
            user: Some("a\nroot=blk:x".into()),
            ..Overrides::default()
        };
        assert!(matches!(
            Job::new(&image(), &bad),
            Err(AgentError::BadValue { .. })
        ));
        assert_eq!(j.hostname, DEFAULT_HOSTNAME);
        for (name, ok) in [
            ("web-1.test", true),
            ("", false),
            ("a\nroot=blk:x", false),
            ("under_score", false),
            (&"x".repeat(65), false),
        ] {
            let o = Overrides {
                hostname: Some(name.to_string()),
                ..Overrides::default()
            };
            match Job::new(&image(), &o) {
                Ok(j) => assert!(ok && j.hostname == name, "{name:?}"),
                Err(e) => assert!(!ok && matches!(e, AgentError::BadHostname(_)), "{name:?}"),
            }
        }
        let (a, b) = (fresh_hostname().unwrap(), fresh_hostname().unwrap());
        assert!(a.starts_with("minivm-") && a.len() == 15 && check_hostname(&a).is_ok());
        assert_ne!(a, b, "each restore gets its own hostname");
    }

    #[test]
    fn a_restored_agent_gets_its_job_in_one_message() {
        let o = Overrides {
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            interactive: true,
            ..Overrides::default()
        };
        let j = Job::new(&image(), &o).unwrap();
        let (a, b) = (j.message().unwrap(), j.message().unwrap());
        let head_end = a.iter().position(|&c| c == b'\n').unwrap();
        let head = std::str::from_utf8(&a[..head_end]).unwrap();
        let sizes: Vec<usize> = head
            .strip_prefix("job ")
            .unwrap()
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        let body = &a[head_end + 1..];
        assert_eq!(body.len(), sizes.iter().sum::<usize>());
        assert_eq!(&body[..sizes[0]], b"/entry\0sh\0-c\0exit 3\0");
        let text = std::str::from_utf8(&body[sizes[0] + sizes[1]..]).unwrap();
        assert!(
            text.starts_with(
                "hostname=minivm\nworkdir=/srv\nuser=app\nstdio=ports\nstdin=1\nseed="
            ),
            "{text}"
        );
        let seed = |m: &[u8]| {
            let t = String::from_utf8_lossy(m).into_owned();
            t.split("seed=").nth(1).unwrap()[..64].to_string()
        };
        assert_ne!(seed(&a), seed(&b), "every restore gets a fresh seed");
        let clock = text.split("clock=").nth(1).unwrap().trim_end();
        let secs: u64 = clock.split('.').next().unwrap().parse().unwrap();
        assert!(secs > 1_700_000_000, "{clock}");
    }
}
