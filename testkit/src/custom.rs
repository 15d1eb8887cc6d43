//! OCI layouts written by hand, for documents [`TestImage`] does not make:
//! chosen layer media types and blobs, replaced configs and manifests,
//! image indexes.

use crate::image::TestImage;
use crate::layout::{set_index_entry, write_blob};
use imagefs::digest::Digest;
use imagefs::source::media_types;
use serde_json::json;
use std::path::Path;

/// Writes a layout by hand: `layers` are `(media type, blob)`, `config` and
/// `manifest` override the generated documents. Returns the manifest digest.
pub fn custom_layout(
    dir: &Path,
    tag: &str,
    layers: &[(&str, Vec<u8>)],
    config: Option<Vec<u8>>,
    manifest: Option<Vec<u8>>,
) -> Digest {
    let diff_ids: Vec<Digest> = layers.iter().map(|(_, b)| Digest::of_bytes(b)).collect();
    let config = config.unwrap_or_else(|| {
        serde_json::to_vec(&TestImage::default().config_json(&diff_ids)).unwrap()
    });
    let config_digest = write_blob(dir, &config).unwrap();
    let descs: Vec<_> = layers
        .iter()
        .map(|(mt, b)| {
            let d = write_blob(dir, b).unwrap();
            json!({"mediaType": mt, "digest": d.to_string(), "size": b.len()})
        })
        .collect();
    let manifest = manifest.unwrap_or_else(|| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {"mediaType": media_types::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": descs,
        }))
        .unwrap()
    });
    let md = write_blob(dir, &manifest).unwrap();
    let desc = json!({
        "mediaType": media_types::OCI_MANIFEST, "digest": md.to_string(), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    });
    set_index_entry(dir, Some(tag), desc).unwrap();
    md
}

/// Writes an image index blob over `(manifest digest, size, media type, os, arch)`
/// entries and tags it. Returns its digest.
pub fn index_blob(
    dir: &Path,
    tag: Option<&str>,
    entries: &[(Digest, usize, &str, &str, &str)],
    media_type: &str,
) -> Digest {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(d, size, mt, os, arch)| {
            json!({"mediaType": mt, "digest": d.to_string(), "size": size, "platform": {"os": os, "architecture": arch}})
        })
        .collect();
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}),
    )
    .unwrap();
    let d = write_blob(dir, &index).unwrap();
    if let Some(t) = tag {
        let desc = json!({
            "mediaType": media_type, "digest": d.to_string(), "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": t},
        });
        set_index_entry(dir, Some(t), desc).unwrap();
    }
    d
}
