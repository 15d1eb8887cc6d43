//! minivm's messages to the guest agent, on the control port
//! (`config::CONTROL_PORT`): one ASCII line each,
//!
//! - `signal N`: pass signal N on to the command (minivm got it);
//! - `winsize ROWS COLS`: the terminal of `-t` has a new size.
//!
//! The agent's `control.rs` reads them. minivm's signal handlers write them
//! into a pipe whose other end is the port's input, so a [`Line`] is built
//! on the stack, without allocating.

/// One message, ready to write.
pub struct Line {
    buf: [u8; 32],
    len: usize,
}

impl Line {
    /// `signal N`.
    pub fn signal(sig: i32) -> Line {
        let mut l = Line::new(b"signal ");
        l.number(sig.unsigned_abs());
        l.push(b'\n');
        l
    }

    /// `winsize ROWS COLS`.
    pub fn winsize(rows: u16, cols: u16) -> Line {
        let mut l = Line::new(b"winsize ");
        l.number(u32::from(rows));
        l.push(b' ');
        l.number(u32::from(cols));
        l.push(b'\n');
        l
    }

    /// The line's bytes, newline included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn new(word: &[u8]) -> Line {
        let mut l = Line {
            buf: [0; 32],
            len: 0,
        };
        for b in word {
            l.push(*b);
        }
        l
    }

    /// Appends a byte; the longest line (`winsize` with two u16s, 21 bytes,
    /// or `signal` with a u32, 18) fits well within the buffer.
    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn number(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for d in &digits[i..] {
            self.push(*d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_what_the_agent_reads() {
        assert_eq!(Line::signal(2).as_bytes(), b"signal 2\n");
        assert_eq!(Line::signal(64).as_bytes(), b"signal 64\n");
        assert_eq!(Line::winsize(50, 250).as_bytes(), b"winsize 50 250\n");
        assert_eq!(Line::winsize(0, 0).as_bytes(), b"winsize 0 0\n");
        assert_eq!(
            Line::winsize(u16::MAX, u16::MAX).as_bytes(),
            b"winsize 65535 65535\n"
        );
        assert_eq!(Line::signal(i32::MIN).as_bytes(), b"signal 2147483648\n");
    }
}
