//! Facts about the host that several parts of minivm decide on, each in one
//! place: where minivm keeps its files, whether it runs privileged, and
//! whether a work directory still belongs to a live process.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `${XDG_CACHE_HOME:-~/.cache}/minivm` (`/tmp/minivm` with neither set):
/// the root of the disk cache, the layer store, the VMs' work directories
/// and the default kernel.
pub fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("minivm")
}

/// Whether minivm runs as root: layers then get real owners and devices,
/// otherwise they are recorded in xattrs (see `layerfmt`).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// A directory a process works in, named `<key>.<pid>.<n>` under a parent,
/// and held with an exclusive `flock` for as long as this value lives. The
/// lock, not the pid, tells whether its owner still runs: a killed process
/// releases it, and a reused pid cannot fake it. Dropping the value releases
/// the lock; it never removes the directory (its owner decides that).
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    _lock: File,
}

impl WorkDir {
    /// Creates `<parent>/<key>.<pid>.<n>` (and `parent` if needed) and locks it.
    pub fn create(parent: &Path, key: &str) -> io::Result<WorkDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(parent)?;
        // Shared with other creators, exclusive with sweeps: a sweep never
        // sees a directory between its mkdir and its lock.
        let guard = File::open(parent)?;
        flock(&guard, libc::LOCK_SH)?;
        loop {
            let path = parent.join(format!(
                "{key}.{}.{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => {}
                // A leftover of a dead process with our pid: take the next n.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            let lock = File::open(&path)?;
            flock(&lock, libc::LOCK_EX | libc::LOCK_NB)?;
            return Ok(WorkDir { path, _lock: lock });
        }
    }

    /// Locks an existing directory as this process's work directory (e.g. a
    /// directory the user named); fails with `WouldBlock` if another live
    /// process holds it.
    pub fn claim(path: &Path) -> io::Result<WorkDir> {
        let lock = File::open(path)?;
        flock(&lock, libc::LOCK_EX | libc::LOCK_NB)?;
        Ok(WorkDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `dir` is a work directory no live process holds (or not a
    /// directory one can lock at all). Probing takes the lock for a moment;
    /// only a sweep, holding the parent's lock, may act on the answer.
    fn is_abandoned(dir: &Path) -> bool {
        match File::open(dir) {
            Ok(f) => flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_ok(),
            Err(_) => true,
        }
    }

    /// Removes the abandoned work directories under `parent`; returns how
    /// many went.
    pub fn remove_abandoned(parent: &Path) -> usize {
        Self::sweep_abandoned(parent, |dir| std::fs::remove_dir_all(dir))
    }

    /// Calls `remove` on each abandoned work directory under `parent`, while
    /// no [`WorkDir::create`] can run there; returns how many it removed.
    pub fn sweep_abandoned(
        parent: &Path,
        mut remove: impl FnMut(&Path) -> io::Result<()>,
    ) -> usize {
        let Ok(guard) = File::open(parent) else {
            return 0;
        };
        if flock(&guard, libc::LOCK_EX).is_err() {
            return 0;
        }
        let Ok(rd) = std::fs::read_dir(parent) else {
            return 0;
        };
        rd.flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| Self::is_abandoned(&e.path()))
            .filter(|e| remove(&e.path()).is_ok())
            .count()
    }
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a descriptor this File owns; no memory is touched.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "minivm-host-test.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn a_held_work_dir_is_live_and_released_on_drop() {
        let parent = scratch();
        let w = WorkDir::create(&parent, "k").unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("k.{}.", std::process::id())),
            "{name}"
        );
        assert!(!WorkDir::is_abandoned(w.path()));
        assert_eq!(WorkDir::remove_abandoned(&parent), 0);
        assert!(w.path().is_dir());
        let second = WorkDir::create(&parent, "k").unwrap();
        assert_ne!(second.path(), w.path());
        let kept = w.path().to_path_buf();
        drop(w);
        assert!(kept.is_dir(), "dropping never removes");
        assert!(WorkDir::is_abandoned(&kept));
        assert!(
            WorkDir::claim(second.path()).is_err(),
            "held by another lock"
        );
        assert_eq!(WorkDir::remove_abandoned(&parent), 1);
        assert!(!kept.exists() && second.path().is_dir());
        drop(second);
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn leftover_dirs_without_a_holder_are_abandoned() {
        let parent = scratch();
        // What a kill -9 leaves: a directory with our own pid in its name.
        let stale = parent.join(format!("k.{}.0", std::process::id()));
        std::fs::create_dir_all(stale.join("inside")).unwrap();
        assert!(WorkDir::is_abandoned(&stale));
        let w = WorkDir::create(&parent, "k").unwrap();
        assert_ne!(w.path(), stale, "a leftover name is skipped, not reused");
        assert_eq!(WorkDir::remove_abandoned(&parent), 1);
        assert!(!stale.exists() && w.path().is_dir());
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn cache_root_follows_xdg() {
        // Only reads the environment: checked against what it is now.
        let root = cache_root();
        assert!(root.ends_with("minivm"), "{}", root.display());
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            assert_eq!(root, PathBuf::from(x).join("minivm"));
        }
    }
}
