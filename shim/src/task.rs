//! containerd's task API for one container, served by one VM: create
//! mounts the rootfs containerd prepared and checks the runtime spec, start
//! boots `minivm run ROOTFS -- ARGS`, wait/kill/state/pids follow that
//! process, delete unmounts and reports how it ended. exec adds a process
//! run in the VM by `minivm exec` (through the VM's exec socket), which the
//! same calls with its exec id follow. Exit events go back to containerd
//! through its publisher.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskStart,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Context, ExitSignal, TtrpcContext, TtrpcResult};

use crate::spec;
use crate::vm::{self, StdioPaths, Vm};

/// One of the container's processes: its command (the VM) or an exec.
struct Process {
    stdio: StdioPaths,
    /// The `minivm` arguments, worked out (and checked) at create or exec.
    args: Vec<OsString>,
    vm: Arc<Vm>,
}

impl Process {
    /// A process not started yet, run as `minivm args` with the stdio
    /// containerd named.
    fn new(args: Vec<OsString>, stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Self {
        Process {
            stdio: StdioPaths {
                stdin: stdin.to_string(),
                stdout: stdout.to_string(),
                stderr: stderr.to_string(),
                terminal,
            },
            args,
            vm: Arc::default(),
        }
    }
}

/// The container this shim serves.
struct Container {
    id: String,
    bundle: PathBuf,
    init: Process,
    /// The execs, by exec id.
    execs: HashMap<String, Process>,
}

impl Container {
    /// The process `exec_id` names ("": the container's command).
    fn process(&self, exec_id: &str) -> TtrpcResult<&Process> {
        match exec_id {
            "" => Ok(&self.init),
            id => self
                .execs
                .get(id)
                .ok_or_else(|| error(Code::NOT_FOUND, format!("no process {id}"))),
        }
    }

    /// Refused unless the container's VM runs (an exec needs it).
    fn vm_running(&self) -> TtrpcResult<()> {
        if self.init.vm.pid() == 0 || self.init.vm.exited().is_some() {
            return Err(error(
                Code::FAILED_PRECONDITION,
                "the container's VM is not running",
            ));
        }
        Ok(())
    }

    /// The task id containerd's events give the process.
    fn event_id(&self, exec_id: &str) -> String {
        match exec_id {
            "" => self.id.clone(),
            id => id.to_string(),
        }
    }
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

    /// Runs `f` on the container `id`.
    fn with<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        match self.container.lock().unwrap().as_mut() {
            Some(c) if c.id == id => f(c),
            _ => Err(error(Code::NOT_FOUND, format!("no container {id}"))),
        }
    }

    /// Runs `f` on the container `id` and its process `exec_id`.
    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&Container, &Process) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        self.with(id, |c| f(c, c.process(exec_id)?))
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
            init: Process::new(args, &req.stdin, &req.stdout, &req.stderr, req.terminal),
            execs: HashMap::new(),
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
        let pid = self.with_process(&req.id, &req.exec_id, |c, p| {
            if p.vm.pid() != 0 || p.vm.exited().is_some() {
                return Err(error(Code::FAILED_PRECONDITION, "already started"));
            }
            let is_exec = !req.exec_id.is_empty();
            if is_exec {
                c.vm_running()?;
            }
            let (container_id, id) = (c.id.clone(), c.event_id(&req.exec_id));
            let pid_file = (!is_exec).then_some(vm::PID_FILE);
            vm::start(&p.vm, &c.bundle, &p.args, &p.stdio, pid_file, move |vm| {
                let exit = vm.exited().expect("ended");
                publish(
                    &publisher,
                    &namespace,
                    TaskExit {
                        container_id,
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
        if req.exec_id.is_empty() {
            self.publish(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            });
        } else {
            self.publish(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            });
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        self.with(&req.id, |c| {
            c.vm_running()?;
            if req.exec_id.is_empty() || c.execs.contains_key(&req.exec_id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("the exec id {:?} is taken", req.exec_id),
                ));
            }
            let args = spec::exec_args(&req.spec.value, !req.stdin.is_empty())
                .map_err(|e| error(Code::INVALID_ARGUMENT, e.to_string()))?;
            log::info!("container {} exec {}: minivm {args:?}", c.id, req.exec_id);
            let p = Process::new(args, &req.stdin, &req.stdout, &req.stderr, req.terminal);
            c.execs.insert(req.exec_id.clone(), p);
            Ok(())
        })?;
        self.publish(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(api::Empty::new())
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.with_process(&req.id, &req.exec_id, |c, p| {
            let mut r = api::StateResponse {
                id: c.event_id(&req.exec_id),
                exec_id: req.exec_id.clone(),
                bundle: c.bundle.display().to_string(),
                pid: p.vm.pid(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                ..Default::default()
            };
            r.status = match p.vm.exited() {
                Some(exit) => {
                    r.exit_status = exit.status;
                    r.exited_at = MessageField::some(exit.at);
                    api::Status::STOPPED
                }
                None if p.vm.pid() == 0 => api::Status::CREATED,
                None => api::Status::RUNNING,
            }
            .into();
            Ok(r)
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        // Not under the lock: other RPCs go on while this one waits.
        let vm = self.with_process(&req.id, &req.exec_id, |_, p| Ok(p.vm.clone()))?;
        let exit = vm.wait();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let not_started = self.with_process(&req.id, &req.exec_id, |c, p| {
            if p.vm.pid() == 0 {
                // Nothing runs yet: the process ends as if killed.
                let vm = p.vm.clone();
                return Ok(vm
                    .set_exit(128 + req.signal)
                    .then(|| (vm, c.event_id(&req.exec_id))));
            }
            // minivm passes SIGTERM, SIGINT and SIGHUP on to the command
            // (minivm exec: to its process); SIGKILL ends the VM (the exec's
            // process) at once.
            p.vm.signal(req.signal)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ESRCH) => error(Code::NOT_FOUND, "the process has already ended"),
                    _ => error(Code::INTERNAL, format!("signal {}: {e}", req.signal)),
                })?;
            Ok(None)
        })?;
        if let Some((vm, id)) = not_started {
            let exit = vm.exited().expect("just set");
            self.publish(TaskExit {
                container_id: req.id.clone(),
                id,
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
        self.with_process(&req.id, &req.exec_id, |_, p| {
            if p.vm.pid() != 0 && p.vm.exited().is_none() {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    "the process is still running: kill it first",
                ));
            }
            Ok(())
        })?;
        if !req.exec_id.is_empty() {
            // An exec deleted before it started ends here.
            let p = self.with(&req.id, |c| {
                Ok(c.execs.remove(&req.exec_id).expect("checked"))
            })?;
            p.vm.set_exit(0);
            let exit = p.vm.exited().expect("ended");
            return Ok(api::DeleteResponse {
                pid: p.vm.pid(),
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            });
        }
        let c = self.container.lock().unwrap().take().expect("checked");
        // A container deleted before it started ends here.
        let vm = &c.init.vm;
        vm.set_exit(0);
        let exit = vm.exited().expect("ended");
        unmount(&c.bundle);
        let _ = std::fs::remove_file(c.bundle.join(vm::PID_FILE));
        self.publish(TaskDelete {
            container_id: c.id.clone(),
            id: c.id.clone(),
            pid: vm.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        });
        Ok(api::DeleteResponse {
            pid: vm.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.with(&req.id, |c| {
            let processes = std::iter::once(&c.init)
                .chain(c.execs.values())
                .filter(|p| p.vm.exited().is_none())
                .map(|p| p.vm.pid())
                .filter(|pid| *pid != 0)
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect();
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
        self.with_process(&req.id, &req.exec_id, |_, p| {
            p.vm.resize(req.width, req.height)
                .map_err(|e| error(Code::FAILED_PRECONDITION, e.to_string()))?;
            Ok(api::Empty::new())
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // The stdin copy ends at the FIFO's EOF by itself.
        self.with_process(&req.id, &req.exec_id, |_, _| Ok(api::Empty::new()))
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.with(&req.id, |c| Ok(c.init.vm.pid()))?;
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
