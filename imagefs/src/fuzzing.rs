//! Entry points of the fuzz targets in `fuzz/` (built with the `fuzzing`
//! feature). The unit tests below run them over the corpus and the saved
//! crash inputs kept in `fuzz/`, so every input found once stays a test.
//!
//! Each entry takes arbitrary bytes and must neither panic nor write outside
//! its scratch directory; errors are the expected outcome for most inputs.

use std::fs::{self, File};
use std::io::{Cursor, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::digest::Digest;
use crate::ext4::{Ext4Builder, Ext4Options};
use crate::flatten::Flattener;

/// OCI documents: NUL-separated JSON documents (JSON text never holds a raw
/// NUL). The first is the top document (index or manifest) as read from a
/// layout or registry; each later one is what the next blob fetch returns,
/// whatever digest was asked for (digests are checked elsewhere; here the
/// parsers and the index/manifest/config resolution are under test).
pub fn oci_documents(data: &[u8]) {
    let mut docs = data.split(|b| *b == 0);
    let top = docs.next().unwrap_or_default().to_vec();
    let mut fetch = |_: &oci_spec::image::Descriptor, what: &str| match docs.next() {
        Some(d) => Ok(d.to_vec()),
        None => Err(crate::source::SourceError::Invalid {
            image: "fuzz".into(),
            detail: format!("{what}: no more documents"),
        }),
    };
    let hint = Some("application/vnd.oci.image.index.v1+json".to_string());
    let digest = Digest::of_bytes(&top);
    let _ = crate::source::resolve_doc("fuzz", top, digest, hint, &mut fetch);
}

/// A scratch directory for one process, with a canary file and an empty
/// directory beside the tree under test, checked after each input: a write
/// through `..` or a relative symlink lands there.
struct Scratch {
    root: PathBuf,
}

const CANARY: &[u8] = b"minivm fuzz canary\n";

impl Scratch {
    fn get(name: &str) -> &'static Scratch {
        static DIRS: OnceLock<std::sync::Mutex<Vec<&'static Scratch>>> = OnceLock::new();
        let dirs = DIRS.get_or_init(Default::default);
        let mut dirs = dirs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = dirs.iter().find(|s| s.root.ends_with(name)) {
            return s;
        }
        if dirs.is_empty() {
            remove_stale();
        }
        let root = std::env::temp_dir()
            .join(format!("minivm-fuzz-{}", std::process::id()))
            .join(name);
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("outside")).expect("scratch directory");
        fs::write(root.join("canary"), CANARY).expect("scratch canary");
        let s: &'static Scratch = Box::leak(Box::new(Scratch { root }));
        dirs.push(s);
        s
    }

    /// A fresh empty directory `name` under the scratch root.
    fn fresh(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        remove_tree(&p);
        fs::create_dir(&p).expect("fresh scratch directory");
        p
    }

    /// Panics if anything was written beside the trees under test.
    fn check(&self, expected: &[&str]) {
        assert_eq!(
            fs::read(self.root.join("canary")).ok().as_deref(),
            Some(CANARY),
            "the canary beside the tree changed"
        );
        let outside: Vec<_> = fs::read_dir(self.root.join("outside"))
            .expect("scratch outside")
            .collect();
        assert!(outside.is_empty(), "something was written outside the tree");
        let mut names: Vec<String> = fs::read_dir(&self.root)
            .expect("scratch root")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = ["canary", "outside"]
            .iter()
            .chain(expected)
            .map(|s| s.to_string())
            .collect();
        want.sort();
        assert_eq!(names, want, "entries appeared beside the tree");
    }
}

/// Removes the scratch directories of fuzzing processes that have ended
/// (libFuzzer leaves with `exit`, so nothing is dropped).
fn remove_stale() {
    let Ok(rd) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix("minivm-fuzz-"));
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            remove_tree(&e.path());
        }
    }
}

/// Removes a tree even where a layer left directories without write or
/// search permission.
fn remove_tree(p: &Path) {
    if fs::remove_dir_all(p).is_ok() || !p.exists() {
        return;
    }
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+rwx"])
        .arg(p)
        .status();
    let _ = fs::remove_dir_all(p);
}

/// The fixed lower layer the fuzzed layer is applied over: a directory, a
/// file, a symlink and a hard link, so whiteouts and replacements have
/// something to act on.
fn base_layer() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            b.append_data(&mut h, path, data).unwrap();
        };
        add("etc/", tar::EntryType::Directory, 0o755, b"", "");
        add(
            "etc/passwd",
            tar::EntryType::Regular,
            0o644,
            b"root:x:0:0::/:/bin/sh\n",
            "",
        );
        add("etc/link", tar::EntryType::Link, 0o644, b"", "etc/passwd");
        add("bin/", tar::EntryType::Directory, 0o755, b"", "");
        add(
            "bin/sh",
            tar::EntryType::Regular,
            0o755,
            &[0x7f, b'E', b'L', b'F'],
            "",
        );
        add("sbin", tar::EntryType::Symlink, 0o777, b"", "bin");
        add("var/tmp/", tar::EntryType::Directory, 0o1777, b"", "");
        b.into_inner().unwrap()
    })
}

/// A tar layer stream applied over [`base_layer`] by the flattener and
/// written as an 8 MiB ext4 image (the `--disk` conversion path).
pub fn tar_into_ext4(data: &[u8]) {
    let scratch = Scratch::get("ext4");
    let img = scratch.root.join("disk.img");
    let file = File::create(&img).expect("scratch image");
    let opts = Ext4Options {
        size: 8 << 20,
        inodes: None,
        label: "fuzz".into(),
        uuid: [7; 16],
        timestamp: 1_700_000_000,
    };
    let mut builder = Ext4Builder::new(file, opts).expect("ext4 builder");
    let tree = {
        let mut sink = crate::convert::Ext4Sink(&mut builder);
        let mut f = Flattener::new(&mut sink).with_max_entries(100_000);
        f.apply_layer("base", &mut Cursor::new(base_layer()))
            .expect("base layer");
        if f.apply_layer("fuzz", &mut Cursor::new(data)).is_err() {
            return;
        }
        f.finish().0
    };
    let _ = builder.finish(&tree);
    scratch.check(&["disk.img"]);
}

/// A tar layer stream unpacked into the layer store's format over the
/// unpacked [`base_layer`] (the `--virtiofs` path). The first byte picks
/// the privileged encoding (real owners and device nodes; only as root)
/// or the unprivileged one; the rest is the tar stream.
pub fn tar_into_layerstore(data: &[u8]) {
    use crate::layerstore::Unpacker;
    let Some((&mode, tar)) = data.split_first() else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let privileged = mode & 1 == 1 && unsafe { libc::geteuid() } == 0;
    let scratch = Scratch::get(if privileged { "store-root" } else { "store" });
    let base = scratch.root.join("base");
    if !base.join("etc").exists() {
        let dir = scratch.fresh("base");
        let mut noop = || {};
        let mut u = Unpacker::new(
            "base",
            open_dir(&dir),
            Vec::new(),
            privileged,
            LIMITS,
            &mut noop,
        )
        .expect("base unpacker");
        u.run(&mut Cursor::new(base_layer())).expect("base layer");
        u.finish().expect("base layer");
    }
    let top = scratch.fresh("top");
    let mut noop = || {};
    let lowers = vec![open_dir(&base)];
    if let Ok(mut u) = Unpacker::new(
        "fuzz",
        open_dir(&top),
        lowers,
        privileged,
        LIMITS,
        &mut noop,
    ) {
        if u.run(&mut Cursor::new(tar)).is_ok() {
            let _ = u.finish();
        }
    }
    scratch.check(&["base", "top"]);
    let mut buf = Vec::new();
    // The lower layer is read, never written.
    let _ = File::open(base.join("etc/passwd")).map(|mut f| f.read_to_end(&mut buf));
    assert_eq!(buf, b"root:x:0:0::/:/bin/sh\n", "the lower layer changed");
}

/// (bytes, entries) the fuzzed layer may unpack.
const LIMITS: (u64, u64) = (16 << 20, 100_000);

fn open_dir(p: &Path) -> OwnedFd {
    File::open(p).expect("scratch directory").into()
}

#[cfg(test)]
mod tests {
    use testkit::replay_fuzz_inputs as replay;

    #[test]
    fn oci_documents_corpus() {
        replay("oci_documents", super::oci_documents);
    }

    #[test]
    fn tar_into_ext4_corpus() {
        replay("tar_into_ext4", super::tar_into_ext4);
    }

    #[test]
    fn tar_into_layerstore_corpus() {
        replay("tar_into_layerstore", super::tar_into_layerstore);
    }

    /// The escape oracle works: a write beside the tree is caught.
    #[test]
    #[should_panic(expected = "written outside the tree")]
    fn scratch_check_catches_writes_outside() {
        let s = super::Scratch::get("oracle");
        std::fs::write(s.root.join("outside/x"), b"x").unwrap();
        s.check(&[]);
    }
}
