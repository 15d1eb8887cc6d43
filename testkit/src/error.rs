//! Errors of the test kits: writing test images, running the helper tools
//! (skopeo, docker-registry).

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Errors writing test images or running the registry harness.
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
    /// An existing `index.json` is not the JSON of an image index.
    #[error("{}: {reason}", path.display())]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A `docker save` tag that is no Docker reference.
    #[error("tag {tag}: {reason}")]
    BadTag {
        /// The tag as given.
        tag: String,
        /// Why imagefs refuses it.
        reason: String,
    },
    /// A helper tool could not be started.
    #[error("cannot run {tool}: {source} (install the Debian package {package}: scripts/setup-debian.sh)")]
    ToolMissing {
        /// The command.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// A helper tool ran and failed.
    #[error("{what} failed ({status}): {stderr}")]
    ToolFailed {
        /// The command line, shortened.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// What it printed on stderr (or logged).
        stderr: String,
    },
    /// The registry did not answer in time.
    #[error("docker-registry did not answer on port {port}: {log}")]
    RegistryNotReady {
        /// Its port.
        port: u16,
        /// What it logged.
        log: String,
    },
}

impl TestImageError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> TestImageError {
        let what = what.into();
        move |source| TestImageError::Io { what, source }
    }
}
