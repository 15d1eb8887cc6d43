//! Test images: layers of entries plus the config's execution settings,
//! built in memory and written as an OCI layout or archive.

use crate::entry::TestEntry;
use crate::error::TestImageError;
use crate::layer::{compress, layer_tar};
use crate::layout::{descriptor, json_bytes, manifest_json, BuiltImage, BuiltLayer};
use imagefs::digest::Digest;
use imagefs::layer::Compression;
use serde_json::json;
use std::path::Path;

type Result<T> = std::result::Result<T, TestImageError>;

/// An image to write: layers of entries plus the config's execution settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    /// Layers, lowest first.
    pub layers: Vec<Vec<TestEntry>>,
    /// `config.Env`.
    pub env: Vec<String>,
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `config.WorkingDir`.
    pub working_dir: Option<String>,
    /// `config.User`.
    pub user: Option<String>,
    /// `architecture` (default `amd64`).
    pub architecture: String,
    /// `os` (default `linux`).
    pub os: String,
}

impl Default for TestImage {
    fn default() -> Self {
        TestImage {
            layers: Vec::new(),
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ],
            entrypoint: None,
            cmd: None,
            working_dir: None,
            user: None,
            architecture: "amd64".to_string(),
            os: "linux".to_string(),
        }
    }
}

impl TestImage {
    /// An image with these layers and default settings.
    pub fn new(layers: Vec<Vec<TestEntry>>) -> TestImage {
        TestImage {
            layers,
            ..TestImage::default()
        }
    }

    /// Sets `Cmd`.
    pub fn with_cmd(mut self, cmd: &[&str]) -> TestImage {
        self.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Sets `Entrypoint`.
    pub fn with_entrypoint(mut self, ep: &[&str]) -> TestImage {
        self.entrypoint = Some(ep.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Adds an `Env` entry (`KEY=VALUE`).
    pub fn with_env(mut self, kv: &str) -> TestImage {
        self.env.push(kv.to_string());
        self
    }

    /// Writes an OCI image layout to `dir` (created if needed; an existing
    /// layout keeps its other tags) tagged `tag`. Returns the manifest digest.
    pub fn write_oci_layout(
        &self,
        dir: &Path,
        tag: &str,
        compression: Compression,
    ) -> Result<Digest> {
        let built = self.build(compression)?;
        built.write_layout(dir, Some(tag))?;
        Ok(built.manifest_digest)
    }

    /// Writes an OCI archive (a tar of an OCI layout, as `skopeo copy ...
    /// oci-archive:` does) tagged `tag`. Returns the manifest digest.
    pub fn write_oci_archive(
        &self,
        file: &Path,
        tag: &str,
        compression: Compression,
    ) -> Result<Digest> {
        let built = self.build(compression)?;
        built.write_layout_archive(file, Some(tag))?;
        Ok(built.manifest_digest)
    }

    /// The config JSON for these diff_ids.
    pub fn config_json(&self, diff_ids: &[Digest]) -> serde_json::Value {
        let mut config = serde_json::Map::new();
        config.insert("Env".into(), json!(self.env));
        if let Some(v) = &self.entrypoint {
            config.insert("Entrypoint".into(), json!(v));
        }
        if let Some(v) = &self.cmd {
            config.insert("Cmd".into(), json!(v));
        }
        if let Some(v) = &self.working_dir {
            config.insert("WorkingDir".into(), json!(v));
        }
        if let Some(v) = &self.user {
            config.insert("User".into(), json!(v));
        }
        let history: Vec<_> = (0..diff_ids.len())
            .map(|i| json!({"created": "2023-11-14T22:13:20Z", "created_by": format!("minivm testutil layer {i}")}))
            .collect();
        json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
            "history": history,
        })
    }

    /// Builds every blob in memory.
    pub fn build(&self, compression: Compression) -> Result<BuiltImage> {
        let mut layers = Vec::new();
        for (i, entries) in self.layers.iter().enumerate() {
            let tar =
                layer_tar(entries).map_err(TestImageError::io(format!("writing layer {i}")))?;
            let blob = compress(&tar, compression)
                .map_err(TestImageError::io(format!("compressing layer {i}")))?;
            layers.push(BuiltLayer {
                diff_id: Digest::of_bytes(&tar),
                digest: Digest::of_bytes(&blob),
                media_type: compression.oci_media_type(),
                tar,
                blob,
            });
        }
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let config = json_bytes(&self.config_json(&diff_ids));
        let config_digest = Digest::of_bytes(&config);
        let descriptors = layers
            .iter()
            .map(|l| descriptor(l.media_type, &l.digest, l.blob.len(), None))
            .collect();
        let manifest = json_bytes(&manifest_json(&config_digest, config.len(), descriptors));
        let manifest_digest = Digest::of_bytes(&manifest);
        Ok(BuiltImage {
            layers,
            config,
            config_digest,
            manifest,
            manifest_digest,
        })
    }
}
