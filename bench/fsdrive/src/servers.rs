//! The two file servers the driver plays requests to, behind one trait:
//! minivm's virtio-fs device in this process (its worker thread serves the
//! queues, as in a VM), and virtiofsd in its own process, connected over
//! vhost-user the way QEMU connects it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::fs::Fs;
use devices::virtio::{Interrupt, VirtioDevice};
use devices::GuestMemory;
use sandbox::seccomp::ThreadFilter;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemory as _, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::ring::{Ring, QUEUE_SIZE};
use crate::DriveError;

/// `VIRTIO_F_VERSION_1`.
const VERSION_1: u64 = 1 << 32;
/// The tag of minivm's device; its worker thread is `virtio-fs-<tag>`.
const TAG: &str = "fsdrive";

/// A file server with its queues set up, waiting for requests.
pub trait Server {
    /// Tells the server that queue `index` has a new chain (the guest's
    /// QueueNotify write).
    fn kick(&mut self, index: usize) -> Result<(), DriveError>;
    /// Blocks until the server has signalled used buffers since the last
    /// call (the guest's interrupt).
    fn wait(&mut self) -> Result<(), DriveError>;
    /// Host CPU time the server has used so far (user + system).
    fn cpu(&self) -> Result<Duration, DriveError>;
}

/// minivm's virtio-fs device sharing one directory, activated with the
/// driver's queues.
pub struct Minivm {
    _fs: Fs,
    /// The queues' doorbells, which KVM's ioeventfds would ring.
    doorbells: Vec<EventFd>,
    irq: EventFd,
    worker_tid: u32,
}

impl Minivm {
    /// Starts a device sharing `dir` (as `--share DIR:TAG[:ro]` does) and
    /// activates it with `rings` over `mem`.
    pub fn start(
        dir: &Path,
        read_only: bool,
        mem: &Arc<GuestMemory>,
        rings: &[Ring],
        filter: ThreadFilter,
        cpu: Option<usize>,
    ) -> Result<Minivm, DriveError> {
        let fs_err = |e: devices::virtio::fs::FsError| DriveError::Minivm(e.to_string());
        let vfs = devices::virtio::fs::passthrough(dir, read_only).map_err(fs_err)?;
        let mut fs = Fs::new(TAG, vfs, filter).map_err(fs_err)?;
        let irq = EventFd::new(0).map_err(|e| DriveError::io("eventfd", e))?;
        let line = irq.try_clone().map_err(|e| DriveError::io("eventfd", e))?;
        fs.activate(
            mem.clone(),
            rings.iter().map(Ring::device_queue).collect(),
            Arc::new(Interrupt::new(line)),
        )
        .map_err(|e| DriveError::Minivm(e.to_string()))?;
        let worker_tid = worker_thread()?;
        if let Some(cpu) = cpu {
            pin(worker_tid as i32, cpu)?;
        }
        let doorbells = fs
            .queue_doorbells()
            .ok_or_else(|| DriveError::Minivm("the device has no doorbells of its own".into()))?;
        Ok(Minivm {
            _fs: fs,
            doorbells,
            irq,
            worker_tid,
        })
    }
}

impl Server for Minivm {
    fn kick(&mut self, index: usize) -> Result<(), DriveError> {
        self.doorbells[index]
            .write(1)
            .map_err(|e| DriveError::io("doorbell eventfd", e))
    }

    fn wait(&mut self) -> Result<(), DriveError> {
        wait_readable(&self.irq, || None)
    }

    fn cpu(&self) -> Result<Duration, DriveError> {
        let pid = std::process::id();
        cpu_of(&format!("/proc/{pid}/task/{}/stat", self.worker_tid))
    }
}

/// The device worker's thread id: the one thread named after [`TAG`]
/// (a dropped device's worker is joined before the next starts).
fn worker_thread() -> Result<u32, DriveError> {
    let comm: String = format!("virtio-fs-{TAG}").chars().take(15).collect();
    let mut found = Vec::new();
    let tasks =
        std::fs::read_dir("/proc/self/task").map_err(|e| DriveError::io("/proc/self/task", e))?;
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if name.trim_end() == comm {
            if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                found.push(tid);
            }
        }
    }
    match found[..] {
        [tid] => Ok(tid),
        _ => Err(DriveError::Minivm(format!(
            "expected one thread named {comm}, found {}",
            found.len()
        ))),
    }
}

/// virtiofsd serving one directory, its queues set up over vhost-user.
pub struct Virtiofsd {
    child: Child,
    _frontend: Frontend,
    kicks: Vec<EventFd>,
    call: EventFd,
    socket: PathBuf,
}

impl Virtiofsd {
    /// Starts `binary` sharing `dir` with the options bench/fs.sh gives it
    /// (the same policy as minivm's server: cache=auto, 5 s timeouts,
    /// xattrs), and hands it `mem` (shared through `memfd`) and `rings`.
    pub fn start(
        binary: &Path,
        dir: &Path,
        mem: &GuestMemory,
        memfd: &File,
        rings: &[Ring],
        work: &Path,
        cpu: Option<usize>,
    ) -> Result<Virtiofsd, DriveError> {
        let socket = work.join("virtiofsd.sock");
        let _ = std::fs::remove_file(&socket);
        let log = File::create(work.join("virtiofsd.log"))
            .map_err(|e| DriveError::io("virtiofsd.log", e))?;
        let mut command = Command::new(binary);
        if help_mentions(binary, "--shared-dir") {
            // The Rust virtiofsd.
            command
                .arg(format!("--socket-path={}", socket.display()))
                .arg(format!("--shared-dir={}", dir.display()))
                .args(["--cache=auto", "--xattr"]);
        } else {
            command
                .arg(format!("--socket-path={}", socket.display()))
                .args(["-o", &format!("source={}", dir.display())])
                .args(["-o", "cache=auto", "-o", "timeout=5", "-o", "xattr"]);
        }
        if let Some(cpu) = cpu {
            // SAFETY: the closure only calls sched_setaffinity, which is
            // async-signal-safe, between fork and exec.
            unsafe {
                command.pre_exec(move || pin(0, cpu).map_err(|_| std::io::Error::last_os_error()));
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| DriveError::io(&binary.display().to_string(), e))?;
        let mut server = Virtiofsd {
            child,
            _frontend: wait_for_socket(&socket)?,
            kicks: Vec::new(),
            call: EventFd::new(0).map_err(|e| DriveError::io("eventfd", e))?,
            socket,
        };
        server.set_up(mem, memfd, rings)?;
        Ok(server)
    }

    /// The vhost-user handshake QEMU's vhost-user-fs-device makes, in its order.
    fn set_up(
        &mut self,
        mem: &GuestMemory,
        memfd: &File,
        rings: &[Ring],
    ) -> Result<(), DriveError> {
        let vu =
            |what: &'static str| move |e: vhost::Error| DriveError::VhostUser(what, e.to_string());
        let fe = &mut self._frontend;
        fe.set_owner().map_err(vu("SET_OWNER"))?;
        let offered = fe.get_features().map_err(vu("GET_FEATURES"))?;
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & VERSION_1 == 0 || offered & protocol == 0 {
            return Err(DriveError::VhostUser(
                "GET_FEATURES",
                format!("offers {offered:#x}"),
            ));
        }
        fe.get_protocol_features()
            .map_err(vu("GET_PROTOCOL_FEATURES"))?;
        fe.set_protocol_features(VhostUserProtocolFeatures::empty())
            .map_err(vu("SET_PROTOCOL_FEATURES"))?;
        fe.set_features(VERSION_1 | protocol)
            .map_err(vu("SET_FEATURES"))?;
        let region = mem.iter().next().expect("guest memory has one region");
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: memfd.as_raw_fd(),
        }])
        .map_err(vu("SET_MEM_TABLE"))?;
        let host = |a: u64| -> Result<u64, DriveError> {
            mem.get_host_address(GuestAddress(a))
                .map(|p| p as u64)
                .map_err(|e| DriveError::Memory(format!("{a:#x}: {e}")))
        };
        for (i, ring) in rings.iter().enumerate() {
            let (desc, avail, used) = ring.areas();
            let kick = EventFd::new(0).map_err(|e| DriveError::io("eventfd", e))?;
            fe.set_vring_num(i, QUEUE_SIZE)
                .map_err(vu("SET_VRING_NUM"))?;
            fe.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: QUEUE_SIZE,
                    queue_size: QUEUE_SIZE,
                    flags: 0,
                    desc_table_addr: host(desc)?,
                    used_ring_addr: host(used)?,
                    avail_ring_addr: host(avail)?,
                    log_addr: None,
                },
            )
            .map_err(vu("SET_VRING_ADDR"))?;
            fe.set_vring_base(i, 0).map_err(vu("SET_VRING_BASE"))?;
            fe.set_vring_call(i, &self.call)
                .map_err(vu("SET_VRING_CALL"))?;
            fe.set_vring_kick(i, &kick).map_err(vu("SET_VRING_KICK"))?;
            fe.set_vring_enable(i, true)
                .map_err(vu("SET_VRING_ENABLE"))?;
            self.kicks.push(kick);
        }
        Ok(())
    }

    /// The daemon's process and the children it serves from (its namespace
    /// sandbox forks).
    fn processes(&self) -> Vec<u32> {
        let pid = self.child.id();
        let mut all = vec![pid];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        all
    }
}

impl Server for Virtiofsd {
    fn kick(&mut self, index: usize) -> Result<(), DriveError> {
        self.kicks[index]
            .write(1)
            .map_err(|e| DriveError::io("kick eventfd", e))
    }

    fn wait(&mut self) -> Result<(), DriveError> {
        let child = &mut self.child;
        wait_readable(&self.call, || {
            child.try_wait().ok().flatten().map(|status| {
                DriveError::VhostUser("serving", format!("virtiofsd exited: {status}"))
            })
        })
    }

    fn cpu(&self) -> Result<Duration, DriveError> {
        let mut total = Duration::ZERO;
        for pid in self.processes() {
            total += cpu_of(&format!("/proc/{pid}/stat"))?;
        }
        Ok(total)
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        // Its sandboxed child ends with it (it watches the parent).
        for pid in self.processes().into_iter().rev() {
            // SAFETY: kill has no memory effects; the pids are this daemon's.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Pins thread `tid` (0: the caller) to `cpu`.
pub fn pin(tid: i32, cpu: usize) -> Result<(), DriveError> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above, `cpu` is checked against the set's size by the caller.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(DriveError::io(
            &format!("sched_setaffinity({tid}, cpu {cpu})"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Waits the same way for either server: poll (5 s at a time, asking
/// `gone` whether the server died), then read the eventfd.
fn wait_readable(
    evt: &EventFd,
    mut gone: impl FnMut() -> Option<DriveError>,
) -> Result<(), DriveError> {
    loop {
        let mut pfd = libc::pollfd {
            fd: evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, owned by this frame.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        if n > 0 {
            return evt
                .read()
                .map(drop)
                .map_err(|e| DriveError::io("interrupt eventfd", e));
        }
        if let Some(e) = gone() {
            return Err(e);
        }
    }
}

fn help_mentions(binary: &Path, option: &str) -> bool {
    Command::new(binary)
        .arg("--help")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains(option)
                || String::from_utf8_lossy(&o.stderr).contains(option)
        })
        .unwrap_or(false)
}

fn wait_for_socket(socket: &Path) -> Result<Frontend, DriveError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if socket.exists() {
            if let Ok(fe) = Frontend::connect(socket, 2) {
                return Ok(fe);
            }
        }
        if Instant::now() > deadline {
            return Err(DriveError::VhostUser(
                "connect",
                format!(
                    "no socket at {} after 10 s (see virtiofsd.log beside it)",
                    socket.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// utime + stime of a /proc `stat` file (a process's includes its ended
/// threads).
fn cpu_of(stat: &str) -> Result<Duration, DriveError> {
    let text = std::fs::read_to_string(stat).map_err(|e| DriveError::io(stat, e))?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest = text.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    // `rest` starts at field 3 (state): utime and stime, fields 14 and 15,
    // are its 12th and 13th.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    let (Some(u), Some(s)) = (field(11), field(12)) else {
        return Err(DriveError::Memory(format!("{stat}: unexpected format")));
    };
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos((u + s) * 1_000_000_000 / hz))
}
