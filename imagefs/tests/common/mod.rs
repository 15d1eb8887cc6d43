//! Helpers for the source integration tests.

#![allow(dead_code)]

use imagefs::layer;
use imagefs::reference::ImageRef;
use imagefs::source::{self, media_types, ImageSource, ResolvedImage, SourceError, SourceOptions};
use std::io::Read;
use std::process::Command;
use testkit::{BuiltImage, TestEntry, TestImage};

/// Parses a reference, panicking with the error.
pub fn r(s: &str) -> ImageRef {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Options for local registries.
pub fn insecure(credentials: Option<(&str, &str)>) -> SourceOptions {
    SourceOptions {
        tls_verify: false,
        credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
    }
}

/// Opens and resolves `reference`.
pub fn resolve(
    reference: &str,
    opts: &SourceOptions,
) -> Result<(Box<dyn ImageSource>, ResolvedImage), SourceError> {
    let mut src = source::open(&r(reference), opts)?;
    let resolved = src.resolve()?;
    Ok((src, resolved))
}

/// Reads every layer of a resolved image, decompressed.
pub fn read_layers(src: &mut dyn ImageSource, resolved: &ResolvedImage) -> Vec<Vec<u8>> {
    resolved
        .manifest
        .layers()
        .iter()
        .map(|d| {
            let blob = src
                .open_blob(d)
                .unwrap_or_else(|e| panic!("open_blob {}: {e}", d.digest()));
            let mut r = layer::decompress(d.media_type().as_ref(), blob).unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out)
                .unwrap_or_else(|e| panic!("reading layer {}: {e}", d.digest()));
            out
        })
        .collect()
}

/// Checks a resolved image against what was built: config, diff_ids, layer tars.
pub fn assert_matches_built(
    src: &mut dyn ImageSource,
    resolved: &ResolvedImage,
    built: &BuiltImage,
) {
    assert_eq!(resolved.config_digest, built.config_digest, "config digest");
    let diff_ids: Vec<String> = built.layers.iter().map(|l| l.diff_id.to_string()).collect();
    assert_eq!(resolved.config.rootfs().diff_ids(), &diff_ids);
    assert_eq!(resolved.manifest.layers().len(), built.layers.len());
    assert_eq!(
        resolved.manifest.config().media_type().as_ref(),
        media_types::OCI_CONFIG
    );
    let tars = read_layers(src, resolved);
    for (i, (got, want)) in tars.iter().zip(&built.layers).enumerate() {
        assert!(
            got == &want.tar,
            "layer {i}: decompressed tar differs ({} vs {} bytes)",
            got.len(),
            want.tar.len()
        );
    }
}

/// The error text, asserting it names the image.
pub fn err_text(e: &SourceError, image: &str) -> String {
    let s = e.to_string();
    assert!(
        s.contains(image),
        "error does not name the image {image}: {s}"
    );
    s
}

/// A small image: one layer of a few files.
pub fn small_image(tag: &str) -> TestImage {
    TestImage::new(vec![vec![
        TestEntry::dir("etc"),
        TestEntry::file("etc/release", format!("small {tag}\n")),
        TestEntry::file("hello", "hello world\n"),
    ]])
}

/// Runs a command, panicking with its output when it fails or is missing.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (install skopeo, umoci and docker-registry: scripts/setup-debian.sh)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
