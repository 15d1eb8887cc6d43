//! [`FsError`]: why a virtio-fs device or its file system could not be set up.

/// Why a virtio-fs device or its file system could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than the config space allows.
    #[error("tag {0:?} is {n} bytes; a virtio-fs tag must be 1 to 36 bytes", n = .0.len())]
    TagLength(String),
    /// The tag contains a NUL byte, which would truncate it in the guest.
    #[error("tag {0:?} contains a NUL byte")]
    TagNul(String),
    /// The shared directory cannot be resolved or is not a directory.
    #[error("shared directory {path}: {source}")]
    Root {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The shared directory's path is not UTF-8 (fuse-backend-rs takes a String).
    #[error("shared directory {0}: path is not valid UTF-8")]
    RootNotUtf8(std::path::PathBuf),
    /// fuse-backend-rs failed to create or import the passthrough file system.
    #[error("passthrough file system: {0}")]
    Passthrough(#[source] std::io::Error),
    /// An image overlay needs at least one layer.
    #[error("an image overlay needs at least one layer")]
    NoLayers,
    /// The merged view of the image layers could not be set up.
    #[error("overlay of image layers: {0}")]
    Overlay(#[source] std::io::Error),
    /// What a crashed run left in the writable layer's work directory could
    /// not be removed.
    #[error("clearing the work directory of writable layer {path}: {source}")]
    WorkDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Mounting the file system into the Vfs failed.
    #[error("mounting into the FUSE vfs: {0}")]
    Mount(#[source] fuse_backend_rs::api::vfs::VfsError),
    /// Measuring the existing usage for the size cap failed.
    #[error("measuring disk usage under {path}: {source}")]
    Usage {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The device's server thread could not be started.
    #[error("starting the virtio-fs server thread: {0}")]
    Worker(#[source] std::io::Error),
    /// The server thread could not confine itself.
    #[error(transparent)]
    Confine(sandbox::Error),
}
