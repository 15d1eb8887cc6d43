//! The jobs, each the request sequence a guest's program makes through
//! Linux's FUSE client on a cold cache, ending with the FORGETs a cache
//! drop sends for every node it learned.

use std::collections::BTreeMap;

use fuse_backend_rs::abi::fuse_abi::{Direntplus, ROOT_ID};
use vm_memory::ByteValued;

use crate::client::{Client, MAX_IO};
use crate::DriveError;

/// `DT_DIR` and `DT_REG` in a dirent's type.
const DT_DIR: u32 = 4;
const DT_REG: u32 = 8;
/// Linux reads directories a page at a time.
const DIR_BUF: usize = 4096;
/// The large file of the sequential jobs.
pub const SEQ_FILE: &str = "fsdrive-seq.dat";
const SEQ_WRITE_FILE: &str = "fsdrive-seqw.dat";

/// What a job does, and on which share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    /// `find /mnt`: every directory opened and read with READDIRPLUS.
    Walk,
    /// `tar c /mnt`: the walk plus every regular file opened and read.
    Tar,
    /// Small files created, written (4 KiB), closed, then removed.
    Storm,
    /// One large file read from start to end.
    SeqRead,
    /// One large file written from start to end, then removed.
    SeqWrite,
}

impl Job {
    pub const ALL: [Job; 5] = [Job::Walk, Job::Tar, Job::Storm, Job::SeqRead, Job::SeqWrite];

    pub fn name(self) -> &'static str {
        match self {
            Job::Walk => "walk",
            Job::Tar => "tar",
            Job::Storm => "storm",
            Job::SeqRead => "seqread",
            Job::SeqWrite => "seqwrite",
        }
    }

    /// Whether the job runs on the read-only tree (else the writable scratch directory).
    pub fn on_tree(self) -> bool {
        matches!(self, Job::Walk | Job::Tar)
    }
}

/// Sizes of the jobs that make their own files.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub storm_files: usize,
    pub seq_bytes: u64,
}

/// Runs `job` through `c`; what the walk saw (entries, bytes read) comes back.
pub fn run(c: &mut Client, job: Job, sizes: Sizes) -> Result<Seen, DriveError> {
    let mut seen = Seen::default();
    match job {
        Job::Walk => walk(c, ROOT_ID, false, &mut seen)?,
        Job::Tar => walk(c, ROOT_ID, true, &mut seen)?,
        Job::Storm => storm(c, sizes.storm_files, &mut seen)?,
        Job::SeqRead => seq_read(c, &mut seen)?,
        Job::SeqWrite => seq_write(c, sizes.seq_bytes, &mut seen)?,
    }
    for (&node, &n) in &seen.lookups {
        c.forget(node, n)?;
    }
    Ok(seen)
}

/// What a job met.
#[derive(Debug, Default)]
pub struct Seen {
    pub entries: u64,
    pub bytes: u64,
    /// Lookups the server counted per node, to FORGET at the end.
    lookups: BTreeMap<u64, u64>,
}

fn walk(c: &mut Client, dir: u64, read_files: bool, seen: &mut Seen) -> Result<(), DriveError> {
    let fh = c.open(dir, true, (libc::O_RDONLY | libc::O_DIRECTORY) as u32)?;
    let mut offset = 0;
    let mut children = Vec::new();
    loop {
        let buf = c.read(dir, fh, offset, DIR_BUF, true)?;
        if buf.is_empty() {
            break;
        }
        for e in parse_direntplus(&buf)? {
            offset = e.off;
            if e.name == "." || e.name == ".." || e.nodeid == 0 {
                continue;
            }
            seen.entries += 1;
            *seen.lookups.entry(e.nodeid).or_default() += 1;
            children.push(e);
        }
    }
    c.release(dir, true, fh, (libc::O_RDONLY | libc::O_DIRECTORY) as u32)?;
    for e in children {
        match e.kind {
            DT_DIR => walk(c, e.nodeid, read_files, seen)?,
            DT_REG if read_files => read_file(c, e.nodeid, e.size, seen)?,
            _ => {}
        }
    }
    Ok(())
}

fn read_file(c: &mut Client, node: u64, size: u64, seen: &mut Seen) -> Result<(), DriveError> {
    let fh = c.open(node, false, libc::O_RDONLY as u32)?;
    let mut off = 0;
    while off < size {
        let n = c
            .read(node, fh, off, MAX_IO.min((size - off) as usize), false)?
            .len() as u64;
        if n == 0 {
            break;
        }
        off += n;
    }
    seen.bytes += off;
    c.flush(node, fh)?;
    c.release(node, false, fh, libc::O_RDONLY as u32)
}

fn storm(c: &mut Client, files: usize, seen: &mut Seen) -> Result<(), DriveError> {
    let mut made = Vec::with_capacity(files);
    for i in 0..files {
        let name = format!("fsdrive-storm-{i}");
        if c.lookup(ROOT_ID, &name)?.is_some() {
            return Err(DriveError::Protocol(format!(
                "{name} exists before the storm"
            )));
        }
        let (entry, fh) = c.create(ROOT_ID, &name)?;
        c.write(entry.nodeid, fh, 0, 4096)?;
        c.flush(entry.nodeid, fh)?;
        c.release(entry.nodeid, false, fh, libc::O_WRONLY as u32)?;
        seen.bytes += 4096;
        made.push((name, entry.nodeid));
    }
    for (name, node) in made {
        c.unlink(ROOT_ID, &name)?;
        c.forget(node, 1)?;
        seen.entries += 1;
    }
    Ok(())
}

fn seq_read(c: &mut Client, seen: &mut Seen) -> Result<(), DriveError> {
    let entry = c
        .lookup(ROOT_ID, SEQ_FILE)?
        .ok_or_else(|| DriveError::Protocol(format!("{SEQ_FILE} is missing")))?;
    *seen.lookups.entry(entry.nodeid).or_default() += 1;
    read_file(c, entry.nodeid, entry.attr.size, seen)
}

fn seq_write(c: &mut Client, bytes: u64, seen: &mut Seen) -> Result<(), DriveError> {
    if c.lookup(ROOT_ID, SEQ_WRITE_FILE)?.is_some() {
        return Err(DriveError::Protocol(format!(
            "{SEQ_WRITE_FILE} exists before the job"
        )));
    }
    let (entry, fh) = c.create(ROOT_ID, SEQ_WRITE_FILE)?;
    let mut off = 0;
    while off < bytes {
        let n = MAX_IO.min((bytes - off) as usize);
        c.write(entry.nodeid, fh, off, n)?;
        off += n as u64;
    }
    seen.bytes += off;
    c.flush(entry.nodeid, fh)?;
    c.release(entry.nodeid, false, fh, libc::O_WRONLY as u32)?;
    c.unlink(ROOT_ID, SEQ_WRITE_FILE)?;
    c.forget(entry.nodeid, 1)
}

/// One READDIRPLUS entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    nodeid: u64,
    off: u64,
    kind: u32,
    size: u64,
    name: String,
}

fn parse_direntplus(mut buf: &[u8]) -> Result<Vec<Entry>, DriveError> {
    let fixed = std::mem::size_of::<Direntplus>();
    let mut out = Vec::new();
    while !buf.is_empty() {
        let d = buf
            .get(..fixed)
            .and_then(Direntplus::from_slice)
            .copied()
            .ok_or_else(|| DriveError::Protocol("READDIRPLUS: truncated entry".into()))?;
        let namelen = d.dirent.namelen as usize;
        let name = buf
            .get(fixed..fixed + namelen)
            .ok_or_else(|| DriveError::Protocol("READDIRPLUS: truncated name".into()))?;
        out.push(Entry {
            nodeid: d.entry_out.nodeid,
            off: d.dirent.off,
            kind: d.dirent.type_,
            size: d.entry_out.attr.size,
            name: String::from_utf8_lossy(name).into_owned(),
        });
        let rec = (fixed + namelen + 7) & !7;
        buf = buf.get(rec..).unwrap_or(&[]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(nodeid: u64, off: u64, kind: u32, name: &str) -> Vec<u8> {
        let mut d = Direntplus::default();
        d.entry_out.nodeid = nodeid;
        d.entry_out.attr.size = 10 * nodeid;
        d.dirent.off = off;
        d.dirent.type_ = kind;
        d.dirent.namelen = name.len() as u32;
        let mut v = d.as_slice().to_vec();
        v.extend_from_slice(name.as_bytes());
        v.resize((v.len() + 7) & !7, 0);
        v
    }

    #[test]
    fn direntplus_records_are_walked_with_their_padding() {
        let mut buf = record(0, 1, DT_DIR, ".");
        buf.extend(record(7, 2, DT_REG, "a-longer-name"));
        buf.extend(record(9, 3, DT_DIR, "d"));
        let e = parse_direntplus(&buf).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[1].nodeid, e[1].off, e[1].kind, e[1].size),
            (7, 2, DT_REG, 70)
        );
        assert_eq!(e[1].name, "a-longer-name");
        assert_eq!((e[2].nodeid, e[2].name.as_str()), (9, "d"));
    }

    #[test]
    fn a_cut_direntplus_record_is_an_error() {
        let buf = record(7, 2, DT_REG, "name");
        assert!(parse_direntplus(&buf[..buf.len() - 8]).is_err());
        assert!(parse_direntplus(&buf[..20]).is_err());
    }
}
