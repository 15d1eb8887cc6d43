//! `minivm exec SOCKET -- CMD`: runs one more process in a VM that `minivm
//! run --exec-socket SOCKET` is running, as `docker exec` does: its output
//! on ours, ours stdin with `-i`, a terminal with `-t`, our SIGINT, SIGTERM
//! and SIGHUP passed on, and its exit status as ours.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use super::frame::{self, Frame};
use crate::agent::{self, AgentError};

/// Our status when the VM ended (or refused the connection) before the
/// process did.
pub const EXIT_VM_GONE: u8 = 255;

/// Options of `minivm exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The exec socket of the running VM (`minivm run --exec-socket PATH`).
    #[arg(value_name = "SOCKET")]
    pub socket: PathBuf,

    /// The command to run in the VM.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,

    /// Set a variable (over the VM's command's environment): KEY=VALUE, or
    /// KEY to pass ours.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,

    /// The working directory (default: the VM's command's).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// The user: name or uid, optionally :group or :gid (default: the VM's command's).
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,

    /// Give the process our stdin (EOF included).
    #[arg(short = 'i', long)]
    pub interactive: bool,

    /// Give the process a terminal of our terminal's size (ours in raw mode).
    #[arg(short = 't', long)]
    pub tty: bool,
}

/// Why `minivm exec` could not run the process.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No VM listens on the socket.
    #[error("cannot reach the VM at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The job cannot be made.
    #[error(transparent)]
    Job(#[from] AgentError),
    /// The command and its environment do not fit one frame.
    #[error("the command and its environment take {bytes} bytes (at most {max})")]
    TooLarge {
        /// The job's size.
        bytes: usize,
        /// [`frame::MAX_PAYLOAD`].
        max: usize,
    },
    /// The connection failed while the job was sent.
    #[error("cannot send the job to the VM: {0}")]
    Send(#[source] io::Error),
}

/// The START frame's payload for `args`.
fn job(args: &ExecArgs) -> Result<Vec<u8>, AgentError> {
    let env = args
        .env
        .iter()
        .map(|e| agent::env_entry(e))
        .collect::<Result<Vec<_>, _>>()?;
    let (workdir, user) = (
        args.workdir.clone().unwrap_or_default(),
        args.user.clone().unwrap_or_default(),
    );
    agent::check_values(&args.command, &env, &workdir, &user)?;
    let mut text = agent::stdio_lines(args.tty, args.interactive);
    for (key, value) in [("workdir", &args.workdir), ("user", &args.user)] {
        if let Some(v) = value {
            text.push_str(&format!("{key}={v}\n"));
        }
    }
    Ok(agent::job_message(&args.command, &env, &text))
}

/// The connection's writing side, shared by the stdin and signal threads.
type Writer = Arc<Mutex<UnixStream>>;

fn send(w: &Writer, kind: u8, payload: &[u8]) -> io::Result<()> {
    // The relay puts the connection's own id on every frame.
    let bytes = Frame::new(0, kind, payload).encode();
    w.lock()
        .unwrap_or_else(|e| e.into_inner())
        .write_all(&bytes)
}

/// `minivm exec`: the process's exit status, or [`EXIT_VM_GONE`].
pub fn run(args: &ExecArgs) -> Result<ExitCode, ExecError> {
    // First: a resize from now on is passed on, not lost (the job carries
    // the size until then). The threads started later inherit the mask.
    let signals = block_signals();
    let job = job(args)?;
    if job.len() > frame::MAX_PAYLOAD {
        return Err(ExecError::TooLarge {
            bytes: job.len(),
            max: frame::MAX_PAYLOAD,
        });
    }
    let stream = UnixStream::connect(&args.socket).map_err(|source| ExecError::Connect {
        path: args.socket.clone(),
        source,
    })?;
    let writer: Writer = Arc::new(Mutex::new(stream.try_clone().map_err(ExecError::Send)?));
    send(&writer, frame::START, &job).map_err(ExecError::Send)?;
    let w = writer.clone();
    std::thread::spawn(move || pass_signals(&signals, &w));
    let raw = args.tty.then(crate::terminal::RawMode::enter);
    if args.interactive {
        let w = writer.clone();
        std::thread::spawn(move || copy_stdin(&w));
    }
    let mut reader = BufReader::new(stream);
    let (mut out, mut err) = (io::stdout(), io::stderr());
    loop {
        let f = match frame::read(&mut reader) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => {
                drop(raw);
                eprintln!("minivm exec: the VM ended before the process did");
                return Ok(ExitCode::from(EXIT_VM_GONE));
            }
        };
        // A reader of our output that went away loses the rest, no more.
        match f.kind {
            frame::STDOUT => {
                let _ = out.write_all(&f.payload).and_then(|_| out.flush());
            }
            frame::STDERR => {
                let _ = err.write_all(&f.payload);
            }
            frame::EXIT => {
                drop(raw);
                let code = f.payload.first().copied().unwrap_or(EXIT_VM_GONE);
                if f.payload.len() > 1 {
                    eprintln!("minivm exec: {}", String::from_utf8_lossy(&f.payload[1..]));
                }
                return Ok(ExitCode::from(code));
            }
            _ => {}
        }
    }
}

/// Our stdin as STDIN frames, then STDIN_EOF.
fn copy_stdin(w: &Writer) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if send(w, frame::STDIN, &buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = send(w, frame::STDIN_EOF, b"");
}

const PASSED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGWINCH];

/// Blocks the signals passed on, in this thread and the ones it starts.
fn block_signals() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid input to sigemptyset, which with
    // sigaddset and pthread_sigmask only touches this frame's set and the
    // thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in PASSED {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for the blocked signals and passes each on: a window size change
/// as the terminal's new size, the others as themselves.
fn pass_signals(set: &libc::sigset_t, w: &Writer) {
    loop {
        let mut sig = 0;
        // SAFETY: sigwait reads a valid set and writes one int.
        if unsafe { libc::sigwait(set, &mut sig) } != 0 {
            return;
        }
        let sent = match sig {
            libc::SIGWINCH => match crate::terminal::window_size() {
                Some((rows, cols)) => send(w, frame::WINSIZE, &frame::winsize_payload(rows, cols)),
                None => Ok(()),
            },
            sig => send(w, frame::SIGNAL, &(sig as u32).to_le_bytes()),
        };
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ExecArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            exec: ExecArgs,
        }
        let argv = ["exec"].iter().chain(extra);
        Cli::try_parse_from(argv).unwrap().exec
    }

    #[test]
    fn the_job_is_what_the_agent_reads() {
        let a = args(&[
            "/s", "-e", "A=1", "--user", "app", "-i", "--", "sh", "-c", "x",
        ]);
        let msg = job(&a).unwrap();
        let text = "stdio=ports\nstdin=1\nuser=app\n";
        let mut want = format!("job 8 4 {}\n", text.len()).into_bytes();
        want.extend(b"sh\0-c\0x\0A=1\0");
        want.extend(text.bytes());
        assert_eq!(msg, want);
        let bad = args(&["/s", "--workdir", "a\nb", "--", "true"]);
        assert!(matches!(job(&bad), Err(AgentError::BadValue { .. })));
        let missing = args(&["/s", "-e", "MINIVM_SURELY_UNSET_VAR", "--", "true"]);
        assert!(matches!(job(&missing), Err(AgentError::NoHostVar(_))));
    }

    #[test]
    fn no_vm_at_the_socket_is_a_clear_error() {
        let a = args(&["/nonexistent/minivm.sock", "--", "true"]);
        let e = run(&a).unwrap_err().to_string();
        assert!(
            e.contains("cannot reach the VM at /nonexistent/minivm.sock"),
            "{e}"
        );
    }
}
