//! Ready-made layers and images: a bootable busybox layer, an image covering
//! every OCI layer case (with the merged tree it must flatten to), and a
//! hostile image.

use crate::entry::TestEntry;
use crate::image::TestImage;

/// Applets [`busybox_layer`] links in `/bin`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "cat",
    "echo",
    "ls",
    "stat",
    "dd",
    "printf",
    "reboot",
    "poweroff",
    "halt",
    "sync",
    "mkdir",
    "rmdir",
    "rm",
    "test",
    "[",
    "grep",
    "head",
    "tail",
    "id",
    "md5sum",
    "sha256sum",
    "uname",
    "sleep",
    "touch",
    "wc",
    "readlink",
    "find",
    "ln",
    "mv",
    "cp",
    "chmod",
    "chown",
    "env",
    "true",
    "false",
    "df",
    "du",
    "mknod",
    "hostname",
    "ps",
    "kill",
    "cut",
    "tr",
    "sort",
    "xargs",
    "seq",
    "tee",
    "dmesg",
    "sed",
    "awk",
    "mkfifo",
    "truncate",
    "sha1sum",
    "which",
    "cmp",
    "dirname",
    "basename",
    "mountpoint",
    "nproc",
    "free",
];

/// A layer with `/bin/busybox` (copied from the host's static busybox, Debian
/// package busybox-static) and symlinks `/bin/<applet> -> busybox` for
/// [`BUSYBOX_APPLETS`], plus `/dev /proc /sys /tmp /run /root /etc` and a
/// minimal `/etc/passwd` and `/etc/group`: an image made of it boots with
/// `/bin/sh` as init.
///
/// # Panics
/// If `/bin/busybox` cannot be read.
pub fn busybox_layer() -> Vec<TestEntry> {
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|e| {
        panic!("reading /bin/busybox: {e} (install the Debian package busybox-static)")
    });
    let mut l = vec![
        TestEntry::dir("bin"),
        TestEntry::dir("sbin"),
        TestEntry::dir("usr"),
        TestEntry::dir("usr/bin"),
        TestEntry::dir("dev"),
        TestEntry::dir("proc").mode(0o555),
        TestEntry::dir("sys").mode(0o555),
        TestEntry::dir("tmp").mode(0o1777),
        TestEntry::dir("run"),
        TestEntry::dir("root").mode(0o700),
        TestEntry::dir("var"),
        TestEntry::dir("etc"),
        TestEntry::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        TestEntry::file("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        TestEntry::executable("bin/busybox", busybox),
    ];
    l.extend(
        BUSYBOX_APPLETS
            .iter()
            .map(|a| TestEntry::symlink(format!("bin/{a}"), "busybox")),
    );
    l
}

/// The value of a `security.capability` xattr granting CAP_NET_BIND_SERVICE
/// (permitted + effective; `struct vfs_cap_data`, revision 2).
pub const CAP_NET_BIND_SERVICE_XATTR: [u8; 20] =
    [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Long names used by [`tricky_image`].
pub mod long_names {
    /// A directory whose path exceeds 100 bytes (GNU long name).
    pub fn gnu_dir() -> String {
        format!("long/{}", "d".repeat(120))
    }
    /// A file inside [`gnu_dir`] (GNU long name).
    pub fn gnu_file() -> String {
        format!("{}/gnu-file", gnu_dir())
    }
    /// A file whose 150-byte name is written as a PAX `path` record.
    pub fn pax_file() -> String {
        format!("long/{}", "p".repeat(150))
    }
    /// Target of `long/link` (GNU long link name).
    pub fn gnu_target() -> String {
        format!("/{}", "t".repeat(150))
    }
    /// Target of `long/paxlink` (PAX `linkpath`).
    pub fn pax_target() -> String {
        format!("{}target", "x/".repeat(60))
    }
}

/// An image of three layers covering every OCI layer case. Flattened, it must
/// give exactly this tree (`-` = absent; modes are permission bits; owner is
/// 0:0 and mtime 1700000000 unless said; [`tricky_expectations`] has the same
/// as data):
///
/// | path | final state | why |
/// |---|---|---|
/// | `etc/passwd` | file `root:x:0:0:root:/root:/bin/sh\n` 0644 | plain |
/// | `a/` | dir 0750, xattr `user.dir=1`, children exactly `keep hl1 hl2` | layer 2 re-declares `a/` (mode, xattr) without touching children |
/// | `a/keep` | file `keep\n` | |
/// | `a/gone` | - | `a/.wh.gone` in layer 1 |
/// | `a/hl1`, `a/hl2` | one inode (2 links), `shared by a/hl1 and a/hl2\n`, 0640, 1000:1000 | hardlink in one layer |
/// | `b/x` | file `x from layer 1\n` | layer 1 writes `b/x` then `b/.wh.x`: whiteouts only hide lower layers |
/// | `b/y` | file `y from layer 0\n` | |
/// | `c/y` | file `c/y from layer 1\n` | layer 1 writes `c/.wh.y` then `c/y` |
/// | `d/` | dir 0700, empty | whiteout `.wh.d` in layer 1, recreated in layer 2: old children stay gone |
/// | `opq/` | dir, children exactly `new` | `opq/.wh..wh..opq` + `opq/new` in layer 1 |
/// | `opq/new` | file `new in layer 1\n` | |
/// | `replaced` | file `file again in layer 2\n` | file (0) -> dir with `inside` (1) -> file (2) |
/// | `dir2file` | file `now a file\n` | dir with `child` (0) replaced by a file (1) |
/// | `lower-target` | - | `.wh.lower-target` in layer 2 |
/// | `hl-lower` | file `hardlink target in layer 0\n` 0600, 1 link | hardlink (layer 1) to a layer-0 file later deleted |
/// | `bin/setuid` | file 04755 | setuid |
/// | `bin/setgid` | file 02755 | setgid |
/// | `tmp/` | dir 01777 | sticky |
/// | `owned` | file, uid 100000 gid 100001 | ids > 65535 |
/// | `owned-huge` | file, uid 3000000 gid 3000001 | ids > 2097151 (base-256 header + PAX uid/gid) |
/// | `mtime-ns` | file, mtime 1234567890.123456789 | PAX mtime with nanoseconds |
/// | `caps` | file 0755, xattrs `security.capability` = [`CAP_NET_BIND_SERVICE_XATTR`], `user.test=hello` | PAX `SCHILY.xattr.*` |
/// | `dev/null` | char device 1:3, 0666 | |
/// | `dev/loop0` | block device 7:0, 0660 | |
/// | `run/fifo` | fifo 0600 | |
/// | `lib/rel` | symlink `../etc/passwd` | relative |
/// | `lib/abs` | symlink `/etc/passwd` | absolute (stored verbatim, never followed) |
/// | `lib/dangling` | symlink `nowhere` | dangling |
/// | `unicode/héllo wörld ✓.txt` | file `unicode\n` | UTF-8 name |
/// | `unicode/latin1-\xe9` | file `latin1\n` | non-UTF-8 name byte |
/// | [`long_names::gnu_file`] | file `gnu long name\n` (its dirs too) | GNU long names |
/// | [`long_names::pax_file`] | file `pax long name\n` | PAX `path` |
/// | `long/link` | symlink to [`long_names::gnu_target`] | GNU long link name |
/// | `long/paxlink` | symlink to [`long_names::pax_target`] | PAX `linkpath` |
/// | `implicit/parent/file` | file `implicit parents\n`; `implicit/`, `implicit/parent/` dirs 0755 0:0 | no dir entries for the parents |
/// | `dotslash` | file `dot slash\n` | written as `./dotslash` |
///
/// No other paths exist (besides the directories named). A socket entry is
/// not included: tar has no type for sockets.
pub fn tricky_image() -> TestImage {
    use long_names::*;
    let layer0 = vec![
        TestEntry::dir("etc"),
        TestEntry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        TestEntry::dir("a"),
        TestEntry::file("a/keep", "keep\n"),
        TestEntry::file("a/gone", "gone\n"),
        TestEntry::file("a/hl1", "shared by a/hl1 and a/hl2\n")
            .mode(0o640)
            .owner(1000, 1000),
        TestEntry::hardlink("a/hl2", "a/hl1"),
        TestEntry::dir("b"),
        TestEntry::file("b/x", "x from layer 0\n"),
        TestEntry::file("b/y", "y from layer 0\n"),
        TestEntry::dir("c"),
        TestEntry::file("c/y", "c/y from layer 0\n"),
        TestEntry::dir("d"),
        TestEntry::dir("d/sub"),
        TestEntry::file("d/sub/deep", "deep\n"),
        TestEntry::file("d/file", "d/file\n"),
        TestEntry::dir("opq"),
        TestEntry::file("opq/old1", "old1\n"),
        TestEntry::dir("opq/sub"),
        TestEntry::file("opq/sub/old2", "old2\n"),
        TestEntry::file("replaced", "file in layer 0\n"),
        TestEntry::dir("dir2file"),
        TestEntry::file("dir2file/child", "child\n"),
        TestEntry::file("lower-target", "hardlink target in layer 0\n").mode(0o600),
        TestEntry::dir("bin"),
        TestEntry::file("bin/setuid", "#!/bin/sh\n").mode(0o4755),
        TestEntry::file("bin/setgid", "#!/bin/sh\n").mode(0o2755),
        TestEntry::dir("tmp").mode(0o1777),
        TestEntry::file("owned", "uid 100000\n").owner(100_000, 100_001),
        TestEntry::file("owned-huge", "uid 3000000\n").owner(3_000_000, 3_000_001),
        TestEntry::file("mtime-ns", "nanoseconds\n").mtime(1_234_567_890, 123_456_789),
        TestEntry::file("caps", "has capabilities\n")
            .mode(0o755)
            .xattr("security.capability", CAP_NET_BIND_SERVICE_XATTR)
            .xattr("user.test", "hello"),
        TestEntry::dir("dev"),
        TestEntry::char_dev("dev/null", 1, 3),
        TestEntry::block_dev("dev/loop0", 7, 0),
        TestEntry::dir("run"),
        TestEntry::fifo("run/fifo").mode(0o600),
        TestEntry::dir("lib"),
        TestEntry::symlink("lib/rel", "../etc/passwd"),
        TestEntry::symlink("lib/abs", "/etc/passwd"),
        TestEntry::symlink("lib/dangling", "nowhere"),
        TestEntry::dir("unicode"),
        TestEntry::file("unicode/héllo wörld ✓.txt", "unicode\n"),
        TestEntry::raw(&b"unicode/latin1-\xe9"[..], b'0').data("latin1\n"),
        TestEntry::dir("long"),
        TestEntry::dir(gnu_dir()),
        TestEntry::file(gnu_file(), "gnu long name\n"),
        TestEntry::file(pax_file(), "pax long name\n").pax_names(),
        TestEntry::symlink("long/link", gnu_target()),
        TestEntry::symlink("long/paxlink", pax_target()).pax_names(),
    ];
    let layer1 = vec![
        TestEntry::whiteout("a/gone"),
        TestEntry::opaque("opq"),
        TestEntry::file("opq/new", "new in layer 1\n"),
        TestEntry::file("b/x", "x from layer 1\n"),
        TestEntry::whiteout("b/x"),
        TestEntry::whiteout("c/y"),
        TestEntry::file("c/y", "c/y from layer 1\n"),
        TestEntry::whiteout("d"),
        TestEntry::dir("replaced"),
        TestEntry::file("replaced/inside", "inside\n"),
        TestEntry::file("dir2file", "now a file\n"),
        TestEntry::hardlink("hl-lower", "lower-target"),
    ];
    let layer2 = vec![
        TestEntry::file("replaced", "file again in layer 2\n"),
        TestEntry::dir("d").mode(0o700),
        TestEntry::whiteout("lower-target"),
        TestEntry::file("implicit/parent/file", "implicit parents\n"),
        TestEntry::dir("a").mode(0o750).xattr("user.dir", "1"),
        TestEntry::raw(&b"./dotslash"[..], b'0').data("dot slash\n"),
    ];
    TestImage::new(vec![layer0, layer1, layer2]).with_cmd(&["/bin/sh"])
}

/// What a path of a flattened image must be (see [`tricky_expectations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Nothing at this path.
    Absent,
    /// A directory; `children`, when Some, is its exact set of entry names.
    Dir {
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
        /// Exact entry names, if checked.
        children: Option<Vec<Vec<u8>>>,
        /// Extended attributes that must be present.
        xattrs: Vec<(String, Vec<u8>)>,
    },
    /// A regular file.
    File {
        /// Contents.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
        /// Modification time (seconds, nanoseconds), if checked.
        mtime: Option<(i64, u32)>,
        /// Extended attributes that must be present (and no others).
        xattrs: Vec<(String, Vec<u8>)>,
        /// Number of names of the inode (hard links).
        nlink: u32,
        /// Another path naming the same inode, if any.
        same_inode_as: Option<Vec<u8>>,
    },
    /// A symlink with this target.
    Symlink(Vec<u8>),
    /// A character device.
    CharDev {
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
        /// Permission bits.
        mode: u32,
    },
    /// A block device.
    BlockDev {
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
        /// Permission bits.
        mode: u32,
    },
    /// A FIFO.
    Fifo {
        /// Permission bits.
        mode: u32,
    },
}

fn file(data: &str, mode: u32) -> Expect {
    Expect::File {
        data: data.as_bytes().to_vec(),
        mode,
        uid: 0,
        gid: 0,
        mtime: None,
        xattrs: Vec::new(),
        nlink: 1,
        same_inode_as: None,
    }
}

fn dir(mode: u32, children: Option<&[&str]>) -> Expect {
    Expect::Dir {
        mode,
        uid: 0,
        gid: 0,
        children: children.map(|c| c.iter().map(|n| n.as_bytes().to_vec()).collect()),
        xattrs: Vec::new(),
    }
}

/// The table of [`tricky_image`] as data: `(path, expectation)`, paths relative to the root.
pub fn tricky_expectations() -> Vec<(Vec<u8>, Expect)> {
    use long_names::*;
    let p = |s: &str| s.as_bytes().to_vec();
    let with = |e: Expect, f: &dyn Fn(&mut Expect)| {
        let mut e = e;
        f(&mut e);
        e
    };
    let hl = |other: &str| Expect::File {
        data: p("shared by a/hl1 and a/hl2\n"),
        mode: 0o640,
        uid: 1000,
        gid: 1000,
        mtime: None,
        xattrs: Vec::new(),
        nlink: 2,
        same_inode_as: Some(p(other)),
    };
    let owned = |data: &str, uid: u64, gid: u64| {
        with(file(data, 0o644), &|e| {
            if let Expect::File { uid: u, gid: g, .. } = e {
                (*u, *g) = (uid, gid);
            }
        })
    };
    let root_children: &[&str] = &[
        "etc",
        "a",
        "b",
        "c",
        "d",
        "opq",
        "replaced",
        "dir2file",
        "hl-lower",
        "bin",
        "tmp",
        "owned",
        "owned-huge",
        "mtime-ns",
        "caps",
        "dev",
        "run",
        "lib",
        "unicode",
        "long",
        "implicit",
        "dotslash",
    ];
    vec![
        (p(""), dir(0o755, Some(root_children))),
        (
            p("etc/passwd"),
            file("root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ),
        (
            p("a"),
            Expect::Dir {
                mode: 0o750,
                uid: 0,
                gid: 0,
                children: Some(vec![p("keep"), p("hl1"), p("hl2")]),
                xattrs: vec![("user.dir".into(), p("1"))],
            },
        ),
        (p("a/keep"), file("keep\n", 0o644)),
        (p("a/gone"), Expect::Absent),
        (p("a/hl1"), hl("a/hl2")),
        (p("a/hl2"), hl("a/hl1")),
        (p("b/x"), file("x from layer 1\n", 0o644)),
        (p("b/y"), file("y from layer 0\n", 0o644)),
        (p("c/y"), file("c/y from layer 1\n", 0o644)),
        (p("d"), dir(0o700, Some(&[]))),
        (p("d/sub/deep"), Expect::Absent),
        (p("opq"), dir(0o755, Some(&["new"]))),
        (p("opq/new"), file("new in layer 1\n", 0o644)),
        (p("opq/old1"), Expect::Absent),
        (p("replaced"), file("file again in layer 2\n", 0o644)),
        (p("dir2file"), file("now a file\n", 0o644)),
        (p("lower-target"), Expect::Absent),
        (p("hl-lower"), file("hardlink target in layer 0\n", 0o600)),
        (p("bin/setuid"), file("#!/bin/sh\n", 0o4755)),
        (p("bin/setgid"), file("#!/bin/sh\n", 0o2755)),
        (p("tmp"), dir(0o1777, None)),
        (p("owned"), owned("uid 100000\n", 100_000, 100_001)),
        (
            p("owned-huge"),
            owned("uid 3000000\n", 3_000_000, 3_000_001),
        ),
        (
            p("mtime-ns"),
            with(file("nanoseconds\n", 0o644), &|e| {
                if let Expect::File { mtime, .. } = e {
                    *mtime = Some((1_234_567_890, 123_456_789));
                }
            }),
        ),
        (
            p("caps"),
            with(file("has capabilities\n", 0o755), &|e| {
                if let Expect::File { xattrs, .. } = e {
                    *xattrs = vec![
                        (
                            "security.capability".into(),
                            CAP_NET_BIND_SERVICE_XATTR.to_vec(),
                        ),
                        ("user.test".into(), p("hello")),
                    ];
                }
            }),
        ),
        (
            p("dev/null"),
            Expect::CharDev {
                major: 1,
                minor: 3,
                mode: 0o666,
            },
        ),
        (
            p("dev/loop0"),
            Expect::BlockDev {
                major: 7,
                minor: 0,
                mode: 0o660,
            },
        ),
        (p("run/fifo"), Expect::Fifo { mode: 0o600 }),
        (p("lib/rel"), Expect::Symlink(p("../etc/passwd"))),
        (p("lib/abs"), Expect::Symlink(p("/etc/passwd"))),
        (p("lib/dangling"), Expect::Symlink(p("nowhere"))),
        (p("unicode/héllo wörld ✓.txt"), file("unicode\n", 0o644)),
        (b"unicode/latin1-\xe9".to_vec(), file("latin1\n", 0o644)),
        (p(&gnu_file()), file("gnu long name\n", 0o644)),
        (p(&pax_file()), file("pax long name\n", 0o644)),
        (p("long/link"), Expect::Symlink(p(&gnu_target()))),
        (p("long/paxlink"), Expect::Symlink(p(&pax_target()))),
        (p("implicit"), dir(0o755, Some(&["parent"]))),
        (p("implicit/parent"), dir(0o755, Some(&["file"]))),
        (p("implicit/parent/file"), file("implicit parents\n", 0o644)),
        (p("dotslash"), file("dot slash\n", 0o644)),
    ]
}

/// A one-layer image of hostile entries. A safe flattener must refuse each
/// (with an error naming it) or confine it to the image root: nothing may be
/// created, changed or deleted outside the root, and no path may be followed
/// through a symlink. Entries:
/// `../escape`, `/abs-file`, `a/../../b` (path traversal, absolute path);
/// `link-out -> ../../../tmp` then `link-out/pwned` (writing through a symlink);
/// `hl-out` hardlink to `/etc/passwd` and `hl-up` hardlink to `../../etc/shadow`
/// (link targets outside the root); `a/.wh...` (a whiteout of `..`).
pub fn hostile_image() -> TestImage {
    let layer = vec![
        TestEntry::raw(&b"../escape"[..], b'0').data("escaped\n"),
        TestEntry::raw(&b"/abs-file"[..], b'0').data("absolute\n"),
        TestEntry::raw(&b"a/../../b"[..], b'0').data("traversal\n"),
        TestEntry::raw(&b"link-out"[..], b'2')
            .link_name(&b"../../../tmp"[..])
            .mode(0o777),
        TestEntry::raw(&b"link-out/pwned"[..], b'0').data("through a symlink\n"),
        TestEntry::raw(&b"hl-out"[..], b'1').link_name(&b"/etc/passwd"[..]),
        TestEntry::raw(&b"hl-up"[..], b'1').link_name(&b"../../etc/shadow"[..]),
        TestEntry::raw(&b"a/.wh..."[..], b'0'),
    ];
    TestImage::new(vec![layer])
}
