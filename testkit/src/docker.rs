//! `docker save` archives: the classic layout and Docker 25+'s OCI one.

use crate::error::TestImageError;
use crate::image::TestImage;
use crate::layer::write_tar;
use crate::layout::{index_json, json_bytes, OCI_LAYOUT};
use imagefs::digest::Digest;
use imagefs::layer::Compression;
use imagefs::source::media_types;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

type Result<T> = std::result::Result<T, TestImageError>;

/// Layouts of `docker save` archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerFormat {
    /// Classic: `<id>/layer.tar` uncompressed, `<config hex>.json`, `repositories`;
    /// a layer repeated in one image is written once and then as a symlink.
    Legacy,
    /// Like `Legacy` but with gzip-compressed layer files (as some tools write).
    LegacyGzip,
    /// Docker 25+: an OCI layout (`blobs/sha256`, `index.json`, `oci-layout`) plus `manifest.json`.
    Oci,
}

/// Writes a `docker save` archive holding several images, each with its
/// `RepoTags`. Returns each image's config digest (its Docker image ID).
pub fn write_docker_archive_images(
    file: &Path,
    images: &[(&TestImage, &[&str])],
    format: DockerFormat,
) -> Result<Vec<Digest>> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut symlinks: Vec<(String, String)> = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    let mut manifest = Vec::new();
    let mut index = Vec::new();
    let mut repositories = serde_json::Map::new();
    let mut ids = Vec::new();
    let mut written: HashMap<String, ()> = HashMap::new();
    let mut add = |files: &mut Vec<(String, Vec<u8>)>, path: String, data: Vec<u8>| {
        if written.insert(path.clone(), ()).is_none() {
            files.push((path, data));
        }
    };
    for (image, tags) in images {
        let compression = if format == DockerFormat::LegacyGzip {
            Compression::Gzip
        } else {
            Compression::None
        };
        let built = image.build(compression)?;
        let mut layer_paths = Vec::new();
        let config_path = match format {
            DockerFormat::Oci => {
                for (d, data) in built.blobs() {
                    add(
                        &mut files,
                        format!("blobs/sha256/{}", d.hex()),
                        data.to_vec(),
                    );
                }
                for l in &built.layers {
                    layer_paths.push(format!("blobs/sha256/{}", l.digest.hex()));
                }
                let mut desc = built
                    .manifest_descriptor(tags.first().map(|t| t.rsplit(':').next().unwrap_or(t)));
                if let Some(t) = tags.first() {
                    let name =
                        imagefs::reference::normalize_docker_tag_name(t).map_err(|reason| {
                            TestImageError::BadTag {
                                tag: t.to_string(),
                                reason,
                            }
                        })?;
                    desc["annotations"]["io.containerd.image.name"] = json!(name);
                }
                index.push(desc);
                format!("blobs/sha256/{}", built.config_digest.hex())
            }
            DockerFormat::Legacy | DockerFormat::LegacyGzip => {
                let mut first_by_diff: HashMap<Digest, String> = HashMap::new();
                let mut parent = String::new();
                for (i, l) in built.layers.iter().enumerate() {
                    let id = Digest::of_bytes(format!("{parent}\n{i}\n{}", l.diff_id).as_bytes())
                        .hex()
                        .to_string();
                    dirs.push(id.clone());
                    let path = format!("{id}/layer.tar");
                    add(&mut files, format!("{id}/VERSION"), b"1.0".to_vec());
                    add(
                        &mut files,
                        format!("{id}/json"),
                        json_bytes(&json!({"id": id, "parent": parent})),
                    );
                    match first_by_diff.get(&l.diff_id) {
                        Some(first) => symlinks.push((path.clone(), format!("../{first}"))),
                        None => {
                            first_by_diff.insert(l.diff_id.clone(), path.clone());
                            add(&mut files, path.clone(), l.blob.clone());
                        }
                    }
                    layer_paths.push(path);
                    parent = id;
                }
                for t in tags.iter() {
                    if let Some((repo, tag)) =
                        t.rsplit_once(':').filter(|(_, tag)| !tag.contains('/'))
                    {
                        let entry = repositories
                            .entry(repo.to_string())
                            .or_insert_with(|| json!({}));
                        entry[tag] = json!(parent);
                    }
                }
                format!("{}.json", built.config_digest.hex())
            }
        };
        add(&mut files, config_path.clone(), built.config.clone());
        manifest.push(json!({"Config": config_path, "RepoTags": tags, "Layers": layer_paths}));
        ids.push(built.config_digest.clone());
    }
    files.push(("manifest.json".into(), json_bytes(&json!(manifest))));
    let mut top_dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    match format {
        DockerFormat::Oci => {
            files.push(("oci-layout".into(), OCI_LAYOUT.to_vec()));
            let index = index_json(media_types::OCI_INDEX, index);
            files.push(("index.json".into(), json_bytes(&index)));
            top_dirs.extend(["blobs", "blobs/sha256"]);
        }
        _ => files.push((
            "repositories".into(),
            json_bytes(&serde_json::Value::Object(repositories)),
        )),
    }
    top_dirs.sort_unstable();
    top_dirs.dedup();
    write_tar(file, &top_dirs, &files, &symlinks)?;
    Ok(ids)
}

impl TestImage {
    /// Writes a `docker save` archive in the classic format (uncompressed
    /// `<id>/layer.tar` layers) with `repo_tag` (e.g. `busybox:latest`) in
    /// `RepoTags`. Returns the config digest (the Docker image ID).
    pub fn write_docker_archive(&self, file: &Path, repo_tag: &str) -> Result<Digest> {
        let ids = write_docker_archive_images(file, &[(self, &[repo_tag])], DockerFormat::Legacy)?;
        Ok(ids.into_iter().next().expect("one image written"))
    }
}
