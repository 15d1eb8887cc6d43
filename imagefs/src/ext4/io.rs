//! Metadata output: blocks are queued, then written sorted and coalesced, so
//! each metadata block is written once and adjacent ones in one syscall.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::layout::BS;
use super::Ext4Error;

/// Queued bytes above which the queue is written out (bounds memory).
const FLUSH_AT: usize = 64 << 20;
/// Largest single write.
const MAX_WRITE: usize = 4 << 20;

/// Queue of (byte offset, bytes) writes.
#[derive(Default)]
pub(crate) struct MetaWriter {
    pending: Vec<(u64, Vec<u8>)>,
    queued: usize,
}

impl MetaWriter {
    /// Queues `data` for block `block` (may span several blocks).
    pub fn block(&mut self, file: &File, block: u64, data: Vec<u8>) -> Result<(), Ext4Error> {
        self.at(file, block * BS, data)
    }

    /// Queues `data` for byte offset `offset`.
    pub fn at(&mut self, file: &File, offset: u64, data: Vec<u8>) -> Result<(), Ext4Error> {
        self.queued += data.len();
        self.pending.push((offset, data));
        if self.queued >= FLUSH_AT {
            self.flush(file)?;
        }
        Ok(())
    }

    /// Writes everything queued.
    pub fn flush(&mut self, file: &File) -> Result<(), Ext4Error> {
        let mut pending = std::mem::take(&mut self.pending);
        self.queued = 0;
        pending.sort_unstable_by_key(|(off, _)| *off);
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        for (off, data) in pending {
            let contiguous = !run.is_empty() && run_start + run.len() as u64 == off;
            if !contiguous || run.len() + data.len() > MAX_WRITE {
                write_at(file, &run, run_start)?;
                run.clear();
                run_start = off;
            }
            debug_assert!(
                run.is_empty() || run_start + run.len() as u64 == off,
                "overlapping metadata writes"
            );
            run.extend_from_slice(&data);
        }
        write_at(file, &run, run_start)
    }
}

/// `pwrite` of all of `data` (nothing if empty).
pub(crate) fn write_at(file: &File, data: &[u8], offset: u64) -> Result<(), Ext4Error> {
    if data.is_empty() {
        return Ok(());
    }
    file.write_all_at(data, offset)
        .map_err(|source| Ext4Error::Io {
            what: "writing the image",
            source,
        })
}
