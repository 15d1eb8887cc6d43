//! The tricky image checked inside a booted guest: a script in the image
//! prints what the guest sees (stat, checksums, link targets, listings,
//! xattrs), and the host compares it with `tricky_expectations()`.

use crate::oci::show;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use testkit::{
    busybox_layer, sha256_hex, tricky_expectations, tricky_image, Expect, TestEntry, TestImage,
};

/// How the check script names an image path: relative to `/`, and the root
/// itself as `.` (busybox cannot stat "").
pub fn guest_name(p: &[u8]) -> &[u8] {
    if p.is_empty() {
        b"."
    } else {
        p
    }
}
/// C source of the guest's xattr helper.
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
pub fn xattr_dump_binary(dir: &Path) -> Vec<u8> {
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

/// The guest's check script: prints what the host compares with the image,
/// runs `tail`, and exits with status 10.
/// Few processes: each fork/exec is slow under kvm-pvm's emulation.
pub fn check_script(expectations: &[(Vec<u8>, Expect)], tail: &[u8]) -> Vec<u8> {
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

/// The guest's report lines (`STAT`, `SUM`, `LINK`, `LS`, `XATTR`, `SEES`) by tag.
pub fn parse_guest(stdout: &str) -> BTreeMap<String, Vec<String>> {
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
pub const ADDED_AT_ROOT: &[&str] = &[
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
pub fn compare(guest: &BTreeMap<String, Vec<String>>) -> Vec<String> {
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
pub fn checked_image(dir: &Path, tail: &[u8]) -> TestImage {
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
