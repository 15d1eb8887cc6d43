//! virtio-blk over a raw disk image.
//!
//! [`Block`] is the device half (features, configuration space, queue
//! servicing); [`request`] parses and executes individual requests.

pub mod backend;
pub mod request;
#[cfg(test)]
pub(crate) mod tests;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::Queue;

use self::backend::{Backend, Overlay};
use self::request::{Disk, ID_BYTES, SECTOR_SIZE, SEG_MAX};
use super::queue::ActiveQueue;
use super::{ActivateError, Interrupt, VirtioConfig, VirtioDevice};
use crate::GuestMemory;

/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// `sizeof(struct virtio_blk_config)`; fields we do not offer read as zero.
const CONFIG_LEN: usize = 96;

/// Why a block device could not be created. The VMM adds the image path.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image size could not be determined.
    #[error("cannot determine the image size: {0}")]
    Size(#[source] std::io::Error),
    /// The image holds less than one 512-byte sector.
    #[error("image is {0} bytes, smaller than one 512-byte sector")]
    TooSmall(u64),
    /// The serial (GET_ID answer) is longer than virtio allows.
    #[error("serial {0:?} is longer than 20 bytes")]
    SerialTooLong(String),
}

/// A virtio-blk device with one request queue, backed by a raw image file.
pub struct Block {
    disk: Disk,
    virtio: VirtioConfig,
    /// The request queue, between activation and reset.
    active: Option<ActiveQueue>,
}

impl Block {
    /// Creates a device for `file` (a regular file or block device).
    ///
    /// Capacity is the image size rounded down to whole sectors; `id` is the
    /// serial the guest reads with GET_ID (at most 20 bytes). A read-only device
    /// offers `VIRTIO_BLK_F_RO` and fails writes with `VIRTIO_BLK_S_IOERR`.
    pub fn new(file: File, read_only: bool, id: &str) -> Result<Block, BlockError> {
        // Seeking to the end also works for block devices, whose metadata length is 0.
        let size = (&file).seek(SeekFrom::End(0)).map_err(BlockError::Size)?;
        Self::with_backend(Backend::Raw(file), size, read_only, id)
    }

    /// Creates a writable device over `base` that never writes to it: writes
    /// go to `upper` (an empty private file, e.g. already unlinked), so many
    /// VMs can share one base image without copying it.
    pub fn new_overlay(base: File, upper: File, id: &str) -> Result<Block, BlockError> {
        let size = (&base).seek(SeekFrom::End(0)).map_err(BlockError::Size)?;
        let overlay = Overlay::new(base, upper, size).map_err(BlockError::Size)?;
        Self::with_backend(Backend::Overlay(overlay), size, false, id)
    }

    fn with_backend(
        backend: Backend,
        size: u64,
        read_only: bool,
        id: &str,
    ) -> Result<Block, BlockError> {
        if id.len() > ID_BYTES {
            return Err(BlockError::SerialTooLong(id.to_string()));
        }
        let mut serial = [0u8; ID_BYTES];
        serial[..id.len()].copy_from_slice(id.as_bytes());
        if size < SECTOR_SIZE {
            return Err(BlockError::TooSmall(size));
        }
        let disk = Disk::new(backend, size / SECTOR_SIZE * SECTOR_SIZE, read_only, serial);

        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX)
            | (1u64 << VIRTIO_BLK_F_BLK_SIZE)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC);
        if read_only {
            avail_features |= 1u64 << VIRTIO_BLK_F_RO;
        }

        // struct virtio_blk_config: capacity @0, seg_max @12, blk_size @20.
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());

        Ok(Block {
            disk,
            virtio: VirtioConfig::new(
                "virtio-blk",
                VIRTIO_ID_BLOCK,
                vec![QUEUE_SIZE],
                avail_features,
                config.to_vec(),
            ),
            active: None,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    /// Features the driver accepted in the last negotiation.
    pub fn acked_features(&self) -> u64 {
        self.virtio.acked_features
    }
}

impl VirtioDevice for Block {
    fn virtio_config(&self) -> &VirtioConfig {
        &self.virtio
    }

    fn virtio_config_mut(&mut self) -> &mut VirtioConfig {
        &mut self.virtio
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemory>,
        mut queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.virtio.check_queues(&queues)?;
        let queue = queues.remove(0);
        self.active = Some(ActiveQueue::new("virtio-blk", mem, queue, interrupt));
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 {
            crate::guest_warn!("virtio-blk: notify of non-existent queue {index}");
            return;
        }
        let Some(active) = self.active.as_mut() else {
            tracing::debug!("virtio-blk: notify before activation ignored");
            return;
        };
        let disk = &mut self.disk;
        active.serve(|_, chain| request::process_chain(chain, disk).1);
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        // Requests are served whole on the event loop: none is in flight.
        Some(self.active.iter().map(ActiveQueue::state).collect())
    }

    fn disk_backend(&self) -> Option<&Backend> {
        Some(self.disk.backend())
    }

    fn reset(&mut self) {
        self.active = None;
        self.virtio.acked_features = 0;
    }
}
