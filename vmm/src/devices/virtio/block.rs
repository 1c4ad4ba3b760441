//! virtio-blk (VIRTIO 1.1 section 5.2) over a raw image file: one request
//! queue; reads, writes, flushes and the disk ID. The requests themselves
//! are in [`request`]; this is the device's face to the transport: its
//! features, its configuration space, its queue.

mod request;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::num::Wrapping;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{DeviceError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use request::Disk;

/// The virtio device ID of a block device.
pub const DEVICE_TYPE: u32 = 2;
/// Bytes in a sector, the unit of request offsets and of the capacity.
pub const SECTOR_SIZE: u64 = 512;
/// Largest size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data descriptors in one request (offered with
/// [`VIRTIO_BLK_F_SEG_MAX`]); a request also has a header and a status.
pub const SEG_MAX: u32 = 126;
/// Length of the disk ID (GET_ID).
pub const ID_BYTES: usize = 20;

/// Feature: `seg_max` in the config space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: `blk_size` in the config space is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// Feature: the device takes flush requests.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Config space: capacity (le64), size_max (le32, unused), seg_max (le32),
/// geometry (4 bytes, unused), blk_size (le32).
const CONFIG_LEN: usize = 24;

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image file could not be opened.
    #[error("cannot open the disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The image's size could not be read.
    #[error("cannot read the disk image's size: {0}")]
    Size(std::io::Error),
    /// The disk ID is longer than [`ID_BYTES`].
    #[error("disk ID of {0} bytes: at most 20")]
    IdTooLong(usize),
}

/// What the device holds between DRIVER_OK and a reset.
struct Active {
    queue: Queue,
    memory: GuestMemoryMmap,
    interrupt: Interrupt,
}

/// A virtio block device over a raw image.
pub struct Block {
    disk: Disk,
    features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
}

impl Block {
    /// A disk over `file` (its whole length, rounded down to sectors),
    /// read-only or not, reporting `id` (at most 20 bytes) to GET_ID.
    pub fn new(file: File, read_only: bool, id: &str) -> Result<Block, BlockError> {
        if id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong(id.len()));
        }
        let mut id_bytes = [0u8; ID_BYTES];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        let bytes = file.metadata().map_err(BlockError::Size)?.len();
        if bytes & (SECTOR_SIZE - 1) != 0 {
            tracing::warn!("disk image of {bytes} bytes: the last partial sector is not used");
        }
        let sectors = bytes / SECTOR_SIZE;
        let mut features =
            VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE;
        if read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Ok(Block {
            disk: Disk::new(file, read_only, sectors, id_bytes),
            features,
            config,
            active: None,
        })
    }

    /// Opens the image at `path` (for reading only if `read_only`), then
    /// as [`Block::new`].
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Block, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Block::new(file, read_only, id)
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    /// Whether the driver set it up and it serves requests.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| self.config.get(start..start.checked_add(data.len())?));
        match bytes {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // No writable field is offered (no VIRTIO_BLK_F_CONFIG_WCE).
        tracing::debug!("virtio-blk: config write at {offset:#x} ignored");
    }

    fn activate(
        &mut self,
        _features: u64,
        mut queues: Vec<Queue>,
        memory: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<(), DeviceError> {
        let queue = match queues.pop() {
            Some(queue) if queues.is_empty() => queue,
            _ => {
                return Err(DeviceError::QueueCount {
                    expected: 1,
                    got: queues.len() + 1,
                })
            }
        };
        if !queue.ready() {
            return Err(DeviceError::QueueNotReady(0));
        }
        self.active = Some(Active {
            queue,
            memory,
            interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        let Some(Active {
            queue,
            memory,
            interrupt,
        }) = self.active.as_mut()
        else {
            return Err(DeviceError::NotActive);
        };
        if index != 0 {
            return Ok(());
        }
        // Serve what the driver made available so far, no more: a
        // driver that keeps adding requests notifies again.
        let available = queue.avail_idx(memory, Ordering::Acquire)?;
        let pending = (available - Wrapping(queue.next_avail())).0;
        if pending > queue.size() {
            return Err(virtio_queue::Error::InvalidAvailRingIndex.into());
        }
        let mut used = false;
        for _ in 0..pending {
            let Some(chain) = queue.pop_descriptor_chain(&*memory) else {
                break;
            };
            let head = chain.head_index();
            if head >= queue.size() {
                // Not a descriptor: nothing to hand back.
                tracing::warn!("virtio-blk: available ring names descriptor {head}, skipped");
                continue;
            }
            let len = self.disk.execute(memory, chain);
            queue.add_used(memory, head, len)?;
            used = true;
        }
        if used {
            interrupt.signal_used_buffer();
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
