//! OCI image layouts (`oci:DIR[:TAG]`), in a directory or inside a tar
//! (`oci-archive:FILE[:TAG]`, read in place through [`TarFiles`]).
//!
//! A layout is an `oci-layout` file, an `index.json` and `blobs/sha256/<hex>`.
//! The tag is the `org.opencontainers.image.ref.name` annotation of an
//! `index.json` entry.

use super::files::{DirFiles, Files, TarFiles};
use super::manifest::{desc_digest, read_verified, resolve_doc, select_platform, MAX_DOCUMENT};
use super::{name, ImageSource, ResolvedImage, SourceError};
use crate::digest::{Digest, VerifyingReader};
use crate::reference::ImageRef;
use oci_spec::image::{Descriptor, ImageIndex};
use std::io::Read;

/// The annotation holding a layout entry's tag.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Reads a small file (at most [`super::manifest::MAX_DOCUMENT`] bytes); None if absent.
pub(crate) fn read_small(
    image: &str,
    files: &dyn Files,
    path: &str,
) -> Result<Option<Vec<u8>>, SourceError> {
    let io_err = |source| SourceError::Io {
        image: image.to_string(),
        what: path.to_string(),
        source,
    };
    let Some((r, size)) = files.open(path).map_err(io_err)? else {
        return Ok(None);
    };
    if size > MAX_DOCUMENT {
        return Err(SourceError::Invalid {
            image: image.to_string(),
            detail: format!(
                "{path} is {size} bytes; documents over {MAX_DOCUMENT} bytes are refused"
            ),
        });
    }
    let mut out = Vec::new();
    r.take(MAX_DOCUMENT).read_to_end(&mut out).map_err(io_err)?;
    Ok(Some(out))
}

/// The path of a blob in a layout.
pub(crate) fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Opens a layout blob, verified against `desc`.
pub(crate) fn open_blob<'a>(
    image: &str,
    files: &'a dyn Files,
    desc: &Descriptor,
    path: Option<&str>,
) -> Result<Box<dyn Read + Send + 'a>, SourceError> {
    let digest = desc_digest(image, "blob", desc)?;
    let path = path.map_or_else(|| blob_path(&digest), str::to_string);
    let what = format!("blob {digest}");
    let opened = files.open(&path).map_err(|source| SourceError::Io {
        image: image.to_string(),
        what: what.clone(),
        source,
    })?;
    let Some((r, _size)) = opened else {
        return Err(SourceError::NotFound {
            image: image.to_string(),
            what: format!("{what} ({path} in {})", files.location()),
        });
    };
    Ok(Box::new(VerifyingReader::new(
        r,
        digest,
        Some(desc.size()),
        what,
    )))
}

/// Reads a small blob (manifest, index, config) of a layout, verified.
pub(crate) fn fetch_blob(
    image: &str,
    files: &dyn Files,
    desc: &Descriptor,
    what: &str,
) -> Result<Vec<u8>, SourceError> {
    let digest = desc_digest(image, what, desc)?;
    let path = blob_path(&digest);
    let opened = files.open(&path).map_err(|source| SourceError::Io {
        image: image.to_string(),
        what: what.to_string(),
        source,
    })?;
    let Some((r, _)) = opened else {
        return Err(SourceError::NotFound {
            image: image.to_string(),
            what: format!("{what} ({path} in {})", files.location()),
        });
    };
    read_verified(image, what, r, desc)
}

/// Checks the `oci-layout` file and reads `index.json`.
pub(crate) fn read_index(image: &str, files: &dyn Files) -> Result<ImageIndex, SourceError> {
    let Some(layout) = read_small(image, files, "oci-layout")? else {
        return Err(SourceError::Invalid {
            image: image.to_string(),
            detail: format!(
                "{} is not an OCI image layout: it has no oci-layout file",
                files.location()
            ),
        });
    };
    let v: serde_json::Value = serde_json::from_slice(&layout).map_err(|e| SourceError::Json {
        image: image.to_string(),
        what: "oci-layout".to_string(),
        detail: e.to_string(),
    })?;
    match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(ver) if ver.starts_with("1.") => {}
        other => {
            return Err(SourceError::Invalid {
                image: image.to_string(),
                detail: format!(
                    "unsupported OCI layout version {other:?} in oci-layout (expected 1.x)"
                ),
            })
        }
    }
    let Some(index) = read_small(image, files, "index.json")? else {
        return Err(SourceError::NotFound {
            image: image.to_string(),
            what: format!("index.json in {}", files.location()),
        });
    };
    serde_json::from_slice(&index).map_err(|e| SourceError::Json {
        image: image.to_string(),
        what: "index.json".to_string(),
        detail: e.to_string(),
    })
}

/// The tag of an index entry.
pub(crate) fn tag_of(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

/// Picks the `index.json` entry for `tag` (or the only one).
fn select_entry<'a>(
    image: &str,
    index: &'a ImageIndex,
    tag: Option<&str>,
) -> Result<&'a Descriptor, SourceError> {
    let entries = index.manifests();
    let mut tags: Vec<&str> = entries.iter().filter_map(tag_of).collect();
    tags.sort_unstable();
    tags.dedup();
    let tag_list = || {
        if tags.is_empty() {
            "none".to_string()
        } else {
            tags.join(", ")
        }
    };
    let candidates: Vec<Descriptor> = match tag {
        Some(t) => entries
            .iter()
            .filter(|d| tag_of(d) == Some(t))
            .cloned()
            .collect(),
        None => entries.clone(),
    };
    match (candidates.len(), tag) {
        (0, Some(t)) => Err(SourceError::NotFound {
            image: image.to_string(),
            what: format!("tag {t:?} in index.json (tags present: {})", tag_list()),
        }),
        (0, None) => Err(SourceError::NotFound {
            image: image.to_string(),
            what: "any image: index.json is empty".to_string(),
        }),
        (1, _) => Ok(entries
            .iter()
            .find(|d| **d == candidates[0])
            .expect("candidate comes from entries")),
        (n, None) => Err(SourceError::Ambiguous {
            image: image.to_string(),
            detail: format!(
                "index.json holds {n} images (tags: {}); name one, as in oci:DIR:TAG",
                tag_list()
            ),
        }),
        (_, Some(_)) => {
            let d = select_platform(image, &candidates)?;
            Ok(entries
                .iter()
                .find(|e| *e == d)
                .expect("candidate comes from entries"))
        }
    }
}

/// Resolves `tag` in a layout held by `files`.
pub(crate) fn resolve_layout(
    image: &str,
    files: &dyn Files,
    tag: Option<&str>,
) -> Result<ResolvedImage, SourceError> {
    let index = read_index(image, files)?;
    let entry = select_entry(image, &index, tag)?;
    let digest = desc_digest(image, "index.json entry", entry)?;
    let bytes = fetch_blob(image, files, entry, &format!("manifest {digest}"))?;
    let mut fetch = |d: &Descriptor, what: &str| fetch_blob(image, files, d, what);
    resolve_doc(
        image,
        bytes,
        digest,
        Some(entry.media_type().to_string()),
        &mut fetch,
    )
}

/// An OCI image layout read through [`Files`].
pub(crate) struct OciLayout<F: Files> {
    reference: ImageRef,
    image: String,
    files: F,
    tag: Option<String>,
}

/// Opens `oci:DIR[:TAG]`.
pub(crate) fn open_dir(r: &ImageRef) -> Result<OciLayout<DirFiles>, SourceError> {
    let ImageRef::OciLayout { dir, reference } = r else {
        unreachable!("open_dir called for {r}")
    };
    let image = name(r);
    if !dir.is_dir() {
        return Err(SourceError::NotFound {
            image,
            what: format!("directory {}", dir.display()),
        });
    }
    let files = DirFiles { root: dir.clone() };
    read_index(&image, &files)?;
    Ok(OciLayout {
        reference: r.clone(),
        image,
        files,
        tag: reference.clone(),
    })
}

/// Opens `oci-archive:FILE[:TAG]`, reading the tar in place.
pub(crate) fn open_archive(r: &ImageRef) -> Result<OciLayout<TarFiles>, SourceError> {
    let ImageRef::OciArchive { file, reference } = r else {
        unreachable!("open_archive called for {r}")
    };
    let image = name(r);
    let files = TarFiles::open(&image, file)?;
    read_index(&image, &files)?;
    Ok(OciLayout {
        reference: r.clone(),
        image,
        files,
        tag: reference.clone(),
    })
}

impl<F: Files> ImageSource for OciLayout<F> {
    fn reference(&self) -> &ImageRef {
        &self.reference
    }

    fn resolve(&mut self) -> Result<ResolvedImage, SourceError> {
        resolve_layout(&self.image, &self.files, self.tag.as_deref())
    }

    fn open_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        open_blob(&self.image, &self.files, desc, None)
    }
}
