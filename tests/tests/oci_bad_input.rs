//! Bad images (corrupt, truncated or missing blobs, bad manifests, hostile
//! entries, decompression bombs, registry errors): clear errors, nothing left.

use std::path::{Path, PathBuf};

use minivm_tests::oci::*;
use testkit::*;

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
    let port = testkit::free_port();
    cases.push(Bad {
        name: "connection refused",
        reference: format!("docker://127.0.0.1:{port}/x:1"),
        size: None,
        want: &["127.0.0.1"],
        env: vec![],
    });
    let auth = TestRegistry::start(Some(&testkit::bcrypt_htpasswd_line())).unwrap();
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
