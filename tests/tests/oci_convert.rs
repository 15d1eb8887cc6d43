//! OCI images to disks: every transport (checked against each other and
//! against umoci), the cache, and kill -9 during a conversion.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use minivm_tests::oci::*;
use testkit::*;

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
