//! Test helpers: temporary images, tree building, and e2fsprogs checks
//! (`e2fsck -fn` and `debugfs`, which read image files without root).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Cursor;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Ext4Builder, Ext4Options, Ext4Stats};
use crate::tree::{Metadata, Node, NodeId, NodeKind, Tree};

pub(crate) const MIB: u64 = 1 << 20;
/// Superblock time used by the tests (in the past, so e2fsck does not
/// complain about the future).
pub(crate) const TIMESTAMP: i64 = 1_700_000_000;

/// A temporary image file, deleted on drop.
pub(crate) struct TestImage {
    pub path: PathBuf,
}

impl Drop for TestImage {
    fn drop(&mut self) {
        // MINIVM_KEEP_IMAGES=1 keeps images around for inspection.
        if std::env::var_os("MINIVM_KEEP_IMAGES").is_some() {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl TestImage {
    /// A fresh unique path for test `name`.
    pub fn new(name: &str) -> TestImage {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("minivm-ext4-{name}-{}-{n}.img", std::process::id()));
        TestImage { path }
    }

    /// Creates the file and a builder of `size` bytes on it.
    pub fn builder(&self, size: u64) -> Ext4Builder {
        Ext4Builder::new(self.create(), opts(size)).expect("builder")
    }

    /// Creates (truncating) the image file.
    pub fn create(&self) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.path)
            .expect("create image")
    }

    /// Current file length.
    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }

    /// Bytes actually allocated on the host.
    pub fn allocated(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().blocks() * 512
    }

    /// Runs `e2fsck -fn` and panics (showing its output) unless it is clean.
    pub fn fsck(&self) {
        self.fsck_with(&[]);
    }

    /// `e2fsck -fn` using the superblock backup at `block` (4 KiB blocks).
    pub fn fsck_backup(&self, block: u64) {
        self.fsck_with(&["-b", &block.to_string(), "-B", "4096"]);
    }

    fn fsck_with(&self, extra: &[&str]) {
        let out = Command::new("e2fsck")
            .arg("-fn")
            .args(extra)
            .arg(&self.path)
            .output()
            .expect("run e2fsck");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains('?'),
            "e2fsck {extra:?} failed ({}):\n{text}",
            out.status
        );
    }

    /// Output of a debugfs request.
    pub fn debugfs(&self, request: &str) -> String {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(&self.path)
            .env("TZ", "UTC")
            .output()
            .expect("debugfs");
        assert!(
            out.status.success(),
            "debugfs {request}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file's contents, through debugfs.
    pub fn cat(&self, path: &str) -> Vec<u8> {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat \"{path}\""))
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    /// An xattr value (raw bytes), through debugfs.
    pub fn ea_get(&self, path: &str, name: &str) -> Vec<u8> {
        let dest = TestImage::new("ea");
        self.debugfs(&format!(
            "ea_get -f {} \"{path}\" {name}",
            dest.path.display()
        ));
        std::fs::read(&dest.path).unwrap_or_default()
    }

    /// Parsed `debugfs stat`.
    pub fn stat(&self, path: &str) -> Stat {
        Stat::parse(&self.debugfs(&format!("stat \"{path}\"")))
    }

    /// Names in a directory (without `.` and `..`).
    pub fn ls(&self, path: &str) -> Vec<String> {
        let out = self.debugfs(&format!("ls -p \"{path}\""));
        // -p lines: /ino/mode/uid/gid/name/size/
        let mut names: Vec<String> = out
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_owned))
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        names
    }
}

/// The fields of `debugfs stat` the tests compare.
#[derive(Debug, Default)]
pub(crate) struct Stat {
    pub inode: u64,
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u32,
    pub blockcount: u64,
    pub mtime_raw: (u32, u32),
    pub mtime_text: String,
    pub device: Option<(u32, u32)>,
    pub fast_link: Option<String>,
    pub text: String,
}

/// The word after `key` in `text`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let i = text.find(key)? + key.len();
    text[i..].split_whitespace().next()
}

impl Stat {
    fn parse(text: &str) -> Stat {
        let num = |k: &str| {
            field(text, k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let signed = |k: &str| {
            field(text, k)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let mut s = Stat {
            inode: num("Inode:"),
            kind: field(text, "Type:").unwrap_or("").to_owned(),
            mode: u32::from_str_radix(field(text, "Mode:").unwrap_or("0"), 8).unwrap(),
            // debugfs prints ids with %d: big ones come out negative.
            uid: signed("User:") as u32,
            gid: signed("Group:") as u32,
            size: num("Size:"),
            links: num("Links:") as u32,
            blockcount: num("Blockcount:"),
            text: text.to_owned(),
            ..Default::default()
        };
        if let Some(line) = text.lines().find(|l| l.trim_start().starts_with("mtime:")) {
            let (raw, date) = line.trim_start()["mtime:".len()..]
                .split_once("--")
                .unwrap();
            let (a, b) = raw.trim().trim_start_matches("0x").split_once(':').unwrap();
            s.mtime_raw = (
                u32::from_str_radix(a, 16).unwrap(),
                u32::from_str_radix(b, 16).unwrap(),
            );
            s.mtime_text = date.trim().to_owned();
        }
        if let Some(dev) = field(text, "Device major/minor number:") {
            let (a, b) = dev.split_once(':').unwrap();
            s.device = Some((a.parse().unwrap(), b.parse().unwrap()));
        }
        if let Some(i) = text.find("Fast link dest: \"") {
            let rest = &text[i + "Fast link dest: \"".len()..];
            s.fast_link = Some(rest[..rest.rfind('"').unwrap()].to_owned());
        }
        s
    }
}

/// Default test options for `size` bytes.
pub(crate) fn opts(size: u64) -> Ext4Options {
    Ext4Options {
        size,
        inodes: None,
        label: "minivm-test".into(),
        uuid: *b"\x8b\x2e\x4c\x1a\x57\x31\x4e\x9d\xa0\x6f\x12\x34\x56\x78\x9a\xbc",
        timestamp: TIMESTAMP,
    }
}

/// Deterministic pseudo-random bytes.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    // 64 KiB of xorshift output, repeated, each 4 KiB block stamped with its
    // index: distinct blocks, yet cheap for hundreds of MiB in debug builds.
    const BASE: usize = 64 << 10;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut base = Vec::with_capacity(BASE);
    while base.len() < BASE.min(len) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        base.extend_from_slice(&x.to_le_bytes());
    }
    let mut out = Vec::with_capacity(len + BASE);
    while out.len() < len {
        out.extend_from_slice(&base);
    }
    out.truncate(len);
    for (k, block) in out.chunks_mut(4096).enumerate() {
        for (o, s) in block.iter_mut().zip((k as u64).to_le_bytes()) {
            *o ^= s;
        }
    }
    out
}

/// Metadata with the given permissions and owner.
pub(crate) fn meta(perm: u16, uid: u32, gid: u32) -> Metadata {
    Metadata {
        perm,
        uid,
        gid,
        mtime: 1_600_000_000,
        mtime_nsec: 0,
        xattrs: BTreeMap::new(),
    }
}

/// Adds `node` under `dir` as `name`.
pub(crate) fn link(tree: &mut Tree, dir: NodeId, name: &[u8], id: NodeId) {
    tree.children_mut(dir)
        .expect("dir")
        .insert(name.to_vec(), id);
}

/// Adds a new node under `dir`.
pub(crate) fn add(
    tree: &mut Tree,
    dir: NodeId,
    name: &[u8],
    kind: NodeKind,
    meta: Metadata,
) -> NodeId {
    let id = tree.add(Node { kind, meta });
    link(tree, dir, name, id);
    id
}

/// Adds a directory under `dir`.
pub(crate) fn mkdir(tree: &mut Tree, dir: NodeId, name: &[u8]) -> NodeId {
    add(
        tree,
        dir,
        name,
        NodeKind::Dir(BTreeMap::new()),
        meta(0o755, 0, 0),
    )
}

/// Writes `data` through the builder and adds a regular file for it.
pub(crate) fn add_file(
    b: &mut Ext4Builder,
    tree: &mut Tree,
    dir: NodeId,
    name: &[u8],
    data: &[u8],
) -> NodeId {
    let kind = file_kind(b, data);
    add(tree, dir, name, kind, meta(0o644, 0, 0))
}

/// Writes `data` and returns the file node kind for it.
pub(crate) fn file_kind(b: &mut Ext4Builder, data: &[u8]) -> NodeKind {
    let id = b
        .write_data(&mut Cursor::new(data), data.len() as u64)
        .expect("write_data");
    NodeKind::File {
        size: data.len() as u64,
        data: Some(id),
    }
}

/// Finishes and checks the image with e2fsck.
pub(crate) fn finish_checked(b: Ext4Builder, tree: &Tree, img: &TestImage) -> Ext4Stats {
    let stats = b.finish(tree).expect("finish");
    img.fsck();
    stats
}

/// `date -u` formatting of `secs` the way debugfs prints times.
pub(crate) fn date_text(secs: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%a %b %e %H:%M:%S %Y"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
