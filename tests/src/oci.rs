//! Running minivm on OCI images in the tests: a command with its own image
//! cache, what the cache holds, and checks of the disks it makes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testkit::{minivm_bin, run_minivm_with, RunOutput};
/// How long a conversion or pull may take.
pub const CONVERT_TIMEOUT: Duration = Duration::from_secs(300);

/// A minivm command with its own image cache.
pub fn minivm(cache: &Path) -> Command {
    let mut c = Command::new(minivm_bin());
    c.env("XDG_CACHE_HOME", cache);
    c
}

/// Runs `cmd` with [`CONVERT_TIMEOUT`].
pub fn run(cmd: &mut Command) -> RunOutput {
    run_minivm_with(cmd, CONVERT_TIMEOUT)
}

/// (disk cache entries, leftovers in the cache's tmp) under `cache`.
pub fn cache_entries(cache: &Path) -> (usize, usize) {
    let count = |d: PathBuf| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    (
        count(cache.join("minivm/disks")),
        count(cache.join("minivm/tmp")),
    )
}

/// Asserts `e2fsck -fn` finds nothing wrong with `img`.
pub fn e2fsck_clean(img: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("e2fsck (e2fsprogs)");
    assert!(
        out.status.success(),
        "e2fsck -fn {} failed:\n{}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes shown as text (lossy).
pub fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}
