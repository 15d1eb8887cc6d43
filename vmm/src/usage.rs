//! minivm's own resource use (open fds, threads, memory), logged after
//! each boot to show that a restart releases what the previous VM held.

use std::fmt;

/// A snapshot of the process's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: u64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Peak resident memory since minivm started, KiB (guest pages included).
    pub peak_kib: u64,
    /// Mapped address space, KiB (a leaked guest memory mapping shows here
    /// even when the guest never touched it).
    pub size_kib: u64,
}

impl Usage {
    /// This process's use now, if /proc tells.
    pub fn now() -> Option<Usage> {
        let fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        // The directory listing itself held one fd.
        Usage::parse(fds.saturating_sub(1), &status)
    }

    /// Reads the `Threads`, `VmRSS`, `VmHWM` and `VmSize` lines of /proc/PID/status.
    fn parse(fds: usize, status: &str) -> Option<Usage> {
        let field = |name: &str| {
            status.lines().find_map(|l| {
                let v = l.strip_prefix(name)?.strip_prefix(':')?;
                v.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        Some(Usage {
            fds,
            threads: field("Threads")?,
            rss_kib: field("VmRSS")?,
            peak_kib: field("VmHWM")?,
            size_kib: field("VmSize")?,
        })
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "open fds {}, threads {}, RSS {} KiB (peak {} KiB), VmSize {} KiB",
            self.fds, self.threads, self.rss_kib, self.peak_kib, self.size_kib
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tminivm\nVmSize:\t  123456 kB\nVmHWM:\t    4096 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        let u = Usage::parse(7, status).unwrap();
        assert_eq!(
            u,
            Usage {
                fds: 7,
                threads: 3,
                rss_kib: 2048,
                peak_kib: 4096,
                size_kib: 123456
            }
        );
        assert_eq!(
            u.to_string(),
            "open fds 7, threads 3, RSS 2048 KiB (peak 4096 KiB), VmSize 123456 KiB"
        );
        assert!(Usage::parse(7, "VmRSS:\t1 kB\n").is_none());
    }

    #[test]
    fn reads_this_process() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let u = Usage::now().unwrap();
        drop(f);
        assert!(u.fds >= 1, "the open file is counted: {u}");
        assert!(
            u.threads >= 1 && u.rss_kib > 0 && u.size_kib >= u.rss_kib,
            "{u}"
        );
    }
}
