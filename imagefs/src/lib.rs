//! OCI images for minivm: from an image reference to a bootable filesystem.
//!
//! - [`tree`]: the merged filesystem tree that layers are flattened into;
//! - [`ext4`]: writes a tree as an ext4 filesystem image, itself, streaming
//!   file data as it arrives, without root, mounting or mkfs.

pub mod cache;
pub mod convert;
pub mod digest;
pub mod ext4;
pub mod ext4b;
pub mod flatten;
pub mod layer;
pub mod layerstore;
pub mod reference;
pub mod source;
pub mod sparse;
pub mod testutil;
pub mod tree;
