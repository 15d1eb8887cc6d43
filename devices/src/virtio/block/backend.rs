//! Where a virtio-blk disk's bytes live: a raw image file, or a shared
//! read-only base image with a private copy-on-write layer on top.
//!
//! The overlay lets many VMs boot one cached image without copying it and
//! without seeing each other's writes: writes go to `upper` (a sparse file of
//! the same size, usually unlinked so nothing outlives the VM) in 4 KiB
//! clusters, and a bitmap says which clusters are there.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use vm_memory::{ReadVolatile, VolatileSlice, WriteVolatile};

/// Copy-on-write granularity.
pub const CLUSTER: u64 = 4096;
/// Bounce buffer for overlay transfers; bounds host memory per request.
const BOUNCE: usize = 1 << 20;

/// A base image plus a private writable layer.
pub struct Overlay {
    base: File,
    upper: File,
    present: Vec<u64>,
    size: u64,
}

impl Overlay {
    /// `base` is only read; `upper` (empty, private) is sized to `size`.
    pub fn new(base: File, upper: File, size: u64) -> io::Result<Self> {
        upper.set_len(size)?;
        let clusters = size.div_ceil(CLUSTER);
        Ok(Overlay {
            base,
            upper,
            present: vec![0; clusters.div_ceil(64) as usize],
            size,
        })
    }

    fn is_present(&self, c: u64) -> bool {
        self.present[(c / 64) as usize] & (1 << (c % 64)) != 0
    }

    fn mark(&mut self, c: u64) {
        self.present[(c / 64) as usize] |= 1 << (c % 64);
    }

    /// Reads `buf.len()` bytes at `off` (which must lie within the disk).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let c = pos / CLUSTER;
            let from_upper = self.is_present(c);
            // Extend over following clusters from the same file.
            let mut end = (c + 1) * CLUSTER;
            while end < off + buf.len() as u64 && self.is_present(end / CLUSTER) == from_upper {
                end += CLUSTER;
            }
            let n = ((end - pos) as usize).min(buf.len() - done);
            let file = if from_upper { &self.upper } else { &self.base };
            file.read_exact_at(&mut buf[done..done + n], pos)?;
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` at `off`, copying partially written clusters up first.
    pub fn write_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = off + buf.len() as u64;
        let first = off / CLUSTER;
        let last = (end - 1) / CLUSTER;
        for c in [first, last] {
            let (cs, ce) = (c * CLUSTER, ((c + 1) * CLUSTER).min(self.size));
            let partial = off > cs || end < ce;
            if partial && !self.is_present(c) {
                let mut tmp = vec![0u8; (ce - cs) as usize];
                self.base.read_exact_at(&mut tmp, cs)?;
                self.upper.write_all_at(&tmp, cs)?;
                self.mark(c);
            }
        }
        self.upper.write_all_at(buf, off)?;
        for c in first..=last {
            self.mark(c);
        }
        Ok(())
    }

    /// The shared image underneath.
    pub fn base(&self) -> &File {
        &self.base
    }

    /// Writes every cluster this VM changed into `dst` at its offset (on
    /// top of a copy of [`Self::base`]: together, the disk as the guest
    /// sees it).
    pub fn write_changes_onto(&self, dst: &File) -> io::Result<()> {
        let mut buf = vec![0u8; CLUSTER as usize];
        for c in 0..self.size.div_ceil(CLUSTER) {
            if self.is_present(c) {
                let at = c * CLUSTER;
                let n = CLUSTER.min(self.size - at) as usize;
                self.upper.read_exact_at(&mut buf[..n], at)?;
                dst.write_all_at(&buf[..n], at)?;
            }
        }
        Ok(())
    }
}

/// The storage behind a disk.
pub enum Backend {
    /// Reads and writes go to the image file.
    Raw(File),
    /// Reads fall through to a base image; writes stay private.
    Overlay(Overlay),
}

impl Backend {
    /// Fills `slice` (guest memory) from the disk at byte `off`.
    pub fn read_into(&mut self, slice: VolatileSlice<'_, ()>, off: u64) -> io::Result<()> {
        match self {
            Backend::Raw(f) => {
                f.seek(SeekFrom::Start(off))?;
                let mut s = slice;
                f.read_exact_volatile(&mut s).map_err(io::Error::other)
            }
            Backend::Overlay(o) => {
                let mut buf = vec![0u8; slice.len().min(BOUNCE)];
                let mut done = 0;
                while done < slice.len() {
                    let n = (slice.len() - done).min(BOUNCE);
                    o.read_at(&mut buf[..n], off + done as u64)?;
                    slice
                        .subslice(done, n)
                        .map_err(io::Error::other)?
                        .copy_from(&buf[..n]);
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Writes `slice` (guest memory) to the disk at byte `off`.
    pub fn write_from(&mut self, slice: VolatileSlice<'_, ()>, off: u64) -> io::Result<()> {
        match self {
            Backend::Raw(f) => {
                f.seek(SeekFrom::Start(off))?;
                f.write_all_volatile(&slice).map_err(io::Error::other)
            }
            Backend::Overlay(o) => {
                let mut buf = vec![0u8; slice.len().min(BOUNCE)];
                let mut done = 0;
                while done < slice.len() {
                    let n = (slice.len() - done).min(BOUNCE);
                    slice
                        .subslice(done, n)
                        .map_err(io::Error::other)?
                        .copy_to(&mut buf[..n]);
                    o.write_at(&buf[..n], off + done as u64)?;
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Makes written data durable. The overlay is throw-away: nothing to sync.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Backend::Raw(f) => f.sync_data(),
            Backend::Overlay(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, data: &[u8]) -> File {
        let p = std::env::temp_dir().join(format!("minivm-overlay-{name}-{}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        let f = File::options().read(true).write(true).open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }

    #[test]
    fn writes_stay_in_the_overlay() {
        let base: Vec<u8> = (0..5 * CLUSTER).map(|i| (i / 512) as u8).collect();
        let base_file = temp("base", &base);
        let mut o = Overlay::new(
            base_file.try_clone().unwrap(),
            temp("upper", b""),
            base.len() as u64,
        )
        .unwrap();
        // A partial write in the middle of cluster 1, and one from the end of cluster 2 into cluster 4.
        o.write_at(&[0xaa; 512], CLUSTER + 1024).unwrap();
        o.write_at(&[0xbb; 5120], 3 * CLUSTER - 512).unwrap();
        let mut want = base.clone();
        want[(CLUSTER + 1024) as usize..(CLUSTER + 1536) as usize].fill(0xaa);
        want[(3 * CLUSTER - 512) as usize..(4 * CLUSTER + 512) as usize].fill(0xbb);
        let mut got = vec![0u8; base.len()];
        o.read_at(&mut got, 0).unwrap();
        let diff = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(diff, None, "first difference");
        // Unaligned read spanning base and overlay clusters.
        let mut part = vec![0u8; 3000];
        o.read_at(&mut part, CLUSTER - 1000).unwrap();
        assert!(part[..] == want[(CLUSTER - 1000) as usize..(CLUSTER + 2000) as usize]);
        // The base is untouched.
        let mut b = vec![0u8; base.len()];
        base_file.read_exact_at(&mut b, 0).unwrap();
        assert!(b == base);
        // A copy of the base with the changes on top is the disk the guest sees.
        let copy = temp("copy", &base);
        o.write_changes_onto(&copy).unwrap();
        let mut c = vec![0u8; base.len()];
        copy.read_exact_at(&mut c, 0).unwrap();
        assert_eq!(c.iter().zip(&want).position(|(a, b)| a != b), None);
        assert_eq!(copy.metadata().unwrap().len(), base.len() as u64);
    }

    #[test]
    fn last_partial_cluster() {
        let base = vec![1u8; (2 * CLUSTER + 512) as usize];
        let mut o = Overlay::new(temp("b2", &base), temp("u2", b""), base.len() as u64).unwrap();
        o.write_at(&[2u8; 512], 2 * CLUSTER).unwrap();
        let mut got = vec![0u8; base.len()];
        o.read_at(&mut got, 0).unwrap();
        assert!(got[..(2 * CLUSTER) as usize].iter().all(|&b| b == 1));
        assert!(got[(2 * CLUSTER) as usize..].iter().all(|&b| b == 2));
    }
}
