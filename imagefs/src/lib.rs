//! OCI images for minivm: from an image reference to a bootable filesystem.
//!
//! - [`reference`], [`source`], [`digest`], [`layer`]: parse image references
//!   (skopeo's transports), read OCI layouts, archives and registries, verify
//!   every blob, decompress layers;
//! - [`walk`]: one layer's tar stream as checked operations (the OCI layer
//!   rules and hostile-input checks, once);
//! - [`flatten`]: merge layer tars into one [`tree`] with OCI whiteout semantics;
//! - [`ext4`]: write a tree as an ext4 filesystem image, itself, streaming file
//!   data as it arrives, without root, mounting or mkfs;
//! - [`cache`], [`convert`]: the content-addressed disk cache and the pipeline
//!   that fills it; [`sparse`]: cheap copies of sparse images;
//! - [`layerstore`]: layers unpacked once each, for booting over virtio-fs;
//! - [`host`]: where minivm keeps its files, privilege, work-directory liveness;

pub mod cache;
pub mod convert;
pub mod digest;
pub mod ext4;
pub mod flatten;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod layer;
pub mod layerstore;
pub mod process;
pub mod reference;
pub mod source;
pub mod sparse;
pub mod tree;
pub mod walk;
