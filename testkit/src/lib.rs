//! Test kits for minivm, never part of the product (a dev-dependency only):
//!
//! - test images built locally with no downloads: layer tars written entry
//!   by entry ([`TestEntry`], hostile and unusual entries included), whole
//!   images ([`TestImage`]) written as an OCI layout, an OCI archive or a
//!   `docker save` archive, and hand-made layouts ([`custom_layout`]);
//! - ready-made images: a bootable busybox layer, [`tricky_image`] covering
//!   every OCI layer case with the tree it must give, a [`hostile_image`];
//! - registries: a real local one ([`TestRegistry`], with skopeo) and a fake
//!   one ([`FakeServer`]);
//! - guests: the [`TinyGuest`], busybox roots as directory, disk or initramfs
//!   ([`busybox_root`], [`busybox_disk`], [`busybox_initramfs`]), and running
//!   the `minivm` binary with a timeout ([`run_minivm`]), interactively
//!   ([`RunningVm`]: wait for console lines, send signals) or on a
//!   pseudo-terminal ([`PtySession`]);
//! - network tests in a private namespace with a tap ([`in_private_netns`]);
//! - a private containerd driven with `ctr` ([`Containerd`]).
//!
//! ```no_run
//! use testkit::{Compression, TempDir, TestEntry, TestImage};
//! let dir = TempDir::new("example").unwrap();
//! let image = TestImage::new(vec![vec![
//!     TestEntry::dir("etc"),
//!     TestEntry::file("etc/hostname", "vm\n").mode(0o600),
//!     TestEntry::symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
//! ]]);
//! let digest = image.write_oci_layout(&dir.path().join("layout"), "latest", Compression::Gzip).unwrap();
//! ```
//!
//! It depends on imagefs for digests, media types and tag names; imagefs's
//! own unit tests use it too, and then see a second copy of imagefs, so only
//! plain data (bytes, paths, this crate's types) crosses between them.

#![warn(missing_docs)]

mod containerd;
mod custom;
mod docker;
mod entry;
mod error;
mod fake_registry;
mod fixtures;
mod fuzz;
mod guest;
mod image;
mod layer;
mod layout;
mod minivm;
mod netns;
mod pty;
mod registry;
mod rootfs;
mod running;
mod tempdir;
#[cfg(test)]
mod tests;

pub use containerd::Containerd;
pub use custom::{custom_layout, index_blob};
pub use docker::{write_docker_archive_images, DockerFormat};
pub use entry::{Meta, RawEntry, TestEntry, DEFAULT_MTIME};
pub use error::TestImageError;
pub use fake_registry::{fake_token_registry, FakeServer, Request, Response};
pub use fixtures::{
    busybox_layer, hostile_image, long_names, tricky_expectations, tricky_image, Expect,
    BUSYBOX_APPLETS, CAP_NET_BIND_SERVICE_XATTR,
};
pub use fuzz::replay_fuzz_inputs;
pub use guest::{TinyEnd, TinyGuest, TINY_GUEST_ADDR};
pub use image::TestImage;
pub use imagefs::layer::Compression;
pub use layer::{compress, layer_tar};
pub use layout::{
    blob_path, descriptor, index_json, manifest_json, set_index_entry, write_blob, BuiltImage,
    BuiltLayer,
};
pub use minivm::{
    default_kernel, fs_stats, initramfs_boot_args, kvm_available, minivm_bin, run_minivm,
    run_minivm_input, run_minivm_with, scratch_dir, RunOutput, BOOT_TIMEOUT,
};
pub use netns::{
    in_private_netns, make_test_tap, payload, receive_from_guest, send_to_guest, sha256_hex,
    test_net_arg, GUEST_IP, GUEST_MAC, HOST_IP, TEST_TAP,
};
pub use pty::PtySession;
pub use registry::{
    bcrypt_htpasswd_line, free_port, skopeo_copy, TestRegistry, HTPASSWD_PASSWORD, HTPASSWD_USER,
};
pub use rootfs::{busybox_disk, busybox_initramfs, busybox_root, exit_port_cmd, write_tree};
pub use running::{thread_seccomp, Finished, RunningVm};
pub use tempdir::TempDir;
