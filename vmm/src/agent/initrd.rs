//! The initramfs that carries the agent and its job into the VM, in two
//! newc cpio archives that Linux unpacks one after the other:
//!
//! - the agent's own (`/dev`, `/dev/console`, `/init`), the same for every
//!   run of this minivm build: written once to the cache as
//!   `agent/<hash>.cpio` and published whole (an unnamed file linked in),
//!   so the loader maps its pages instead of copying 1.6 MB per start;
//! - the job's (`/minivm/*`), a few hundred bytes in a memory file that
//!   goes with the VM.
//!
//! Where the cache cannot be written, one memory file holds both.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use boot::loader::Pages;

use super::{waiting_files, AgentError, AgentRoot, Job, AGENT};
use crate::config::InitrdPart;

/// The agent's initramfs, whose memory file lives as long as this.
#[derive(Debug)]
pub struct AgentInitrd {
    /// The cached archive of the agent itself, when there is one.
    cached: Option<PathBuf>,
    /// The job's archive (and, without `cached`, the agent's too).
    job: File,
}

impl AgentInitrd {
    /// Writes the agent and `job` into a new initramfs.
    pub fn new(job: &Job, root: &AgentRoot, read_only: bool) -> Result<AgentInitrd, AgentError> {
        let cache = crate::paths::agent_archive_dir();
        Self::with_files(Some(&cache), &job.files(root, read_only))
    }

    /// An initramfs whose agent waits for its job (`--snapshot-to`).
    pub fn waiting(root: &AgentRoot, read_only: bool) -> Result<AgentInitrd, AgentError> {
        let cache = crate::paths::agent_archive_dir();
        Self::with_files(Some(&cache), &waiting_files(root, read_only))
    }

    /// The job's `files` beside the agent's archive, cached in `cache`
    /// where possible.
    fn with_files(
        cache: Option<&Path>,
        files: &[(&str, Vec<u8>)],
    ) -> Result<AgentInitrd, AgentError> {
        let cached = cache.and_then(|dir| match cached_agent_archive(dir) {
            Ok(path) => Some(path),
            Err(e) => {
                tracing::debug!(
                    "the agent's archive is not cached in {} ({e}); copying it",
                    dir.display()
                );
                None
            }
        });
        let mut cpio = Cpio::default();
        if cached.is_none() {
            agent_entries(&mut cpio);
        }
        cpio.entry("minivm", 0o40755, (0, 0), &[]);
        for (name, data) in files {
            cpio.entry(name, 0o100644, (0, 0), data);
        }
        Ok(AgentInitrd {
            cached,
            job: memfd(&cpio.finish())?,
        })
    }

    /// The archives for the loader, in order, while this lives.
    pub fn parts(&self) -> Vec<InitrdPart> {
        let job = InitrdPart {
            path: PathBuf::from(format!("/proc/self/fd/{}", self.job.as_raw_fd())),
            pages: Pages::Copied,
        };
        match &self.cached {
            Some(path) => vec![
                InitrdPart {
                    path: path.clone(),
                    pages: Pages::Mapped,
                },
                job,
            ],
            None => vec![job],
        }
    }
}

/// A memory file holding `data`.
fn memfd(data: &[u8]) -> Result<File, AgentError> {
    // SAFETY: memfd_create with a static name; the fd is checked and then owned by File.
    let fd = unsafe { libc::memfd_create(c"minivm-agent-initrd".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(AgentError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(data).map_err(AgentError::Memfd)?;
    Ok(file)
}

/// An archive entry to write: name, mode, (rdev major, minor), data.
type NewEntry = (&'static str, u32, (u32, u32), &'static [u8]);

/// The agent's part: /dev/console (the kernel opens it for PID 1's stdio
/// before /init runs) and /init.
const AGENT_ENTRIES: [NewEntry; 3] = [
    ("dev", 0o40755, (0, 0), &[]),
    ("dev/console", 0o20600, (5, 1), &[]),
    ("init", 0o100755, (0, 0), AGENT),
];

fn agent_entries(cpio: &mut Cpio) {
    for (name, mode, rdev, data) in AGENT_ENTRIES {
        cpio.entry(name, mode, rdev, data);
    }
}

/// The length of the agent's archive ([`AGENT_ENTRIES`] and the trailer),
/// known without writing it.
fn agent_archive_len() -> usize {
    AGENT_ENTRIES
        .iter()
        .map(|&(name, _, _, data)| Cpio::entry_len(name, data.len()))
        .sum::<usize>()
        + Cpio::entry_len(TRAILER, 0)
}

/// `dir/<hash>.cpio`, the agent's archive, written there first if missing.
/// It appears whole or not at all: written to an unnamed file that is
/// linked in only once complete, so a killed minivm leaves nothing behind,
/// and never written again once there (the loader maps its pages).
fn cached_agent_archive(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("{}.cpio", env!("MINIVM_AGENT_HASH")));
    match std::fs::metadata(&path) {
        Ok(m) if m.len() == agent_archive_len() as u64 => return Ok(path),
        // Not what this build writes (cut short by a crash of the disk,
        // say): replaced below.
        Ok(_) => std::fs::remove_file(&path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut cpio = Cpio::default();
    agent_entries(&mut cpio);
    let data = cpio.finish();
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o644)
        .open(dir)?;
    file.write_all(&data)?;
    file.sync_all()?;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        // Another minivm published the same bytes first.
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    Ok(path)
}

/// The newc header: magic and 13 fields of 8 hex digits.
const NEWC_HEADER: usize = 6 + 13 * 8;
/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";

/// A newc cpio archive being written.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let out = &mut self.out;
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry(TRAILER, 0, (0, 0), &[]);
        self.out
    }

    /// How many bytes [`Cpio::entry`] adds for `name` with `len` bytes of data.
    fn entry_len(name: &str, len: usize) -> usize {
        (NEWC_HEADER + name.len() + 1).next_multiple_of(4) + len.next_multiple_of(4)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Overrides;
    use super::*;

    /// An archive entry: name, mode, (rdev major, minor), data.
    type Entry = (String, usize, (usize, usize), Vec<u8>);

    /// The entries of the newc archives in `data` (zeros between archives
    /// skipped, as the kernel does).
    fn walk(data: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            if data[at] == 0 {
                at += 1;
                continue;
            }
            assert_eq!(at % 4, 0, "an archive starts on 4 bytes");
            assert_eq!(&data[at..at + 6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&data[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name_at = at + 110;
            let name = std::str::from_utf8(&data[name_at..name_at + namesize - 1]).unwrap();
            let data_at = (name_at + namesize).next_multiple_of(4);
            if name != TRAILER {
                let body = data[data_at..data_at + size].to_vec();
                out.push((name.to_string(), mode, (field(9), field(10)), body));
            }
            at = (data_at + size).next_multiple_of(4);
        }
        out
    }

    /// The parts as the loader lays them out: each from a page boundary.
    fn laid_out(parts: &[InitrdPart]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.resize(out.len().next_multiple_of(4096), 0);
            out.extend(std::fs::read(&p.path).unwrap());
        }
        out
    }

    fn check(parts: &[InitrdPart]) {
        let entries = walk(&laid_out(parts));
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "minivm",
                "minivm/argv",
                "minivm/env",
                "minivm/job"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(
            (get("dev/console").1, get("dev/console").2),
            (0o20600, (5, 1))
        );
        assert_eq!((get("init").1, &get("init").3[..]), (0o100755, AGENT));
        let job = String::from_utf8(get("minivm/job").3.clone()).unwrap();
        assert!(
            job.starts_with("root=virtiofs:minivm-root\nreadonly=1\n"),
            "{job}"
        );
        assert!(AGENT.starts_with(b"\x7fELF"));
    }

    fn job() -> Job {
        let image = imagefs::process::ImageProcess {
            cmd: vec!["/bin/true".into()],
            ..Default::default()
        };
        Job::new(&image, &Overrides::default()).unwrap()
    }

    #[test]
    fn the_agent_archive_is_cached_once_and_the_job_rides_beside_it() {
        let dir = std::env::temp_dir().join(format!("minivm-agent-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = cached_agent_archive(&dir).unwrap();
        let first = std::fs::metadata(&path).unwrap();
        let again = cached_agent_archive(&dir).unwrap();
        assert_eq!(path, again);
        let second = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&first),
            std::os::unix::fs::MetadataExt::ino(&second),
            "not written again"
        );
        // Only the archive is there: no temporary names.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        // A cut-short file is replaced, whole.
        std::fs::write(&path, b"07070").unwrap();
        cached_agent_archive(&dir).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), first.len());
        assert_eq!(walk(&std::fs::read(&path).unwrap()).len(), 3);
        assert_eq!(first.len(), agent_archive_len() as u64);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_agent_initrd_is_newc_with_console_agent_and_job() {
        let dir = std::env::temp_dir().join(format!("minivm-agent-initrd-{}", std::process::id()));
        let files = job().files(&AgentRoot::Share("minivm-root".into()), true);
        let a = AgentInitrd::with_files(Some(&dir), &files).unwrap();
        let parts = a.parts();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].pages, Pages::Mapped);
        assert_eq!(parts[1].pages, Pages::Copied);
        check(&parts);

        // Without a cache, or one that cannot be written: one memory file with all of it.
        let blocked = dir.join("a-file");
        std::fs::write(&blocked, b"").unwrap();
        for cache in [None, Some(blocked.join("agent").as_path())] {
            let whole = AgentInitrd::with_files(cache, &files).unwrap();
            let parts = whole.parts();
            assert_eq!(parts.len(), 1);
            assert_eq!(parts[0].pages, Pages::Copied);
            check(&parts);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
