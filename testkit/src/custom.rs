//! OCI layouts written by hand, for documents [`TestImage`] does not make:
//! chosen layer media types and blobs, replaced configs and manifests,
//! image indexes.

use crate::image::TestImage;
use crate::layout::{
    descriptor, index_json, json_bytes, manifest_json, set_index_entry, write_blob,
};
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
    let config = config.unwrap_or_else(|| json_bytes(&TestImage::default().config_json(&diff_ids)));
    let config_digest = write_blob(dir, &config).unwrap();
    let descs: Vec<_> = layers
        .iter()
        .map(|(mt, b)| descriptor(mt, &write_blob(dir, b).unwrap(), b.len(), None))
        .collect();
    let manifest =
        manifest.unwrap_or_else(|| json_bytes(&manifest_json(&config_digest, config.len(), descs)));
    let md = write_blob(dir, &manifest).unwrap();
    let desc = descriptor(media_types::OCI_MANIFEST, &md, manifest.len(), Some(tag));
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
            let mut desc = descriptor(mt, d, *size, None);
            desc["platform"] = json!({"os": os, "architecture": arch});
            desc
        })
        .collect();
    let index = json_bytes(&index_json(media_type, manifests));
    let d = write_blob(dir, &index).unwrap();
    if let Some(t) = tag {
        let desc = descriptor(media_type, &d, index.len(), Some(t));
        set_index_entry(dir, Some(t), desc).unwrap();
    }
    d
}
