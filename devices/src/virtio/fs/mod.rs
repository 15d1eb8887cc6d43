//! virtio-fs with an in-process FUSE server (fuse-backend-rs 0.14, no DAX).
//!
//! [`Fs`] is the virtio device: queue 0 is the high-priority queue (FORGET,
//! INTERRUPT), queue 1 the single request queue. Each descriptor chain is one
//! FUSE request that [`fuse_backend_rs::api::server::Server`] decodes and runs
//! against an [`Arc<Vfs>`]; requests are served on a worker thread of the
//! device (see `worker.rs`) so a slow host file system never stalls the VMM's
//! event loop. The worker waits on the queues' doorbells itself (KVM's
//! ioeventfds), as virtiofsd's queue threads do: a request costs no event
//! loop wake-up. [`passthrough()`] and [`disk_cap`] build that `Vfs` for one host
//! directory, wrapped in [`GuardFs`] which adds read-only mode, the size cap
//! and the containment checks below. [`overlay`] serves an OCI image from its
//! unpacked layers the same way, with a per-VM upper directory.
//!
//! # Containment: how the guest is kept inside the shared directory
//!
//! Checked against the fuse-backend-rs 0.14.0 sources (`passthrough/`,
//! `api/vfs/`, `api/server/`):
//!
//! * **Inodes are fds, not paths.** Every inode the guest holds is an
//!   `O_PATH | O_NOFOLLOW` fd, obtained with `openat(parent_fd, name)` on a
//!   single path component; the root is opened once at setup (we canonicalize
//!   the path first so the root itself is never a symlink). Nothing is ever
//!   resolved by path from `/`, and the guest cannot name a host path.
//! * **Names.** The Vfs rejects `/`, `.` and `..` in every creating or
//!   removing op (`validate_path_component`). LOOKUP allows `.`/`..` upstream
//!   (for NFS export, which we do not offer); PassthroughFs only maps `..` at
//!   its root inode to `.`. [`GuardFs`] is stricter, like virtiofsd: LOOKUP of
//!   `""`, `.`, `..`, or any name containing `/` fails with EINVAL at every
//!   inode, so `..` can never climb, not even from a directory that a host
//!   process moved out of the share.
//! * **Symlinks are data.** LOOKUP opens the final component with `O_NOFOLLOW`,
//!   so a symlink yields an inode for the link itself; READLINK returns its
//!   target bytes with `readlinkat(fd, "")`, and the *guest* kernel resolves
//!   them in the guest's namespace (`/etc/passwd` means the guest's). Using a
//!   symlink inode as a directory fails (`openat` on a non-directory fd:
//!   ENOTDIR). OPEN refuses anything but regular files and directories
//!   (`is_safe_inode`, EBADF), so a symlink or device node is never opened.
//!   CREATE uses `O_CREAT | O_EXCL` (does not follow) and falls back to the
//!   fd-based open above. Path-based xattr calls and `fchmodat`/`utimensat`
//!   go through `/proc/self/fd/N`, which lands on the fd's object itself (a
//!   magic link is not followed a second time).
//! * **Swaps between lookup and open** cannot redirect anything: OPEN reopens
//!   the inode's own `O_PATH` fd through `/proc/self/fd/N`, so a name that was
//!   renamed or replaced by a symlink after LOOKUP is never re-resolved.
//! * **Hard links and renames** take both ends from inodes the guest already
//!   holds (`linkat(fd, "", AT_EMPTY_PATH)`, `renameat2` between two directory
//!   fds), so they cannot reach a file outside the share. A hard link that the
//!   *host* placed inside the share does expose that file (host's choice).
//! * **File handles are off**: `inode_file_handles = false`, so
//!   `name_to_handle_at`/`open_by_handle_at` are never called and no FUSE
//!   request carries a host handle. Unknown node ids fail (EBADF / ENOENT).
//! * **Device nodes**: [`GuardFs`] refuses MKNOD of block and character
//!   devices (EPERM), except the 0:0 character device that overlayfs uses as
//!   a whiteout; FIFOs and sockets are allowed (useless to the host).
//! * **Resource bounds**: message length is capped by the server (1 MiB + 4
//!   KiB), READ/READDIR by the guest's own buffers, and [`GuardFs`] clamps
//!   GETXATTR/LISTXATTR sizes to 64 KiB (upstream would allocate what the
//!   guest asks for, up to 4 GiB). Each inode the guest looked up and did
//!   not FORGET keeps one host fd open: past a budget (`fdbudget.rs`: the
//!   soft `RLIMIT_NOFILE` less a reserve for the rest of minivm) requests
//!   that would open another get ENFILE (virtiofsd's CVE-2020-10717 class).
//!
//! Known gaps (not fixable in a wrapper):
//! * If a *host* process moves a directory out of the share while the guest
//!   holds it, the guest keeps reaching that tree through its fd (the `..`
//!   refusal only stops climbing further).
//! * A guest running as root on a root VMM can create setuid-root
//!   executables and set `security.capability` on host files: keep shares on
//!   a `nosuid` mount, or run the VMM unprivileged.
//! * The worker thread runs under its own seccomp filter (`sandbox`), but
//!   not yet in a mount namespace of its own (virtiofsd's pivot_root).
//!
//! PassthroughFs needs a umask of 0 (it applies the guest's own), but sets it
//! process-wide in `import()`; we import on a helper thread and serve on a
//! worker thread that both `unshare(CLONE_FS)`, so the VMM keeps its umask.

mod cap;
mod charge;
mod error;
mod fdbudget;
mod guard;
mod image;
mod layered;
mod passthrough;
mod stats;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::Vfs;
use sandbox::ThreadFilter;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use self::cap::{disk_usage, SizeCap};
pub use self::error::FsError;
pub use self::fdbudget::raise_fd_limit;
pub use self::guard::{GuardFs, Policy};
pub use self::image::{layered_fs, overlay};
pub use self::layered::LayeredFs;
pub use self::passthrough::{disk_cap, mount_vfs, passthrough};
pub use self::stats::{opcode_name, FsStats, OpStats};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use self::worker::drain as drain_queue;
pub use self::worker::FuseServer;
use self::worker::{Session, Worker};
use super::{ActivateError, Interrupt, VirtioConfig, VirtioDevice};
use crate::GuestMemory;

/// Size of each queue (virtiofsd uses the same).
pub const QUEUE_SIZE: u16 = 1024;
/// Request queues besides the high-priority queue.
const NUM_REQUEST_QUEUES: u32 = 1;
/// Longest tag `struct virtio_fs_config` can hold.
pub const TAG_MAX_LEN: usize = 36;
/// `sizeof(struct virtio_fs_config)`: `u8 tag[36]; le32 num_request_queues`.
const CONFIG_LEN: usize = TAG_MAX_LEN + 4;

/// A virtio-fs device serving one [`Vfs`] under one tag.
pub struct Fs {
    tag: String,
    server: Arc<FuseServer>,
    stats: Arc<FsStats>,
    virtio: VirtioConfig,
    /// One eventfd per queue, KVM's ioeventfds for the queues: the guest's
    /// notifications wake the worker without passing the event loop.
    doorbells: Vec<EventFd>,
    worker: Worker,
}

impl Fs {
    /// Creates a device exporting `vfs` under `tag` (what the guest mounts:
    /// `mount -t virtiofs TAG /mnt`, or `root=TAG rootfstype=virtiofs`).
    ///
    /// The tag must be 1 to 36 bytes without NUL. The device's server
    /// thread starts here and confines itself with `filter`.
    pub fn new(tag: &str, vfs: Arc<Vfs>, filter: ThreadFilter) -> Result<Fs, FsError> {
        if tag.is_empty() || tag.len() > TAG_MAX_LEN {
            return Err(FsError::TagLength(tag.to_string()));
        }
        if tag.contains('\0') {
            return Err(FsError::TagNul(tag.to_string()));
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_MAX_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        let doorbells = (0..=NUM_REQUEST_QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(FsError::Worker)?;
        let worker = Worker::spawn(tag, vfs.clone(), filter, &doorbells)?;
        Ok(Fs {
            tag: tag.to_string(),
            server: Arc::new(Server::new(vfs)),
            stats: Arc::new(FsStats::default()),
            // EVENT_IDX is honoured through virtio-queue's needs_notification;
            // indirect chains are walked by virtio-queue's descriptor iterator.
            // Both config fields are read-only for the driver (virtio 1.2, 5.11.4).
            virtio: VirtioConfig::new(
                "virtio-fs",
                VIRTIO_ID_FS,
                vec![QUEUE_SIZE; 1 + NUM_REQUEST_QUEUES as usize],
                (1u64 << VIRTIO_F_VERSION_1)
                    | (1u64 << VIRTIO_RING_F_EVENT_IDX)
                    | (1u64 << VIRTIO_RING_F_INDIRECT_DESC),
                config.to_vec(),
            ),
            doorbells,
            worker,
        })
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The requests this device served, across resets (`--fs-stats`).
    pub fn stats(&self) -> Arc<FsStats> {
        self.stats.clone()
    }

    /// Features the driver accepted in the last negotiation.
    pub fn acked_features(&self) -> u64 {
        self.virtio.acked_features
    }

    /// Waits until the worker has handled every notification sent so far.
    #[cfg(test)]
    pub(crate) fn wait_idle(&self) {
        self.worker.wait_idle();
    }
}

impl VirtioDevice for Fs {
    fn virtio_config(&self) -> &VirtioConfig {
        &self.virtio
    }

    fn virtio_config_mut(&mut self) -> &mut VirtioConfig {
        &mut self.virtio
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemory>,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.virtio.check_queues(&queues)?;
        self.worker.activate(Session {
            server: self.server.clone(),
            stats: self.stats.clone(),
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        // A QueueNotify the transport saw itself (no ioeventfd): ring the
        // doorbell KVM would have. Before activation the worker ignores it.
        let Some(doorbell) = self.doorbells.get(index) else {
            crate::guest_warn!("virtio-fs: notify of non-existent queue {index}");
            return;
        };
        if let Err(e) = doorbell.write(1) {
            tracing::error!("virtio-fs: ringing queue {index}'s doorbell: {e}");
        }
    }

    fn queue_doorbells(&self) -> Option<Vec<EventFd>> {
        let clones = self.doorbells.iter().map(EventFd::try_clone).collect();
        match clones {
            Ok(c) => Some(c),
            Err(e) => {
                // The transport then watches doorbells of its own and calls
                // process_queue, which rings these.
                tracing::warn!("virtio-fs: doorbells not shared ({e}); notifications go through the event loop");
                None
            }
        }
    }

    fn reset(&mut self) {
        // The worker ends the FUSE session so the next driver can send
        // FUSE_INIT again.
        self.worker.reset();
        self.virtio.acked_features = 0;
    }
}
