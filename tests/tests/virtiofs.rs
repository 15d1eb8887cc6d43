//! Booting from a host directory over minivm's in-process virtio-fs, with a
//! read-only share, a write cap, and escape attempts from the guest.

use std::path::Path;

use testkit::*;

const SECRET: &str = "host-secret-6b1f0e2d";

/// A busybox root for the test's `INIT`, with a mount point for the share
/// and escape bait: links pointing at the host file outside the share.
fn busybox_rootfs(dir: &Path, init: &str) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    let secret = dir.join("secret.txt");
    busybox_root(
        &root,
        init,
        &[
            TestEntry::dir("mnt/data"),
            TestEntry::symlink("rel-link", "../secret.txt"),
            TestEntry::symlink("abs-link", secret.to_str().unwrap()),
        ],
    );
    root
}

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
echo "MARKER virtiofs root"
echo "written by the guest" > /guest-wrote.txt
mv /guest-wrote.txt /guest-file.txt
# Escape attempts: none may show the host secret.
cat /../secret.txt /../../secret.txt /rel-link /abs-link 2>&1
ls -la /.. 2>&1 | tail -3
ln /abs-link /hardlink-to-link 2>&1; cat /hardlink-to-link 2>&1
cd /proc/self/root/.. && cat secret.txt 2>&1; cd /
# The share is read-only.
mount -t virtiofs data /mnt/data && cat /mnt/data/hello.txt
if echo x > /mnt/data/new 2>/dev/null; then echo "share-write=succeeded"; else echo "share-write=failed"; fi
# The write cap: 64 MiB into a 16 MiB cap.
dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null; echo "dd-status=$?"
echo "big-size=$(stat -c %s /big)"
df -k / | tail -1 | sed 's/^/df /'
rm /big
sync
printf '\013' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
"#;

#[test]
fn boot_from_directory_with_share_cap_and_containment() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("virtiofs");
    std::fs::write(dir.join("secret.txt"), SECRET).unwrap();
    let root = busybox_rootfs(&dir, INIT);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "hello from the host share\n").unwrap();
    let kernel = default_kernel();
    let share = format!("{}:data:ro", data.display());
    let out = run_minivm(
        [
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--rootfs",
            root.to_str().unwrap(),
            "--upper-size",
            "16M",
            "--share",
            &share,
            "--append",
            "quiet init=/init",
            "--fs-stats",
        ],
        BOOT_TIMEOUT,
    );
    assert_eq!(out.code(), 11, "{out:#?}");
    assert!(
        out.stdout.contains("MARKER virtiofs root"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(SECRET),
        "the guest read a host file outside the share:\n{}",
        out.stdout
    );
    // The guest's write (and rename) reached the host directory.
    assert_eq!(
        std::fs::read_to_string(root.join("guest-file.txt")).unwrap(),
        "written by the guest\n"
    );
    assert!(!root.join("guest-wrote.txt").exists());
    // The read-only share served its file and refused writes.
    assert!(
        out.stdout.contains("hello from the host share"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("share-write=failed"), "{}", out.stdout);
    assert!(!data.join("new").exists());
    // The cap: dd failed, the file stayed under 16 MiB, df showed the cap.
    assert!(out.stdout.contains("dd-status=1"), "{}", out.stdout);
    let size: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("big-size="))
        .and_then(|v| v.trim().parse().ok())
        .expect("big-size line");
    assert!(size <= 16 << 20, "wrote {size} bytes past a 16 MiB cap");
    let df = out
        .stdout
        .lines()
        .find(|l| l.starts_with("df "))
        .expect("df line");
    let total_kb: u64 = df
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("df total");
    assert!(
        (8 * 1024..=16 * 1024).contains(&total_kb),
        "statfs does not report the cap: {df}"
    );
    // --fs-stats: each share's requests by opcode, on stderr at exit.
    let root_stats = fs_stats(&out.stderr, "minivm-root");
    for op in [
        "INIT", "LOOKUP", "GETATTR", "OPEN", "READ", "WRITE", "RENAME",
    ] {
        assert!(
            root_stats.get(op).is_some_and(|&n| n > 0),
            "no {op} on the root share: {root_stats:?}\n{}",
            out.stderr
        );
    }
    let data_stats = fs_stats(&out.stderr, "data");
    assert!(
        data_stats.get("LOOKUP").is_some_and(|&n| n > 0),
        "{data_stats:?}"
    );
    assert!(!data_stats.contains_key("WRITE"), "{data_stats:?}");
    // Nothing was left past the cap on the host, and the secret is intact.
    assert!(!root.join("big").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("secret.txt")).unwrap(),
        SECRET
    );
}
