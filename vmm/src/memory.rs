//! Guest RAM: anonymous memory mapped in the VMM process and handed to KVM
//! as the guest's physical memory, one region starting at address 0 (x86_64)
//! or at another page-aligned base (aarch64 puts RAM at 2 GiB, above its
//! MMIO devices).

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestUsize,
};

/// Why guest memory could not be set up or accessed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is zero or not a multiple of the page size.
    #[error("guest memory of {0} bytes: must be a non-zero multiple of 4096")]
    BadSize(u64),
    /// The base is not page-aligned, or base + size overflows.
    #[error("guest memory at {base:#x} ({size} bytes): the base must be page-aligned and the end below 2^64")]
    BadBase {
        /// Requested guest-physical start.
        base: u64,
        /// Requested size.
        size: u64,
    },
    /// mmap of the guest RAM failed.
    #[error("cannot map {size} bytes of guest memory: {message}")]
    Map {
        /// Requested size.
        size: u64,
        /// vm-memory's error.
        message: String,
    },
    /// A read or write fell outside guest RAM.
    #[error("guest memory access at {address:#x} ({len} bytes): {message}")]
    Access {
        /// Guest-physical address.
        address: u64,
        /// Bytes accessed.
        len: usize,
        /// vm-memory's error.
        message: String,
    },
}

/// The guest's RAM: one region from guest-physical `base` (0 unless made
/// with [`GuestRam::new_at`]).
pub struct GuestRam {
    memory: GuestMemoryMmap,
    base: u64,
    size: u64,
}

/// One host mapping of guest RAM, as KVM needs it for a memory slot.
#[derive(Debug, Clone, Copy)]
pub struct HostRegion {
    /// Guest-physical start.
    pub guest_address: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where it is mapped in this process.
    pub host_address: u64,
}

impl GuestRam {
    /// Maps `size` bytes of zeroed anonymous memory as guest RAM at 0.
    pub fn new(size: u64) -> Result<GuestRam, MemoryError> {
        GuestRam::new_at(0, size)
    }

    /// Maps `size` bytes of zeroed anonymous memory as guest RAM at
    /// guest-physical `base` (page-aligned).
    pub fn new_at(base: u64, size: u64) -> Result<GuestRam, MemoryError> {
        if size == 0 || size & 0xfff != 0 {
            return Err(MemoryError::BadSize(size));
        }
        if base & 0xfff != 0 || base.checked_add(size).is_none() {
            return Err(MemoryError::BadBase { base, size });
        }
        let length = usize::try_from(size).map_err(|_| MemoryError::BadSize(size))?;
        let memory =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(base), length)]).map_err(|e| {
                MemoryError::Map {
                    size,
                    message: e.to_string(),
                }
            })?;
        Ok(GuestRam { memory, base, size })
    }

    /// Guest-physical address of the first byte of RAM.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Guest-physical address just past the last byte of RAM (the size when
    /// RAM starts at 0).
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// The vm-memory view (for loaders working on guest memory).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies `bytes` into guest memory at `address`.
    pub fn write(&self, address: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.memory
            .write_slice(bytes, GuestAddress(address))
            .map_err(|e| MemoryError::Access {
                address,
                len: bytes.len(),
                message: e.to_string(),
            })
    }

    /// Writes a little-endian u64 at `address`.
    pub fn write_u64(&self, address: u64, value: u64) -> Result<(), MemoryError> {
        self.write(address, &value.to_le_bytes())
    }

    /// Reads `buf.len()` bytes from guest memory at `address`.
    pub fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.memory
            .read_slice(buf, GuestAddress(address))
            .map_err(|e| MemoryError::Access {
                address,
                len: buf.len(),
                message: e.to_string(),
            })
    }

    /// The host mappings backing guest RAM (for KVM memory slots).
    pub fn host_regions(&self) -> Vec<HostRegion> {
        self.memory
            .iter()
            .map(|region| HostRegion {
                guest_address: region.start_addr().0,
                size: GuestUsize::from(region.len()),
                host_address: region.as_ptr() as u64,
            })
            .collect()
    }

    /// Whether `address` is backed by guest RAM.
    pub fn contains(&self, address: u64) -> bool {
        self.memory.address_in_range(GuestAddress(address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_be_whole_pages() {
        assert!(matches!(GuestRam::new(0), Err(MemoryError::BadSize(0))));
        assert!(matches!(
            GuestRam::new(4097),
            Err(MemoryError::BadSize(4097))
        ));
    }

    #[test]
    fn writes_read_back_and_stay_inside() {
        let ram = GuestRam::new(64 * 1024).expect("ram");
        ram.write_u64(0x1000, 0x1122_3344_5566_7788).expect("write");
        let mut back = [0u8; 8];
        ram.read(0x1000, &mut back).expect("read");
        assert_eq!(u64::from_le_bytes(back), 0x1122_3344_5566_7788);
        assert!(ram.contains(0xffff) && !ram.contains(0x10000));
        assert!(ram.write(0xfffc, &[0; 8]).is_err(), "crosses the end");
        assert!(ram.write(0x20000, &[1]).is_err(), "outside");
        let regions = ram.host_regions();
        assert_eq!(regions.len(), 1);
        assert_eq!((regions[0].guest_address, regions[0].size), (0, 64 * 1024));
    }

    #[test]
    fn ram_can_start_above_zero() {
        let base = 0x8000_0000;
        let ram = GuestRam::new_at(base, 64 * 1024).expect("ram");
        assert_eq!(
            (ram.base(), ram.size(), ram.end()),
            (base, 0x1_0000, base + 0x1_0000)
        );
        assert!(!ram.contains(0) && !ram.contains(base - 1));
        assert!(ram.contains(base) && ram.contains(base + 0xffff));
        ram.write_u64(base + 8, 7).expect("write at the base");
        assert!(ram.write(0x10, &[1]).is_err(), "below the base");
        assert_eq!(ram.host_regions()[0].guest_address, base);
        assert!(matches!(
            GuestRam::new_at(0x8000_0800, 4096),
            Err(MemoryError::BadBase { .. })
        ));
        assert!(matches!(
            GuestRam::new_at(u64::MAX - 0xfff, 0x2000),
            Err(MemoryError::BadBase { .. })
        ));
    }
}
