//! A bound on the host file descriptors the guest can make the server hold.
//!
//! Each inode the guest looked up and has not forgotten, and each file or
//! directory it has open, keeps a host fd. Without a bound a guest could use
//! up the whole process's fd table (virtiofsd's CVE-2020-10717), and then the
//! rest of minivm could not open anything either. [`FdBudget`] keeps a
//! reserve: once the fds below `limit` are all in use, requests that would
//! open another one fail with ENFILE for the guest alone.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// fds kept back for the rest of minivm (event fds, the disk, logs, /proc).
const MIN_RESERVE: u64 = 64;

/// See the module docs.
pub struct FdBudget {
    /// Refuse once every fd below this number is open.
    limit: u64,
    /// Any fd of ours, to find the lowest free fd by duplicating it.
    probe: Option<OwnedFd>,
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
        let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
            let soft = rl.rlim_cur;
            soft.saturating_sub((soft / 8).max(MIN_RESERVE))
        } else {
            u64::MAX
        };
        FdBudget::with_limit(limit)
    }

    /// A budget that refuses once fds `0..limit` are all open.
    pub fn with_limit(limit: u64) -> FdBudget {
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
            probe: probe.ok(),
        }
    }

    /// Ok if the server may open one more fd for the guest, else ENFILE.
    pub fn check(&self) -> io::Result<()> {
        let Some(probe) = &self.probe else {
            return Ok(());
        };
        // The lowest free fd n means fds 0..n are all open.
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
        if u64::try_from(n).unwrap_or(u64::MAX) >= self.limit {
            crate::guest_warn!(
                "virtio-fs: the guest holds {n} host fds (budget {}); refusing more",
                self.limit
            );
            return Err(io::Error::from_raw_os_error(libc::ENFILE));
        }
        Ok(())
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
        let e = FdBudget::with_limit(0).check().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENFILE));
        assert!(FdBudget::with_limit(u64::MAX).check().is_ok());
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
        assert!(b.check().is_ok());
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
            .with_fd_budget(FdBudget::with_limit(0));
        let e = spent.lookup(&ctx, root, name).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENFILE));
        let e = spent
            .opendir(&ctx, root, libc::O_RDONLY as u32)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENFILE));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
