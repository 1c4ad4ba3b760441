//! Receive: frames from the tap into the chains the driver made available
//! on the receive queue, one frame per chain (no mergeable buffers), as a
//! 12-byte header (zeroed but for `num_buffers` = 1) then the frame, over
//! the chain's device-writable buffers in order. A frame is read from the
//! tap only when a chain waits for it; with none, frames stay in the tap
//! until the driver adds buffers. A chain that is malformed, or too
//! small for the frame, goes back on the used ring with length 0 and the
//! frame is dropped (and counted).

use std::io;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::chain;
use super::{pending, FrameIo, NetCounters, HEADER_LEN, MAX_FRAME};
use crate::devices::virtio::DeviceError;

/// What one receive round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Outcome {
    /// A chain went back on the used ring.
    pub used: bool,
    /// It stopped after its budget of frames, with buffers left: frames
    /// may still wait in the tap.
    pub budget_spent: bool,
}

/// Frames received per round at most, so that the caller (holding the
/// vCPUs' lock) lets go now and then.
const BUDGET: usize = 256;

/// The receive path's buffers, reused for every frame.
pub(super) struct Receive {
    /// One byte more than the largest frame, to tell one cut by the read.
    frame: Vec<u8>,
    descriptors: Vec<Descriptor>,
}

impl Receive {
    /// Buffers for the largest frame.
    pub(super) fn new() -> Receive {
        Receive {
            frame: vec![0; HEADER_LEN + MAX_FRAME + 1],
            descriptors: Vec::with_capacity(chain::MAX_DESCRIPTORS),
        }
    }

    /// Moves up to [`BUDGET`] frames from `frames` into chains of `queue`.
    pub(super) fn serve<F: FrameIo>(
        &mut self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
        frames: &mut F,
        counters: &mut NetCounters,
    ) -> Result<Outcome, DeviceError> {
        let mut outcome = Outcome::default();
        let mut received = 0;
        loop {
            let mut available = pending(queue, memory)?;
            if available == 0 {
                // Frames, if any, wait for the driver's next notification.
                return Ok(outcome);
            }
            while available > 0 {
                if received == BUDGET {
                    outcome.budget_spent = true;
                    return Ok(outcome);
                }
                let len = match frames.read_frame(&mut self.frame) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            tracing::warn!("virtio-net: cannot read from the tap: {e}");
                        }
                        return Ok(outcome);
                    }
                };
                received += 1;
                available -= 1;
                let Some(chain) = queue.pop_descriptor_chain(memory) else {
                    // Counted as pending, yet not there: the ring moved.
                    counters.rx_malformed += 1;
                    return Ok(outcome);
                };
                let head = chain.head_index();
                if head >= queue.size() {
                    tracing::warn!("virtio-net: receive ring names descriptor {head}, skipped");
                    counters.rx_malformed += 1;
                    continue;
                }
                let written = self.deliver(memory, chain, len, counters);
                queue.add_used(memory, head, written)?;
                outcome.used = true;
            }
        }
    }

    /// Writes the frame of `len` bytes (header included) read into the
    /// buffer over `chain`; returns the bytes written (0: dropped).
    fn deliver(
        &mut self,
        memory: &GuestMemoryMmap,
        chain: impl Iterator<Item = Descriptor>,
        len: usize,
        counters: &mut NetCounters,
    ) -> u32 {
        let capacity = match chain::buffers(memory, chain, true, &mut self.descriptors) {
            Ok(capacity) => capacity,
            Err(e) => {
                tracing::debug!("virtio-net: receive chain dropped with its frame: {e}");
                counters.rx_malformed += 1;
                return 0;
            }
        };
        if !(HEADER_LEN..=HEADER_LEN + MAX_FRAME).contains(&len) || capacity < len as u64 {
            tracing::debug!("virtio-net: frame of {len} bytes for {capacity} bytes dropped");
            counters.rx_dropped += 1;
            return 0;
        }
        let frame = &mut self.frame[..len];
        frame[..HEADER_LEN].fill(0);
        // num_buffers (le16), the header's last field.
        frame[HEADER_LEN - 2..HEADER_LEN].copy_from_slice(&1u16.to_le_bytes());
        let mut rest = &frame[..];
        for d in &self.descriptors {
            let (now, later) = rest.split_at(rest.len().min(d.len() as usize));
            if now.is_empty() {
                continue;
            }
            if let Err(e) = memory.write_slice(now, d.addr()) {
                // Checked inside RAM, so not expected.
                tracing::warn!("virtio-net: receive buffer write failed: {e}");
                counters.rx_malformed += 1;
                return 0;
            }
            rest = later;
        }
        counters.rx_frames += 1;
        counters.rx_bytes += (len - HEADER_LEN) as u64;
        // len <= HEADER_LEN + MAX_FRAME, far below u32::MAX.
        len as u32
    }
}
