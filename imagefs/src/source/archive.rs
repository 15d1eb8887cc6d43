//! `docker save` archives (`docker-archive:FILE[:NAME]`), read in place
//! through [`TarFiles`].
//!
//! A docker-archive has a `manifest.json` (`[{Config, RepoTags, Layers}]`)
//! naming files in the tar. Older Docker writes `<id>/layer.tar` layers
//! (uncompressed, repeated layers as symlinks); Docker 25+ writes an OCI
//! layout (`blobs/sha256/...`, `index.json`) next to `manifest.json`. When the
//! archive's `index.json` has a manifest for the chosen config, that manifest
//! is used as is; otherwise an OCI manifest is synthesized: layer media types
//! come from the data's magic bytes, uncompressed layers are verified against
//! the config's `rootfs.diff_ids`, and the manifest digest is the sha256 of
//! the synthesized manifest's JSON (deterministic).

use super::files::{normalize, Files, TarFiles};
use super::layout::{self, blob_path, read_small};
use super::manifest::{desc_digest, parse_config, verify_to_source};
use super::{name, ImageSource, ResolvedImage, SourceError};
use crate::digest::{Digest, Hasher};
use crate::layer::{self, Compression};
use crate::reference::{normalize_docker_tag_name, ImageRef};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifestBuilder, MediaType};
use std::collections::HashMap;
use std::io::{self, Read};

/// One image in `manifest.json`.
#[derive(serde::Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// A `docker save` archive.
pub(crate) struct DockerArchive {
    reference: ImageRef,
    image: String,
    files: TarFiles,
    name: Option<String>,
    /// Blob digest -> member path, filled by resolve.
    blobs: Option<HashMap<Digest, String>>,
}

/// The digest a path like `blobs/sha256/<hex>` or `<hex>.json` names, if any.
fn digest_in_path(path: &str) -> Option<Digest> {
    let p = normalize(path);
    let last = p.rsplit('/').next()?;
    let hex = last.strip_suffix(".json").unwrap_or(last);
    if p.starts_with("blobs/sha256/") || last.ends_with(".json") {
        Digest::from_sha256_hex(hex).ok()
    } else {
        None
    }
}

impl DockerArchive {
    /// Indexes the archive at the reference's path.
    pub(crate) fn open(r: &ImageRef) -> Result<DockerArchive, SourceError> {
        let ImageRef::DockerArchive { file, name: n } = r else {
            unreachable!("DockerArchive::open called for {r}")
        };
        let image = name(r);
        let files = TarFiles::open(&image, file)?;
        Ok(DockerArchive {
            reference: r.clone(),
            image,
            files,
            name: n.clone(),
            blobs: None,
        })
    }

    fn select<'a>(&self, entries: &'a [DockerEntry]) -> Result<&'a DockerEntry, SourceError> {
        let image = || self.image.clone();
        let describe = |i: usize, e: &DockerEntry| match &e.repo_tags {
            Some(t) if !t.is_empty() => format!("@{i} ({})", t.join(", ")),
            _ => format!("@{i} (untagged)"),
        };
        let listing = || {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| describe(i, e))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self.name.as_deref() {
            None => match entries.len() {
                0 => Err(SourceError::NotFound { image: image(), what: "any image: manifest.json is empty".to_string() }),
                1 => Ok(&entries[0]),
                n => Err(SourceError::Ambiguous {
                    image: image(),
                    detail: format!("the archive holds {n} images: {}; name one as docker-archive:FILE:REPO:TAG or :@N", listing()),
                }),
            },
            Some(n) if n.starts_with('@') => {
                let i: usize = n[1..].parse().unwrap_or(usize::MAX);
                entries.get(i).ok_or_else(|| SourceError::NotFound {
                    image: image(),
                    what: format!("image {n}: the archive holds {} images", entries.len()),
                })
            }
            Some(n) => entries
                .iter()
                .find(|e| {
                    e.repo_tags.iter().flatten().any(|t| normalize_docker_tag_name(t).is_ok_and(|t| t == n))
                })
                .ok_or_else(|| SourceError::NotFound { image: image(), what: format!("image {n} in manifest.json (images: {})", listing()) }),
        }
    }

    /// Docker 25+: the archive's own OCI manifest for this config, if any.
    fn find_oci_manifest(&self, config_digest: &Digest) -> Option<ResolvedImage> {
        let index = layout::read_index(&self.image, &self.files).ok()?;
        index.manifests().iter().find_map(|d| {
            let digest = desc_digest(&self.image, "index.json entry", d).ok()?;
            let bytes = layout::fetch_blob(&self.image, &self.files, d, "manifest").ok()?;
            let mut fetch =
                |d: &Descriptor, what: &str| layout::fetch_blob(&self.image, &self.files, d, what);
            let hint = Some(d.media_type().to_string());
            let r =
                super::manifest::resolve_doc(&self.image, bytes, digest, hint, &mut fetch).ok()?;
            (r.config_digest == *config_digest).then_some(r)
        })
    }

    /// Describes one layer file: its OCI descriptor.
    fn layer_descriptor(
        &self,
        i: usize,
        path: &str,
        diff_id: &Digest,
    ) -> Result<Descriptor, SourceError> {
        let what = format!("layer {i} ({path})");
        let io_err = |source| SourceError::Io {
            image: self.image.clone(),
            what: what.clone(),
            source,
        };
        let Some((r, size)) = self.files.open(path).map_err(io_err)? else {
            return Err(SourceError::NotFound {
                image: self.image.clone(),
                what: format!("{what} listed in manifest.json"),
            });
        };
        let (magic, mut r) = layer::peek(r, 6).map_err(io_err)?;
        let compression = layer::sniff(&magic).map_err(|format| SourceError::UnknownMediaType {
            image: self.image.clone(),
            media_type: format!("{format}-compressed tar"),
            what: what.clone(),
        })?;
        let named = digest_in_path(path);
        let digest = match compression {
            // The blob is the diff: its digest is the diff_id (checked as it is read).
            Compression::None => {
                if let Some(n) = named.filter(|n| n != diff_id) {
                    return Err(SourceError::DigestMismatch {
                        image: self.image.clone(),
                        what: format!("{what} vs config rootfs.diff_ids[{i}]"),
                        expected: diff_id.to_string(),
                        actual: n.to_string(),
                    });
                }
                diff_id.clone()
            }
            _ => match named {
                Some(n) => n,
                None => {
                    let mut h = Hasher::new();
                    io::copy(&mut r, &mut h)
                        .map_err(|e| verify_to_source(&self.image, &what, e))?;
                    h.finish()
                }
            },
        };
        Ok(Descriptor::new(
            MediaType::from(compression.oci_media_type()),
            size,
            digest.to_oci(),
        ))
    }

    fn resolve_inner(&self) -> Result<(ResolvedImage, HashMap<Digest, String>), SourceError> {
        let image = &self.image;
        let Some(mj) = read_small(image, &self.files, "manifest.json")? else {
            return Err(SourceError::Invalid {
                image: image.clone(),
                detail: format!(
                    "{} has no manifest.json: not a docker-archive (docker save) file",
                    self.files.location()
                ),
            });
        };
        let entries: Vec<DockerEntry> =
            serde_json::from_slice(&mj).map_err(|e| SourceError::Json {
                image: image.clone(),
                what: "manifest.json".to_string(),
                detail: e.to_string(),
            })?;
        let entry = self.select(&entries)?;
        let what = format!("config {}", entry.config);
        let Some(cbytes) = read_small(image, &self.files, &entry.config)? else {
            return Err(SourceError::NotFound {
                image: image.clone(),
                what: format!("{what} listed in manifest.json"),
            });
        };
        let config_digest = Digest::of_bytes(&cbytes);
        if let Some(named) = digest_in_path(&entry.config).filter(|n| *n != config_digest) {
            return Err(SourceError::DigestMismatch {
                image: image.clone(),
                what,
                expected: named.to_string(),
                actual: config_digest.to_string(),
            });
        }
        let mut blobs = HashMap::new();
        if let Some(r) = self.find_oci_manifest(&config_digest) {
            for l in r.manifest.layers() {
                let d = desc_digest(image, "layer", l)?;
                blobs.insert(d.clone(), blob_path(&d));
            }
            return Ok((r, blobs));
        }
        let config: ImageConfiguration =
            serde_json::from_slice(&cbytes).map_err(|e| SourceError::Json {
                image: image.clone(),
                what: "image config".to_string(),
                detail: e.to_string(),
            })?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SourceError::Json {
                image: image.clone(),
                what: "image config rootfs.diff_ids".to_string(),
                detail: e.to_string(),
            })?;
        if diff_ids.len() != entry.layers.len() {
            return Err(SourceError::Json {
                image: image.clone(),
                what: "image config".to_string(),
                detail: format!(
                    "rootfs.diff_ids has {} entries but manifest.json lists {} layers",
                    diff_ids.len(),
                    entry.layers.len()
                ),
            });
        }
        let mut layers = Vec::new();
        for (i, (path, diff_id)) in entry.layers.iter().zip(&diff_ids).enumerate() {
            let d = self.layer_descriptor(i, path, diff_id)?;
            blobs.insert(desc_digest(image, "layer", &d)?, path.clone());
            layers.push(d);
        }
        blobs.insert(config_digest.clone(), entry.config.clone());
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(
                MediaType::ImageConfig,
                cbytes.len() as u64,
                config_digest.to_oci(),
            ))
            .layers(layers)
            .build()
            .map_err(|e| SourceError::Invalid {
                image: image.clone(),
                detail: format!("synthesizing a manifest: {e}"),
            })?;
        let json = serde_json::to_vec(&manifest).map_err(|e| SourceError::Invalid {
            image: image.clone(),
            detail: format!("serializing the synthesized manifest: {e}"),
        })?;
        let config = parse_config(image, &cbytes, &manifest)?;
        let resolved = ResolvedImage {
            manifest,
            manifest_digest: Digest::of_bytes(&json),
            config,
            config_digest,
        };
        Ok((resolved, blobs))
    }
}

impl ImageSource for DockerArchive {
    fn reference(&self) -> &ImageRef {
        &self.reference
    }

    fn resolve(&mut self) -> Result<ResolvedImage, SourceError> {
        let (resolved, blobs) = self.resolve_inner()?;
        self.blobs = Some(blobs);
        Ok(resolved)
    }

    fn open_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        if self.blobs.is_none() {
            self.resolve()?;
        }
        let digest = desc_digest(&self.image, "blob", desc)?;
        let path = self
            .blobs
            .as_ref()
            .and_then(|b| b.get(&digest))
            .cloned()
            .unwrap_or_else(|| blob_path(&digest));
        layout::open_blob(&self.image, &self.files, desc, Some(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_in_paths() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d = Digest::from_sha256_hex(hex).unwrap();
        assert_eq!(
            digest_in_path(&format!("blobs/sha256/{hex}")),
            Some(d.clone())
        );
        assert_eq!(digest_in_path(&format!("{hex}.json")), Some(d));
        assert_eq!(digest_in_path(&format!("{hex}/layer.tar")), None);
        assert_eq!(digest_in_path("blobs/sha256/short"), None);
    }
}
