//! Image sources end to end: images written by `testkit` read back through
//! every transport, checked by skopeo and umoci, bad inputs, and a real
//! registry (Debian's docker-registry) pushed to with skopeo.
//!
//! These tests need skopeo, umoci and docker-registry (scripts/setup-debian.sh)
//! and fail, rather than skip, without them.

mod common;
#[path = "sources/registry.rs"]
mod registry;

use common::*;
use imagefs::digest::{Digest, VerifyError};
use imagefs::layer::{self, Compression};
use imagefs::source::{media_types, SourceError, SourceOptions};
use std::io::Read;
use std::process::Command;
use testkit::{
    self, busybox_layer, custom_layout, index_blob, tricky_image, DockerFormat, TempDir, TestEntry,
    TestImage,
};

fn local() -> SourceOptions {
    SourceOptions::default()
}

#[test]
fn oci_layout_round_trip_every_compression() {
    let tmp = TempDir::new("src-layout").unwrap();
    let image = tricky_image();
    for (i, c) in [Compression::Gzip, Compression::Zstd, Compression::None]
        .into_iter()
        .enumerate()
    {
        let dir = tmp.path().join(format!("layout{i}"));
        let digest = image.write_oci_layout(&dir, "v1", c).unwrap();
        let built = image.build(c).unwrap();
        assert_eq!(digest, built.manifest_digest);
        let (mut src, resolved) = resolve(&format!("oci:{}:v1", dir.display()), &local()).unwrap();
        assert_eq!(resolved.manifest_digest, digest);
        assert!(resolved
            .manifest
            .layers()
            .iter()
            .all(|l| l.media_type().as_ref() == c.oci_media_type()));
        assert_eq!(
            resolved
                .config
                .config()
                .as_ref()
                .unwrap()
                .cmd()
                .as_ref()
                .unwrap(),
            &vec!["/bin/sh".to_string()]
        );
        assert_matches_built(src.as_mut(), &resolved, &built);
        // Without a tag: the only image is taken.
        let (_, again) = resolve(&format!("oci:{}", dir.display()), &local()).unwrap();
        assert_eq!(again.manifest_digest, digest);
    }
}

#[test]
fn oci_archive_round_trip() {
    let tmp = TempDir::new("src-ociarchive").unwrap();
    let file = tmp.path().join("img.tar");
    let image = tricky_image();
    let digest = image
        .write_oci_archive(&file, "latest", Compression::Zstd)
        .unwrap();
    let (mut src, resolved) =
        resolve(&format!("oci-archive:{}:latest", file.display()), &local()).unwrap();
    assert_eq!(resolved.manifest_digest, digest);
    assert_matches_built(
        src.as_mut(),
        &resolved,
        &image.build(Compression::Zstd).unwrap(),
    );
    // Nothing was extracted next to the archive.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn docker_archive_round_trip_every_format() {
    let tmp = TempDir::new("src-docker").unwrap();
    let image = tricky_image();
    for (i, format) in [
        DockerFormat::Legacy,
        DockerFormat::LegacyGzip,
        DockerFormat::Oci,
    ]
    .into_iter()
    .enumerate()
    {
        let file = tmp.path().join(format!("docker{i}.tar"));
        let ids = testkit::write_docker_archive_images(
            &file,
            &[(&image, &["example.com/tricky:v1"])],
            format,
        )
        .unwrap();
        for name in [":example.com/tricky:v1", "", ":@0"] {
            let reference = format!("docker-archive:{}{name}", file.display());
            let (mut src, resolved) =
                resolve(&reference, &local()).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!(resolved.config_digest, ids[0]);
            let built = image
                .build(if format == DockerFormat::LegacyGzip {
                    Compression::Gzip
                } else {
                    Compression::None
                })
                .unwrap();
            assert_matches_built(src.as_mut(), &resolved, &built);
            if format == DockerFormat::Oci {
                // Docker 25+ archives carry a real manifest: it is used as is.
                assert_eq!(resolved.manifest_digest, built.manifest_digest);
            }
            // The synthesized manifest is deterministic.
            let (_, again) = resolve(&reference, &local()).unwrap();
            assert_eq!(again.manifest_digest, resolved.manifest_digest);
        }
    }
    // The classic writer's default.
    let file = tmp.path().join("simple.tar");
    let id = image.write_docker_archive(&file, "busybox:latest").unwrap();
    let (_, resolved) = resolve(
        &format!("docker-archive:{}:busybox", file.display()),
        &local(),
    )
    .unwrap();
    assert_eq!(resolved.config_digest, id);
}

#[test]
fn docker_archive_repeated_layer_is_a_symlink() {
    let tmp = TempDir::new("src-docker-rep").unwrap();
    let layer = vec![TestEntry::file("same", "same layer twice\n")];
    let image = TestImage::new(vec![
        layer.clone(),
        vec![TestEntry::file("other", "x")],
        layer,
    ]);
    let file = tmp.path().join("d.tar");
    image.write_docker_archive(&file, "rep:1").unwrap();
    let listing = run(Command::new("tar").arg("tvf").arg(&file));
    assert!(
        listing.contains("layer.tar -> ../"),
        "expected a symlinked layer:\n{listing}"
    );
    let (mut src, resolved) =
        resolve(&format!("docker-archive:{}", file.display()), &local()).unwrap();
    assert_matches_built(
        src.as_mut(),
        &resolved,
        &image.build(Compression::None).unwrap(),
    );
}

#[test]
fn docker_archive_with_several_images() {
    let tmp = TempDir::new("src-docker-multi").unwrap();
    let file = tmp.path().join("multi.tar");
    let (a, b) = (small_image("a"), small_image("b"));
    let ids = testkit::write_docker_archive_images(
        &file,
        &[(&a, &["a:1", "a:latest"]), (&b, &["quay.io/b/b:2"])],
        DockerFormat::Legacy,
    )
    .unwrap();
    let f = file.display();
    assert_eq!(
        resolve(&format!("docker-archive:{f}:a"), &local())
            .unwrap()
            .1
            .config_digest,
        ids[0]
    );
    assert_eq!(
        resolve(
            &format!("docker-archive:{f}:docker.io/library/a:1"),
            &local()
        )
        .unwrap()
        .1
        .config_digest,
        ids[0]
    );
    assert_eq!(
        resolve(&format!("docker-archive:{f}:quay.io/b/b:2"), &local())
            .unwrap()
            .1
            .config_digest,
        ids[1]
    );
    assert_eq!(
        resolve(&format!("docker-archive:{f}:@1"), &local())
            .unwrap()
            .1
            .config_digest,
        ids[1]
    );
    let reference = format!("docker-archive:{f}");
    let e = resolve(&reference, &local()).err().unwrap();
    assert!(matches!(e, SourceError::Ambiguous { .. }), "{e}");
    let text = err_text(&e, &reference);
    assert!(
        text.contains("a:1") && text.contains("quay.io/b/b:2") && text.contains("@1"),
        "{text}"
    );
    let reference = format!("docker-archive:{f}:nope:1");
    let e = resolve(&reference, &local()).err().unwrap();
    assert!(
        matches!(e, SourceError::NotFound { .. })
            && err_text(&e, &f.to_string()).contains("a:latest"),
        "{e}"
    );
    let e = resolve(&format!("docker-archive:{f}:@2"), &local())
        .err()
        .unwrap();
    assert!(e.to_string().contains("holds 2 images"), "{e}");
}

#[test]
fn oci_layout_with_several_tags() {
    let tmp = TempDir::new("src-tags").unwrap();
    let dir = tmp.path().join("l");
    let d1 = small_image("one")
        .write_oci_layout(&dir, "one", Compression::Gzip)
        .unwrap();
    let d2 = small_image("two")
        .write_oci_layout(&dir, "two", Compression::Gzip)
        .unwrap();
    let base = format!("oci:{}", dir.display());
    assert_eq!(
        resolve(&format!("{base}:one"), &local())
            .unwrap()
            .1
            .manifest_digest,
        d1
    );
    assert_eq!(
        resolve(&format!("{base}:two"), &local())
            .unwrap()
            .1
            .manifest_digest,
        d2
    );
    let e = resolve(&base, &local()).err().unwrap();
    assert!(matches!(e, SourceError::Ambiguous { .. }));
    let t = err_text(&e, &base);
    assert!(t.contains("one, two") && t.contains("oci:DIR:TAG"), "{t}");
    let reference = format!("{base}:three");
    let e = resolve(&reference, &local()).err().unwrap();
    assert!(matches!(e, SourceError::NotFound { .. }));
    assert!(
        err_text(&e, &reference).contains("tags present: one, two"),
        "{e}"
    );
    // Re-tagging replaces the entry.
    let d3 = small_image("one again")
        .write_oci_layout(&dir, "one", Compression::Gzip)
        .unwrap();
    assert_eq!(
        resolve(&format!("{base}:one"), &local())
            .unwrap()
            .1
            .manifest_digest,
        d3
    );
}

#[test]
fn image_indexes_pick_linux_amd64_and_nest() {
    let tmp = TempDir::new("src-index").unwrap();
    let dir = tmp.path().join("l");
    let amd = small_image("amd64").build(Compression::Gzip).unwrap();
    amd.write_layout(&dir, None).unwrap();
    let mut arm_image = small_image("arm64");
    arm_image.architecture = "arm64".into();
    let arm = arm_image.build(Compression::Gzip).unwrap();
    arm.write_layout(&dir, None).unwrap();
    let m = media_types::OCI_MANIFEST;
    let (amd_d, amd_n, arm_d, arm_n) = (
        amd.manifest_digest.clone(),
        amd.manifest.len(),
        arm.manifest_digest.clone(),
        arm.manifest.len(),
    );
    index_blob(
        &dir,
        Some("multi"),
        &[
            (arm_d.clone(), arm_n, m, "linux", "arm64"),
            (amd_d.clone(), amd_n, m, "linux", "amd64"),
        ],
        media_types::OCI_INDEX,
    );
    let base = format!("oci:{}", dir.display());
    let (mut src, resolved) = resolve(&format!("{base}:multi"), &local()).unwrap();
    assert_eq!(resolved.manifest_digest, amd_d);
    assert_matches_built(src.as_mut(), &resolved, &amd);
    // Nested: index -> index -> manifest, with a Docker manifest list in between.
    let inner = index_blob(
        &dir,
        None,
        &[(amd_d.clone(), amd_n, m, "linux", "amd64")],
        media_types::DOCKER_LIST,
    );
    let inner_len = std::fs::read(testkit::blob_path(&dir, &inner))
        .unwrap()
        .len();
    index_blob(
        &dir,
        Some("nested"),
        &[(inner, inner_len, media_types::DOCKER_LIST, "linux", "amd64")],
        media_types::OCI_INDEX,
    );
    assert_eq!(
        resolve(&format!("{base}:nested"), &local())
            .unwrap()
            .1
            .manifest_digest,
        amd_d
    );
    // No linux/amd64: the error lists what there is.
    index_blob(
        &dir,
        Some("noamd"),
        &[
            (arm_d.clone(), arm_n, m, "linux", "arm64"),
            (arm_d, arm_n, m, "windows", "amd64"),
        ],
        media_types::OCI_INDEX,
    );
    let reference = format!("{base}:noamd");
    let e = resolve(&reference, &local()).err().unwrap();
    assert!(matches!(e, SourceError::NoPlatform { .. }), "{e}");
    assert!(
        err_text(&e, &reference).contains("linux/arm64, windows/amd64"),
        "{e}"
    );
    // A manifest whose config is arm64, named directly.
    let arm_tag = testkit::descriptor(m, &arm.manifest_digest, arm_n, Some("arm"));
    testkit::set_index_entry(&dir, Some("arm"), arm_tag).unwrap();
    let e = resolve(&format!("{base}:arm"), &local()).err().unwrap();
    assert!(e.to_string().contains("linux/arm64"), "{e}");
}

#[test]
fn docker_schema2_media_types_are_mapped() {
    let tmp = TempDir::new("src-docker-types").unwrap();
    let dir = tmp.path().join("l");
    let built = small_image("docker").build(Compression::Gzip).unwrap();
    built.write_layout(&dir, None).unwrap();
    let l = &built.layers[0];
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::DOCKER_MANIFEST,
        "config": testkit::descriptor(media_types::DOCKER_CONFIG, &built.config_digest, built.config.len(), None),
        "layers": [testkit::descriptor(layer::media_types::DOCKER_TAR_GZIP, &l.digest, l.blob.len(), None)],
    }))
    .unwrap();
    let md = custom_layout(&dir, "docker", &[], None, Some(manifest));
    let (mut src, resolved) = resolve(&format!("oci:{}:docker", dir.display()), &local()).unwrap();
    assert_eq!(resolved.manifest_digest, md);
    assert_eq!(
        resolved.manifest.layers()[0].media_type().as_ref(),
        layer::media_types::TAR_GZIP
    );
    assert_matches_built(src.as_mut(), &resolved, &built);
}

#[test]
fn skopeo_accepts_what_testutil_writes() {
    let tmp = TempDir::new("src-skopeo").unwrap();
    let dir = tmp.path().join("layout");
    let image = tricky_image();
    let digest = image
        .write_oci_layout(&dir, "t1", Compression::Gzip)
        .unwrap();
    let inspect = |reference: &str| -> serde_json::Value {
        let out = run(Command::new("skopeo")
            .args(["--insecure-policy", "inspect", "--raw"])
            .arg(reference));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("skopeo inspect {reference}: {e}: {out}"))
    };
    let out = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:t1", dir.display())));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["Digest"].as_str(),
        Some(digest.to_string().as_str()),
        "{out}"
    );
    assert_eq!(v["Layers"].as_array().unwrap().len(), 3);
    // skopeo copies our layout into an oci-archive and a docker-archive; we read those back.
    let archive = tmp.path().join("copy.tar");
    let dockerfile = tmp.path().join("copy-docker.tar");
    testkit::skopeo_copy(
        &format!("oci:{}:t1", dir.display()),
        &format!("oci-archive:{}:t1", archive.display()),
        &[],
    )
    .unwrap();
    testkit::skopeo_copy(
        &format!("oci:{}:t1", dir.display()),
        &format!("docker-archive:{}:skopeo/copy:t1", dockerfile.display()),
        &[],
    )
    .unwrap();
    let built = image.build(Compression::Gzip).unwrap();
    let (mut src, resolved) =
        resolve(&format!("oci-archive:{}:t1", archive.display()), &local()).unwrap();
    assert_eq!(resolved.manifest_digest, digest);
    assert_matches_built(src.as_mut(), &resolved, &built);
    let (mut src, resolved) = resolve(
        &format!("docker-archive:{}:skopeo/copy:t1", dockerfile.display()),
        &local(),
    )
    .unwrap();
    let tars = read_layers(src.as_mut(), &resolved);
    assert!(
        tars.iter().zip(&built.layers).all(|(a, b)| *a == b.tar),
        "skopeo's docker-archive layers differ"
    );
    // skopeo reads what we write in every format.
    let ours = tmp.path().join("ours.tar");
    image
        .write_oci_archive(&ours, "x", Compression::Zstd)
        .unwrap();
    assert_eq!(
        inspect(&format!("oci-archive:{}:x", ours.display()))["layers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    for (i, format) in [
        DockerFormat::Legacy,
        DockerFormat::LegacyGzip,
        DockerFormat::Oci,
    ]
    .into_iter()
    .enumerate()
    {
        let f = tmp.path().join(format!("d{i}.tar"));
        testkit::write_docker_archive_images(&f, &[(&image, &["minivm/x:1"])], format).unwrap();
        let v = inspect(&format!("docker-archive:{}", f.display()));
        assert_eq!(
            v["layers"].as_array().map(Vec::len),
            Some(3),
            "{format:?}: {v}"
        );
    }
}

#[test]
fn umoci_unpacks_what_testutil_writes() {
    let tmp = TempDir::new("src-umoci").unwrap();
    let dir = tmp.path().join("layout");
    tricky_image()
        .write_oci_layout(&dir, "t", Compression::Gzip)
        .unwrap();
    let out = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:t", dir.display()))
        .arg(&out));
    let root = out.join("rootfs");
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("b/x"), "x from layer 1\n");
    assert_eq!(read("c/y"), "c/y from layer 1\n");
    assert_eq!(read("replaced"), "file again in layer 2\n");
    assert_eq!(read("hl-lower"), "hardlink target in layer 0\n");
    assert_eq!(read(&testkit::long_names::pax_file()), "pax long name\n");
    for gone in [
        "a/gone",
        "opq/old1",
        "d/sub",
        "lower-target",
        "dir2file/child",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(gone)).is_err(),
            "{gone} should be gone"
        );
    }
    assert_eq!(
        std::fs::read_link(root.join("lib/abs")).unwrap().to_str(),
        Some("/etc/passwd")
    );
}

#[test]
fn busybox_layer_has_a_shell() {
    let l = busybox_layer();
    assert!(l.iter().any(|e| matches!(e, TestEntry::File { path, data, .. } if path == "bin/busybox" && data.len() > 100_000)));
    assert!(l.iter().any(|e| matches!(e, TestEntry::Symlink { path, target, .. } if path == "bin/sh" && target == "busybox")));
    let tmp = TempDir::new("src-busybox").unwrap();
    let image = TestImage::new(vec![l]).with_cmd(&["/bin/sh"]);
    let dir = tmp.path().join("l");
    image
        .write_oci_layout(&dir, "bb", Compression::Gzip)
        .unwrap();
    let (mut src, resolved) = resolve(&format!("oci:{}:bb", dir.display()), &local()).unwrap();
    assert_matches_built(
        src.as_mut(),
        &resolved,
        &image.build(Compression::Gzip).unwrap(),
    );
}

/// The first layer of a one-layer layout, corrupted in place with `f`.
fn corrupt_layer(
    tag: &str,
    c: Compression,
    f: impl FnOnce(&mut Vec<u8>),
) -> (TempDir, String, Digest) {
    let tmp = TempDir::new("src-corrupt").unwrap();
    let dir = tmp.path().join("l");
    let built = tricky_image().build(c).unwrap();
    built.write_layout(&dir, Some(tag)).unwrap();
    let p = testkit::blob_path(&dir, &built.layers[0].digest);
    let mut data = std::fs::read(&p).unwrap();
    f(&mut data);
    std::fs::write(&p, data).unwrap();
    let reference = format!("oci:{}:{tag}", dir.display());
    (tmp, reference, built.layers[0].digest.clone())
}

fn read_first_layer(reference: &str) -> std::io::Result<Vec<u8>> {
    let (mut src, resolved) = resolve(reference, &local()).unwrap();
    let d = &resolved.manifest.layers()[0];
    let blob = src.open_blob(d).unwrap();
    let mut r = layer::decompress(d.media_type().as_ref(), blob).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn layer_digest_mismatch_fails_on_read() {
    let (_tmp, reference, digest) = corrupt_layer("t", Compression::None, |d| d[600] ^= 1);
    let e = read_first_layer(&reference).unwrap_err();
    let v = e
        .get_ref()
        .and_then(|e| e.downcast_ref::<VerifyError>())
        .unwrap_or_else(|| panic!("{e}"));
    assert!(matches!(v, VerifyError::Digest { .. }));
    assert!(e.to_string().contains(&digest.to_string()), "{e}");
    // Truncated: a size error.
    let (_tmp, reference, _) = corrupt_layer("t", Compression::None, |d| d.truncate(d.len() - 512));
    let e = read_first_layer(&reference).unwrap_err();
    assert!(e.to_string().contains("size mismatch"), "{e}");
}

#[test]
fn corrupt_and_truncated_gzip_fail_on_read() {
    let tmp = TempDir::new("src-badgz").unwrap();
    let dir = tmp.path().join("l");
    let built = tricky_image().build(Compression::Gzip).unwrap();
    let gz = built.layers[0].blob.clone();
    let mut corrupt = gz.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid..mid + 32].iter_mut().for_each(|b| *b ^= 0xa5);
    let truncated = gz[..gz.len() * 2 / 3].to_vec();
    for (tag, blob) in [("corrupt", corrupt), ("truncated", truncated)] {
        // Blobs whose digests match: only the gzip stream is bad.
        custom_layout(
            &dir,
            tag,
            &[(layer::media_types::TAR_GZIP, blob)],
            None,
            None,
        );
        let e = read_first_layer(&format!("oci:{}:{tag}", dir.display())).unwrap_err();
        assert!(
            e.get_ref()
                .and_then(|e| e.downcast_ref::<VerifyError>())
                .is_none(),
            "{tag}: {e}"
        );
    }
}

#[test]
fn bad_documents_are_reported() {
    let tmp = TempDir::new("src-baddocs").unwrap();
    let dir = tmp.path().join("l");
    let base = format!("oci:{}", dir.display());
    let tar = layer::media_types::TAR;
    let layer = testkit::layer_tar(&[TestEntry::file("f", "x")]).unwrap();
    /// (tag, config override, manifest override, expected error text)
    type Case<'a> = (&'a str, Option<Vec<u8>>, Option<Vec<u8>>, &'a str);
    let cases: Vec<Case> = vec![
        ("manifest-not-json", None, Some(b"not json {".to_vec()), "manifest sha256:"),
        ("manifest-no-config", None, Some(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#.to_vec()), "missing field `config`"),
        ("config-not-json", Some(b"\x00\x01".to_vec()), None, "image config is invalid"),
        ("config-no-rootfs", Some(br#"{"architecture":"amd64","os":"linux"}"#.to_vec()), None, "missing field `rootfs`"),
        ("config-diffids", Some(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec()), None, "diff_ids has 0 entries"),
    ];
    for (tag, config, manifest, needle) in cases {
        custom_layout(&dir, tag, &[(tar, layer.clone())], config, manifest);
        let reference = format!("{base}:{tag}");
        let e = resolve(&reference, &local())
            .err()
            .unwrap_or_else(|| panic!("{tag} resolved"));
        assert!(matches!(e, SourceError::Json { .. }), "{tag}: {e}");
        assert!(err_text(&e, &reference).contains(needle), "{tag}: {e}");
    }
    // Unknown layer media type.
    custom_layout(
        &dir,
        "unknown-type",
        &[("application/vnd.example.thing", layer.clone())],
        None,
        None,
    );
    let reference = format!("{base}:unknown-type");
    let e = resolve(&reference, &local()).err().unwrap();
    assert!(matches!(e, SourceError::UnknownMediaType { .. }), "{e}");
    assert!(
        err_text(&e, &reference).contains("application/vnd.example.thing"),
        "{e}"
    );
    // index.json not JSON.
    std::fs::write(dir.join("index.json"), "[").unwrap();
    let e = resolve(&base, &local()).err().unwrap();
    assert!(
        matches!(e, SourceError::Json { .. }) && err_text(&e, &base).contains("index.json"),
        "{e}"
    );
}

#[test]
fn missing_things_are_reported() {
    let tmp = TempDir::new("src-missing").unwrap();
    let dir = tmp.path().join("l");
    let built = small_image("m").build(Compression::Gzip).unwrap();
    built.write_layout(&dir, Some("m")).unwrap();
    let reference = format!("oci:{}:m", dir.display());
    // Missing layer blob: open_blob fails.
    std::fs::remove_file(testkit::blob_path(&dir, &built.layers[0].digest)).unwrap();
    let (mut src, resolved) = resolve(&reference, &local()).unwrap();
    let e = src.open_blob(&resolved.manifest.layers()[0]).err().unwrap();
    assert!(matches!(e, SourceError::NotFound { .. }));
    assert!(
        err_text(&e, &reference).contains(&built.layers[0].digest.to_string()),
        "{e}"
    );
    // Missing config blob: resolve fails.
    std::fs::remove_file(testkit::blob_path(&dir, &built.config_digest)).unwrap();
    let e = resolve(&reference, &local()).err().unwrap();
    assert!(
        matches!(e, SourceError::NotFound { .. }) && err_text(&e, &reference).contains("config"),
        "{e}"
    );
    // Not a layout, no directory, not a tar, not a docker archive.
    std::fs::remove_file(dir.join("oci-layout")).unwrap();
    let e = resolve(&reference, &local()).err().unwrap();
    assert!(
        err_text(&e, &reference).contains("no oci-layout file"),
        "{e}"
    );
    let nodir = format!("oci:{}/nope", tmp.path().display());
    assert!(matches!(
        resolve(&nodir, &local()).err().unwrap(),
        SourceError::NotFound { .. }
    ));
    let junk = tmp.path().join("junk.tar");
    std::fs::write(&junk, vec![b'j'; 2000]).unwrap();
    let reference = format!("oci-archive:{}", junk.display());
    let e = resolve(&reference, &local()).err().unwrap();
    assert!(
        err_text(&e, &reference).contains("not a valid tar archive"),
        "{e}"
    );
    let ociarchive = tmp.path().join("oci.tar");
    small_image("x")
        .write_oci_archive(&ociarchive, "x", Compression::Gzip)
        .unwrap();
    let reference = format!("docker-archive:{}", ociarchive.display());
    let e = resolve(&reference, &local()).err().unwrap();
    assert!(err_text(&e, &reference).contains("no manifest.json"), "{e}");
}

#[test]
fn docker_archive_layer_is_checked_against_diff_id() {
    let tmp = TempDir::new("src-docker-bad").unwrap();
    let file = tmp.path().join("d.tar");
    let image = TestImage::new(vec![vec![TestEntry::file(
        "marker",
        "UNIQUE-MARKER-CONTENT\n",
    )]]);
    image.write_docker_archive(&file, "x:1").unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let pos = bytes
        .windows(13)
        .position(|w| w == b"UNIQUE-MARKER")
        .unwrap();
    bytes[pos] = b'X';
    std::fs::write(&file, bytes).unwrap();
    let (mut src, resolved) =
        resolve(&format!("docker-archive:{}", file.display()), &local()).unwrap();
    let mut r = src.open_blob(&resolved.manifest.layers()[0]).unwrap();
    let e = std::io::copy(&mut r, &mut std::io::sink()).unwrap_err();
    assert!(e.to_string().contains("digest mismatch"), "{e}");
}
