//! Helpers shared by minivm's integration tests (the general kits, images
//! and guests, are in the testkit crate):
//!
//! - [`oci`]: minivm with its own image cache, and checks of its cache and disks;
//! - [`guest_check`]: the tricky image checked from inside a booted guest;
//! - [`runner`]: running minivm as the caller or unprivileged.

#![warn(missing_docs)]

pub mod guest_check;
pub mod oci;
pub mod runner;
