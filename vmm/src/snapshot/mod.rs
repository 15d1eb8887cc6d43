//! Snapshots of a running VM (`run --snapshot-to DIR`) and VMs restored
//! from them (`minivm restore DIR`).
//!
//! A snapshot is a directory of two or three files:
//! - `memory`: guest RAM, its regions back to back (`boot::layout::ram_ranges`
//!   order), sparse where pages are zero. A restored VM maps it
//!   `MAP_PRIVATE`: pages load on first touch, are shared in the page cache
//!   by every VM restored from it, and writes stay private.
//! - `state`: the line `minivm-snapshot FORMAT`, the line `sha256:HEX` (of
//!   what follows), then JSON: a [`Header`] that must match the restoring
//!   host, and the VM's state (each vCPU's, the VM's own, the devices').
//! - `disk`: the root disk as the guest saw it at the snapshot point (a
//!   reflink or sparse copy of the image with the VM's writes on top), when
//!   the VM had one. A restored VM reads it through a private copy-on-write
//!   layer, so the snapshot never changes and restored VMs never see each
//!   other's writes.
//!
//! With a root image, the saved guest is minivm's agent (`crate::agent`)
//! waiting for its job: `minivm restore DIR -- CMD` sends it on the
//! agent's control port. The snapshot records the image's own process for
//! a restore without `-- CMD`.
//!
//! It is written into a temporary directory beside DIR and renamed into
//! place, so a kill -9 leaves no half snapshot. Saved devices: the serial
//! port, virtio-rng, virtio-blk and the agent's virtio-console; virtio-fs
//! and virtio-net are refused before the VM starts (`spec.rs`).

mod devices;
mod state;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _, GuestMemoryRegion, MemoryRegionAddress};

pub use devices::{restore_devices, DeviceStates};
pub use state::{VcpuState, VmState};

use crate::io_reason::io_reason;
use ::devices::virtio::block::backend::Backend;
use boot::GuestMemory;
use imagefs::process::ImageProcess;

/// Version of the snapshot format; bumped whenever what is saved changes.
pub const FORMAT: u32 = 2;
const MAGIC: &str = "minivm-snapshot";
const STATE_FILE: &str = "state";
const MEMORY_FILE: &str = "memory";
/// The saved root disk in a snapshot directory.
pub const DISK_FILE: &str = "disk";
const PAGE: usize = 4096;

/// Why a snapshot could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing a snapshot file failed.
    #[error("snapshot {}: {}", .path.display(), io_reason(.source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The directory to write exists already.
    #[error("snapshot {}: already exists (remove it first)", .0.display())]
    Exists(PathBuf),
    /// The state file is not a minivm snapshot, or is damaged.
    #[error("snapshot {}: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// The snapshot was made by another minivm, host or CPU.
    #[error("snapshot {}: made {what} {saved:?}, this is {here:?}", .path.display())]
    Mismatch {
        path: PathBuf,
        what: &'static str,
        saved: String,
        here: String,
    },
    /// A KVM state ioctl failed.
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// KVM took only part of the saved MSRs.
    #[error("KVM refused to restore MSR {index:#x}")]
    Msr { index: u32 },
    /// Saved state that KVM's wrappers cannot hold.
    #[error("invalid saved state: {what}")]
    Invalid { what: String },
    /// The state could not be encoded or decoded.
    #[error("snapshot state: {0}")]
    Json(#[from] serde_json::Error),
    /// The UART's saved state was refused.
    #[error("snapshot: serial port state: {0}")]
    Serial(String),
    /// A virtio device's state cannot be saved, or was refused on restore.
    #[error("snapshot: {0}")]
    Device(String),
    /// Guest memory could not be read, written or mapped.
    #[error("snapshot: guest memory: {0}")]
    Memory(String),
}

/// What a snapshot must match on the host that restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The minivm version that wrote it.
    pub minivm: String,
    /// The host kernel release (`uname -r`): KVM's state formats are its.
    pub host_kernel: String,
    /// CPUID vendor string.
    pub cpu_vendor: String,
    /// Whether /dev/kvm was kvm-pvm's.
    pub pvm: bool,
    /// The vCPUs' TSC frequency, kHz (checked once a vCPU exists).
    pub tsc_khz: u32,
}

impl Header {
    /// This host's.
    pub fn here(pvm: bool, tsc_khz: u32) -> Header {
        Header {
            minivm: env!("CARGO_PKG_VERSION").to_string(),
            host_kernel: host_kernel(),
            cpu_vendor: cpu_vendor(),
            pvm,
            tsc_khz,
        }
    }

    fn check(&self, here: &Header, path: &Path) -> Result<(), SnapshotError> {
        let pairs = [
            ("by minivm", &self.minivm, &here.minivm),
            ("on host kernel", &self.host_kernel, &here.host_kernel),
            ("on a CPU by", &self.cpu_vendor, &here.cpu_vendor),
        ];
        for (what, saved, now) in pairs {
            if saved != now {
                return Err(SnapshotError::Mismatch {
                    path: path.to_path_buf(),
                    what,
                    saved: saved.clone(),
                    here: now.clone(),
                });
            }
        }
        if self.pvm != here.pvm {
            return Err(SnapshotError::Mismatch {
                path: path.to_path_buf(),
                what: "with kvm-pvm",
                saved: self.pvm.to_string(),
                here: here.pvm.to_string(),
            });
        }
        Ok(())
    }
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn cpu_vendor() -> String {
    let r = std::arch::x86_64::__cpuid(0);
    let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Everything a snapshot holds besides guest memory.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    /// What the restoring host must match.
    pub header: Header,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// Whether the VM has a virtio-rng (the restored VM is set up alike).
    pub rng: bool,
    /// Each vCPU's state, by id.
    pub vcpus: Vec<VcpuState>,
    /// The VM's in-kernel devices and clock.
    pub vm: VmState,
    /// The devices.
    pub devices: DeviceStates,
    /// The root disk (the `disk` file), if the VM had one.
    pub disk: Option<DiskRecord>,
    /// The guest agent waiting for a job, if the VM has one.
    pub agent: Option<AgentRecord>,
}

/// The root disk saved beside the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskRecord {
    /// The VM had it read-only.
    pub read_only: bool,
    /// Its size in bytes.
    pub size: u64,
}

/// The guest agent of a snapshot, waiting for its job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The image's process: what runs when `restore` gets no `-- CMD`.
    pub process: ImageProcess,
}

/// What a snapshot saves besides the KVM state: the devices' states, the
/// disk's storage, and what the restoring minivm must set up alike.
pub struct SaveParts<'a> {
    /// The devices' states.
    pub devices: DeviceStates,
    /// The VM has a virtio-rng.
    pub rng: bool,
    /// The root disk's storage and whether it is read-only.
    pub disk: Option<(&'a Backend, bool)>,
    /// The agent, when it waits for a job.
    pub agent: Option<AgentRecord>,
}
impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("header", &self.header)
            .field("mem_size", &self.mem_size)
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

/// A snapshot read back, with its memory file open.
#[derive(Debug)]
pub struct Loaded {
    /// The state.
    pub snapshot: Snapshot,
    /// The `memory` file, to map.
    pub memory: File,
    /// Where it was read from.
    pub dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Saves the state of stopped vCPUs and of the VM, then writes the snapshot
/// with guest memory `mem` to `dir` (atomically: all of it or nothing).
pub fn save(
    dir: &Path,
    kvm: &Kvm,
    vm: &VmFd,
    vcpus: &[&VcpuFd],
    mem: &GuestMemory,
    parts: SaveParts<'_>,
    pvm: bool,
) -> Result<(), SnapshotError> {
    if dir.exists() {
        return Err(SnapshotError::Exists(dir.to_path_buf()));
    }
    // Devices first (one may still raise an interrupt), then vCPUs, then the VM.
    let vcpu_states = vcpus
        .iter()
        .map(|fd| VcpuState::save(kvm, fd))
        .collect::<Result<Vec<_>, _>>()?;
    let tsc_khz = match vcpus.first() {
        Some(fd) => fd.get_tsc_khz().map_err(|source| SnapshotError::Kvm {
            what: "get TSC frequency",
            source,
        })?,
        None => 0,
    };
    let mut snapshot = Snapshot {
        header: Header::here(pvm, tsc_khz),
        mem_size: mem.iter().map(|r| r.len()).sum(),
        rng: parts.rng,
        vcpus: vcpu_states,
        vm: VmState::save(vm)?,
        devices: parts.devices,
        disk: None,
        agent: parts.agent,
    };
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let written = save_disk(&tmp, parts.disk)
        .map(|disk| snapshot.disk = disk)
        .and_then(|()| write_files(&tmp, &snapshot, mem))
        .and_then(|()| {
            std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
            if let Some(parent) = dir.parent() {
                let _ = File::open(parent).and_then(|d| d.sync_all());
            }
            Ok(())
        });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// Copies the disk as the guest sees it into `tmp`: the image (a reflink
/// where the filesystem has them, else its data regions) with this VM's
/// private changes on top.
fn save_disk(
    tmp: &Path,
    disk: Option<(&Backend, bool)>,
) -> Result<Option<DiskRecord>, SnapshotError> {
    let Some((backend, read_only)) = disk else {
        return Ok(None);
    };
    let path = tmp.join(DISK_FILE);
    let dst = File::create(&path).map_err(io_err(&path))?;
    let (base, overlay) = match backend {
        Backend::Raw(f) => (f, None),
        Backend::Overlay(o) => (o.base(), Some(o)),
    };
    imagefs::sparse::clone_or_copy(base, &dst).map_err(io_err(&path))?;
    if let Some(o) = overlay {
        o.write_changes_onto(&dst).map_err(io_err(&path))?;
    }
    dst.sync_all().map_err(io_err(&path))?;
    let size = dst.metadata().map_err(io_err(&path))?.len();
    Ok(Some(DiskRecord { read_only, size }))
}

fn write_files(tmp: &Path, snapshot: &Snapshot, mem: &GuestMemory) -> Result<(), SnapshotError> {
    let path = tmp.join(MEMORY_FILE);
    let file = File::create(&path).map_err(io_err(&path))?;
    let mut offset = 0u64;
    let mut page = vec![0u8; PAGE];
    for region in mem.iter() {
        file.set_len(offset + region.len()).map_err(io_err(&path))?;
        let mut at = 0u64;
        while at < region.len() {
            let n = PAGE.min((region.len() - at) as usize);
            region
                .read_slice(&mut page[..n], MemoryRegionAddress(at))
                .map_err(|e| SnapshotError::Memory(e.to_string()))?;
            // Zero pages stay holes in the file.
            if page[..n].iter().any(|&b| b != 0) {
                file.write_all_at(&page[..n], offset + at)
                    .map_err(io_err(&path))?;
            }
            at += n as u64;
        }
        offset += region.len();
    }
    file.sync_all().map_err(io_err(&path))?;

    let path = tmp.join(STATE_FILE);
    let body = serde_json::to_vec(snapshot)?;
    let digest = imagefs::digest::Digest::of_bytes(&body);
    let mut f = File::create(&path).map_err(io_err(&path))?;
    write!(f, "{MAGIC} {FORMAT}\nsha256:{}\n", digest.hex()).map_err(io_err(&path))?;
    f.write_all(&body).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))
}

/// Reads and checks the snapshot in `dir`: format, checksum, that this
/// host can run it, and the memory file's size.
pub fn load(dir: &Path, pvm: bool) -> Result<Loaded, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let corrupt = |reason: &str| SnapshotError::Corrupt {
        path: path.clone(),
        reason: reason.to_string(),
    };
    let mut raw = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(io_err(&path))?;
    let mut lines = raw.splitn(3, |&b| b == b'\n');
    let (first, second, body) = match (lines.next(), lines.next(), lines.next()) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return Err(corrupt("not a minivm snapshot (truncated)")),
    };
    let first = String::from_utf8_lossy(first);
    let Some(format) = first.strip_prefix(&format!("{MAGIC} ")) else {
        return Err(corrupt("not a minivm snapshot"));
    };
    if format != FORMAT.to_string() {
        return Err(SnapshotError::Mismatch {
            path: path.clone(),
            what: "in format",
            saved: format.to_string(),
            here: FORMAT.to_string(),
        });
    }
    let want = String::from_utf8_lossy(second);
    let got = format!("sha256:{}", imagefs::digest::Digest::of_bytes(body).hex());
    if want != got {
        return Err(corrupt(
            "its checksum does not match (damaged or truncated)",
        ));
    }
    let snapshot: Snapshot = serde_json::from_slice(body)?;
    snapshot.header.check(&Header::here(pvm, 0), &path)?;
    let mem_path = dir.join(MEMORY_FILE);
    let memory = File::open(&mem_path).map_err(io_err(&mem_path))?;
    let len = memory.metadata().map_err(io_err(&mem_path))?.len();
    if len != snapshot.mem_size {
        return Err(SnapshotError::Corrupt {
            path: mem_path,
            reason: format!("{len} bytes, the state says {}", snapshot.mem_size),
        });
    }
    if let Some(d) = &snapshot.disk {
        let path = dir.join(DISK_FILE);
        let len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
        if len != d.size {
            return Err(SnapshotError::Corrupt {
                path,
                reason: format!("{len} bytes, the state says {}", d.size),
            });
        }
    }
    Ok(Loaded {
        snapshot,
        memory,
        dir: dir.to_path_buf(),
    })
}

/// Gives restored vCPU `fd` the snapshot's TSC frequency if it differs
/// (only possible upwards, or with TSC scaling).
pub fn match_tsc(loaded: &Loaded, fd: &VcpuFd) -> Result<(), SnapshotError> {
    let saved = loaded.snapshot.header.tsc_khz;
    let here = fd.get_tsc_khz().map_err(|source| SnapshotError::Kvm {
        what: "get TSC frequency",
        source,
    })?;
    if here == saved {
        return Ok(());
    }
    fd.set_tsc_khz(saved).map_err(|_| SnapshotError::Mismatch {
        path: loaded.dir.clone(),
        what: "with a TSC of (kHz), which KVM cannot scale to here",
        saved: saved.to_string(),
        here: here.to_string(),
    })
}

/// Guest memory mapped privately from the snapshot's memory file.
pub fn map_memory(loaded: &Loaded) -> Result<GuestMemory, SnapshotError> {
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::{FileOffset, GuestRegionMmap};
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in boot::layout::ram_ranges(loaded.snapshot.mem_size) {
        let file = loaded
            .memory
            .try_clone()
            .map_err(|e| SnapshotError::Memory(e.to_string()))?;
        let region = MmapRegionBuilder::new(len as usize)
            .with_file_offset(FileOffset::new(file, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE)
            .build()
            .map_err(|e| SnapshotError::Memory(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| SnapshotError::Memory(format!("region at {start:#x}")))?;
        regions.push(region);
        offset += len;
    }
    GuestMemory::from_regions(regions).map_err(|e| SnapshotError::Memory(e.to_string()))
}
