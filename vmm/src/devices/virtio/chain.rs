//! Checking a descriptor chain the guest made available, before any
//! byte moves (shared by the devices that copy whole chains: net, vsock): every descriptor in the one direction the queue uses
//! (device-readable for transmit, device-writable for receive), inside
//! guest RAM, the chain properly ended (the last descriptor without
//! NEXT: virtio-queue silently stops a walk at a loop, a next index past
//! the table or a bad indirect table, which this catches) and at most
//! [`MAX_DESCRIPTORS`] long.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

/// Most descriptors a chain may have (the largest queue's size; Linux
/// uses one or two per frame or packet, up to about 20 for big receive
/// buffers).
pub(super) const MAX_DESCRIPTORS: usize = 256;

/// Why a chain was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum ChainError {
    /// No descriptor at all (e.g. a bad indirect table at the head).
    #[error("no descriptor")]
    Empty,
    /// The walk stopped at a descriptor that still says NEXT: a loop, a
    /// next index past the table, an unreadable or nested indirect table.
    #[error("the chain does not end")]
    Unterminated,
    /// More than [`MAX_DESCRIPTORS`].
    #[error("more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// A descriptor in the wrong direction for the queue.
    #[error("a device-{0} descriptor")]
    Direction(&'static str),
    /// A buffer not wholly inside guest RAM.
    #[error("buffer {0:#x}+{1:#x} is not inside guest RAM")]
    OutsideRam(u64, u32),
}

/// Walks `chain` into `out` (cleared first): all `writable` (or all
/// device-readable), inside `memory`; returns their total length.
pub(super) fn buffers(
    memory: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    writable: bool,
    out: &mut Vec<Descriptor>,
) -> Result<u64, ChainError> {
    out.clear();
    let mut total = 0u64;
    for descriptor in chain.take(MAX_DESCRIPTORS + 1) {
        if out.len() == MAX_DESCRIPTORS {
            return Err(ChainError::TooManyDescriptors);
        }
        if descriptor.is_write_only() != writable {
            return Err(ChainError::Direction(if writable {
                "readable"
            } else {
                "writable"
            }));
        }
        let (addr, len) = (descriptor.addr(), descriptor.len());
        if len != 0 && !memory.check_range(addr, len as usize) {
            return Err(ChainError::OutsideRam(addr.0, len));
        }
        total += u64::from(len);
        out.push(descriptor);
    }
    match out.last() {
        None => Err(ChainError::Empty),
        Some(last) if last.has_next() => Err(ChainError::Unterminated),
        Some(_) => Ok(total),
    }
}
