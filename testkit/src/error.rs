//! Errors writing test images.

use std::io;

/// Errors writing test images.
#[derive(Debug, thiserror::Error)]
pub enum TestImageError {
    /// A file could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Anything else (a helper tool failed, bad input).
    #[error("{0}")]
    Other(String),
}

impl TestImageError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> TestImageError {
        let what = what.into();
        move |source| TestImageError::Io { what, source }
    }
}
