//! OCI images to bootable disks: every transport, the tricky layer cases
//! checked against umoci and inside a booted guest, a real registry, per-VM
//! copy-on-write, kill -9 during a conversion, and bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imagefs::testutil::{
    busybox_layer, hostile_image, skopeo_copy, tricky_expectations, tricky_image, Compression,
    Expect, TestEntry, TestImage, TestRegistry,
};
use minivm_tests::*;
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(300);
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// A minivm command with its own image cache.
fn minivm(cache: &Path) -> Command {
    let mut c = Command::new(minivm_bin());
    c.env("XDG_CACHE_HOME", cache);
    c
}

fn run(cmd: &mut Command) -> RunOutput {
    run_minivm_with(cmd, T)
}

fn cache_entries(cache: &Path) -> (usize, usize) {
    let count = |d: PathBuf| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    (
        count(cache.join("minivm/disks")),
        count(cache.join("minivm/tmp")),
    )
}

fn e2fsck_clean(img: &Path) {
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

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// How the check script names an image path: relative to `/`, and the root
/// itself as `.` (busybox cannot stat "").
fn guest_name(p: &[u8]) -> &[u8] {
    if p.is_empty() {
        b"."
    } else {
        p
    }
}

/// Converting through each transport gives a clean ext4 with the same content.
#[test]
fn convert_every_transport() {
    let dir = scratch_dir("oci-transports");
    let cache = dir.join("cache");
    let image = tricky_image();
    let layout = dir.join("layout");
    image
        .write_oci_layout(&layout, "gz", Compression::Gzip)
        .unwrap();
    image
        .write_oci_layout(&dir.join("layout-zstd"), "zst", Compression::Zstd)
        .unwrap();
    image
        .write_oci_layout(&dir.join("layout-plain"), "plain", Compression::None)
        .unwrap();
    image
        .write_oci_archive(&dir.join("image.oci.tar"), "arch", Compression::Gzip)
        .unwrap();
    image
        .write_docker_archive(&dir.join("image.docker.tar"), "example/tricky:1")
        .unwrap();
    let refs = [
        format!("oci:{}:gz", layout.display()),
        format!("oci:{}:zst", dir.join("layout-zstd").display()),
        format!("oci:{}:plain", dir.join("layout-plain").display()),
        format!("oci-archive:{}:arch", dir.join("image.oci.tar").display()),
        format!(
            "docker-archive:{}:example/tricky:1",
            dir.join("image.docker.tar").display()
        ),
    ];
    let mut listings = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let out_img = dir.join(format!("out{i}.raw"));
        let out = run(minivm(&cache).args([
            "convert",
            r,
            "-o",
            out_img.to_str().unwrap(),
            "--size",
            "64M",
        ]));
        assert_eq!(out.code(), 0, "{r}: {out:#?}");
        assert_eq!(std::fs::metadata(&out_img).unwrap().len(), 64 << 20);
        e2fsck_clean(&out_img);
        listings.push(debugfs_listing(&out_img));
    }
    // All transports flatten to the same tree.
    for l in &listings[1..] {
        assert_eq!(l, &listings[0]);
    }
    // One cache entry per image (the same image twice in one layout format shares it).
    let (entries, tmp) = cache_entries(&cache);
    assert!(entries >= 3, "{entries}");
    assert_eq!(tmp, 0);

    // Converting again hits the cache: no layer is read.
    let out = run(minivm(&cache).args([
        "convert",
        &refs[0],
        "-o",
        dir.join("again.raw").to_str().unwrap(),
        "--size",
        "64M",
    ]));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(
        !out.stderr.contains("layer"),
        "a warm conversion read layers: {}",
        out.stderr
    );

    // `images` lists entries with their reference; `rm` removes by reference.
    let out = run(minivm(&cache).args(["images"]));
    assert!(out.stdout.contains(&refs[0]), "{}", out.stdout);
    let out = run(minivm(&cache).args(["rm", &refs[0]]));
    assert_eq!(out.code(), 0, "{out:#?}");
    let out = run(minivm(&cache).args(["images"]));
    assert!(
        !out.stdout.contains(&format!("{} ", refs[0])) && !out.stdout.ends_with(&refs[0]),
        "{}",
        out.stdout
    );
    let out = run(minivm(&cache).args(["rm", "no-such-image"]));
    assert_eq!(out.code(), 1);
    assert!(out.stderr.contains("no-such-image"), "{}", out.stderr);
    let out = run(minivm(&cache).args(["gc", "--all"]));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(cache_entries(&cache), (0, 0));
}

/// `debugfs -R "ls -lR"`-like listing: enough to compare two images' trees.
fn debugfs_listing(img: &Path) -> String {
    let out = Command::new("debugfs")
        .args(["-R", "rdump / /dev/null"])
        .arg(img)
        .output();
    drop(out);
    let out = Command::new("debugfs")
        .args(["-R", "ls -l -p /"])
        .arg(img)
        .output()
        .expect("debugfs");
    let root = String::from_utf8_lossy(&out.stdout).into_owned();
    // Inode numbers and times may differ between runs only if the writer is not
    // deterministic; keep names, modes, owners and sizes.
    root.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            if f.len() > 6 {
                format!("{}/{}/{}/{}/{}", f[2], f[3], f[4], f[5], f[6])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// umoci, the reference implementation, agrees with the expectations that the
/// converted disk is checked against in the guest.
#[test]
fn umoci_reference_agrees_with_expectations() {
    let dir = scratch_dir("oci-umoci");
    let layout = dir.join("layout");
    tricky_image()
        .write_oci_layout(&layout, "t", Compression::Gzip)
        .unwrap();
    let bundle = dir.join("bundle");
    let st = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci is needed (apt install umoci)");
    assert!(
        st.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let root = bundle.join("rootfs");
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for (path, want) in tricky_expectations() {
        let p = root.join(std::ffi::OsStr::from_bytes(&path));
        let meta = std::fs::symlink_metadata(&p);
        let name = show(&path);
        match want {
            Expect::Absent => assert!(meta.is_err(), "{name} should be absent"),
            Expect::File { data, mode, .. } => {
                let m = meta.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(m.is_file(), "{name}");
                assert_eq!(std::fs::read(&p).unwrap(), data, "{name}");
                // Rootless umoci cannot keep setuid/setgid on files it does not own as root.
                assert_eq!(m.mode() & 0o777, mode & 0o777, "{name}");
            }
            Expect::Dir { children, .. } => {
                let m = meta.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(m.is_dir(), "{name}");
                if let Some(c) = children {
                    let got: BTreeSet<Vec<u8>> = std::fs::read_dir(&p)
                        .unwrap()
                        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
                        .collect();
                    assert_eq!(got, c.into_iter().collect::<BTreeSet<_>>(), "{name}");
                }
            }
            Expect::Symlink(target) => {
                assert_eq!(
                    std::fs::read_link(&p).unwrap().as_os_str().as_bytes(),
                    &target[..],
                    "{name}"
                );
            }
            // Rootless umoci cannot make device nodes (it leaves them out or as empty files).
            Expect::CharDev { .. } | Expect::BlockDev { .. } => {}
            Expect::Fifo { .. } => assert!(meta.unwrap().file_type().is_fifo(), "{name}"),
        }
    }
}

const XATTR_DUMP_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char names[8192];
        ssize_t n = llistxattr(argv[i], names, sizeof names);
        if (n < 0) { printf("XATTRERR %s\n", argv[i]); continue; }
        for (char *p = names; p < names + n; p += strlen(p) + 1) {
            unsigned char v[8192];
            ssize_t m = lgetxattr(argv[i], p, v, sizeof v);
            printf("XATTR %s|%s|", argv[i], p);
            for (ssize_t j = 0; j < m; j++) printf("%02x", v[j]);
            printf("\n");
        }
    }
    return 0;
}
"#;

/// A static helper that prints a file's xattrs (busybox has no getfattr).
fn xattr_dump_binary(dir: &Path) -> Vec<u8> {
    let src = dir.join("xattr-dump.c");
    std::fs::write(&src, XATTR_DUMP_C).unwrap();
    let bin = dir.join("xattr-dump");
    let st = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(st.success(), "gcc -static failed (libc6-dev needed)");
    std::fs::read(bin).unwrap()
}

/// What the registry test's guests do after the check: each writes a file,
/// waits for the other, and lists what it sees.
const COW_TAIL: &[u8] = br#"
vm=$(sed 's/.*vmname=\([a-z]*\).*/\1/' /proc/cmdline)
echo "written by $vm" > /written-$vm
sync
sleep 15
for f in /written-*; do echo "SEES $f"; done
"#;

/// The guest's check script: prints what the host compares with the image,
/// runs `tail`, and exits with status 10.
/// Few processes: each fork/exec is slow under kvm-pvm's emulation.
fn check_script(expectations: &[(Vec<u8>, Expect)], tail: &[u8]) -> Vec<u8> {
    let quote = |p: &[u8]| {
        let mut q = b"'".to_vec();
        q.extend_from_slice(guest_name(p));
        q.push(b'\'');
        q
    };
    let list = |f: &dyn Fn(&Expect) -> bool| -> Vec<u8> {
        let mut out = Vec::new();
        for (p, e) in expectations {
            if f(e) {
                out.push(b' ');
                out.extend(quote(p));
            }
        }
        out
    };
    let all = list(&|e| !matches!(e, Expect::Absent));
    let absent = list(&|e| matches!(e, Expect::Absent));
    let files = list(&|e| matches!(e, Expect::File { .. }));
    let links = list(&|e| matches!(e, Expect::Symlink(_)));
    let dirs = list(&|e| {
        matches!(
            e,
            Expect::Dir {
                children: Some(_),
                ..
            }
        )
    });
    let xattr = list(&|e| matches!(e, Expect::File { .. } | Expect::Dir { .. }));
    // `umount /dev` must not redirect to /dev/null: that open would keep the
    // kernel's devtmpfs busy and hide the image's own /dev.
    let mut s = b"#!/bin/sh\nmount -t proc proc /proc\numount /dev || echo 'UMOUNT FAILED'\ncd /\n"
        .to_vec();
    s.extend_from_slice(b"stat -c 'STAT %n|%f|%a|%u|%g|%h|%Y|%t|%T|%i'");
    s.extend(&all);
    s.extend_from_slice(&absent);
    s.extend_from_slice(b" 2>/dev/null\nsha256sum");
    s.extend(&files);
    s.extend_from_slice(b" | sed 's/^/SUM /'\nfor l in");
    s.extend(&links);
    s.extend_from_slice(b"; do echo \"LINK $l|$(readlink \"$l\")\"; done\nfor d in");
    s.extend(&dirs);
    s.extend_from_slice(
        b"; do echo \"LS $d|$(ls -A \"$d\" | tr '\\n' '/')\"; done\n/usr/bin/xattr-dump",
    );
    s.extend(&xattr);
    s.extend_from_slice(b"\nmount -t devtmpfs dev /dev\n");
    s.extend_from_slice(tail);
    s.extend_from_slice(
        b"echo \"CHECK DONE\"\nsync\nprintf '\\012' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null\n",
    );
    s
}

fn parse_guest(stdout: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in stdout.lines() {
        let line = line.trim_end_matches('\r');
        for tag in [
            "STAT ", "ABSENT ", "SUM ", "LINK ", "LS ", "XATTR ", "SEES ",
        ] {
            if let Some(rest) = line.strip_prefix(tag) {
                m.entry(tag.trim().to_string())
                    .or_default()
                    .push(rest.to_string());
            }
        }
    }
    m
}

/// Top-level names `checked_image` adds to the tricky image (busybox's layer,
/// the check script), and ext4's `lost+found`.
const ADDED_AT_ROOT: &[&str] = &[
    "bin",
    "sbin",
    "usr",
    "dev",
    "proc",
    "sys",
    "tmp",
    "run",
    "root",
    "var",
    "etc",
    "check",
    "lost+found",
];

/// Compares the guest's view with the expectations; returns the mismatches.
fn compare(guest: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let get = |tag: &str, path: &str| -> Option<String> {
        guest.get(tag)?.iter().find_map(|l| {
            if tag == "SUM" {
                let (sum, p) = l.split_once("  ")?;
                (p == path).then(|| sum.to_string())
            } else {
                let (p, rest) = l.split_once('|')?;
                (p == path).then(|| rest.to_string())
            }
        })
    };
    let xattrs = |path: &str| -> BTreeMap<String, String> {
        guest
            .get("XATTR")
            .map(|v| {
                v.iter()
                    .filter_map(|l| {
                        let mut it = l.splitn(3, '|');
                        let (p, n, val) = (it.next()?, it.next()?, it.next()?);
                        (p == path).then(|| (n.to_string(), val.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let hex = |v: &[u8]| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut bad = Vec::new();
    let mut inode_of: BTreeMap<String, String> = BTreeMap::new();
    for (path, want) in tricky_expectations() {
        let name = show(guest_name(&path));
        let stat = get("STAT", &name).map(|s| s.split('|').map(str::to_string).collect::<Vec<_>>());
        // STAT fields: raw mode (hex), perms (octal), uid, gid, links, mtime, major, minor (hex), inode.
        let mut check = |what: &str, ok: bool, detail: String| {
            if !ok {
                bad.push(format!("{name}: {what}: {detail}"));
            }
        };
        match (&want, &stat) {
            (Expect::Absent, None) => continue,
            (Expect::Absent, Some(s)) => {
                check("should be absent", false, format!("{s:?}"));
                continue;
            }
            (_, None) => {
                check("missing", false, String::new());
                continue;
            }
            _ => {}
        }
        let s = stat.unwrap();
        let ftype = u32::from_str_radix(&s[0], 16).unwrap_or(0) & 0o170000;
        let perm = u32::from_str_radix(&s[1], 8).unwrap_or(9999);
        if let Some(i) = s.get(8) {
            inode_of.insert(name.clone(), i.clone());
        }
        match want {
            Expect::File {
                data,
                mode,
                uid,
                gid,
                mtime,
                xattrs: xs,
                nlink,
                same_inode_as,
            } => {
                check("type", ftype == 0o100000, format!("{:o}", ftype));
                check("mode", perm == mode, format!("{perm:o} != {mode:o}"));
                check(
                    "owner",
                    s[2] == uid.to_string() && s[3] == gid.to_string(),
                    format!("{}:{}", s[2], s[3]),
                );
                check("links", s[4] == nlink.to_string(), s[4].clone());
                if let Some((sec, _)) = mtime {
                    check("mtime", s[5] == sec.to_string(), s[5].clone());
                }
                check(
                    "content",
                    get("SUM", &name) == Some(sha256_hex(&data)),
                    "sha256 differs".into(),
                );
                let want_x: BTreeMap<String, String> =
                    xs.iter().map(|(n, v)| (n.clone(), hex(v))).collect();
                check(
                    "xattrs",
                    xattrs(&name) == want_x,
                    format!("{:?}", xattrs(&name)),
                );
                if let Some(other) = same_inode_as {
                    let other = show(&other);
                    check(
                        "hardlink",
                        inode_of
                            .get(&other)
                            .is_none_or(|i| Some(i) == inode_of.get(&name)),
                        other,
                    );
                }
            }
            Expect::Dir {
                mode,
                uid,
                gid,
                children,
                xattrs: xs,
            } => {
                check("type", ftype == 0o040000, format!("{:o}", ftype));
                check("mode", perm == mode, format!("{perm:o} != {mode:o}"));
                check(
                    "owner",
                    s[2] == uid.to_string() && s[3] == gid.to_string(),
                    format!("{}:{}", s[2], s[3]),
                );
                if let Some(c) = children {
                    let got: BTreeSet<String> = get("LS", &name)
                        .unwrap_or_default()
                        .split('/')
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect();
                    let want: BTreeSet<String> = c.iter().map(|n| show(n)).collect();
                    // At the root, `checked_image`'s own layers (and ext4)
                    // add names of their own.
                    let added = |n: &String| path.is_empty() && ADDED_AT_ROOT.contains(&n.as_str());
                    let ok = want.is_subset(&got) && got.difference(&want).all(added);
                    check("children", ok, format!("{got:?} != {want:?}"));
                }
                for (n, v) in xs {
                    check("xattr", xattrs(&name).get(&n) == Some(&hex(&v)), n);
                }
            }
            Expect::Symlink(target) => {
                check("type", ftype == 0o120000, format!("{:o}", ftype));
                check(
                    "target",
                    get("LINK", &name) == Some(show(&target)),
                    format!("{:?}", get("LINK", &name)),
                );
            }
            Expect::CharDev { major, minor, mode } | Expect::BlockDev { major, minor, mode } => {
                let want_type = if matches!(want, Expect::CharDev { .. }) {
                    0o020000
                } else {
                    0o060000
                };
                check("type", ftype == want_type, format!("{:o}", ftype));
                check("mode", perm == mode, format!("{perm:o}"));
                let dev = (
                    u32::from_str_radix(&s[6], 16).unwrap_or(999),
                    u32::from_str_radix(&s[7], 16).unwrap_or(999),
                );
                check("device", dev == (major, minor), format!("{dev:?}"));
            }
            Expect::Fifo { mode } => {
                check("type", ftype == 0o010000, format!("{:o}", ftype));
                check("mode", perm == mode, format!("{perm:o}"));
            }
            Expect::Absent => {}
        }
    }
    // The layer store's own markers never show through.
    for l in guest.get("XATTR").into_iter().flatten() {
        if l.contains("|user.overlay.") {
            bad.push(format!("bookkeeping xattr visible: {l}"));
        }
    }
    bad
}

/// busybox, the tricky layers, and a top layer with the check script (ending
/// with `tail`) and its xattr helper.
fn checked_image(dir: &Path, tail: &[u8]) -> TestImage {
    let mut image = tricky_image();
    let extra = vec![
        TestEntry::executable("check", check_script(&tricky_expectations(), tail)),
        TestEntry::executable("usr/bin/xattr-dump", xattr_dump_binary(dir)),
    ];
    // busybox first: the tricky layers above it must not disturb it.
    let mut layers = vec![busybox_layer()];
    layers.append(&mut image.layers);
    layers.push(extra);
    TestImage { layers, ..image }
}

/// What the virtio-fs guest changes after the check: a new file, a lower
/// file rewritten (copy-up), one deleted (whiteout), one renamed; then it
/// shows its view of them and of the cap.
const VIRTIOFS_TAIL: &[u8] = br#"
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

/// Who runs minivm in a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Privilege {
    /// The test's own user (root in CI: the layer store is native).
    Caller,
    /// Not root: when the test runs as root, minivm runs as [`NOBODY`] in a
    /// private mount namespace where /dev/kvm is a node that user owns (the
    /// host's /dev/kvm is not touched); otherwise as the caller.
    Unprivileged,
}

/// The unprivileged user and group root tests run minivm as.
const NOBODY: u32 = 65534;

/// Where a virtio-fs boot test keeps its files and how it starts minivm.
struct Runner {
    dir: PathBuf,
    kernel: PathBuf,
    bin: PathBuf,
    /// The /dev/kvm stand-in, when dropping from root to [`NOBODY`].
    kvm_node: Option<PathBuf>,
}

impl Runner {
    fn new(name: &str, privilege: Privilege) -> Runner {
        let as_root = euid() == 0;
        if privilege == Privilege::Caller || !as_root {
            return Runner {
                dir: scratch_dir(name),
                kernel: default_kernel(),
                bin: minivm_bin(),
                kvm_node: None,
            };
        }
        use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
        // Under /tmp, with the kernel and binary copied in: the checkout and
        // the kernel cache may sit below directories only root can search.
        let base = std::env::temp_dir().join("minivm-tests-unprivileged");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = base.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
        let kernel = dir.join("vmlinux");
        std::fs::copy(default_kernel(), &kernel).unwrap();
        let bin = dir.join("minivm");
        std::fs::copy(minivm_bin(), &bin).unwrap();
        let kvm_node = dir.join("kvm");
        let rdev = std::fs::metadata("/dev/kvm").unwrap().rdev();
        let c = std::ffi::CString::new(kvm_node.to_str().unwrap()).unwrap();
        // SAFETY: a valid path; creates a device node, touching no memory.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, rdev) };
        assert_eq!(
            rc,
            0,
            "mknod {}: {}",
            kvm_node.display(),
            std::io::Error::last_os_error()
        );
        chown(&kvm_node, Some(NOBODY), Some(NOBODY)).unwrap();
        Runner {
            dir,
            kernel,
            bin,
            kvm_node: Some(kvm_node),
        }
    }

    /// A directory minivm may write in.
    fn writable(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        if self.kvm_node.is_some() {
            std::os::unix::fs::chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        d
    }

    /// `minivm` with its image cache in `cache`, as the chosen user.
    fn minivm(&self, cache: &Path) -> Command {
        let mut c = match &self.kvm_node {
            None => Command::new(&self.bin),
            Some(node) => {
                let mut c = Command::new("unshare");
                // sh -c SCRIPT NODE UID BIN ARGS...: $0 is the node, $1 the uid.
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(concat!(
                        "mount --bind \"$0\" /dev/kvm && id=$1 && shift && exec setpriv ",
                        "--reuid=\"$id\" --regid=\"$id\" --clear-groups --inh-caps=-all \"$@\""
                    ))
                    .arg(node)
                    .arg(NOBODY.to_string())
                    .arg(&self.bin);
                c
            }
        };
        c.env("XDG_CACHE_HOME", cache);
        c
    }

    /// The uid that owns what minivm creates.
    fn uid(&self) -> u32 {
        if self.kvm_node.is_some() {
            NOBODY
        } else {
            euid()
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
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
    ]);
    let out = run_minivm_with(&mut c, BOOT_TIMEOUT);
    assert_eq!(out.code(), 10, "{out:#?}");
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

/// The tricky image, plus busybox and the check script, pushed to a real
/// registry (Debian's docker-registry), pulled, and booted twice at once:
/// the guests see the image exactly, and neither each other's writes nor the
/// cached disk changes.
#[test]
fn registry_pull_boot_and_copy_on_write() {
    if !kvm_available() {
        return;
    }
    let dir = scratch_dir("oci-registry");
    let cache = dir.join("cache");
    let image = checked_image(&dir, COW_TAIL);
    let layout = dir.join("layout");
    image
        .write_oci_layout(&layout, "1", Compression::Gzip)
        .unwrap();

    let registry = TestRegistry::start(None).unwrap();
    let remote = format!("docker://{}/test/tricky:1", registry.host());
    skopeo_copy(
        &format!("oci:{}:1", layout.display()),
        &remote,
        &["--dest-tls-verify=false"],
    )
    .unwrap();

    // Without --tls-verify=false the plain-HTTP registry is refused, clearly.
    let out = run(minivm(&cache).args(["pull", &remote]));
    assert_eq!(out.code(), 1, "{out:#?}");
    assert!(out.stderr.contains(&registry.host()), "{}", out.stderr);

    let out = run(minivm(&cache).args(["pull", &remote, "--tls-verify=false"]));
    assert_eq!(out.code(), 0, "{out:#?}");
    let disk_path = PathBuf::from(
        out.stdout
            .split_whitespace()
            .nth(1)
            .expect("pull prints KEY PATH"),
    );
    e2fsck_clean(&disk_path);
    let before = std::fs::read(&disk_path).unwrap();

    let kernel = default_kernel();
    let spawn = |vm: &str| {
        let mut c = minivm(&cache);
        c.args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--oci",
            &remote,
            "--tls-verify=false",
            "--append",
            &format!("quiet init=/check vmname={vm}"),
        ]);
        std::thread::spawn(move || run_minivm_with(&mut c, BOOT_TIMEOUT))
    };
    let started = Instant::now();
    let (a, b) = (spawn("a"), spawn("b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    eprintln!("two concurrent boots took {:?}", started.elapsed());
    for (vm, out) in [("a", &a), ("b", &b)] {
        assert_eq!(out.code(), 10, "vm {vm}: {out:#?}");
        assert!(out.stdout.contains("CHECK DONE"), "vm {vm}: {}", out.stdout);
        let guest = parse_guest(&out.stdout);
        let sees = guest.get("SEES").cloned().unwrap_or_default();
        assert_eq!(
            sees,
            vec![format!("/written-{vm}")],
            "vm {vm} sees another VM's writes: {sees:?}"
        );
        let bad = compare(&guest);
        assert!(
            bad.is_empty(),
            "vm {vm}: the guest's view differs from the image:\n{}\n{}",
            bad.join("\n"),
            out.stdout
        );
    }
    assert!(
        std::fs::read(&disk_path).unwrap() == before,
        "a VM changed the cached disk"
    );
    let (entries, tmp) = cache_entries(&cache);
    assert_eq!((entries, tmp), (1, 0));
}

/// kill -9 in the middle of a conversion leaves no entry; the next run redoes it.
#[test]
fn kill_9_during_conversion_leaves_no_half_entry() {
    let dir = scratch_dir("oci-kill9");
    let cache = dir.join("cache");
    // 256 MiB of incompressible-enough data so the conversion takes a while.
    let mut data = vec![0u8; 256 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let image = TestImage::new(vec![vec![
        TestEntry::file("big1", data.clone()),
        TestEntry::file("big2", data),
    ]]);
    let layout = dir.join("layout");
    image
        .write_oci_layout(&layout, "big", Compression::None)
        .unwrap();
    let r = format!("oci:{}:big", layout.display());

    for delay_ms in [50u64, 400, 1500] {
        let mut child = minivm(&cache)
            .args(["pull", "-q", &r])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let _ = child.wait();
        if !finished {
            let entries = cache_entries(&cache).0;
            assert_eq!(
                entries, 0,
                "a killed conversion published an entry (after {delay_ms} ms)"
            );
        }
    }
    let out = run(minivm(&cache).args(["pull", "-q", &r]));
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(cache_entries(&cache), (1, 0), "one entry, no leftovers");
    let disk = PathBuf::from(out.stdout.split_whitespace().nth(1).unwrap());
    e2fsck_clean(&disk);
}

struct Bad {
    name: &'static str,
    reference: String,
    size: Option<&'static str>,
    want: &'static [&'static str],
    env: Vec<(&'static str, String)>,
}

fn corrupt_blob(layout: &Path, which: &str) {
    // The largest blob is the layer; the smallest the config or manifest.
    let blobs = layout.join("blobs/sha256");
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.metadata().unwrap().len(), p))
        .collect();
    files.sort();
    let (_, layer) = files.last().unwrap().clone();
    let mut bytes = std::fs::read(&layer).unwrap();
    match which {
        "flip" => {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
        }
        "truncate" => bytes.truncate(bytes.len() / 2),
        "delete" => {
            std::fs::remove_file(&layer).unwrap();
            return;
        }
        _ => unreachable!(),
    }
    std::fs::write(&layer, bytes).unwrap();
}

/// Rewrites the manifest blob (and index) through `f`.
fn edit_manifest(layout: &Path, f: impl Fn(&mut String)) {
    let index_path = layout.join("index.json");
    let mut index = std::fs::read_to_string(&index_path).unwrap();
    let start = index.find("sha256:").unwrap();
    let old = index[start + 7..start + 71].to_string();
    let mpath = layout.join("blobs/sha256").join(&old);
    let mut m = std::fs::read_to_string(&mpath).unwrap();
    f(&mut m);
    let new = sha256_hex(m.as_bytes());
    std::fs::write(layout.join("blobs/sha256").join(&new), &m).unwrap();
    index = index.replace(&old, &new);
    // The size in the index must match the new manifest.
    let size_re = index.find("\"size\":").map(|i| {
        let rest = &index[i + 7..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit() && c != ' ')
            .unwrap();
        (i + 7, i + 7 + end)
    });
    if let Some((a, b)) = size_re {
        index.replace_range(a..b, &m.len().to_string());
    }
    std::fs::write(&index_path, index).unwrap();
}

/// Each bad input: exit 1, a message naming the image and the problem, and
/// nothing left in the cache or at -o.
#[test]
fn bad_images_are_clear_errors_and_leave_nothing() {
    let dir = scratch_dir("oci-bad");
    let base = TestImage::new(vec![vec![
        TestEntry::file("etc/hostname", "vm\n"),
        TestEntry::file("data", vec![7u8; 100_000]),
    ]]);
    let mk = |name: &str| {
        let l = dir.join(name);
        base.write_oci_layout(&l, "t", Compression::Gzip).unwrap();
        l
    };
    let oci = |l: &Path| format!("oci:{}:t", l.display());
    let mut cases: Vec<Bad> = Vec::new();

    let l = mk("digest");
    corrupt_blob(&l, "flip");
    cases.push(Bad {
        name: "layer digest mismatch",
        reference: oci(&l),
        size: None,
        want: &["sha256"],
        env: vec![],
    });
    let l = mk("trunc");
    corrupt_blob(&l, "truncate");
    cases.push(Bad {
        name: "truncated gzip",
        reference: oci(&l),
        size: None,
        want: &["layer"],
        env: vec![],
    });
    let l = mk("missing");
    corrupt_blob(&l, "delete");
    cases.push(Bad {
        name: "missing blob",
        reference: oci(&l),
        size: None,
        want: &["sha256"],
        env: vec![],
    });
    let l = mk("json");
    edit_manifest(&l, |m| *m = "{ this is not json".into());
    cases.push(Bad {
        name: "manifest not JSON",
        reference: oci(&l),
        size: None,
        want: &["manifest"],
        env: vec![],
    });
    let l = mk("fields");
    edit_manifest(&l, |m| *m = m.replace("\"layers\"", "\"notlayers\""));
    cases.push(Bad {
        name: "manifest lacks layers",
        reference: oci(&l),
        size: None,
        want: &["manifest"],
        env: vec![],
    });
    let l = mk("mediatype");
    edit_manifest(&l, |m| {
        *m = m.replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/x-weird",
        )
    });
    cases.push(Bad {
        name: "unknown media type",
        reference: oci(&l),
        size: None,
        want: &["application/x-weird"],
        env: vec![],
    });

    // Hostile entries, one image each.
    for (i, entry) in hostile_image().layers[0].iter().enumerate() {
        // A symlink pointing out is fine on its own (stored, never followed).
        if entry.tar_path() == b"link-out" {
            continue;
        }
        let mut layer = vec![];
        if entry.tar_path() == b"link-out/pwned" {
            layer.push(TestEntry::raw(&b"link-out"[..], b'2').link_name(&b"../../../tmp"[..]));
        }
        layer.push(entry.clone());
        let l = dir.join(format!("hostile{i}"));
        TestImage::new(vec![layer])
            .write_oci_layout(&l, "t", Compression::Gzip)
            .unwrap();
        let name: &'static str =
            Box::leak(format!("hostile entry {}", show(&entry.tar_path())).into_boxed_str());
        cases.push(Bad {
            name,
            reference: oci(&l),
            size: Some("16M"),
            want: &[],
            env: vec![],
        });
    }

    // A small compressed layer that expands far beyond --size.
    let bomb = TestImage::new(vec![vec![TestEntry::file("zeros", vec![0u8; 200 << 20])]]);
    let l = dir.join("bomb");
    bomb.write_oci_layout(&l, "t", Compression::Gzip).unwrap();
    cases.push(Bad {
        name: "decompression bomb",
        reference: oci(&l),
        size: Some("16M"),
        want: &["16.0 MiB"],
        env: vec![],
    });

    // Registry errors.
    let registry = TestRegistry::start(None).unwrap();
    cases.push(Bad {
        name: "registry 404",
        reference: format!("docker://{}/no/such:tag", registry.host()),
        size: None,
        want: &["not found"],
        env: vec![],
    });
    let port = imagefs::testutil::free_port();
    cases.push(Bad {
        name: "connection refused",
        reference: format!("docker://127.0.0.1:{port}/x:1"),
        size: None,
        want: &["127.0.0.1"],
        env: vec![],
    });
    let auth = TestRegistry::start(Some(&imagefs::testutil::bcrypt_htpasswd_line())).unwrap();
    cases.push(Bad {
        name: "401 bad credentials",
        reference: format!("docker://{}/x:1", auth.host()),
        size: None,
        want: &["unauthorized"],
        env: vec![
            ("MINIVM_REGISTRY_USER", "minivm".into()),
            ("MINIVM_REGISTRY_PASSWORD", "wrong".into()),
        ],
    });

    let mut failures = Vec::new();
    for case in &cases {
        let cache = dir.join(format!(
            "cache-{}",
            case.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        let out_file = dir.join("out.raw");
        let _ = std::fs::remove_file(&out_file);
        let mut cmd = minivm(&cache);
        cmd.args([
            "convert",
            &case.reference,
            "-o",
            out_file.to_str().unwrap(),
            "--tls-verify=false",
        ]);
        if let Some(s) = case.size {
            cmd.args(["--size", s]);
        }
        for (k, v) in &case.env {
            cmd.env(k, v);
        }
        let out = run(&mut cmd);
        let msg = out.stderr.to_lowercase();
        let problem = if out.status.and_then(|s| s.code()) != Some(1) {
            Some(format!("exit {:?}", out.status))
        } else if !out.stderr.contains(&case.reference)
            && !case
                .reference
                .split(':')
                .nth(1)
                .is_some_and(|p| out.stderr.contains(p))
        {
            Some("message does not name the image".into())
        } else if let Some(w) = case.want.iter().find(|w| !msg.contains(&w.to_lowercase())) {
            Some(format!("message lacks {w:?}"))
        } else if out_file.exists() {
            Some("output file was created".into())
        } else if cache_entries(&cache) != (0, 0) {
            Some(format!("cache not empty: {:?}", cache_entries(&cache)))
        } else {
            None
        };
        if let Some(p) = problem {
            failures.push(format!(
                "{}: {p}\n  stderr: {}",
                case.name,
                out.stderr.trim()
            ));
        } else {
            eprintln!("ok: {}: {}", case.name, out.stderr.trim());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing escaped: no file planted outside.
    assert!(
        !dir.join("escape").exists()
            && !Path::new("/tmp/pwned").exists()
            && !Path::new("/abs-file").exists()
    );
}
