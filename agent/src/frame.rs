//! The frames of `minivm exec` (defined here; minivm includes this file):
//! extra processes in a running VM, multiplexed over one virtio-console
//! port (`minivm.exec`) between minivm and the agent, and over the exec
//! socket between `minivm exec` and minivm, which relays them and gives
//! each connection its own process id.
//!
//! A frame is `ID` (u32, little endian), `KIND` (u8), `LEN` (u32 LE) and
//! LEN bytes of payload, at most [`MAX_PAYLOAD`]. To the agent: [`START`]
//! (a job, as `control::read_job` reads it), [`STDIN`] bytes,
//! [`STDIN_EOF`], [`SIGNAL`] (u32 LE) and [`WINSIZE`] (rows, cols: u16 LE
//! each). From the agent: [`STDOUT`] and [`STDERR`] bytes, then [`EXIT`]
//! (the status byte, then why, for a command that could not start) once
//! the process has ended and its output is out.

// minivm uses some of these, the agent others.
#![allow(dead_code)]

use std::io::{self, Read};

/// Bytes before the payload.
pub const HEADER: usize = 9;
/// The largest payload.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// A job: run this process.
pub const START: u8 = 1;
/// Bytes for the process's stdin.
pub const STDIN: u8 = 2;
/// The end of its stdin.
pub const STDIN_EOF: u8 = 3;
/// A signal for it.
pub const SIGNAL: u8 = 4;
/// Its terminal's new size.
pub const WINSIZE: u8 = 5;
/// Bytes it wrote on stdout (or its terminal).
pub const STDOUT: u8 = 16;
/// Bytes it wrote on stderr.
pub const STDERR: u8 = 17;
/// It has ended: the status, and why when it could not start.
pub const EXIT: u8 = 18;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Which process.
    pub id: u32,
    /// What it carries.
    pub kind: u8,
    /// The bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame of `kind` for process `id`.
    pub fn new(id: u32, kind: u8, payload: &[u8]) -> Frame {
        Frame {
            id,
            kind,
            payload: payload.to_vec(),
        }
    }

    /// The frame's bytes; payloads over [`MAX_PAYLOAD`] must be split by
    /// the caller.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.payload.len() <= MAX_PAYLOAD);
        let mut b = Vec::with_capacity(HEADER + self.payload.len());
        b.extend(self.id.to_le_bytes());
        b.push(self.kind);
        b.extend((self.payload.len() as u32).to_le_bytes());
        b.extend(&self.payload);
        b
    }

    /// The u32 of a [`SIGNAL`] frame.
    pub fn number(&self) -> Option<u32> {
        Some(u32::from_le_bytes(self.payload.get(..4)?.try_into().ok()?))
    }

    /// The rows and columns of a [`WINSIZE`] frame.
    pub fn winsize(&self) -> Option<(u16, u16)> {
        let p = self.payload.get(..4)?;
        Some((
            u16::from_le_bytes([p[0], p[1]]),
            u16::from_le_bytes([p[2], p[3]]),
        ))
    }
}

/// A [`WINSIZE`] payload.
pub fn winsize_payload(rows: u16, cols: u16) -> [u8; 4] {
    let (r, c) = (rows.to_le_bytes(), cols.to_le_bytes());
    [r[0], r[1], c[0], c[1]]
}

/// The payload length a header announces, refused over [`MAX_PAYLOAD`].
fn payload_len(header: &[u8]) -> io::Result<usize> {
    let len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an exec frame of {len} bytes (at most {MAX_PAYLOAD})"),
        ));
    }
    Ok(len)
}

fn frame_from(header: &[u8], payload: Vec<u8>) -> Frame {
    Frame {
        id: u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
        kind: header[4],
        payload,
    }
}

/// Reads one frame; `None` at an end of stream between frames.
pub fn read(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut payload = vec![0; payload_len(&header)?];
    r.read_exact(&mut payload)?;
    Ok(Some(frame_from(&header, payload)))
}

/// Frames out of a byte stream that arrives in pieces (non-blocking reads).
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived; an error when the stream
    /// announces a frame over [`MAX_PAYLOAD`] (it cannot be followed
    /// further).
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = payload_len(&self.buf[..HEADER])?;
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER..HEADER + len].to_vec();
        let frame = frame_from(&self.buf[..HEADER], payload);
        self.buf.drain(..HEADER + len);
        Ok(Some(frame))
    }

    /// Whether part of a frame is waiting for the rest.
    pub fn partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whole_and_in_pieces() {
        let frames = [
            Frame::new(7, STDOUT, b"hello"),
            Frame::new(u32::MAX, EXIT, &[3]),
            Frame::new(1, STDIN_EOF, b""),
            Frame::new(2, WINSIZE, &winsize_payload(50, 250)),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut r = &bytes[..];
        for f in &frames {
            assert_eq!(read(&mut r).unwrap().as_ref(), Some(f));
        }
        assert_eq!(read(&mut r).unwrap(), None);
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        assert!(!d.partial());
        assert_eq!(out[3].winsize(), Some((50, 250)));
        assert_eq!(
            Frame::new(0, SIGNAL, &15u32.to_le_bytes()).number(),
            Some(15)
        );
        assert_eq!(Frame::new(0, SIGNAL, b"x").number(), None);
    }

    #[test]
    fn oversized_and_cut_frames_are_errors() {
        let mut big = Frame::new(1, STDOUT, b"").encode();
        big[5..9].copy_from_slice(&((MAX_PAYLOAD + 1) as u32).to_le_bytes());
        assert!(read(&mut &big[..]).is_err());
        let mut d = Decoder::default();
        d.push(&big);
        assert!(d.next_frame().is_err());
        let cut = Frame::new(1, STDOUT, b"abc").encode();
        assert!(read(&mut &cut[..5]).is_err());
        assert!(read(&mut &cut[..11]).is_err());
        let mut d = Decoder::default();
        d.push(&cut[..11]);
        assert_eq!(d.next_frame().unwrap(), None);
        assert!(d.partial());
    }
}
