//! Bootable busybox root filesystems for real Linux guests, all made from
//! one description ([`busybox_layer`] plus `/init` and extra entries): as a
//! host directory (for virtio-fs), an ext4 disk (mkfs.ext4 -d, no root
//! needed) or a newc initramfs (cpio).

use crate::entry::{Meta, TestEntry};
use crate::fixtures::busybox_layer;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Writes `entries` (directories, files and symlinks; parents are created
/// as needed) under `root` with their permission bits. Directory modes are
/// set last, so a read-only directory can still be filled first.
///
/// # Panics
/// On an I/O error, or an entry kind a plain directory cannot hold as the
/// image means it (devices, FIFOs, hardlinks, whiteouts, raw headers).
pub fn write_tree(root: &Path, entries: &[TestEntry]) {
    fs::create_dir_all(root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
    let mut dir_modes = Vec::new();
    for e in entries {
        let at = |path: &str| {
            let p = root.join(path.trim_start_matches('/'));
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
            }
            p
        };
        match e {
            TestEntry::Dir { path, meta } => {
                let p = at(path);
                fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                dir_modes.push((p, meta.mode));
            }
            TestEntry::File { path, data, meta } => {
                let p = at(path);
                fs::write(&p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                set_mode(&p, meta);
            }
            TestEntry::Symlink { path, target, .. } => {
                let p = at(path);
                let _ = fs::remove_file(&p);
                std::os::unix::fs::symlink(target, &p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
            other => panic!("a host directory cannot hold {other:?}"),
        }
    }
    // Innermost first: a parent's mode never blocks setting a child's.
    for (p, mode) in dir_modes.iter().rev() {
        fs::set_permissions(p, fs::Permissions::from_mode(*mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    }
}

fn set_mode(p: &Path, meta: &Meta) {
    fs::set_permissions(p, fs::Permissions::from_mode(meta.mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// Writes a busybox root at `root`: [`busybox_layer`], `/init` =
/// `init_script` (mode 0755), then `extra`.
pub fn busybox_root(root: &Path, init_script: &str, extra: &[TestEntry]) {
    let _ = fs::remove_dir_all(root);
    let mut entries = busybox_layer();
    entries.push(TestEntry::executable("init", init_script));
    entries.extend_from_slice(extra);
    write_tree(root, &entries);
}

/// Makes a bootable ext4 disk image `DIR/NAME.raw` of `size_mib` MiB
/// holding [`busybox_root`] (`init_script`, `extra`), without root.
pub fn busybox_disk(
    dir: &Path,
    name: &str,
    init_script: &str,
    extra: &[TestEntry],
    size_mib: u32,
) -> PathBuf {
    let root = dir.join(format!("{name}.root"));
    busybox_root(&root, init_script, extra);
    let img = dir.join(format!("{name}.raw"));
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&img)
        .arg(format!("{size_mib}M"))
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success(), "mkfs.ext4 failed");
    img
}

/// Makes a gzip-less newc initramfs `DIR/initramfs.cpio` holding
/// [`busybox_root`] with `init_script` (uses `cpio`).
pub fn busybox_initramfs(dir: &Path, init_script: &str) -> PathBuf {
    let root = dir.join("initramfs.root");
    busybox_root(&root, init_script, &[]);
    let out = dir.join("initramfs.cpio");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
            root.display(),
            out.display()
        ))
        .status()
        .expect("sh");
    assert!(st.success(), "cpio failed (apt install cpio)");
    out
}

/// The shell line that exits the VM with `status` through the exit port.
pub fn exit_port_cmd(status: u8) -> String {
    format!(
        "printf '\\{:03o}' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null",
        status
    )
}
