//! The binary's error: what went wrong in which stage of a command. Each
//! stage has its own error type with the cause attached; `main` prints any
//! of them as `minivm: <message>` and exits with status 1 (2 for a wrong
//! command line that clap could not see, [`Error::is_usage`]).

use crate::images::ImageError;
use crate::spec::SpecError;
use crate::upper::UpperError;
use crate::vm::VmError;

/// Everything a minivm command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `run` arguments name a missing or unusable file.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// An image could not be fetched, converted, unpacked or removed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The VM's writable layer could not be set up.
    #[error(transparent)]
    Upper(#[from] UpperError),
    /// The VM could not be built or run.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The command for the guest agent could not be set up.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// `--jail` could not be set up.
    #[error(transparent)]
    Jail(#[from] sandbox::jail::JailError),
    /// `minivm exec` could not start its process.
    #[error(transparent)]
    Exec(#[from] crate::exec::client::ExecError),
    /// The run asks for the agent and for something it excludes.
    #[error("{0}")]
    AgentConflict(&'static str),
}

impl Error {
    /// Whether the command line itself is wrong (exit status 2), not a
    /// file, an image or the host.
    pub fn is_usage(&self) -> bool {
        use crate::target::TargetError;
        matches!(
            self,
            Error::AgentConflict(_)
                | Error::Spec(
                    SpecError::NeedsImage { .. }
                        | SpecError::JailUserLayers { .. }
                        | SpecError::Snapshot(_)
                        | SpecError::Target(
                            TargetError::Ambiguous { .. } | TargetError::Invalid { .. }
                        )
                )
        )
    }
}
