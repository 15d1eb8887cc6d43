//! minivm's messages on the control port (`minivm.control`), one ASCII
//! line each (minivm writes them in its `control.rs`):
//!
//! - `signal N`: minivm got signal N (SIGINT) for the command;
//! - `winsize ROWS COLS`: the host terminal of `-t` was resized.
//!
//! Unknown lines are skipped, so a newer minivm can say more.
//!
//! An agent waiting in a snapshot first reads its job (`read_job`): the
//! line `job A E T` (byte counts), then A bytes of argv, E of env and T of
//! job text (`job.rs`).

use std::fs::File;
use std::io::{self, BufRead, BufReader};

/// A job's largest part: minivm's control pipe holds at most 1 MiB.
const JOB_PART_MAX: usize = 1 << 20;

/// The three parts of a job from minivm.
#[derive(Debug, PartialEq, Eq)]
pub struct JobParts {
    pub argv: Vec<u8>,
    pub env: Vec<u8>,
    pub text: String,
}

/// Reads the job minivm sends a restored agent: blocks until it comes.
pub fn read_job(port: &mut impl BufRead) -> io::Result<JobParts> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    loop {
        line.clear();
        if port.read_line(&mut line)? == 0 {
            return Err(bad("the control port closed before the job came".into()));
        }
        if line.starts_with("job ") {
            break;
        }
    }
    let sizes: Vec<usize> = line
        .trim_end()
        .split(' ')
        .skip(1)
        .map(|n| n.parse().ok().filter(|n| *n <= JOB_PART_MAX))
        .collect::<Option<_>>()
        .filter(|v: &Vec<usize>| v.len() == 3)
        .ok_or_else(|| bad(format!("bad job line {:?}", line.trim_end())))?;
    let mut part = |n: usize| -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        port.read_exact(&mut buf)?;
        Ok(buf)
    };
    let (argv, env) = (part(sizes[0])?, part(sizes[1])?);
    let text =
        String::from_utf8(part(sizes[2])?).map_err(|_| bad("job text is not UTF-8".into()))?;
    Ok(JobParts { argv, env, text })
}

use crate::sys;

/// One message from minivm.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Signal(i32),
    WindowSize { rows: u16, cols: u16 },
}

/// The message `line` (without its newline) carries, if it is one.
pub fn parse(line: &str) -> Option<Message> {
    let mut words = line.split(' ');
    let msg = match words.next()? {
        "signal" => Message::Signal(words.next()?.parse().ok().filter(|s| *s > 0)?),
        "winsize" => Message::WindowSize {
            rows: words.next()?.parse().ok()?,
            cols: words.next()?.parse().ok()?,
        },
        _ => return None,
    };
    words.next().is_none().then_some(msg)
}

/// Acts on each message from a thread of its own: signals go to `signal`,
/// window sizes to `tty` (whose foreground processes get SIGWINCH).
pub fn watch(port: BufReader<File>, tty: Option<File>, signal: fn(i32)) {
    std::thread::spawn(move || {
        for line in port.lines() {
            let Ok(line) = line else { return };
            match parse(&line) {
                Some(Message::Signal(sig)) => signal(sig),
                Some(Message::WindowSize { rows, cols }) => {
                    if let Some(tty) = &tty {
                        if let Err(e) = sys::set_window_size(tty, rows, cols) {
                            eprintln!("minivm-agent: window size {rows}x{cols}: {e}");
                        }
                    }
                }
                None => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_then_messages() {
        let mut input: &[u8] = b"signal 2\njob 6 4 8\nsh\0-c\0A=1\0stdin=1\nsignal 15\n";
        let j = read_job(&mut input).unwrap();
        assert_eq!(
            (j.argv.as_slice(), j.env.as_slice()),
            (&b"sh\0-c\0"[..], &b"A=1\0"[..])
        );
        assert_eq!(j.text, "stdin=1\n");
        assert_eq!(input, b"signal 15\n", "what follows stays for watch");
        for bad in [
            &b"job 1 2\n"[..],
            b"job 1 1 x\n",
            b"job 0 0 5\nabc",
            b"",
            b"job 99999999 0 0\n",
        ] {
            assert!(
                read_job(&mut &bad[..]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn messages_and_garbage() {
        assert_eq!(parse("signal 2"), Some(Message::Signal(2)));
        assert_eq!(
            parse("winsize 50 250"),
            Some(Message::WindowSize {
                rows: 50,
                cols: 250
            })
        );
        for bad in [
            "",
            "signal",
            "signal 0",
            "signal -9",
            "signal x",
            "signal 2 3",
            "winsize 50",
            "winsize 50 70000",
            "winsize 1 2 3",
            "reboot",
            "SIGNAL 2",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
