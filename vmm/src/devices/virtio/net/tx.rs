//! Transmit: each chain on the transmit queue is one frame, a 12-byte
//! header then the frame, in device-readable buffers however the driver
//! split them. The chain is checked whole ([`super::chain`]), its bytes
//! gathered into a fixed buffer of header + [`MAX_FRAME`] (nothing sized
//! by the guest is allocated), the header replaced by a zeroed one (no
//! checksum or GSO feature was negotiated, so the guest has no say in
//! what the kernel would do with those fields) and the result written to
//! the tap. A malformed chain or a frame the tap does not take is dropped
//! and counted; either way the chain goes back on the used ring with
//! length 0 (the device writes nothing into transmit buffers).

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::chain::{self, ChainError};
use super::{pending, FrameIo, NetCounters, HEADER_LEN, MAX_FRAME, MIN_FRAME};
use crate::devices::virtio::DeviceError;

/// Why a transmit chain was dropped.
#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error("{0}")]
    Chain(#[from] ChainError),
    #[error("{0} bytes: not a header and an Ethernet frame of at most {MAX_FRAME} bytes")]
    Length(u64),
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// The transmit path's buffers, reused for every frame.
pub(super) struct Transmit {
    frame: Vec<u8>,
    descriptors: Vec<Descriptor>,
}

impl Transmit {
    /// Buffers for the largest frame.
    pub(super) fn new() -> Transmit {
        Transmit {
            frame: vec![0; HEADER_LEN + MAX_FRAME],
            descriptors: Vec::with_capacity(chain::MAX_DESCRIPTORS),
        }
    }

    /// Sends what the driver made available on `queue` so far; returns
    /// whether any chain went back on the used ring.
    pub(super) fn serve<F: FrameIo>(
        &mut self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
        frames: &mut F,
        counters: &mut NetCounters,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        for _ in 0..pending(queue, memory)? {
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                break;
            };
            let head = chain.head_index();
            if head >= queue.size() {
                // Not a descriptor: nothing to hand back.
                tracing::warn!("virtio-net: transmit ring names descriptor {head}, skipped");
                continue;
            }
            match self.gather(memory, chain) {
                Ok(len) => send(&mut self.frame[..len], frames, counters),
                Err(e) => {
                    tracing::debug!("virtio-net: transmit chain dropped: {e}");
                    counters.tx_malformed += 1;
                }
            }
            queue.add_used(memory, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    /// Copies the chain's bytes into the frame buffer; returns their
    /// length (header included).
    fn gather(
        &mut self,
        memory: &GuestMemoryMmap,
        chain: impl Iterator<Item = Descriptor>,
    ) -> Result<usize, TxError> {
        let total = chain::buffers(memory, chain, false, &mut self.descriptors)?;
        let len = usize::try_from(total)
            .ok()
            .filter(|&len| (HEADER_LEN + MIN_FRAME..=self.frame.len()).contains(&len))
            .ok_or(TxError::Length(total))?;
        let mut at = 0;
        for d in &self.descriptors {
            let end = at + d.len() as usize;
            memory.read_slice(&mut self.frame[at..end], d.addr())?;
            at = end;
        }
        Ok(len)
    }
}

/// Writes `frame` (header first) to the tap, its header zeroed.
fn send<F: FrameIo>(frame: &mut [u8], frames: &mut F, counters: &mut NetCounters) {
    frame[..HEADER_LEN].fill(0);
    match frames.write_frame(frame) {
        Ok(()) => {
            counters.tx_frames += 1;
            counters.tx_bytes += (frame.len() - HEADER_LEN) as u64;
        }
        Err(e) => {
            // Guest-triggered and possibly at line rate: not a warning.
            tracing::debug!("virtio-net: the tap did not take a frame: {e}");
            counters.tx_dropped += 1;
        }
    }
}
