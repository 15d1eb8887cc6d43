//! `run --oci --virtiofs`: the layers unpacked into the layer store and
//! served merged, as the caller and unprivileged; the guest checks the image
//! and writes to its own layer only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use minivm_tests::guest_check::*;
use minivm_tests::oci::*;
use minivm_tests::runner::*;
use testkit::*;

/// What the virtio-fs guest changes after the check: a new file, a lower
/// file rewritten (copy-up), one deleted (whiteout), one renamed; then it
/// shows its view of them and of the cap. First it reads one file and
/// misses one name [`CACHE_ROUNDS`] times, which the guest's caches serve
/// (with shell built-ins: a fork and exec costs seconds under kvm-pvm).
const VIRTIOFS_TAIL: &[u8] = br#"
i=0
while [ $i -lt 100 ]; do
  read -r line < /etc/passwd; [ -e /no-such-name ]; i=$((i+1))
done
echo "new in the vm" > /vm-new
grep -c . /etc/passwd | sed 's/^/VMPASSWD-BEFORE /'
echo "extra:x:1000:1000::/:/bin/sh" >> /etc/passwd
rm /etc/group
mv /usr/bin/xattr-dump /usr/bin/xattr-dump.moved
mkdir /vm-dir && echo inside > /vm-dir/f
chown 1234:5678 /vm-new && chmod 4750 /vm-new
stat -c 'VMOWNER %u:%g:%a' /vm-new
sync
ls / /usr/bin | sed 's/^/VMLS /'
[ -e /etc/group ] || echo "VMLS group-gone"
grep -c . /etc/passwd | sed 's/^/VMPASSWD /'
tail -n 1 /etc/passwd | sed 's/^/VMPASSWD-LAST /'
df -k / | sed 's/^/VMDF /'
"#;

/// The rounds of reads and misses at the start of [`VIRTIOFS_TAIL`].
const CACHE_ROUNDS: u64 = 100;

/// Every path under `dir` with its type, mode, owner, size, mtime, xattrs
/// and content: what must not change in the layer store.
fn tree_snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                sha256_hex(&std::fs::read(&p).unwrap())
            } else if m.is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else {
                if m.is_dir() {
                    stack.push(p.clone());
                }
                String::new()
            };
            let xattrs = xattr_list(&p);
            out.insert(
                p,
                format!(
                    "{:o} {}:{} {} {}.{} {:x} {xattrs:?} {content}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.rdev()
                ),
            );
        }
    }
    out
}

fn xattr_list(p: &Path) -> Vec<(String, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: valid path and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return vec![];
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: valid strings and a buffer of the given length.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(m.max(0) as usize);
        out.push((show(name), v));
    }
    out
}

/// `run --oci --virtiofs`: the layers are unpacked once each into the layer
/// store and served merged; the guest sees the image exactly (owners, modes,
/// whiteouts, opaque directories), its writes, deletes and renames land in
/// the VM's writable layer only, the layer store is unchanged, and a second
/// image sharing the base layer does not unpack it again.
#[test]
fn virtiofs_boot_from_layers() {
    virtiofs_boot(Privilege::Caller);
}

/// The same with minivm unprivileged: the store keeps the image's owners,
/// modes and system xattrs in `user.minivm.*` xattrs on files the user owns,
/// the guest still sees the image exactly, and its chown/chmod land in the
/// writable layer the same way.
#[test]
fn virtiofs_boot_from_layers_unprivileged() {
    virtiofs_boot(Privilege::Unprivileged);
}

fn virtiofs_boot(privilege: Privilege) {
    if !kvm_available() {
        return;
    }
    let runner = Runner::new("oci-virtiofs", privilege);
    let unprivileged = runner.uid() != 0;
    let dir = runner.dir.clone();
    let cache = runner.writable("cache");
    let image = checked_image(&dir, VIRTIOFS_TAIL);
    let nlayers = image.layers.len();
    let layout = dir.join("layout");
    image
        .write_oci_layout(&layout, "1", Compression::Gzip)
        .unwrap();
    let reference = format!("oci:{}:1", layout.display());
    let upper = runner.writable("vm").join("upper");
    let mut c = runner.minivm(&cache);
    c.args([
        "run",
        "--kernel",
        runner.kernel.to_str().unwrap(),
        "--oci",
        &reference,
        "--virtiofs",
        "--persist",
        upper.to_str().unwrap(),
        "--upper-size",
        "32M",
        "--append",
        "quiet init=/check",
        "--fs-stats",
    ]);
    let out = run_minivm_with(&mut c, BOOT_TIMEOUT);
    assert_eq!(out.code(), 10, "{out:#?}");
    // The guest is the merged tree's only writer, so its caches serve the
    // repeated reads and misses: without them each round costs a READ (an
    // open drops the cached pages) and a LOOKUP; the whole boot makes fewer.
    let stats = fs_stats(&out.stderr, "minivm-root");
    for op in ["READ", "LOOKUP"] {
        let n = stats.get(op).copied().unwrap_or(0);
        assert!(
            n > 0 && n < CACHE_ROUNDS,
            "{n} {op} requests for {CACHE_ROUNDS} rounds: {stats:?}"
        );
    }
    assert!(out.stdout.contains("CHECK DONE"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("unpacked {nlayers} of {nlayers} layer(s)")),
        "{}",
        out.stderr
    );
    let bad = compare(&parse_guest(&out.stdout));
    assert!(
        bad.is_empty(),
        "the guest's view over virtio-fs differs from the image:\n{}\n{}",
        bad.join("\n"),
        out.stdout
    );
    // The guest saw its own changes.
    let vm: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("VM"))
        .collect();
    for want in [
        "LS vm-new",
        "LS vm-dir",
        "LS xattr-dump.moved",
        "LS group-gone",
    ] {
        assert!(vm.contains(&want), "guest lacks {want:?}: {vm:?}");
    }
    assert!(!vm.contains(&"LS xattr-dump"), "{vm:?}");
    // Appending to a lower file copies it up whole, then appends.
    let field = |tag: &str| -> String {
        vm.iter()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag}: {vm:?}"))
            .trim()
            .to_string()
    };
    let lines_before: u32 = field("PASSWD-BEFORE ").parse().unwrap();
    let lines_after: u32 = field("PASSWD ").parse().unwrap();
    assert_eq!(lines_after, lines_before + 1, "{vm:?}");
    assert_eq!(field("PASSWD-LAST "), "extra:x:1000:1000::/:/bin/sh");
    // statfs reports the cap (32 MiB) as the size of the root.
    let df = vm
        .iter()
        .find(|l| l.starts_with("DF ") && !l.contains("Filesystem"))
        .unwrap_or_else(|| panic!("no df line: {vm:?}"));
    let total_kb: u64 = df.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((16 * 1024..=32 * 1024).contains(&total_kb), "df: {df}");

    // The changes are in the VM's writable layer only ...
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert_eq!(
        std::fs::read(upper.join("vm-new")).unwrap(),
        b"new in the vm\n"
    );
    assert_eq!(std::fs::read(upper.join("vm-dir/f")).unwrap(), b"inside\n");
    let wh = std::fs::symlink_metadata(upper.join("etc/group")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "etc/group: {wh:?}"
    );
    assert!(upper.join("usr/bin/xattr-dump.moved").is_file());
    // The guest's chown and chmod: native as root, recorded unprivileged.
    assert_eq!(field("OWNER "), "1234:5678:4750");
    let m = std::fs::metadata(upper.join("vm-new")).unwrap();
    let recorded = xattr_list(&upper.join("vm-new"))
        .into_iter()
        .find(|(n, _)| n == "user.minivm.override")
        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned());
    if unprivileged {
        assert_eq!(m.uid(), runner.uid(), "vm-new: {m:?}");
        assert_eq!(recorded.as_deref(), Some("1234:5678:104750"));
    } else {
        assert_eq!((m.uid(), m.gid(), m.mode()), (1234, 5678, 0o104750));
        assert_eq!(recorded, None);
    }
    // ... and the store holds each layer once, as unpacked.
    let store = cache.join("minivm/layers/sha256");
    let snapshot = tree_snapshot(&store);
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), nlayers);
    assert!(
        snapshot
            .keys()
            .all(|p| !p.to_string_lossy().contains(".wh.")),
        "OCI whiteout names in the store"
    );
    // Unprivileged, every host file is the user's and the image's owners
    // and modes are in xattrs (the guest saw them above); as root, natively.
    let owners: BTreeSet<u32> = snapshot
        .keys()
        .map(|p| std::fs::symlink_metadata(p).unwrap().uid())
        .collect();
    let overrides = snapshot
        .values()
        .filter(|v| v.contains("user.minivm.override"))
        .count();
    if unprivileged {
        assert_eq!(owners, BTreeSet::from([runner.uid()]));
        assert!(overrides > 0, "no user.minivm.override in the store");
    } else {
        assert!(
            owners.len() > 1,
            "the image's owners are not native: {owners:?}"
        );
        assert_eq!(overrides, 0);
    }

    // A second image with the same base layer: only its own layer is
    // unpacked (booted with the tiny guest: the overlay is built, then it
    // exits at once). The first VM's layers are untouched.
    let second = TestImage::new(vec![
        busybox_layer(),
        vec![TestEntry::file("etc/motd", "second image\n")],
    ]);
    let layout2 = dir.join("layout2");
    second
        .write_oci_layout(&layout2, "2", Compression::Gzip)
        .unwrap();
    let tiny = TinyGuest {
        message: b"tiny\n".to_vec(),
        boot_marker: false,
        end: TinyEnd::Exit(0),
    }
    .write(&dir, "tiny.elf");
    let out = run(runner.minivm(&cache).args([
        "run",
        "--kernel",
        tiny.to_str().unwrap(),
        "--oci",
        &format!("oci:{}:2", layout2.display()),
        "--virtiofs",
    ]));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(
        out.stderr.contains("unpacked 1 of 2 layer(s)"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), nlayers + 1);
    let after = tree_snapshot(&store);
    let unchanged = snapshot.iter().all(|(p, v)| after.get(p) == Some(v));
    assert!(unchanged, "the layer store changed");
    // The second VM's private writable layer is gone with it.
    let vms = cache.join("minivm/vms");
    assert_eq!(std::fs::read_dir(&vms).map(|r| r.count()).unwrap_or(0), 0);
    if runner.kvm_node.is_some() {
        // Outside the target directory: nothing else would remove it.
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
