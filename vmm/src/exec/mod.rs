//! More processes in a running VM (`minivm exec`): the frames (shared with
//! the guest agent, which defines them), minivm's relay between the exec
//! socket and the agent's exec port, and the `minivm exec` client.

pub mod client;
#[path = "../../../agent/src/frame.rs"]
pub mod frame;
pub mod relay;
