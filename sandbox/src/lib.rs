//! minivm's confinement of itself. The guest and the image are untrusted, so
//! every thread of the VMM runs under a seccomp filter that allows only the
//! system calls that kind of thread makes ([`seccomp`]); a denied call ends
//! the process with a line naming the call and the thread. With `--jail`
//! the process first confines itself in namespaces with dropped privileges
//! ([`jail`]).

pub mod jail;
pub mod seccomp;

pub use seccomp::{
    Denied, Error, MainNeeds, Policy, ThreadFilter, ThreadKind, DENIED_EXIT_STATUS, HOST_SIGNALS,
};
/// A compiled filter, as [`ThreadFilter::programs`] hands it out.
pub use seccompiler::BpfProgram;
