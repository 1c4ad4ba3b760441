//! One virtio-blk request, from its descriptor chain to the image file and
//! back. The layout (VIRTIO 1.1 section 5.2.6): a device-readable header
//! (type, reserved, sector), data descriptors (device-writable for reads
//! and GET_ID, device-readable for writes), then a device-writable status
//! byte (the first byte of the last descriptor).
//!
//! Everything in the chain is the guest's and may be hostile: every
//! buffer is checked to lie in guest RAM before any I/O, data goes through
//! a fixed-size bounce buffer (no allocation sized by the guest), and the
//! chain walk is bounded. A malformed request ends with an error status
//! if it has a status byte, and is handed back with nothing written if
//! not.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap};

use super::{ID_BYTES, SECTOR_SIZE, SEG_MAX};

/// Request types.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

/// Status values.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// The header: type (le32), reserved (le32), sector (le64).
const HEADER_LEN: usize = 16;
/// Most descriptors a request may have: header, data, status.
pub(super) const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Most descriptors walked to find a chain's end. virtio-queue already
/// stops a walk after the queue size (plus one indirect table of at most
/// 2^16 entries); this bounds it whatever that crate does.
const CHAIN_WALK_LIMIT: usize = 1 << 17;
/// Size of the bounce buffer between guest RAM and the file.
const BOUNCE_BYTES: usize = 64 << 10;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("chain of {0} descriptors, more than {MAX_DESCRIPTORS}")]
    TooLong(usize),
    #[error("no device-readable header of {HEADER_LEN} bytes first")]
    BadHeader,
    #[error("a data buffer the device cannot {0}")]
    Direction(&'static str),
    #[error("buffer {0:#x}+{1:#x} is not inside guest RAM")]
    OutsideRam(u64, u32),
    #[error("data of {0} bytes is not whole sectors")]
    Unaligned(u64),
    #[error("sectors {sector}+{count} past the end of the disk ({capacity})")]
    PastEnd {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("image I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    #[error("request type {0}")]
    Unsupported(u32),
}

/// The image file and what the device knows about it.
pub(super) struct Disk {
    file: File,
    read_only: bool,
    sectors: u64,
    id: [u8; ID_BYTES],
    bounce: Vec<u8>,
}

impl Disk {
    /// `sectors` of `file`.
    pub(super) fn new(file: File, read_only: bool, sectors: u64, id: [u8; ID_BYTES]) -> Disk {
        Disk {
            file,
            read_only,
            sectors,
            id,
            bounce: vec![0; BOUNCE_BYTES],
        }
    }

    /// Capacity in sectors.
    pub(super) fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Serves the request made of `chain`; returns the used length (bytes
    /// written to guest buffers, status included; 0 when the request had
    /// no status byte and was skipped).
    pub(super) fn execute(
        &mut self,
        memory: &GuestMemoryMmap,
        chain: impl Iterator<Item = Descriptor>,
    ) -> u32 {
        let mut descriptors = Vec::with_capacity(8);
        let mut count = 0;
        let mut last = None;
        for descriptor in chain.take(CHAIN_WALK_LIMIT) {
            count += 1;
            if descriptors.len() < MAX_DESCRIPTORS {
                descriptors.push(descriptor);
            }
            last = Some(descriptor);
        }
        let status = match last {
            Some(d) if d.is_write_only() && d.len() >= 1 && memory.check_range(d.addr(), 1) => {
                d.addr()
            }
            _ => {
                tracing::warn!("virtio-blk: request without a status byte skipped");
                return 0;
            }
        };
        let (code, written) = match self.serve(memory, &descriptors, count) {
            Ok(written) => (S_OK, written),
            Err(RequestError::Unsupported(kind)) => {
                tracing::debug!("virtio-blk: unsupported request type {kind}");
                (S_UNSUPP, 0)
            }
            Err(e) => {
                tracing::warn!("virtio-blk: request failed: {e}");
                (S_IOERR, 0)
            }
        };
        match memory.write_obj(code, status) {
            Ok(()) => written.saturating_add(1),
            Err(_) => 0,
        }
    }

    /// Runs a request whose status descriptor (the last of `count`,
    /// `descriptors` holding the first ones) is valid; returns the bytes
    /// written to its data buffers.
    fn serve(
        &mut self,
        memory: &GuestMemoryMmap,
        descriptors: &[Descriptor],
        count: usize,
    ) -> Result<u32, RequestError> {
        if count > MAX_DESCRIPTORS {
            return Err(RequestError::TooLong(count));
        }
        // The status is the last descriptor; the header must come before.
        let (header, data) = match descriptors.split_last() {
            Some((_status, [header, data @ ..])) => (header, data),
            _ => return Err(RequestError::BadHeader),
        };
        if header.is_write_only() || (header.len() as usize) < HEADER_LEN {
            return Err(RequestError::BadHeader);
        }
        let mut bytes = [0u8; HEADER_LEN];
        memory.read_slice(&mut bytes, header.addr())?;
        let [k0, k1, k2, k3, _, _, _, _, s @ ..] = bytes;
        let kind = u32::from_le_bytes([k0, k1, k2, k3]);
        let sector = u64::from_le_bytes(s);
        match kind {
            T_IN => self.read(memory, sector, data),
            T_OUT => self.write(memory, sector, data).map(|()| 0),
            T_FLUSH => Ok(self.file.sync_data().map(|()| 0)?),
            T_GET_ID => self.get_id(memory, data),
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// Reads into the (device-writable) `data` buffers from `sector`.
    fn read(
        &mut self,
        memory: &GuestMemoryMmap,
        sector: u64,
        data: &[Descriptor],
    ) -> Result<u32, RequestError> {
        let total = buffers(memory, data, true)?;
        let mut offset = self.byte_offset(sector, total)?;
        for d in data {
            let mut done = 0;
            while done < d.len() {
                let n = chunk(d.len() - done);
                let bounce = &mut self.bounce[..n];
                self.file.read_exact_at(bounce, offset)?;
                memory.write_slice(bounce, address(d, done)?)?;
                done += n as u32;
                offset += n as u64;
            }
        }
        Ok(u32::try_from(total).unwrap_or(u32::MAX))
    }

    /// Writes the (device-readable) `data` buffers at `sector`.
    fn write(
        &mut self,
        memory: &GuestMemoryMmap,
        sector: u64,
        data: &[Descriptor],
    ) -> Result<(), RequestError> {
        if self.read_only {
            return Err(RequestError::ReadOnly);
        }
        let total = buffers(memory, data, false)?;
        let mut offset = self.byte_offset(sector, total)?;
        for d in data {
            let mut done = 0;
            while done < d.len() {
                let n = chunk(d.len() - done);
                let bounce = &mut self.bounce[..n];
                memory.read_slice(bounce, address(d, done)?)?;
                self.file.write_all_at(bounce, offset)?;
                done += n as u32;
                offset += n as u64;
            }
        }
        Ok(())
    }

    /// Writes the disk ID (NUL-padded, cut to the buffers' size) into the
    /// device-writable `data` buffers.
    fn get_id(&self, memory: &GuestMemoryMmap, data: &[Descriptor]) -> Result<u32, RequestError> {
        buffers(memory, data, true)?;
        let mut rest = &self.id[..];
        for d in data {
            let n = rest.len().min(d.len() as usize);
            if n == 0 {
                continue;
            }
            let (now, later) = rest.split_at(n);
            memory.write_slice(now, d.addr())?;
            rest = later;
        }
        Ok((ID_BYTES - rest.len()) as u32)
    }

    /// Where `bytes` from `sector` start in the image, if they are whole
    /// sectors inside it.
    fn byte_offset(&self, sector: u64, bytes: u64) -> Result<u64, RequestError> {
        if bytes & (SECTOR_SIZE - 1) != 0 {
            return Err(RequestError::Unaligned(bytes));
        }
        let count = bytes / SECTOR_SIZE;
        match sector.checked_add(count) {
            // sector <= capacity, which came from a u64 byte length.
            Some(end) if end <= self.sectors => Ok(sector * SECTOR_SIZE),
            _ => Err(RequestError::PastEnd {
                sector,
                count,
                capacity: self.sectors,
            }),
        }
    }
}

/// Checks `data` are all device-writable (or all device-readable) and
/// inside guest RAM; returns their total length.
fn buffers(
    memory: &GuestMemoryMmap,
    data: &[Descriptor],
    writable: bool,
) -> Result<u64, RequestError> {
    let mut total = 0;
    for d in data {
        if d.is_write_only() != writable {
            return Err(RequestError::Direction(if writable {
                "write"
            } else {
                "read"
            }));
        }
        if !memory.check_range(d.addr(), d.len() as usize) {
            return Err(RequestError::OutsideRam(d.addr().0, d.len()));
        }
        total += u64::from(d.len());
    }
    Ok(total)
}

/// The next piece of a buffer with `left` bytes to go.
fn chunk(left: u32) -> usize {
    (left as usize).min(BOUNCE_BYTES)
}

/// The guest address `done` bytes into `d` (checked inside RAM already).
fn address(d: &Descriptor, done: u32) -> Result<GuestAddress, RequestError> {
    d.addr()
        .0
        .checked_add(u64::from(done))
        .map(GuestAddress)
        .ok_or(RequestError::OutsideRam(d.addr().0, d.len()))
}
