//! Unit tests of document parsing and platform selection (end-to-end tests
//! of every transport are in imagefs/tests/sources.rs).

use super::manifest::{
    media_types::*, normalize_manifest, parse_config, parse_doc, select_platform, Doc,
};
use super::{SourceError, SourceOptions};
use crate::layer;
use oci_spec::image::{Descriptor, ImageManifest};
use serde_json::json;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn desc(mt: &str, digest: &str, platform: Option<(&str, &str)>) -> serde_json::Value {
    let mut d = json!({"mediaType": mt, "digest": digest, "size": 10});
    if let Some((os, arch)) = platform {
        d["platform"] = json!({"os": os, "architecture": arch});
    }
    d
}

fn docker_manifest(layer_type: &str, config_type: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(config_type, D1, None),
        "layers": [desc(layer_type, D2, None)],
    }))
    .unwrap()
}

fn manifest_of(bytes: &[u8]) -> ImageManifest {
    match parse_doc("img", "manifest", bytes, None) {
        Ok(Doc::Manifest(m)) => *m,
        Ok(Doc::Index(_)) => panic!("parsed as an index"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn docker_schema2_is_mapped_to_oci() {
    let m = manifest_of(&docker_manifest(
        layer::media_types::DOCKER_TAR_GZIP,
        DOCKER_CONFIG,
    ));
    let m = normalize_manifest("img", m).unwrap();
    assert_eq!(m.media_type().as_ref().unwrap().as_ref(), OCI_MANIFEST);
    assert_eq!(m.config().media_type().as_ref(), OCI_CONFIG);
    assert_eq!(
        m.layers()[0].media_type().as_ref(),
        layer::media_types::TAR_GZIP
    );
    let m = normalize_manifest(
        "img",
        manifest_of(&docker_manifest(
            layer::media_types::DOCKER_FOREIGN_TAR_GZIP,
            DOCKER_CONFIG,
        )),
    )
    .unwrap();
    assert_eq!(
        m.layers()[0].media_type().as_ref(),
        layer::media_types::ND_TAR_GZIP
    );
}

#[test]
fn document_kind_comes_from_media_type_or_shape() {
    let list =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": []}))
            .unwrap();
    assert!(matches!(
        parse_doc("img", "x", &list, None),
        Ok(Doc::Index(_))
    ));
    // No mediaType: the hint decides, else the shape.
    let bare_index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": []})).unwrap();
    assert!(matches!(
        parse_doc("img", "x", &bare_index, None),
        Ok(Doc::Index(_))
    ));
    let bare = serde_json::to_vec(
        &json!({"schemaVersion": 2, "config": desc(OCI_CONFIG, D1, None), "layers": []}),
    )
    .unwrap();
    assert!(matches!(
        parse_doc(
            "img",
            "x",
            &bare,
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8")
        ),
        Ok(Doc::Manifest(_))
    ));
    assert!(matches!(
        parse_doc("img", "x", &bare, Some("text/plain")),
        Ok(Doc::Manifest(_))
    ));
}

#[test]
fn bad_documents() {
    let err = |bytes: &[u8]| match parse_doc("my-image", "manifest sha256:x", bytes, None) {
        Err(e) => e,
        Ok(_) => panic!("parsed"),
    };
    let e = err(b"{not json");
    assert!(
        matches!(e, SourceError::Json { .. })
            && e.to_string()
                .starts_with("my-image: manifest sha256:x is invalid"),
        "{e}"
    );
    assert!(matches!(err(b"[1,2]"), SourceError::Json { .. }));
    assert!(err(b"{}")
        .to_string()
        .contains("neither an image manifest nor an image index"));
    let schema1 = err(br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#);
    assert!(
        matches!(schema1, SourceError::UnknownMediaType { .. })
            && schema1.to_string().contains("schema 1"),
        "{schema1}"
    );
    let artifact =
        err(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#);
    assert!(
        matches!(artifact, SourceError::UnknownMediaType { .. }),
        "{artifact}"
    );
    let no_layers = err(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1}}"#);
    assert!(
        no_layers.to_string().contains("missing field `layers`"),
        "{no_layers}"
    );
}

#[test]
fn unsupported_config_and_layer_types_are_named() {
    let helm = manifest_of(&docker_manifest(
        layer::media_types::TAR,
        "application/vnd.cncf.helm.config.v1+json",
    ));
    let e = normalize_manifest("img", helm).unwrap_err();
    assert!(
        e.to_string()
            .contains("application/vnd.cncf.helm.config.v1+json"),
        "{e}"
    );
    let odd = manifest_of(&docker_manifest("application/x-weird", OCI_CONFIG));
    let e = normalize_manifest("img", odd).unwrap_err();
    assert!(
        matches!(e, SourceError::UnknownMediaType { .. })
            && e.to_string().contains("application/x-weird")
            && e.to_string().contains("layer 0"),
        "{e}"
    );
    let sha512 = serde_json::to_vec(&json!({
        "schemaVersion": 2, "config": desc(OCI_CONFIG, D1, None),
        "layers": [desc(layer::media_types::TAR, &format!("sha512:{}", "a".repeat(128)), None)],
    }))
    .unwrap();
    let e = normalize_manifest("img", manifest_of(&sha512)).unwrap_err();
    assert!(e.to_string().contains("only sha256"), "{e}");
}

#[test]
fn platform_selection() {
    let parse = |v: Vec<serde_json::Value>| -> Vec<Descriptor> {
        serde_json::from_value(json!(v)).unwrap()
    };
    let list = parse(vec![
        desc(OCI_MANIFEST, D1, Some(("linux", "arm64"))),
        desc(OCI_MANIFEST, D2, Some(("linux", "amd64"))),
    ]);
    assert_eq!(
        select_platform("img", &list).unwrap().digest().to_string(),
        D2
    );
    let single = parse(vec![desc(OCI_MANIFEST, D1, None)]);
    assert_eq!(
        select_platform("img", &single)
            .unwrap()
            .digest()
            .to_string(),
        D1
    );
    let none = parse(vec![
        desc(OCI_MANIFEST, D1, Some(("linux", "arm64"))),
        desc(OCI_MANIFEST, D2, Some(("unknown", "unknown"))),
    ]);
    let e = select_platform("img", &none).unwrap_err();
    assert!(matches!(e, SourceError::NoPlatform { .. }));
    assert_eq!(
        e.to_string(),
        "img: no linux/amd64 image; platforms present: linux/arm64, unknown/unknown"
    );
    // A linux/amd64 entry of an unknown type is not taken.
    let odd = parse(vec![desc(
        "application/x-other",
        D1,
        Some(("linux", "amd64")),
    )]);
    assert!(select_platform("img", &odd).is_err());
    assert!(select_platform("img", &[])
        .unwrap_err()
        .to_string()
        .contains("platforms present: none"));
}

#[test]
fn config_checks() {
    let m: ImageManifest = manifest_of(&docker_manifest(layer::media_types::TAR, OCI_CONFIG));
    let ok = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:2222222222222222222222222222222222222222222222222222222222222222"]}}"#;
    parse_config("img", ok, &m).unwrap();
    let arm = br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    assert!(parse_config("img", arm, &m)
        .unwrap_err()
        .to_string()
        .contains("platforms present: linux/arm64"));
    let no_os = br#"{"architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]}}"#;
    assert!(parse_config("img", no_os, &m)
        .unwrap_err()
        .to_string()
        .contains("missing field `os`"));
}

#[test]
fn credentials_come_from_options_then_environment() {
    let explicit = SourceOptions {
        tls_verify: true,
        credentials: Some(("a".into(), "b".into())),
    };
    assert_eq!(
        explicit.effective_credentials(),
        Some(("a".into(), "b".into()))
    );
    assert!(SourceOptions::default().tls_verify);
    if std::env::var_os(super::ENV_USER).is_none() {
        assert_eq!(SourceOptions::default().effective_credentials(), None);
    }
}
