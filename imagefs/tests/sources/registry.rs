//! Registry sources against a real registry (Debian's docker-registry),
//! pushed to with skopeo, and a fake token-authenticating registry.

use crate::common::*;
use imagefs::digest::Digest;
use imagefs::layer::{self, Compression};
use imagefs::source::{media_types, SourceError, SourceOptions};
use testkit::{self, fake_token_registry, index_blob, tricky_image, FakeServer, Response, TempDir};

/// Pushes `oci:DIR:TAG` to `docker://HOST/REPO` with skopeo.
fn push(dir: &std::path::Path, tag: &str, dest: &str, extra: &[&str]) {
    let mut args = vec!["--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    testkit::skopeo_copy(&format!("oci:{}:{tag}", dir.display()), dest, &args)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn registry_pull_by_tag_and_digest() {
    let reg = testkit::TestRegistry::start(None).unwrap();
    let tmp = TempDir::new("src-reg").unwrap();
    let dir = tmp.path().join("l");
    let image = tricky_image();
    let digest = image
        .write_oci_layout(&dir, "v1", Compression::Gzip)
        .unwrap();
    let host = reg.host();
    push(&dir, "v1", &format!("docker://{host}/test/img:v1"), &[]);
    let built = image.build(Compression::Gzip).unwrap();
    for reference in [
        format!("docker://{host}/test/img:v1"),
        format!("docker://{host}/test/img@{digest}"),
    ] {
        let (mut src, resolved) =
            resolve(&reference, &insecure(None)).unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
        assert_eq!(resolved.manifest_digest, digest, "{reference}");
        assert_matches_built(src.as_mut(), &resolved, &built);
    }
    // With TLS verification on, a plain-HTTP registry cannot be reached.
    let e = resolve(
        &format!("docker://{host}/test/img:v1"),
        &SourceOptions::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(e, SourceError::Connect { .. }), "{e}");
}

#[test]
fn registry_pull_index_and_docker_schema2() {
    let reg = testkit::TestRegistry::start(None).unwrap();
    let tmp = TempDir::new("src-reg-index").unwrap();
    let dir = tmp.path().join("l");
    let amd = small_image("amd64").build(Compression::Gzip).unwrap();
    amd.write_layout(&dir, None).unwrap();
    let mut arm_image = small_image("arm64");
    arm_image.architecture = "arm64".into();
    let arm = arm_image.build(Compression::Gzip).unwrap();
    arm.write_layout(&dir, None).unwrap();
    let m = media_types::OCI_MANIFEST;
    let entries = [
        (
            arm.manifest_digest.clone(),
            arm.manifest.len(),
            m,
            "linux",
            "arm64",
        ),
        (
            amd.manifest_digest.clone(),
            amd.manifest.len(),
            m,
            "linux",
            "amd64",
        ),
    ];
    let index = index_blob(&dir, Some("multi"), &entries, media_types::OCI_INDEX);
    let host = reg.host();
    push(
        &dir,
        "multi",
        &format!("docker://{host}/multi/img:latest"),
        &["--all"],
    );
    let (mut src, resolved) =
        resolve(&format!("docker://{host}/multi/img"), &insecure(None)).unwrap();
    assert_eq!(resolved.manifest_digest, amd.manifest_digest);
    assert_matches_built(src.as_mut(), &resolved, &amd);
    let (_, by_index) = resolve(
        &format!("docker://{host}/multi/img@{index}"),
        &insecure(None),
    )
    .unwrap();
    assert_eq!(by_index.manifest_digest, amd.manifest_digest);
    // Docker schema2 (skopeo converts the manifest; the registry serves Docker media types).
    small_image("v2s2")
        .write_oci_layout(&dir, "v2s2", Compression::Gzip)
        .unwrap();
    push(
        &dir,
        "v2s2",
        &format!("docker://{host}/docker/img:v2s2"),
        &["--format", "v2s2"],
    );
    let (mut src, resolved) =
        resolve(&format!("docker://{host}/docker/img:v2s2"), &insecure(None)).unwrap();
    assert_eq!(
        resolved.manifest.layers()[0].media_type().as_ref(),
        layer::media_types::TAR_GZIP
    );
    assert_eq!(
        resolved.manifest.config().media_type().as_ref(),
        media_types::OCI_CONFIG
    );
    let tars = read_layers(src.as_mut(), &resolved);
    assert_eq!(
        tars[0],
        small_image("v2s2").build(Compression::None).unwrap().layers[0].tar
    );
}

#[test]
fn registry_errors_name_the_image() {
    let reg = testkit::TestRegistry::start(None).unwrap();
    let tmp = TempDir::new("src-reg-err").unwrap();
    let dir = tmp.path().join("l");
    small_image("e")
        .write_oci_layout(&dir, "e", Compression::Gzip)
        .unwrap();
    let host = reg.host();
    push(&dir, "e", &format!("docker://{host}/err/img:e"), &[]);
    let missing_digest = Digest::of_bytes(b"nothing");
    for reference in [
        format!("docker://{host}/no/such/repo:e"),
        format!("docker://{host}/err/img:nosuchtag"),
        format!("docker://{host}/err/img@{missing_digest}"),
    ] {
        let e = resolve(&reference, &insecure(None))
            .err()
            .unwrap_or_else(|| panic!("{reference} resolved"));
        assert!(
            matches!(e, SourceError::NotFound { .. }),
            "{reference}: {e}"
        );
        assert!(
            err_text(&e, &reference).contains("MANIFEST_UNKNOWN")
                || e.to_string().contains("NAME_UNKNOWN"),
            "{e}"
        );
    }
    // A blob the registry does not have.
    let (mut src, resolved) =
        resolve(&format!("docker://{host}/err/img:e"), &insecure(None)).unwrap();
    let mut d = resolved.manifest.layers()[0].clone();
    d.set_digest(missing_digest.to_oci());
    let e = src.open_blob(&d).err().unwrap();
    assert!(
        matches!(e, SourceError::NotFound { .. })
            && e.to_string().contains(&missing_digest.to_string()),
        "{e}"
    );
    // Nothing listening.
    let closed = format!("docker://127.0.0.1:{}/x/y:z", testkit::free_port());
    let e = resolve(&closed, &insecure(None)).err().unwrap();
    assert!(matches!(e, SourceError::Connect { .. }), "{e}");
    err_text(&e, &closed);
}

#[test]
fn registry_basic_auth() {
    let reg = testkit::TestRegistry::start(Some(&testkit::bcrypt_htpasswd_line())).unwrap();
    let tmp = TempDir::new("src-reg-auth").unwrap();
    let dir = tmp.path().join("l");
    let digest = small_image("auth")
        .write_oci_layout(&dir, "a", Compression::Gzip)
        .unwrap();
    let host = reg.host();
    let creds = format!("{}:{}", testkit::HTPASSWD_USER, testkit::HTPASSWD_PASSWORD);
    push(
        &dir,
        "a",
        &format!("docker://{host}/auth/img:a"),
        &["--dest-creds", &creds],
    );
    let reference = format!("docker://{host}/auth/img:a");
    let good = insecure(Some((testkit::HTPASSWD_USER, testkit::HTPASSWD_PASSWORD)));
    let (mut src, resolved) =
        resolve(&reference, &good).unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    assert_eq!(resolved.manifest_digest, digest);
    assert_eq!(read_layers(src.as_mut(), &resolved).len(), 1);
    let e = resolve(
        &reference,
        &insecure(Some((testkit::HTPASSWD_USER, "wrong"))),
    )
    .err()
    .unwrap();
    assert!(matches!(e, SourceError::Unauthorized { .. }), "{e}");
    assert!(
        err_text(&e, &reference).contains("\"minivm\" were rejected"),
        "{e}"
    );
    if std::env::var_os(imagefs::source::ENV_USER).is_none() {
        let e = resolve(&reference, &insecure(None)).err().unwrap();
        assert!(
            matches!(e, SourceError::Unauthorized { .. })
                && e.to_string().contains("MINIVM_REGISTRY_USER"),
            "{e}"
        );
    }
}

#[test]
fn registry_bearer_token_flow() {
    let fake = fake_token_registry();
    let reference = format!("docker://127.0.0.1:{}/x/y:latest", fake.port);
    // Good credentials: a token is fetched and the retried request reaches the (404) manifest.
    let e = resolve(&reference, &insecure(Some(("user", "right"))))
        .err()
        .unwrap();
    assert!(matches!(e, SourceError::NotFound { .. }), "{e}");
    assert!(err_text(&e, &reference).contains("MANIFEST_UNKNOWN"), "{e}");
    // Bad credentials: the token service refuses them.
    let e = resolve(&reference, &insecure(Some(("user", "wrong"))))
        .err()
        .unwrap();
    assert!(matches!(e, SourceError::Unauthorized { .. }), "{e}");
    let t = err_text(&e, &reference);
    assert!(
        t.contains("/token?scope=repository%3Ax%2Fy%3Apull&service=fake") && t.contains("\"user\""),
        "{t}"
    );
}

/// A fake registry serving `small_image` with blobs redirected to
/// `/storage/...`; `lie` makes it send a wrong Docker-Content-Digest.
fn fake_redirecting_registry(lie: bool) -> (FakeServer, testkit::BuiltImage) {
    let built = small_image("redirect").build(Compression::Gzip).unwrap();
    let b = built.clone();
    let server = FakeServer::start(Box::new(move |req, _| {
        let blobs: Vec<(&Digest, &[u8])> = b.blobs();
        let header_digest = if lie {
            Digest::of_bytes(b"lie").to_string()
        } else {
            b.manifest_digest.to_string()
        };
        if req.path == "/v2/" {
            return Response::new("200 OK", "{}");
        }
        if req.path == "/v2/r/i/manifests/latest"
            || req.path == format!("/v2/r/i/manifests/{}", b.manifest_digest)
        {
            return Response::new("200 OK", b.manifest.clone())
                .header("Content-Type", media_types::OCI_MANIFEST)
                .header("Docker-Content-Digest", &header_digest);
        }
        if let Some(d) = req.path.strip_prefix("/v2/r/i/blobs/") {
            return Response::new("307 Temporary Redirect", "")
                .header("Location", &format!("/storage/{d}"));
        }
        if let Some(d) = req.path.strip_prefix("/storage/") {
            if let Some((_, data)) = blobs.iter().find(|(digest, _)| digest.to_string() == d) {
                return Response::new("200 OK", data.to_vec());
            }
        }
        Response::new(
            "404 Not Found",
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#,
        )
    }));
    (server, built)
}

#[test]
fn registry_follows_blob_redirects_and_checks_content_digest() {
    let (server, built) = fake_redirecting_registry(false);
    let reference = format!("docker://127.0.0.1:{}/r/i:latest", server.port);
    let (mut src, resolved) = resolve(&reference, &insecure(None)).unwrap();
    assert_eq!(resolved.manifest_digest, built.manifest_digest);
    assert_matches_built(src.as_mut(), &resolved, &built);
    let (server, _) = fake_redirecting_registry(true);
    let reference = format!("docker://127.0.0.1:{}/r/i:latest", server.port);
    let e = resolve(&reference, &insecure(None)).err().unwrap();
    assert!(matches!(e, SourceError::DigestMismatch { .. }), "{e}");
    assert!(
        err_text(&e, &reference).contains("Docker-Content-Digest"),
        "{e}"
    );
}
