//! Manifest, index and config documents shared by every source: parsing
//! (OCI and Docker schema2), platform selection and media type mapping.

use super::{ResolvedImage, SourceError};
use crate::digest::{Digest, VerifyError, VerifyingReader};
use crate::layer;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use std::io::{self, Read};

/// Manifest and config media types (OCI and Docker).
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker schema2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker schema1 manifest (not supported).
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Signed Docker schema1 manifest (not supported).
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
}

use media_types::*;

/// Largest manifest, index or config read into memory.
pub(crate) const MAX_DOCUMENT: u64 = 16 << 20;

/// How deep image indexes may nest.
const MAX_NESTING: usize = 8;

/// A parsed top-level document.
pub(crate) enum Doc {
    Manifest(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

/// Whether a media type names an image index / manifest list.
pub(crate) fn is_index_type(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_LIST
}

/// Whether a media type names an image manifest.
pub(crate) fn is_manifest_type(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
}

fn json_err(image: &str, what: &str, detail: impl ToString) -> SourceError {
    SourceError::Json {
        image: image.to_string(),
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

/// Parses a manifest or index; `hint` is the media type its descriptor or
/// HTTP response gave (the document's own `mediaType` wins).
pub(crate) fn parse_doc(
    image: &str,
    what: &str,
    bytes: &[u8],
    hint: Option<&str>,
) -> Result<Doc, SourceError> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| json_err(image, what, e))?;
    let obj = v
        .as_object()
        .ok_or_else(|| json_err(image, what, "not a JSON object"))?;
    let own = obj.get("mediaType").and_then(|m| m.as_str());
    let hint = hint.map(|h| h.split(';').next().unwrap_or(h).trim());
    if obj.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1)
        || [own, hint]
            .iter()
            .flatten()
            .any(|m| *m == DOCKER_SCHEMA1 || *m == DOCKER_SCHEMA1_SIGNED)
    {
        return Err(SourceError::UnknownMediaType {
            image: image.to_string(),
            media_type: DOCKER_SCHEMA1.to_string(),
            what: format!("{what} (Docker schema 1 manifests are obsolete and not supported)"),
        });
    }
    let known = |m: &&str| is_index_type(m) || is_manifest_type(m);
    let index = match own.or(hint.filter(known)) {
        Some(m) if is_index_type(m) => true,
        Some(m) if is_manifest_type(m) => false,
        Some(m) => {
            return Err(SourceError::UnknownMediaType {
                image: image.to_string(),
                media_type: m.to_string(),
                what: format!("{what} (not an image manifest or index)"),
            })
        }
        None if obj.contains_key("manifests") => true,
        None if obj.contains_key("config") || obj.contains_key("layers") => false,
        None => {
            return Err(json_err(
                image,
                what,
                "neither an image manifest nor an image index",
            ))
        }
    };
    if index {
        let i: ImageIndex = serde_json::from_value(v).map_err(|e| json_err(image, what, e))?;
        Ok(Doc::Index(Box::new(i)))
    } else {
        let m: ImageManifest = serde_json::from_value(v).map_err(|e| json_err(image, what, e))?;
        Ok(Doc::Manifest(Box::new(m)))
    }
}

/// `os/arch[/variant]` of a descriptor, or `unknown`.
pub(crate) fn platform_name(d: &Descriptor) -> String {
    match d.platform() {
        Some(p) => {
            let mut s = format!("{}/{}", p.os(), p.architecture());
            if let Some(v) = p.variant() {
                s.push('/');
                s.push_str(v);
            }
            s
        }
        None => "unspecified".to_string(),
    }
}

fn is_linux_amd64(d: &Descriptor) -> bool {
    d.platform()
        .as_ref()
        .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == "amd64")
}

/// Picks the linux/amd64 entry of an index. Entries without a platform are
/// taken only when no entry has one and there is exactly one.
pub(crate) fn select_platform<'a>(
    image: &str,
    manifests: &'a [Descriptor],
) -> Result<&'a Descriptor, SourceError> {
    let usable = |d: &&Descriptor| {
        let mt = d.media_type().to_string();
        is_manifest_type(&mt) || is_index_type(&mt)
    };
    if let Some(d) = manifests.iter().filter(usable).find(|d| is_linux_amd64(d)) {
        return Ok(d);
    }
    let all: Vec<&Descriptor> = manifests.iter().filter(usable).collect();
    if all.len() == 1 && all[0].platform().is_none() {
        return Ok(all[0]);
    }
    Err(SourceError::NoPlatform {
        image: image.to_string(),
        available: manifests.iter().map(platform_name).collect(),
    })
}

/// Maps a Docker media type to its OCI equivalent (others unchanged).
pub(crate) fn oci_media_type(mt: &str) -> &str {
    match mt {
        DOCKER_MANIFEST => OCI_MANIFEST,
        DOCKER_LIST => OCI_INDEX,
        DOCKER_CONFIG => OCI_CONFIG,
        layer::media_types::DOCKER_TAR_GZIP => layer::media_types::TAR_GZIP,
        layer::media_types::DOCKER_FOREIGN_TAR_GZIP => layer::media_types::ND_TAR_GZIP,
        layer::media_types::DOCKER_TAR => layer::media_types::TAR,
        other => other,
    }
}

/// The sha256 digest of a descriptor, or an error naming it.
pub(crate) fn desc_digest(image: &str, what: &str, d: &Descriptor) -> Result<Digest, SourceError> {
    Digest::from_oci(d.digest()).map_err(|e| SourceError::Invalid {
        image: image.to_string(),
        detail: format!("{what}: {e}"),
    })
}

/// Maps media types to OCI ones and checks the config and layers are types
/// (and digests) minivm reads.
pub(crate) fn normalize_manifest(
    image: &str,
    mut m: ImageManifest,
) -> Result<ImageManifest, SourceError> {
    m.set_media_type(Some(MediaType::ImageManifest));
    let mut config = m.config().clone();
    let mt = oci_media_type(config.media_type().as_ref()).to_string();
    if mt != OCI_CONFIG {
        return Err(SourceError::UnknownMediaType {
            image: image.to_string(),
            media_type: config.media_type().to_string(),
            what: "the image config (not a container image?)".to_string(),
        });
    }
    desc_digest(image, "config", &config)?;
    config.set_media_type(MediaType::ImageConfig);
    m.set_config(config);
    let mut layers = m.layers().clone();
    for (i, l) in layers.iter_mut().enumerate() {
        let what = format!("layer {i} ({})", l.digest());
        let mt = oci_media_type(l.media_type().as_ref()).to_string();
        if !layer::is_layer_media_type(&mt) {
            return Err(SourceError::UnknownMediaType {
                image: image.to_string(),
                media_type: l.media_type().to_string(),
                what,
            });
        }
        desc_digest(image, &what, l)?;
        l.set_media_type(MediaType::from(mt.as_str()));
    }
    m.set_layers(layers);
    Ok(m)
}

/// Parses an image config and checks it fits the manifest and linux/amd64.
pub(crate) fn parse_config(
    image: &str,
    bytes: &[u8],
    manifest: &ImageManifest,
) -> Result<ImageConfiguration, SourceError> {
    let what = "image config";
    let c: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| json_err(image, what, e))?;
    let (os, arch) = (c.os().to_string(), c.architecture().to_string());
    if os != "linux" || arch != "amd64" {
        return Err(SourceError::NoPlatform {
            image: image.to_string(),
            available: vec![format!("{os}/{arch}")],
        });
    }
    let (diffs, layers) = (c.rootfs().diff_ids().len(), manifest.layers().len());
    if diffs != layers {
        return Err(json_err(
            image,
            what,
            format!("rootfs.diff_ids has {diffs} entries but the manifest has {layers} layers"),
        ));
    }
    Ok(c)
}

/// Reads a small document (manifest, index, config) of at most
/// [`MAX_DOCUMENT`] bytes, verifying it against `desc`.
pub(crate) fn read_verified(
    image: &str,
    what: &str,
    r: impl Read,
    desc: &Descriptor,
) -> Result<Vec<u8>, SourceError> {
    let digest = desc_digest(image, what, desc)?;
    if desc.size() > MAX_DOCUMENT {
        return Err(SourceError::Invalid {
            image: image.to_string(),
            detail: format!(
                "{what} is {} bytes; documents over {MAX_DOCUMENT} bytes are refused",
                desc.size()
            ),
        });
    }
    let mut v = VerifyingReader::new(r, digest, Some(desc.size()), what);
    let mut out = Vec::new();
    v.read_to_end(&mut out)
        .map_err(|e| verify_to_source(image, what, e))?;
    Ok(out)
}

/// Turns a read error into a [`SourceError`], recognising verification failures.
pub(crate) fn verify_to_source(image: &str, what: &str, e: io::Error) -> SourceError {
    let image = image.to_string();
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<VerifyError>())
    {
        Some(VerifyError::Digest {
            expected, actual, ..
        }) => SourceError::DigestMismatch {
            image,
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        },
        Some(VerifyError::Short {
            expected, actual, ..
        }) => SourceError::DigestMismatch {
            image,
            what: format!("{what} (size)"),
            expected: format!("{expected} bytes"),
            actual: format!("{actual} bytes"),
        },
        Some(VerifyError::Long { expected, .. }) => SourceError::DigestMismatch {
            image,
            what: format!("{what} (size)"),
            expected: format!("{expected} bytes"),
            actual: "more".to_string(),
        },
        None => SourceError::Io {
            image,
            what: what.to_string(),
            source: e,
        },
    }
}

/// Fetches a small blob (manifest, index, config) by descriptor, verified.
pub(crate) type FetchFn<'a> = dyn FnMut(&Descriptor, &str) -> Result<Vec<u8>, SourceError> + 'a;

/// Resolves from a top document (a manifest or an index, with its digest)
/// down to the linux/amd64 manifest and its config.
pub(crate) fn resolve_doc(
    image: &str,
    mut bytes: Vec<u8>,
    mut digest: Digest,
    mut hint: Option<String>,
    fetch: &mut FetchFn<'_>,
) -> Result<ResolvedImage, SourceError> {
    for _ in 0..MAX_NESTING {
        let what = format!("manifest {digest}");
        match parse_doc(image, &what, &bytes, hint.as_deref())? {
            Doc::Index(index) => {
                let d = select_platform(image, index.manifests())?.clone();
                digest = desc_digest(image, &what, &d)?;
                bytes = fetch(&d, &format!("manifest {digest} ({})", platform_name(&d)))?;
                hint = Some(d.media_type().to_string());
            }
            Doc::Manifest(m) => {
                let manifest = normalize_manifest(image, *m)?;
                let config_digest = desc_digest(image, "config", manifest.config())?;
                let cbytes = fetch(manifest.config(), &format!("config {config_digest}"))?;
                let config = parse_config(image, &cbytes, &manifest)?;
                return Ok(ResolvedImage {
                    manifest,
                    manifest_digest: digest,
                    config,
                    config_digest,
                });
            }
        }
    }
    Err(SourceError::Invalid {
        image: image.to_string(),
        detail: format!("image indexes nest deeper than {MAX_NESTING}"),
    })
}
