//! Request accounting for a virtio-fs device (`minivm run --fs-stats`).
//!
//! The worker counts each FUSE request by the opcode in its `fuse_in_header`
//! and adds the time the server spent on it, so a boot's dump shows which
//! requests the guest makes and where the server's time goes. Counting is
//! always on: one clock read and one uncontended lock per request is noise
//! next to the request itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Counts and server time per FUSE opcode.
#[derive(Debug, Default)]
pub struct FsStats {
    by_opcode: Mutex<BTreeMap<u32, OpStats>>,
}

/// What one opcode cost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpStats {
    /// Requests served.
    pub count: u64,
    /// Server time spent on them.
    pub time: Duration,
}

impl FsStats {
    /// Records one request with `opcode` that took `time` to serve.
    pub fn record(&self, opcode: u32, time: Duration) {
        let mut map = self.by_opcode.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.entry(opcode).or_default();
        s.count += 1;
        s.time += time;
    }

    /// The opcodes seen, most requested first (ties by opcode number).
    pub fn snapshot(&self) -> Vec<(u32, OpStats)> {
        let map = self.by_opcode.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.iter().map(|(op, s)| (*op, *s)).collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        v
    }

    /// A table of the requests share `tag` served, most requested first,
    /// with a total line.
    pub fn report(&self, tag: &str) -> String {
        let rows = self.snapshot();
        let total: u64 = rows.iter().map(|(_, s)| s.count).sum();
        let time: Duration = rows.iter().map(|(_, s)| s.time).sum();
        let mut out = format!("virtio-fs {tag}: {total} FUSE requests, {time:.2?} in the server\n");
        let _ = writeln!(
            out,
            "  {:<16} {:>10} {:>12} {:>10}",
            "opcode", "count", "time", "mean"
        );
        for (op, s) in rows {
            let mean = s.time / u32::try_from(s.count).unwrap_or(u32::MAX).max(1);
            let _ = writeln!(
                out,
                "  {:<16} {:>10} {:>12} {:>10}",
                opcode_name(op),
                s.count,
                format!("{:.2?}", s.time),
                format!("{mean:.1?}"),
            );
        }
        out
    }
}

/// The kernel's name for FUSE opcode `op` (`include/uapi/linux/fuse.h`),
/// or `OP_<n>` for one it does not know.
pub fn opcode_name(op: u32) -> String {
    const NAMES: [&str; 53] = [
        "",
        "LOOKUP",
        "FORGET",
        "GETATTR",
        "SETATTR",
        "READLINK",
        "SYMLINK",
        "",
        "MKNOD",
        "MKDIR",
        "UNLINK",
        "RMDIR",
        "RENAME",
        "LINK",
        "OPEN",
        "READ",
        "WRITE",
        "STATFS",
        "RELEASE",
        "",
        "FSYNC",
        "SETXATTR",
        "GETXATTR",
        "LISTXATTR",
        "REMOVEXATTR",
        "FLUSH",
        "INIT",
        "OPENDIR",
        "READDIR",
        "RELEASEDIR",
        "FSYNCDIR",
        "GETLK",
        "SETLK",
        "SETLKW",
        "ACCESS",
        "CREATE",
        "INTERRUPT",
        "BMAP",
        "DESTROY",
        "IOCTL",
        "POLL",
        "NOTIFY_REPLY",
        "BATCH_FORGET",
        "FALLOCATE",
        "READDIRPLUS",
        "RENAME2",
        "LSEEK",
        "COPY_FILE_RANGE",
        "SETUPMAPPING",
        "REMOVEMAPPING",
        "SYNCFS",
        "TMPFILE",
        "STATX",
    ];
    match usize::try_from(op).ok().and_then(|i| NAMES.get(i)) {
        Some(name) if !name.is_empty() => (*name).to_string(),
        _ => format!("OP_{op}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sorted_by_count_then_opcode() {
        let s = FsStats::default();
        for _ in 0..3 {
            s.record(3, Duration::from_micros(10));
        }
        s.record(1, Duration::from_micros(5));
        s.record(1, Duration::from_micros(7));
        s.record(22, Duration::from_micros(1));
        s.record(14, Duration::from_micros(1));
        let snap = s.snapshot();
        let order: Vec<u32> = snap.iter().map(|(op, _)| *op).collect();
        assert_eq!(order, vec![3, 1, 14, 22]);
        assert_eq!(
            snap[1].1,
            OpStats {
                count: 2,
                time: Duration::from_micros(12)
            }
        );
    }

    #[test]
    fn report_names_opcodes_with_counts_and_total() {
        let s = FsStats::default();
        s.record(1, Duration::from_micros(4));
        s.record(3, Duration::from_micros(2));
        s.record(3, Duration::from_micros(2));
        s.record(4242, Duration::ZERO);
        let r = s.report("root");
        let lines: Vec<&str> = r.lines().collect();
        assert!(
            lines[0].starts_with("virtio-fs root: 4 FUSE requests"),
            "{r}"
        );
        let row = |name: &str| {
            lines
                .iter()
                .find(|l| l.split_whitespace().next() == Some(name))
                .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        };
        assert_eq!(row("GETATTR").as_deref(), Some("2"));
        assert_eq!(row("LOOKUP").as_deref(), Some("1"));
        assert_eq!(row("OP_4242").as_deref(), Some("1"));
        // Most requested first.
        assert!(lines[2].trim_start().starts_with("GETATTR"), "{r}");
    }

    #[test]
    fn opcode_names_follow_the_kernel() {
        assert_eq!(opcode_name(1), "LOOKUP");
        assert_eq!(opcode_name(22), "GETXATTR");
        assert_eq!(opcode_name(44), "READDIRPLUS");
        assert_eq!(opcode_name(52), "STATX");
        assert_eq!(opcode_name(7), "OP_7");
        assert_eq!(opcode_name(0), "OP_0");
        assert_eq!(opcode_name(53), "OP_53");
    }
}
