//! [`Chunk`]: the buffer a copy-up moves file data through, which one
//! layer's `read` fills and another's `write` drains.

use std::io;

use fuse_backend_rs::api::filesystem::{ZeroCopyReader, ZeroCopyWriter};
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;

/// Bytes a copy-up moves per read.
pub(super) const CHUNK: usize = 1 << 20;

/// A chunk buffer that a layer's `read` fills and another's `write` drains.
pub(in crate::virtio::fs) struct Chunk {
    buf: Vec<u8>,
    len: usize,
    pub(super) pos: usize,
}

impl Chunk {
    pub(in crate::virtio::fs) fn new() -> Self {
        Chunk {
            buf: vec![0; CHUNK],
            len: 0,
            pos: 0,
        }
    }
    /// A chunk holding `data` (at most [`CHUNK`] bytes), ready to be written.
    #[cfg(test)]
    pub(in crate::virtio::fs) fn with(data: &[u8]) -> Self {
        let mut c = Chunk::new();
        c.buf[..data.len()].copy_from_slice(data);
        c.len = data.len();
        c
    }
    pub(super) fn clear(&mut self) {
        self.len = 0;
        self.pos = 0;
    }
    pub(in crate::virtio::fs) fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    pub(super) fn remaining(&self) -> &[u8] {
        &self.buf[self.pos..self.len]
    }
}

impl io::Write for Chunk {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for Chunk {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let n = count.min(CHUNK - self.len);
        // SAFETY: the slice is our own buffer, borrowed mutably for the call;
        // nothing else accesses it meanwhile.
        let slice =
            unsafe { FileVolatileSlice::from_mut_slice(&mut self.buf[self.len..self.len + n]) };
        let got = f.read_at_volatile(slice, off)?;
        self.len += got;
        Ok(got)
    }
    fn available_bytes(&self) -> usize {
        CHUNK - self.len
    }
}

impl io::Read for Chunk {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ZeroCopyReader for Chunk {
    fn read_to(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let n = count.min(self.len - self.pos);
        // SAFETY: as in `write_from`: our own buffer, only read by the callee.
        let slice =
            unsafe { FileVolatileSlice::from_mut_slice(&mut self.buf[self.pos..self.pos + n]) };
        let put = f.write_at_volatile(slice, off)?;
        if put == 0 && n > 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        self.pos += put;
        Ok(put)
    }
}
