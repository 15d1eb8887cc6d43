//! minivm's messages on the control port (`minivm.control`), one ASCII
//! line each (minivm writes them in its `control.rs`):
//!
//! - `signal N`: minivm got signal N (SIGINT) for the command;
//! - `winsize ROWS COLS`: the host terminal of `-t` was resized.
//!
//! Unknown lines are skipped, so a newer minivm can say more.

use std::fs::File;
use std::io::{BufRead, BufReader};

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
pub fn watch(port: File, tty: Option<File>, signal: fn(i32)) {
    std::thread::spawn(move || {
        for line in BufReader::new(port).lines() {
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
