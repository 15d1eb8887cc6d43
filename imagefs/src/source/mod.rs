//! Image sources: where manifests, configs and layer blobs come from.
//!
//! [`open`] turns an [`ImageRef`] into an [`ImageSource`]: an OCI image
//! layout directory, an OCI archive, a `docker save` archive or a registry.
//! [`ImageSource::resolve`] picks the linux/amd64 image (following image
//! indexes and Docker manifest lists), and [`ImageSource::open_blob`] streams
//! a blob, verified against its descriptor's digest and size.
//!
//! Docker schema2 manifests are accepted and their media types mapped to the
//! OCI ones, so callers only see OCI types.

mod archive;
mod files;
mod layout;
mod manifest;
mod registry;
#[cfg(test)]
mod tests;

use crate::digest::Digest;
use crate::reference::ImageRef;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use std::io::{self, Read};

pub use manifest::media_types;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use manifest::resolve_doc;

/// Environment variable with the registry user name, used when
/// [`SourceOptions::credentials`] is None.
pub const ENV_USER: &str = "MINIVM_REGISTRY_USER";
/// Environment variable with the registry password.
pub const ENV_PASSWORD: &str = "MINIVM_REGISTRY_PASSWORD";

/// Errors reading an image. Each names the image (its reference) and what was
/// being read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file, blob, tag, manifest or repository does not exist.
    #[error("{image}: {what} not found")]
    NotFound {
        /// The image reference.
        image: String,
        /// What is missing.
        what: String,
    },
    /// A manifest, index, config or layout file is not valid JSON or lacks fields.
    #[error("{image}: {what} is invalid: {detail}")]
    Json {
        /// The image reference.
        image: String,
        /// Which document.
        what: String,
        /// The parser's complaint.
        detail: String,
    },
    /// Content does not match the digest that names it.
    #[error("{image}: {what}: digest mismatch: expected {expected}, actual {actual}")]
    DigestMismatch {
        /// The image reference.
        image: String,
        /// Which content.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest (or size) it has.
        actual: String,
    },
    /// A manifest, config or layer has a media type minivm does not read.
    #[error("{image}: unsupported media type {media_type:?} for {what}")]
    UnknownMediaType {
        /// The image reference.
        image: String,
        /// The media type.
        media_type: String,
        /// Which descriptor or document.
        what: String,
    },
    /// The image is not available for linux/amd64.
    #[error("{image}: no linux/amd64 image; platforms present: {}", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    NoPlatform {
        /// The image reference.
        image: String,
        /// The platforms found, `os/arch[/variant]`.
        available: Vec<String>,
    },
    /// Several images match and none was named (e.g. no tag given).
    #[error("{image}: {detail}")]
    Ambiguous {
        /// The image reference.
        image: String,
        /// What matched and how to pick one.
        detail: String,
    },
    /// The source is not a valid layout or archive, or uses an unsupported format.
    #[error("{image}: {detail}")]
    Invalid {
        /// The image reference.
        image: String,
        /// What is wrong.
        detail: String,
    },
    /// A registry answered with an unexpected HTTP status.
    #[error("{image}: GET {url}: HTTP {status}: {message}")]
    Http {
        /// The image reference.
        image: String,
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's error message, if any.
        message: String,
    },
    /// A registry refused the credentials (or anonymous access).
    #[error("{image}: GET {url}: unauthorized: {detail}")]
    Unauthorized {
        /// The image reference.
        image: String,
        /// The URL requested.
        url: String,
        /// What the registry said and what to do.
        detail: String,
    },
    /// A registry could not be reached (DNS, refused, TLS, timeout).
    #[error("{image}: cannot reach {url}: {detail}")]
    Connect {
        /// The image reference.
        image: String,
        /// The URL requested.
        url: String,
        /// The transport error.
        detail: String,
    },
    /// Reading a local file failed.
    #[error("{image}: reading {what}: {source}")]
    Io {
        /// The image reference.
        image: String,
        /// What was being read.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The image a reference resolved to: its (OCI-typed) manifest and config.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The image manifest, Docker media types mapped to OCI ones.
    pub manifest: ImageManifest,
    /// Digest of the manifest as stored (for a docker-archive without an OCI
    /// layout: of the manifest minivm synthesized, which is deterministic).
    pub manifest_digest: Digest,
    /// The image configuration.
    pub config: ImageConfiguration,
    /// Digest of the configuration blob.
    pub config_digest: Digest,
}

/// A place images are read from.
pub trait ImageSource: Send {
    /// The reference this source was opened for.
    fn reference(&self) -> &ImageRef;

    /// Finds the linux/amd64 manifest the reference names, and its config.
    fn resolve(&mut self) -> Result<ResolvedImage, SourceError>;

    /// Streams a blob (normally a layer of the resolved manifest). The reader
    /// fails with an `io::Error` of kind `InvalidData` (carrying a
    /// [`crate::digest::VerifyError`]) if the data does not match the
    /// descriptor's size and digest; the digest is checked at EOF.
    fn open_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + Send + '_>, SourceError>;
}

/// How to reach images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOptions {
    /// Registries: require HTTPS with a verified certificate (the default).
    /// When false, HTTPS certificates are not verified and registries that
    /// only speak plain HTTP are used over HTTP, as skopeo's
    /// `--tls-verify=false` does.
    pub tls_verify: bool,
    /// Registries: user name and password. When None, they are read from
    /// [`ENV_USER`] and [`ENV_PASSWORD`] if both are set.
    pub credentials: Option<(String, String)>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            tls_verify: true,
            credentials: None,
        }
    }
}

impl SourceOptions {
    /// The credentials to use: the explicit ones, else the environment's.
    pub fn effective_credentials(&self) -> Option<(String, String)> {
        self.credentials.clone().or_else(|| {
            match (std::env::var(ENV_USER), std::env::var(ENV_PASSWORD)) {
                (Ok(u), Ok(p)) if !u.is_empty() => Some((u, p)),
                _ => None,
            }
        })
    }
}

/// Opens the source an image reference names. Local sources are checked to
/// exist; registries are not contacted until [`ImageSource::resolve`].
pub fn open(r: &ImageRef, opts: &SourceOptions) -> Result<Box<dyn ImageSource>, SourceError> {
    Ok(match r {
        ImageRef::OciLayout { .. } => Box::new(layout::open_dir(r)?),
        ImageRef::OciArchive { .. } => Box::new(layout::open_archive(r)?),
        ImageRef::DockerArchive { .. } => Box::new(archive::DockerArchive::open(r)?),
        ImageRef::Registry { .. } => Box::new(registry::RegistrySource::new(r, opts)?),
    })
}

/// The image reference as used in errors.
fn name(r: &ImageRef) -> String {
    r.to_string()
}
