//! The layer store end to end: images written as OCI layouts by `testkit`,
//! unpacked layer by layer, then merged by a small reference overlay (the
//! rules of kernel overlayfs and fuse-backend-rs: a character device 0:0 is a
//! whiteout, `user.overlay.opaque=y` hides lower directories) and compared
//! with `tricky_expectations()`. Also: sharing layers between images, hostile
//! layers, corrupt blobs, decompression bombs, kill -9 mid-unpack, concurrent
//! unpacks, and the unprivileged encoding (forced, and as a real non-root user).

mod layerstore {
    use imagefs::digest::Digest;
    use imagefs::layerstore::{LayerEvent, LayerStore, LayerStoreError, StoreOptions};
    use imagefs::source::{self, ImageSource, ResolvedImage, SourceError, SourceOptions};
    use imagefs::walk::WalkError;
    use oci_spec::image::Descriptor;
    use std::collections::BTreeSet;
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use testkit::{hostile_image, tricky_image, Compression, TempDir, TestEntry, TestImage};

    fn open(layout: &Path) -> (Box<dyn ImageSource>, ResolvedImage) {
        let r = format!("oci:{}:latest", layout.display()).parse().unwrap();
        let mut src = source::open(&r, &SourceOptions::default()).unwrap();
        let resolved = src.resolve().unwrap();
        (src, resolved)
    }

    fn write(image: &TestImage, dir: &Path, c: Compression) -> PathBuf {
        image.write_oci_layout(dir, "latest", c).unwrap();
        dir.to_path_buf()
    }

    fn ensure(store: &LayerStore, layout: &Path) -> Result<Vec<PathBuf>, LayerStoreError> {
        let (mut src, image) = open(layout);
        store.ensure_image(src.as_mut(), &image, "test", &mut |_| {})
    }

    fn unprivileged_store(root: &Path) -> LayerStore {
        let opts = StoreOptions {
            force_unprivileged: true,
            ..StoreOptions::default()
        };
        LayerStore::with_options(root, opts)
    }

    mod merge;
    use merge::*;

    #[test]
    fn tricky_image_merges_to_the_expected_tree() {
        let tmp = TempDir::new("ls-tricky").unwrap();
        for (i, c) in [Compression::Gzip, Compression::Zstd, Compression::None]
            .into_iter()
            .enumerate()
        {
            let layout = write(&tricky_image(), &tmp.path().join(format!("oci{i}")), c);
            let store = LayerStore::new(tmp.path().join(format!("store{i}")));
            let dirs = ensure(&store, &layout).unwrap();
            assert_eq!(dirs.len(), 3);
            check_tricky(&dirs, store.privileged());
            for d in &dirs {
                assert_no_oci_markers(d);
            }
            // The overlay encodings, on disk.
            assert!(opaque(&dirs[1].join("opq")));
            for w in ["a/gone", "d"] {
                assert!(
                    whiteout(&fs::symlink_metadata(dirs[1].join(w)).unwrap()),
                    "{w}"
                );
            }
            assert!(whiteout(
                &fs::symlink_metadata(dirs[2].join("lower-target")).unwrap()
            ));
        }
    }

    #[test]
    fn tricky_image_unprivileged_encoding() {
        let tmp = TempDir::new("ls-unpriv").unwrap();
        let layout = write(&tricky_image(), &tmp.path().join("oci"), Compression::Gzip);
        let store = unprivileged_store(&tmp.path().join("store"));
        let dirs = ensure(&store, &layout).unwrap();
        // Owners, modes, devices and security.capability come back through the encoding.
        check_tricky(&dirs, true);
        let bin = &dirs[0].join("bin/setuid");
        assert_eq!(
            fs::metadata(bin).unwrap().mode() & 0o7000,
            0,
            "no setuid bit on the host"
        );
        assert!(fs::symlink_metadata(dirs[0].join("dev/null"))
            .unwrap()
            .is_file());
        // SAFETY: geteuid cannot fail and touches no memory.
        let me = unsafe { libc::geteuid() };
        assert_eq!(fs::metadata(dirs[0].join("owned")).unwrap().uid(), me);
    }

    #[test]
    fn shared_layers_are_unpacked_once() {
        let tmp = TempDir::new("ls-shared").unwrap();
        let base = vec![
            TestEntry::dir("etc"),
            TestEntry::file("etc/os-release", "ID=test\n"),
        ];
        let a = TestImage::new(vec![base.clone(), vec![TestEntry::file("a", "a\n")]]);
        let b = TestImage::new(vec![base, vec![TestEntry::file("b", "b\n")]]);
        let store = LayerStore::new(tmp.path().join("store"));
        let dirs_a = ensure(&store, &write(&a, &tmp.path().join("a"), Compression::Gzip)).unwrap();
        let before = fs::metadata(&dirs_a[0]).unwrap().modified().unwrap();
        let entry_before = fs::metadata(dirs_a[0].parent().unwrap())
            .unwrap()
            .modified()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));

        let (mut src, image) = open(&write(&b, &tmp.path().join("b"), Compression::Gzip));
        let mut events = Vec::new();
        let dirs_b = store
            .ensure_image(src.as_mut(), &image, "b", &mut |e| {
                if let LayerEvent::Start { index, cached, .. } = e {
                    events.push((index, cached));
                }
            })
            .unwrap();
        assert_eq!(events, [(0, true), (1, false)]);
        assert_eq!(dirs_a[0], dirs_b[0]);
        assert_ne!(dirs_a[1], dirs_b[1]);
        assert_eq!(
            fs::metadata(&dirs_b[0]).unwrap().modified().unwrap(),
            before
        );
        assert_eq!(
            fs::metadata(dirs_b[0].parent().unwrap())
                .unwrap()
                .modified()
                .unwrap(),
            entry_before
        );
        let (dir, cached) = store
            .ensure_layer(src.as_mut(), &image.manifest.layers()[0], &[], "b")
            .unwrap();
        assert!(cached && dir == dirs_a[0]);
        assert_eq!(store.list().len(), 3);
        let digest = Digest::from_oci(image.manifest.layers()[0].digest()).unwrap();
        assert_eq!(
            store.list().iter().filter(|e| e.digest == digest).count(),
            1
        );
    }

    /// A tree listing (path, type, size, mtime) of everything under `dir`.
    fn snapshot(dir: &Path) -> BTreeSet<(PathBuf, u32, u64, i64)> {
        let mut out = BTreeSet::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                out.insert((p.clone(), m.mode(), m.size(), m.mtime()));
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
        out
    }

    #[test]
    fn hostile_layers_are_refused_and_confined() {
        let tmp = TempDir::new("ls-hostile").unwrap();
        let canary = tmp.path().join("canary");
        fs::create_dir_all(canary.join("etc")).unwrap();
        fs::write(canary.join("etc/passwd"), "canary\n").unwrap();
        let store_root = tmp.path().join("store");
        let store = LayerStore::new(&store_root);
        let before = snapshot(&canary);
        let hostile = hostile_image().layers.remove(0);
        // Each entry on its own (after the symlink, for the write through it).
        let cases: Vec<(Vec<TestEntry>, &str)> = vec![
            (vec![hostile[0].clone()], "../escape"),
            (vec![hostile[1].clone()], "/abs-file"),
            (vec![hostile[2].clone()], "a/../../b"),
            (
                vec![hostile[3].clone(), hostile[4].clone()],
                "link-out/pwned",
            ),
            (vec![hostile[5].clone()], "hl-out"),
            (vec![hostile[6].clone()], "hl-up"),
            (vec![hostile[7].clone()], "a/.wh..."),
            // Through a symlink of a lower layer, and hardlinks through one.
            (
                vec![TestEntry::symlink("etc", "../../../../canary/etc")],
                "",
            ),
            (vec![TestEntry::file("etc/passwd", "pwned\n")], "etc/passwd"),
            (vec![TestEntry::hardlink("x", "etc/passwd")], "x"),
        ];
        let mut lowers = Vec::new();
        for (i, (entries, bad)) in cases.into_iter().enumerate() {
            let image = TestImage::new(vec![entries]);
            let layout = write(
                &image,
                &tmp.path().join(format!("oci{i}")),
                Compression::Gzip,
            );
            let (mut src, resolved) = open(&layout);
            let desc: &Descriptor = &resolved.manifest.layers()[0];
            let r = store.ensure_layer(src.as_mut(), desc, &lowers, "hostile");
            if bad.is_empty() {
                lowers.push(r.unwrap().0); // The symlink itself is fine (stored verbatim).
                continue;
            }
            let e = r.expect_err(bad).to_string();
            assert!(
                e.contains(&desc.digest().to_string()) && e.contains(bad),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            snapshot(&canary),
            before,
            "nothing changed outside the store"
        );
        for p in ["/tmp/pwned", "/tmp/escape", "/abs-file", "/b"] {
            assert!(!Path::new(p).exists(), "{p}");
        }
        for p in ["escape", "b", "pwned", "abs-file"] {
            assert!(
                !tmp.path().join(p).exists() && !store_root.join(p).exists(),
                "{p}"
            );
        }
        assert_eq!(store.list().len(), 1, "only the symlink layer");
        assert_eq!(fs::read_dir(store_root.join("tmp")).unwrap().count(), 0);
        // The whole hostile image fails at its first entry.
        let layout = write(
            &hostile_image(),
            &tmp.path().join("whole"),
            Compression::Gzip,
        );
        let e = ensure(&store, &layout).unwrap_err();
        assert!(
            matches!(e, LayerStoreError::Walk(WalkError::BadPath { .. })),
            "{e}"
        );
    }

    #[test]
    fn corrupt_blob_leaves_no_entry() {
        let tmp = TempDir::new("ls-corrupt").unwrap();
        let image = TestImage::new(vec![vec![TestEntry::file("f", vec![b'x'; 10_000])]]);
        let layout = write(&image, &tmp.path().join("oci"), Compression::None);
        let (_, resolved) = open(&layout);
        let digest = Digest::from_oci(resolved.manifest.layers()[0].digest()).unwrap();
        let blob = layout.join("blobs/sha256").join(digest.hex());
        let mut data = fs::read(&blob).unwrap();
        data[5000] ^= 1; // Inside the file's data: the tar still parses.
        fs::write(&blob, data).unwrap();
        let store = LayerStore::new(tmp.path().join("store"));
        let e = ensure(&store, &layout).unwrap_err();
        assert!(matches!(e, LayerStoreError::Verify { .. }), "{e}");
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(store.list().is_empty());
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn decompression_bomb_is_refused() {
        let tmp = TempDir::new("ls-bomb").unwrap();
        let image = TestImage::new(vec![vec![TestEntry::file("zeros", vec![0u8; 8 << 20])]]);
        let layout = write(&image, &tmp.path().join("oci"), Compression::Gzip);
        let blob_size = open(&layout).1.manifest.layers()[0].size();
        assert!(blob_size < (1 << 20) / 10, "compresses well: {blob_size}");
        let opts = StoreOptions {
            max_layer_bytes: 1 << 20,
            ..StoreOptions::default()
        };
        let store = LayerStore::with_options(tmp.path().join("store"), opts);
        let e = ensure(&store, &layout).unwrap_err();
        assert!(
            matches!(e, LayerStoreError::TooLarge { limit: 1048576, .. }),
            "{e}"
        );
        assert!(store.list().is_empty());
    }

    #[test]
    fn concurrent_unpacks_of_one_layer() {
        let tmp = TempDir::new("ls-race").unwrap();
        let files: Vec<TestEntry> = (0..300)
            .map(|i| TestEntry::file(format!("f{i}"), "data"))
            .collect();
        let layout = write(
            &TestImage::new(vec![files]),
            &tmp.path().join("oci"),
            Compression::Gzip,
        );
        let root = tmp.path().join("store");
        let dirs: Vec<Vec<PathBuf>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| ensure(&LayerStore::new(&root), &layout).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(dirs.iter().all(|d| d == &dirs[0]));
        assert_eq!(fs::read_dir(dirs[0][0].clone()).unwrap().count(), 300);
        assert_eq!(LayerStore::new(&root).list().len(), 1);
        assert_eq!(
            fs::read_dir(root.join("tmp")).unwrap().count(),
            0,
            "losers discarded their copies"
        );
    }

    /// Env var telling [`child_unpack`] what to do when run as a child process.
    const CHILD_ENV: &str = "MINIVM_LAYERSTORE_CHILD";

    /// A blob reader that hangs after the first 64 KiB (so the child can be killed mid-unpack).
    struct Stalling<'a>(Box<dyn Read + Send + 'a>, usize);

    impl Read for Stalling<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.1 >= 64 << 10 {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
            let len = buf.len().min(4096);
            let n = self.0.read(&mut buf[..len])?;
            self.1 += n;
            Ok(n)
        }
    }

    struct StallingSource(Box<dyn ImageSource>);

    impl ImageSource for StallingSource {
        fn reference(&self) -> &imagefs::reference::ImageRef {
            self.0.reference()
        }
        fn resolve(&mut self) -> Result<ResolvedImage, SourceError> {
            self.0.resolve()
        }
        fn open_blob(
            &mut self,
            desc: &Descriptor,
        ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
            Ok(Box::new(Stalling(self.0.open_blob(desc)?, 0)))
        }
    }

    /// Not a test of its own: the body of the child processes of the tests below.
    #[test]
    fn child_unpack() {
        let Ok(spec) = std::env::var(CHILD_ENV) else {
            return;
        };
        let (mode, layout, store) = match spec.splitn(3, '|').collect::<Vec<_>>()[..] {
            [m, l, s] => (m.to_string(), PathBuf::from(l), PathBuf::from(s)),
            _ => panic!("bad {CHILD_ENV}"),
        };
        let (src, image) = open(&layout);
        let store = LayerStore::new(store);
        if mode == "stall" {
            let mut src = StallingSource(src);
            let _ = store.ensure_image(&mut src, &image, "child", &mut |_| {});
        } else {
            let mut src = src;
            let dirs = store
                .ensure_image(src.as_mut(), &image, "child", &mut |_| {})
                .unwrap();
            check_tricky(&dirs, true);
            println!("CHILD-OK {}", store.privileged());
        }
    }

    fn child(mode: &str, layout: &Path, store: &Path) -> Command {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args([
            "--exact",
            "layerstore::child_unpack",
            "--nocapture",
            "--test-threads=1",
        ]);
        c.env(
            CHILD_ENV,
            format!("{mode}|{}|{}", layout.display(), store.display()),
        );
        c
    }

    #[test]
    fn kill_9_mid_unpack_leaves_no_entry() {
        let tmp = TempDir::new("ls-kill").unwrap();
        let files: Vec<TestEntry> = (0..200)
            .map(|i| TestEntry::file(format!("f{i:03}"), vec![b'a' + (i % 26) as u8; 4096]))
            .collect();
        let layout = write(
            &TestImage::new(vec![files]),
            &tmp.path().join("oci"),
            Compression::None,
        );
        let root = tmp.path().join("store");
        let mut proc = child("stall", &layout, &root).spawn().unwrap();
        // Wait until the child has written files into its temporary entry.
        let tmpdir = root.join("tmp");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let busy = fs::read_dir(&tmpdir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    fs::read_dir(e.path().join("rootfs")).is_ok_and(|mut d| d.next().is_some())
                });
            if busy {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child never started unpacking"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        proc.kill().unwrap(); // SIGKILL
        proc.wait().unwrap();
        let store = LayerStore::new(&root);
        assert!(store.list().is_empty(), "no entry after kill -9");
        assert_eq!(fs::read_dir(root.join("sha256")).unwrap().count(), 0);
        assert_eq!(store.gc_tmp(), 1, "the dead child's leftover is collected");
        assert_eq!(fs::read_dir(&tmpdir).unwrap().count(), 0);
        // And the layer unpacks normally afterwards.
        assert_eq!(
            fs::read_dir(&ensure(&store, &layout).unwrap()[0])
                .unwrap()
                .count(),
            200
        );
    }

    #[test]
    fn as_a_real_unprivileged_user() {
        if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
            eprintln!("skipped: needs root (to switch to nobody) and setpriv");
            return;
        }
        let tmp = TempDir::new("ls-nobody").unwrap();
        let layout = write(&tricky_image(), &tmp.path().join("oci"), Compression::Gzip);
        let store = tmp.path().join("store");
        for p in [tmp.path().to_path_buf(), store.clone()] {
            fs::create_dir_all(&p).unwrap();
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        }
        let exe = std::env::current_exe().unwrap();
        let nobody = |cmd: &Path| {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
            c.arg(cmd);
            c
        };
        let reachable = nobody(Path::new("/usr/bin/test"))
            .arg("-x")
            .arg(&exe)
            .arg("-a")
            .arg("-r")
            .arg(layout.join("index.json"))
            .status()
            .is_ok_and(|s| s.success());
        if !reachable {
            eprintln!(
                "skipped: nobody cannot run {} or read the image",
                exe.display()
            );
            return;
        }
        let c = child("full", &layout, &store);
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut setpriv = nobody(&exe);
        setpriv.args(&args);
        for (k, v) in c.get_envs() {
            setpriv.env(k, v.unwrap());
        }
        let out = setpriv.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK false"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let unpacked = unprivileged_store(&store).list();
        assert_eq!(unpacked.len(), 3);
        assert!(unpacked.iter().all(|e| !e.meta.privileged));
    }

    mod differential;
}
