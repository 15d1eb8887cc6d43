//! A bound on the host file descriptors the guest can make the server hold.
//!
//! Each inode the guest looked up and has not forgotten, and each file or
//! directory it has open, keeps a host fd. Without a bound a guest could use
//! up the whole process's fd table (virtiofsd's CVE-2020-10717), and then the
//! rest of minivm could not open anything either. [`FdBudget`] keeps a
//! reserve: once the fds below `limit` are all in use, requests that would
//! open another one fail with ENFILE for the guest alone.
//!
//! Finding the lowest free fd costs two system calls, so it is not done for
//! every request: the requests since the last look count the fds they may
//! open, and the next look comes before that count could pass a quarter of
//! the reserve. Between looks the guest can therefore take at most that
//! quarter of the reserve (a quarter: two shares, each with its own budget,
//! still leave half of it).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// fds kept back for the rest of minivm (event fds, the disk, logs, /proc).
const MIN_RESERVE: u64 = 64;

/// See the module docs.
pub struct FdBudget {
    /// Refuse once every fd below this number is open.
    limit: u64,
    /// fds the requests may open between two looks at the fd table.
    slack: u64,
    /// An upper bound on the fds opened since the last look.
    unchecked: AtomicU64,
    /// Where the lowest free fd is found (None: no bound).
    table: Option<FdTable>,
}

/// The fd table the budget looks at.
enum FdTable {
    /// This process's: any fd of ours, duplicated, lands on the lowest free fd.
    Process(OwnedFd),
    /// A stand-in holding the lowest free fd (tests).
    #[cfg(test)]
    Fake(std::sync::Arc<AtomicU64>),
}

impl FdTable {
    fn lowest_free(&self) -> io::Result<u64> {
        match self {
            FdTable::Process(probe) => lowest_free_fd(probe),
            #[cfg(test)]
            FdTable::Fake(n) => Ok(n.load(Ordering::Relaxed)),
        }
    }
}

/// The lowest fd this process has free: where a copy of `probe` lands.
fn lowest_free_fd(probe: &OwnedFd) -> io::Result<u64> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own; the copy is closed below.
    let n = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EMFILE) => io::Error::from_raw_os_error(libc::ENFILE),
            _ => e,
        });
    }
    // SAFETY: `n` is the copy made above, owned by nobody else.
    unsafe { libc::close(n) };
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

impl FdBudget {
    /// The budget of this process: its soft `RLIMIT_NOFILE` less a reserve of
    /// an eighth (at least [`MIN_RESERVE`]).
    pub fn for_process() -> FdBudget {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
            return FdBudget::with_limit(u64::MAX, 0);
        }
        let soft = rl.rlim_cur;
        let reserve = (soft / 8).max(MIN_RESERVE);
        FdBudget::with_limit(soft.saturating_sub(reserve), reserve / 4)
    }

    /// A budget that refuses once fds `0..limit` are all open, looking at
    /// the fd table once `slack` more fds may have been opened.
    pub fn with_limit(limit: u64, slack: u64) -> FdBudget {
        // An event fd: any fd will do, and it needs no path (a jail has no /dev/null).
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let probe = match unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) } {
            n if n >= 0 => Ok(owned_fd(n)),
            _ => Err(io::Error::last_os_error()),
        };
        if let Err(e) = &probe {
            crate::guest_warn!("virtio-fs: no fd budget (eventfd: {e})");
        }
        FdBudget {
            limit,
            slack,
            unchecked: AtomicU64::new(0),
            table: probe.ok().map(FdTable::Process),
        }
    }

    /// Ok if the server may open `count` more fds for the guest, else ENFILE.
    pub fn check(&self, count: u64) -> io::Result<()> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        let before = self.unchecked.fetch_add(count, Ordering::Relaxed);
        if before.saturating_add(count) <= self.slack {
            return Ok(());
        }
        // The lowest free fd n means fds 0..n are all open.
        let n = table.lowest_free()?;
        // Counted again from here; a refusal opens nothing, so the next
        // request looks again.
        let after = n.saturating_add(count);
        let refused = after > self.limit;
        self.unchecked
            .store(if refused { self.slack } else { count }, Ordering::Relaxed);
        if refused {
            crate::guest_warn!(
                "virtio-fs: the guest holds {n} host fds (budget {}); refusing more",
                self.limit
            );
            return Err(io::Error::from_raw_os_error(libc::ENFILE));
        }
        Ok(())
    }
}

/// Lifts the process's soft open-file limit to the hard one, as virtiofsd
/// does: a big guest over virtio-fs holds a host fd per inode it caches, and
/// the budget is this limit less a reserve. Call it before any device is made.
pub fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Takes ownership of a new fd.
fn owned_fd(fd: i32) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller passes a freshly created fd nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_past_its_limit() {
        let e = FdBudget::with_limit(0, 0).check(1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENFILE));
        assert!(FdBudget::with_limit(u64::MAX, 0).check(1).is_ok());
    }

    #[test]
    fn the_table_is_looked_at_before_the_slack_is_spent() {
        let lowest = std::sync::Arc::new(AtomicU64::new(10));
        let b = FdBudget {
            limit: 13,
            slack: 4,
            unchecked: AtomicU64::new(0),
            table: Some(FdTable::Fake(lowest.clone())),
        };
        // Within the slack the table is not looked at, whatever it holds.
        lowest.store(100, Ordering::Relaxed);
        b.check(2).unwrap();
        b.check(2).unwrap();
        // The slack is spent: this one looks, and fds 100.. are past the limit.
        let e = b.check(1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENFILE));
        // A refusal opens nothing: the next request looks again.
        lowest.store(10, Ordering::Relaxed);
        b.check(3).unwrap();
        // The look counted those 3; 1 more is within the slack, unlooked.
        lowest.store(13, Ordering::Relaxed);
        b.check(1).unwrap();
        // Then the next looks and finds every fd below the limit open.
        let e = b.check(1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENFILE));
        lowest.store(12, Ordering::Relaxed);
        b.check(1).unwrap();
        assert_eq!(
            b.check(2).map_err(|e| e.raw_os_error()),
            Ok(()),
            "within the slack"
        );
    }

    #[test]
    fn the_process_budget_keeps_a_reserve() {
        let b = FdBudget::for_process();
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        assert!(
            b.limit + MIN_RESERVE <= rl.rlim_cur,
            "{} vs {}",
            b.limit,
            rl.rlim_cur
        );
        assert!(b.check(1).is_ok());
    }

    #[test]
    fn the_guard_refuses_lookups_and_opens_past_the_budget() {
        use fuse_backend_rs::api::filesystem::{Context, FileSystem};

        use crate::virtio::fs::guard::{GuardFs, Policy};
        use crate::virtio::fs::passthrough::passthrough_fs;

        let dir = std::env::temp_dir().join(format!("fdbudget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        let policy = || Policy {
            read_only: false,
            size_cap: None,
            backend_maps_ids: false,
        };
        let ctx = Context::default();
        let name = c"f";
        let root = fuse_backend_rs::api::filesystem::ROOT_ID;
        let open = GuardFs::new(passthrough_fs(&dir).unwrap(), policy());
        let entry = open.lookup(&ctx, root, name).expect("within the budget");
        assert!(open
            .open(&ctx, entry.inode, libc::O_RDONLY as u32, 0)
            .is_ok());
        let spent = GuardFs::new(passthrough_fs(&dir).unwrap(), policy())
            .with_fd_budget(FdBudget::with_limit(0, 0));
        let e = spent.lookup(&ctx, root, name).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENFILE));
        let e = spent
            .opendir(&ctx, root, libc::O_RDONLY as u32)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENFILE));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
