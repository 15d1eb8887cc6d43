//! Images built in memory (blobs and digests) and OCI image layouts written
//! from them: blobs, `index.json` entries, `oci-layout`, layout archives.

use crate::error::TestImageError;
use crate::layer::write_tar;
use imagefs::digest::Digest;
use imagefs::source::media_types;
use serde_json::json;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, TestImageError>;

/// The `oci-layout` file of every layout.
pub(crate) const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// One built layer.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// The blob (compressed per the build's compression).
    pub blob: Vec<u8>,
    /// sha256 of `tar` (the config's diff_id).
    pub diff_id: Digest,
    /// sha256 of `blob`.
    pub digest: Digest,
    /// The OCI media type.
    pub media_type: &'static str,
}

/// An image built in memory: blobs and their digests.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Layers, lowest first.
    pub layers: Vec<BuiltLayer>,
    /// The config JSON.
    pub config: Vec<u8>,
    /// Its digest.
    pub config_digest: Digest,
    /// The OCI manifest JSON.
    pub manifest: Vec<u8>,
    /// Its digest.
    pub manifest_digest: Digest,
}

pub(crate) fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON values serialize")
}

/// The descriptor of a blob (`mediaType`, `digest`, `size`), with `tag` as
/// its `org.opencontainers.image.ref.name` annotation when given.
pub fn descriptor(
    media_type: &str,
    digest: &Digest,
    size: usize,
    tag: Option<&str>,
) -> serde_json::Value {
    let mut d = json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": size,
    });
    if let Some(t) = tag {
        d["annotations"] = json!({"org.opencontainers.image.ref.name": t});
    }
    d
}

/// An image index of `media_type` (OCI or Docker) over manifest descriptors.
pub fn index_json(media_type: &str, manifests: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests})
}

/// An OCI image manifest over a config blob and layer descriptors (see
/// [`descriptor`]).
pub fn manifest_json(
    config_digest: &Digest,
    config_len: usize,
    layers: Vec<serde_json::Value>,
) -> serde_json::Value {
    json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": descriptor(media_types::OCI_CONFIG, config_digest, config_len, None),
        "layers": layers,
    })
}

impl BuiltImage {
    /// Every blob: layers, config, manifest.
    pub fn blobs(&self) -> Vec<(&Digest, &[u8])> {
        let mut v: Vec<(&Digest, &[u8])> = self
            .layers
            .iter()
            .map(|l| (&l.digest, &l.blob[..]))
            .collect();
        v.push((&self.config_digest, &self.config));
        v.push((&self.manifest_digest, &self.manifest));
        v
    }

    /// The `index.json` descriptor of the manifest, tagged `tag`.
    pub fn manifest_descriptor(&self, tag: Option<&str>) -> serde_json::Value {
        descriptor(
            media_types::OCI_MANIFEST,
            &self.manifest_digest,
            self.manifest.len(),
            tag,
        )
    }

    /// Writes the blobs, `oci-layout` and an `index.json` entry into `dir`.
    pub fn write_layout(&self, dir: &Path, tag: Option<&str>) -> Result<()> {
        for (_, data) in self.blobs() {
            write_blob(dir, data)?;
        }
        set_index_entry(dir, tag, self.manifest_descriptor(tag))
    }

    /// Writes a tar holding the layout (`oci-layout`, `index.json`, `blobs/sha256/...`).
    pub fn write_layout_archive(&self, file: &Path, tag: Option<&str>) -> Result<()> {
        let index = index_json(media_types::OCI_INDEX, vec![self.manifest_descriptor(tag)]);
        let mut files: Vec<(String, Vec<u8>)> = vec![
            ("oci-layout".into(), OCI_LAYOUT.to_vec()),
            ("index.json".into(), json_bytes(&index)),
        ];
        for (d, data) in self.blobs() {
            files.push((format!("blobs/sha256/{}", d.hex()), data.to_vec()));
        }
        write_tar(file, &["blobs", "blobs/sha256"], &files, &[])
    }
}

/// Where a blob lives in a layout.
pub fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs").join("sha256").join(digest.hex())
}

/// Writes `data` as a blob of the layout at `dir` (creating the layout's
/// directories and `oci-layout` file). Returns its digest.
pub fn write_blob(dir: &Path, data: &[u8]) -> Result<Digest> {
    let d = Digest::of_bytes(data);
    let p = blob_path(dir, &d);
    std::fs::create_dir_all(p.parent().expect("blob paths have a parent"))
        .map_err(TestImageError::io(format!("creating {}", dir.display())))?;
    std::fs::write(&p, data).map_err(TestImageError::io(format!("writing {}", p.display())))?;
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        std::fs::write(&layout, OCI_LAYOUT)
            .map_err(TestImageError::io(format!("writing {}", layout.display())))?;
    }
    Ok(d)
}

/// Adds `descriptor` to the layout's `index.json`, replacing the entry with
/// the same tag (when `tag` is Some) and creating the index if needed.
pub fn set_index_entry(dir: &Path, tag: Option<&str>, descriptor: serde_json::Value) -> Result<()> {
    let path = dir.join("index.json");
    let mut index = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| TestImageError::BadIndex {
            path: path.clone(),
            reason: e.to_string(),
        })?,
        Err(_) => index_json(media_types::OCI_INDEX, Vec::new()),
    };
    let manifests = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| TestImageError::BadIndex {
            path: path.clone(),
            reason: "no manifests array".into(),
        })?;
    if let Some(t) = tag {
        manifests
            .retain(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(t));
    }
    manifests.push(descriptor);
    std::fs::write(&path, json_bytes(&index))
        .map_err(TestImageError::io(format!("writing {}", path.display())))
}
