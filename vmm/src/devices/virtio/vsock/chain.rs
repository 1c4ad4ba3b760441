//! Descriptor chains of the vsock queues, checked whole before any byte
//! moves (by the checks all copying devices share, [`super::super::chain`]),
//! and the packets in them: a packet (header, then payload) may be split
//! across the buffers anywhere, the header included.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::packet::{Header, HEADER_LEN};

pub(super) use super::super::chain::MAX_DESCRIPTORS;

/// Why a chain or the packet in it was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChainError {
    /// The chain itself: direction, RAM, length, end.
    #[error(transparent)]
    Chain(#[from] super::super::chain::ChainError),
    /// Too small for a packet header.
    #[error("{0} bytes: shorter than a packet header")]
    Short(u64),
    /// The header's length field is past the buffers or the bound.
    #[error("payload of {len} bytes in a chain of {total} bytes (at most {max})")]
    Length {
        /// The header's `len`.
        len: u32,
        /// The chain's bytes.
        total: u64,
        /// The largest payload taken.
        max: usize,
    },
    /// A copy failed (not expected: buffers are checked inside RAM).
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Checks `chain` whole into `out` (see [`super::super::chain::buffers`]);
/// returns the buffers' total length.
pub(super) fn buffers(
    memory: &GuestMemoryMmap,
    chain: impl Iterator<Item = Descriptor>,
    writable: bool,
    out: &mut Vec<Descriptor>,
) -> Result<u64, ChainError> {
    Ok(super::super::chain::buffers(memory, chain, writable, out)?)
}

/// The pieces of the buffers `descriptors` from byte `offset` of their
/// concatenation, `len` bytes in all (fewer at their end).
fn pieces(
    descriptors: &[Descriptor],
    mut offset: u64,
    len: usize,
) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
    let mut left = len;
    descriptors.iter().filter_map(move |d| {
        let size = u64::from(d.len());
        if offset >= size {
            offset -= size;
            return None;
        }
        // Below a u32 descriptor length.
        let now = ((size - offset) as usize).min(left);
        if now == 0 {
            return None;
        }
        let at = GuestAddress(d.addr().0 + offset);
        offset = 0;
        left -= now;
        Some((at, now))
    })
}

/// Copies `out.len()` bytes from byte `offset` of the buffers.
fn gather(
    memory: &GuestMemoryMmap,
    descriptors: &[Descriptor],
    offset: u64,
    out: &mut [u8],
) -> Result<(), ChainError> {
    let mut at = 0;
    for (address, len) in pieces(descriptors, offset, out.len()) {
        memory.read_slice(&mut out[at..at + len], address)?;
        at += len;
    }
    Ok(())
}

/// Copies `bytes` to the buffers from byte `offset` on.
pub(super) fn scatter(
    memory: &GuestMemoryMmap,
    descriptors: &[Descriptor],
    offset: u64,
    bytes: &[u8],
) -> Result<(), ChainError> {
    let mut at = 0;
    for (address, len) in pieces(descriptors, offset, bytes.len()) {
        memory.write_slice(&bytes[at..at + len], address)?;
        at += len;
    }
    Ok(())
}

/// Reads a transmitted packet from the checked buffers `descriptors`
/// (`total` bytes): its header, and its payload into `payload` (whose
/// length is the bound) if `wants_payload(&header)`; returns the header.
pub(super) fn read_packet(
    memory: &GuestMemoryMmap,
    descriptors: &[Descriptor],
    total: u64,
    payload: &mut [u8],
    wants_payload: impl Fn(&Header) -> bool,
) -> Result<Header, ChainError> {
    let mut bytes = [0u8; HEADER_LEN];
    if total < HEADER_LEN as u64 {
        return Err(ChainError::Short(total));
    }
    gather(memory, descriptors, 0, &mut bytes)?;
    let header = Header::parse(&bytes);
    let len = header.len as usize;
    if len > payload.len() || HEADER_LEN as u64 + u64::from(header.len) > total {
        return Err(ChainError::Length {
            len: header.len,
            total,
            max: payload.len(),
        });
    }
    if wants_payload(&header) {
        gather(memory, descriptors, HEADER_LEN as u64, &mut payload[..len])?;
    }
    Ok(header)
}
