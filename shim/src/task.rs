//! containerd's task API for one container, served by one VM: create
//! mounts the rootfs containerd prepared and checks the runtime spec, start
//! boots `minivm run ROOTFS -- ARGS`, wait/kill/state/pids follow that
//! process, delete unmounts and reports how it ended. Exit events go back
//! to containerd through its publisher.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Context, ExitSignal, TtrpcContext, TtrpcResult};

use crate::spec;
use crate::vm::{self, StdioPaths, Vm};

/// The container this shim serves.
struct Container {
    id: String,
    bundle: PathBuf,
    stdio: StdioPaths,
    /// The `minivm` arguments, worked out (and checked) at create.
    args: Vec<OsString>,
    vm: Arc<Vm>,
}

/// The task service: at most one container (one VM) per shim.
pub struct TaskService {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: Arc<Mutex<RemotePublisher>>,
    container: Arc<Mutex<Option<Container>>>,
}

fn error(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// The rootfs `bundle` gets: containerd's mounts (its snapshotter's
/// overlay) on `bundle/rootfs`, or with none the spec's root directory as
/// it is (`ctr run --rootfs DIR`). Refused when it ends up empty.
fn mount_rootfs(
    bundle: &Path,
    spec: &oci_spec::runtime::Spec,
    req: &api::CreateTaskRequest,
) -> TtrpcResult<PathBuf> {
    let rootfs = match (req.rootfs.is_empty(), spec.root()) {
        (true, Some(root)) => bundle.join(root.path()),
        _ => bundle.join("rootfs"),
    };
    for m in &req.rootfs {
        containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()),
            Some(m.source.as_str()),
            &m.options,
            &rootfs,
        )
        .map_err(|e| {
            unmount(bundle);
            error(
                Code::INTERNAL,
                format!("mount {} on {}: {e}", m.type_, rootfs.display()),
            )
        })?;
    }
    let empty = std::fs::read_dir(&rootfs).map_or(true, |mut d| d.next().is_none());
    if empty {
        unmount(bundle);
        return Err(error(
            Code::FAILED_PRECONDITION,
            format!(
                "the bundle {} has no root file system (no rootfs mounts from containerd \
                 and an empty or missing {})",
                bundle.display(),
                rootfs.display()
            ),
        ));
    }
    Ok(rootfs)
}

/// Undoes [`mount_rootfs`]; nothing to do when nothing is mounted.
pub fn unmount(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    if let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), 0) {
        log::warn!("unmount {}: {e}", rootfs.display());
    }
}

impl TaskService {
    /// The service for the shim that `exit` ends.
    pub fn new(namespace: &str, exit: Arc<ExitSignal>, publisher: RemotePublisher) -> Self {
        TaskService {
            namespace: namespace.to_string(),
            exit,
            publisher: Arc::new(Mutex::new(publisher)),
            container: Arc::default(),
        }
    }

    fn publish(&self, event: impl Event + 'static) {
        publish(&self.publisher, &self.namespace, event);
    }

    /// Runs `f` on the container `id` (the init process only: exec is not
    /// supported).
    fn with<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Container) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        if !exec_id.is_empty() {
            return Err(error(
                Code::NOT_FOUND,
                format!("no process {exec_id} (exec is not supported yet)"),
            ));
        }
        match self.container.lock().unwrap().as_mut() {
            Some(c) if c.id == id => f(c),
            _ => Err(error(Code::NOT_FOUND, format!("no container {id}"))),
        }
    }
}

fn publish(publisher: &Mutex<RemotePublisher>, namespace: &str, event: impl Event + 'static) {
    let topic = event.topic();
    if let Err(e) =
        publisher
            .lock()
            .unwrap()
            .publish(Context::default(), &topic, namespace, Box::new(event))
    {
        log::warn!("publish {topic}: {e}");
    }
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let mut slot = self.container.lock().unwrap();
        if slot.is_some() {
            return Err(error(
                Code::ALREADY_EXISTS,
                "this shim already serves a container (one VM per container)",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = spec::load(&bundle).map_err(|e| error(Code::INVALID_ARGUMENT, e.to_string()))?;
        let rootfs = mount_rootfs(&bundle, &spec, &req)?;
        let host_cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let args =
            spec::minivm_args(&spec, &rootfs, !req.stdin.is_empty(), host_cpus).map_err(|e| {
                unmount(&bundle);
                error(Code::INVALID_ARGUMENT, e.to_string())
            })?;
        log::info!("container {}: minivm {args:?}", req.id);
        *slot = Some(Container {
            id: req.id.clone(),
            bundle,
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            args,
            vm: Arc::default(),
        });
        drop(slot);
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            ..Default::default()
        });
        Ok(api::CreateTaskResponse::default())
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let (publisher, namespace) = (self.publisher.clone(), self.namespace.clone());
        let pid = self.with(&req.id, &req.exec_id, |c| {
            if c.vm.pid() != 0 || c.vm.exited().is_some() {
                return Err(error(Code::FAILED_PRECONDITION, "already started"));
            }
            let id = c.id.clone();
            vm::start(&c.vm, &c.bundle, &c.args, &c.stdio, move |vm| {
                let exit = vm.exited().expect("ended");
                publish(
                    &publisher,
                    &namespace,
                    TaskExit {
                        container_id: id.clone(),
                        id,
                        pid: vm.pid(),
                        exit_status: exit.status,
                        exited_at: MessageField::some(exit.at),
                        ..Default::default()
                    },
                );
            })
            .map_err(|e| error(Code::INTERNAL, e.to_string()))
        })?;
        self.publish(TaskStart {
            container_id: req.id.clone(),
            pid,
            ..Default::default()
        });
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.with(&req.id, &req.exec_id, |c| {
            let mut r = api::StateResponse {
                id: c.id.clone(),
                bundle: c.bundle.display().to_string(),
                pid: c.vm.pid(),
                stdin: c.stdio.stdin.clone(),
                stdout: c.stdio.stdout.clone(),
                stderr: c.stdio.stderr.clone(),
                ..Default::default()
            };
            r.status = match c.vm.exited() {
                Some(exit) => {
                    r.exit_status = exit.status;
                    r.exited_at = MessageField::some(exit.at);
                    api::Status::STOPPED
                }
                None if c.vm.pid() == 0 => api::Status::CREATED,
                None => api::Status::RUNNING,
            }
            .into();
            Ok(r)
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        // Not under the lock: other RPCs go on while this one waits.
        let vm = self.with(&req.id, &req.exec_id, |c| Ok(c.vm.clone()))?;
        let exit = vm.wait();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let not_started = self.with(&req.id, &req.exec_id, |c| {
            if c.vm.pid() == 0 {
                // Nothing runs yet: the task ends as if killed.
                return Ok(c.vm.set_exit(128 + req.signal).then(|| c.vm.clone()));
            }
            c.vm.signal(req.signal)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ESRCH) => error(Code::NOT_FOUND, "the process has already ended"),
                    _ => error(Code::INTERNAL, format!("signal {}: {e}", req.signal)),
                })?;
            Ok(None)
        })?;
        if let Some(vm) = not_started {
            let exit = vm.exited().expect("just set");
            self.publish(TaskExit {
                container_id: req.id.clone(),
                id: req.id.clone(),
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            });
        }
        Ok(api::Empty::new())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.with(&req.id, &req.exec_id, |c| {
            if c.vm.pid() != 0 && c.vm.exited().is_none() {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    "the VM is still running: kill it first",
                ));
            }
            Ok(())
        })?;
        let c = self.container.lock().unwrap().take().expect("checked");
        // A container deleted before it started ends here.
        c.vm.set_exit(0);
        let exit = c.vm.exited().expect("ended");
        unmount(&c.bundle);
        let _ = std::fs::remove_file(c.bundle.join(vm::PID_FILE));
        self.publish(TaskDelete {
            container_id: c.id.clone(),
            id: c.id.clone(),
            pid: c.vm.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        });
        Ok(api::DeleteResponse {
            pid: c.vm.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.with(&req.id, "", |c| {
            let processes = match c.vm.pid() {
                0 => Vec::new(),
                pid => vec![ProcessInfo {
                    pid,
                    ..Default::default()
                }],
            };
            Ok(api::PidsResponse {
                processes,
                ..Default::default()
            })
        })
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        self.with(&req.id, &req.exec_id, |c| {
            c.vm.resize(req.width, req.height)
                .map_err(|e| error(Code::FAILED_PRECONDITION, e.to_string()))?;
            Ok(api::Empty::new())
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // The stdin copy ends at the FIFO's EOF by itself.
        self.with(&req.id, &req.exec_id, |_| Ok(api::Empty::new()))
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.with(&req.id, "", |c| Ok(c.vm.pid()))?;
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // containerd asks once the container is deleted; while one is
        // served, only `now` ends the shim.
        if req.now || self.container.lock().unwrap().is_none() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
