//! `containerd-shim-minivm-v2`: a containerd shim (task API v2, as in
//! containerd 1.6 and 1.7) that runs each container as a minivm VM, for
//! `runtime_type = "io.containerd.minivm.v2"`. containerd starts one shim
//! per container; the shim serves the task API over ttrpc and runs
//! `minivm run ROOTFS -- ARGS` (its own guest agent over virtio-fs) when the
//! task starts.

use std::path::Path;
use std::sync::Arc;

use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};

mod spec;
mod task;
mod vm;

/// The runtime name containerd knows this shim by.
const RUNTIME: &str = "io.containerd.minivm.v2";

/// The shim process: started by containerd (`start`), it re-executes
/// itself as the server of the task API (`create_task_service`), and is run
/// again as `delete` to clean up after a server that died.
struct Shim {
    namespace: String,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Shim {
    type T = task::TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Shim {
            namespace: args.namespace.clone(),
            exit: Arc::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = opts.id.clone();
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        // containerd reads it back to reconnect after its own restart.
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // Run in the bundle after the server is gone: stop a VM it left.
        let bundle = std::env::current_dir().map_err(|err| containerd_shim::Error::IoError {
            context: "the bundle (working directory)".into(),
            err,
        })?;
        let pid = kill_leftover_vm(&bundle);
        task::unmount(&bundle);
        Ok(DeleteResponse {
            pid,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(containerd_shim::util::timestamp()?),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        task::TaskService::new(&self.namespace, self.exit.clone(), publisher)
    }
}

/// SIGKILLs the minivm whose pid the bundle records, if that pid is still
/// a minivm; its pid, or 0.
fn kill_leftover_vm(bundle: &Path) -> u32 {
    let Some(pid) = std::fs::read_to_string(bundle.join(vm::PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return 0;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim_end() == "minivm" {
        // SAFETY: kill(2) on a pid just checked to be a minivm.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(bundle.join(vm::PID_FILE));
    pid
}

fn main() {
    containerd_shim::run::<Shim>(RUNTIME, None)
}
