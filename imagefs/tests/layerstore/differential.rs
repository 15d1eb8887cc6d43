//! Random layer stacks unpacked by the store and merged by the reference
//! overlay must give exactly what `flatten` (the OCI semantics minivm's ext4
//! path uses) gives: the same tree, or an error for both; as root and in the
//! unprivileged encoding.

use super::*;
use imagefs::digest::VerifyingReader;
use imagefs::flatten::{DataSink, Flattener, SinkError};
use imagefs::reference::ImageRef;
use imagefs::tree::{DataId, NodeKind, Tree};
use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::os::unix::ffi::OsStrExt;
use testkit::layer_tar;

/// Keeps file data in memory.
#[derive(Default)]
struct MemSink(Vec<Vec<u8>>);

impl DataSink for MemSink {
    fn write_data(&mut self, r: &mut dyn Read, len: u64) -> Result<DataId, SinkError> {
        let mut v = vec![0; len as usize];
        r.read_exact(&mut v)?;
        self.0.push(v);
        Ok(DataId(self.0.len() as u64 - 1))
    }
    fn free_data(&mut self, _: DataId) {}
}

/// Blobs served from memory.
struct MemSource(ImageRef, HashMap<String, Vec<u8>>);

impl ImageSource for MemSource {
    fn reference(&self) -> &ImageRef {
        &self.0
    }
    fn resolve(&mut self) -> Result<ResolvedImage, SourceError> {
        unreachable!("blobs only")
    }
    fn open_blob(&mut self, d: &Descriptor) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let data = self.1[&d.digest().to_string()].clone();
        let digest = Digest::from_oci(d.digest()).unwrap();
        Ok(Box::new(VerifyingReader::new(
            Cursor::new(data),
            digest,
            None,
            "blob",
        )))
    }
}

/// What a path holds: kind, contents or target, permission bits.
type View = BTreeMap<Vec<u8>, (char, Vec<u8>, u32)>;

fn tree_view(tree: &Tree, sink: &MemSink) -> View {
    let mut out = View::new();
    let mut stack = vec![(Vec::new(), tree.root)];
    while let Some((path, id)) = stack.pop() {
        let n = &tree.nodes[id];
        let perm = u32::from(n.meta.perm);
        let v = match &n.kind {
            NodeKind::Dir(children) => {
                for (name, child) in children {
                    let mut p = path.clone();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(name);
                    stack.push((p, *child));
                }
                ('d', Vec::new(), perm)
            }
            NodeKind::File { data, .. } => {
                let d = data
                    .map(|d| sink.0[d.0 as usize].clone())
                    .unwrap_or_default();
                ('f', d, perm)
            }
            NodeKind::Symlink(t) => ('l', t.clone(), 0),
            other => panic!("unexpected {other:?}"),
        };
        out.insert(path, v);
    }
    out
}

fn merged_view(m: &Merged) -> View {
    let mut out = View::new();
    let mut stack = vec![Vec::new()];
    while let Some(path) = stack.pop() {
        let top = m.lookup(&path)[0].clone();
        let a = attrs(&top);
        let v = if a.ftype == libc::S_IFDIR {
            for name in m.children(&path) {
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&name);
                stack.push(p);
            }
            ('d', Vec::new(), a.perm)
        } else if a.ftype == libc::S_IFLNK {
            (
                'l',
                fs::read_link(&top).unwrap().as_os_str().as_bytes().to_vec(),
                0,
            )
        } else {
            ('f', fs::read(&top).unwrap(), a.perm)
        };
        out.insert(path, v);
    }
    out
}

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

const PATHS: &[&str] = &["a", "b", "a/x", "a/y", "b/x", "a/x/z", "c"];

fn random_entry(rng: &mut Rng) -> TestEntry {
    let p = PATHS[rng.below(PATHS.len())];
    let mode = [0o755, 0o700, 0o644, 0o750][rng.below(4)];
    match rng.below(12) {
        0..=3 => TestEntry::dir(p).mode(mode),
        4..=6 => TestEntry::file(p, format!("{p} {}\n", rng.below(100))).mode(mode),
        7 | 8 => TestEntry::whiteout(p),
        9 => TestEntry::opaque(p),
        10 => TestEntry::symlink(p, ["a", "../../outside"][rng.below(2)]),
        _ => TestEntry::hardlink(p, PATHS[rng.below(PATHS.len())]),
    }
}

#[test]
fn random_stacks_match_flatten() {
    let tmp = TempDir::new("ls-diff").unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut agreed_ok, mut agreed_err) = (0, 0);
    for case in 0..400 {
        let unprivileged = case % 4 == 3;
        let layers: Vec<Vec<TestEntry>> = (0..1 + rng.below(3))
            .map(|_| {
                (0..1 + rng.below(7))
                    .map(|_| random_entry(&mut rng))
                    .collect()
            })
            .collect();
        let tars: Vec<Vec<u8>> = layers.iter().map(|l| layer_tar(l).unwrap()).collect();

        let mut sink = MemSink::default();
        let mut flattener = Flattener::new(&mut sink);
        let flat = tars
            .iter()
            .enumerate()
            .try_for_each(|(i, t)| flattener.apply_layer(&format!("layer {i}"), &mut t.as_slice()));
        let flat = flat.map(|()| flattener.finish().0);

        // A fresh store per case: a layer's directory depends on the layers
        // below it (parents, copied hardlinks), and random cases share blobs.
        let opts = StoreOptions {
            durable: false,
            force_unprivileged: unprivileged,
            ..StoreOptions::default()
        };
        let store = LayerStore::with_options(tmp.path().join(format!("store{case}")), opts);
        let mut src = MemSource("oci:/mem".parse().unwrap(), HashMap::new());
        let mut dirs = Vec::new();
        let mut ours = Ok(());
        for t in &tars {
            let digest = Digest::of_bytes(t);
            src.1.insert(digest.to_string(), t.clone());
            let desc = Descriptor::new(
                oci_spec::image::MediaType::ImageLayer,
                t.len() as u64,
                digest.to_oci(),
            );
            match store.ensure_layer(&mut src, &desc, &dirs, "random") {
                Ok((d, _)) => dirs.push(d),
                Err(e) => {
                    ours = Err(e);
                    break;
                }
            }
        }
        match (flat, ours) {
            (Ok(tree), Ok(())) => {
                let want = tree_view(&tree, &sink);
                assert_eq!(
                    merged_view(&Merged::new(&dirs)),
                    want,
                    "case {case}: {layers:#?}"
                );
                agreed_ok += 1;
            }
            (Err(f), Err(o)) => {
                let kind = |d: String| d.split([' ', '{', '(']).next().unwrap_or("").to_string();
                let (fk, ok) = (kind(format!("{f:?}")), kind(format!("{o:?}")));
                // A hardlink target behind a file or symlink: flatten names the
                // path problem, the store the hardlink.
                let hardlink =
                    ok == "Hardlink" && ["NotADirectory", "ThroughSymlink"].contains(&&*fk);
                assert!(
                    fk == ok || hardlink,
                    "case {case}: flatten {f}\n  store {o}"
                );
                agreed_err += 1;
            }
            (f, o) => panic!(
                "case {case}: flatten {:?}, store {o:?}\n{layers:#?}",
                f.err()
            ),
        }
        let _ = fs::remove_dir_all(store.root());
    }
    assert!(
        agreed_ok > 100 && agreed_err > 50,
        "{agreed_ok} ok, {agreed_err} errors"
    );
}
