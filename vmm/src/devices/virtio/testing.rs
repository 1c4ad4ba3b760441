//! The driver's side, for tests: a split virtqueue laid out by hand in
//! guest memory (VIRTIO 1.1 section 2.6), and register accesses through
//! the transport as a guest driver makes them.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{regs, MmioTransport};
use super::{status, VirtioDevice};
use crate::devices::mmio::MmioDevice;

/// Guest RAM of the tests.
pub const RAM_BYTES: usize = 4 << 20;
/// Where the rings go.
pub const DESC_TABLE: u64 = 0x1_0000;
pub const AVAIL_RING: u64 = 0x2_0000;
pub const USED_RING: u64 = 0x3_0000;

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// Fresh zeroed guest RAM.
pub fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_BYTES)]).expect("guest RAM")
}

/// A split virtqueue at [`DESC_TABLE`], [`AVAIL_RING`], [`USED_RING`]
/// (each moved by the same shift, for a device with several queues).
pub struct Ring {
    memory: GuestMemoryMmap,
    pub size: u16,
    published: u16,
    shift: u64,
}

impl Ring {
    /// Empty rings of `size` entries.
    pub fn new(memory: &GuestMemoryMmap, size: u16) -> Ring {
        Ring::shifted(memory, size, 0)
    }

    /// Empty rings of `size` entries, `shift` bytes past the usual places.
    pub fn shifted(memory: &GuestMemoryMmap, size: u16, shift: u64) -> Ring {
        let ring = Ring {
            memory: memory.clone(),
            size,
            published: 0,
            shift,
        };
        let (desc, avail, used) = ring.addresses();
        for base in [desc, avail, used] {
            ring.put(base, &[0; 0x1_0000]);
        }
        ring
    }

    /// Where the descriptor table, the available and the used ring are.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (
            DESC_TABLE + self.shift,
            AVAIL_RING + self.shift,
            USED_RING + self.shift,
        )
    }

    pub fn put(&self, address: u64, bytes: &[u8]) {
        self.memory
            .write_slice(bytes, GuestAddress(address))
            .expect("write guest memory");
    }

    pub fn get(&self, address: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.memory
            .read_slice(&mut bytes, GuestAddress(address))
            .expect("read guest memory");
        bytes
    }

    /// Writes descriptor `index` of the table at `table`.
    pub fn descriptor_at(
        &self,
        table: u64,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        self.put(table + 16 * u64::from(index), &bytes);
    }

    /// Writes descriptor `index` of the queue's table.
    pub fn descriptor(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.descriptor_at(DESC_TABLE + self.shift, index, addr, len, flags, next);
    }

    /// Links `buffers` (address, length, device-writable) as descriptors
    /// `first..`; returns the head.
    pub fn chain(&self, first: u16, buffers: &[(u64, u32, bool)]) -> u16 {
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = first + i as u16;
            let more = i + 1 < buffers.len();
            let flags = if writable { F_WRITE } else { 0 } | if more { F_NEXT } else { 0 };
            self.descriptor(index, addr, len, flags, if more { index + 1 } else { 0 });
        }
        first
    }

    /// Makes the chain at `head` available.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.published % self.size);
        self.put(AVAIL_RING + self.shift + 4 + 2 * slot, &head.to_le_bytes());
        self.published = self.published.wrapping_add(1);
        self.set_avail_idx(self.published);
    }

    /// How many chains were made available.
    pub fn published(&self) -> u16 {
        self.published
    }

    /// Overwrites the available ring's index.
    pub fn set_avail_idx(&self, idx: u16) {
        self.put(AVAIL_RING + self.shift + 2, &idx.to_le_bytes());
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        let bytes = self.get(USED_RING + self.shift + 2, 2);
        u16::from_le_bytes([bytes[0], bytes[1]])
    }

    /// Used element `i`: (descriptor head, length).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let bytes = self.get(USED_RING + self.shift + 4 + 8 * u64::from(i % self.size), 8);
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        (word(0), word(4))
    }
}

/// A guest driver programming one transport.
pub struct Driver<D: VirtioDevice> {
    pub transport: MmioTransport<D>,
}

impl<D: VirtioDevice> Driver<D> {
    pub fn read(&mut self, register: u64) -> u32 {
        let mut word = [0u8; 4];
        self.transport.read(register, &mut word);
        u32::from_le_bytes(word)
    }

    pub fn write(&mut self, register: u64, value: u32) {
        self.transport.write(register, &value.to_le_bytes());
    }

    /// The offered features (both pages).
    pub fn device_features(&mut self) -> u64 {
        self.write(regs::DEVICE_FEATURES_SEL, 0);
        let low = self.read(regs::DEVICE_FEATURES);
        self.write(regs::DEVICE_FEATURES_SEL, 1);
        let high = self.read(regs::DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    pub fn write_driver_features(&mut self, features: u64) {
        self.write(regs::DRIVER_FEATURES_SEL, 0);
        self.write(regs::DRIVER_FEATURES, features as u32);
        self.write(regs::DRIVER_FEATURES_SEL, 1);
        self.write(regs::DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, accept `wanted` of the offered
    /// features, FEATURES_OK; returns the status read back.
    pub fn negotiate(&mut self, wanted: u64) -> u32 {
        self.write(regs::STATUS, 0);
        self.write(regs::STATUS, status::ACKNOWLEDGE);
        self.write(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let offered = self.device_features();
        self.write_driver_features(offered & wanted);
        self.write(
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.read(regs::STATUS)
    }

    /// Sets up queue `index` with `size` entries at `desc`, `avail`,
    /// `used`, then writes QueueReady; returns QueueReady read back.
    pub fn setup_queue(&mut self, index: u32, size: u16, desc: u64, avail: u64, used: u64) -> u32 {
        self.write(regs::QUEUE_SEL, index);
        self.write(regs::QUEUE_NUM, u32::from(size));
        for (low, address) in [
            (regs::QUEUE_DESC_LOW, desc),
            (regs::QUEUE_AVAIL_LOW, avail),
            (regs::QUEUE_USED_LOW, used),
        ] {
            self.write(low, address as u32);
            self.write(low + 4, (address >> 32) as u32);
        }
        self.write(regs::QUEUE_READY, 1);
        self.read(regs::QUEUE_READY)
    }

    /// Negotiates every offered feature, sets up queue 0 on the rings of
    /// [`Ring`] with `size` entries, sets DRIVER_OK; returns the status.
    pub fn start(&mut self, size: u16) -> u32 {
        let status = self.negotiate(u64::MAX);
        assert_ne!(status & status::FEATURES_OK, 0, "features refused");
        assert_eq!(
            self.setup_queue(0, size, DESC_TABLE, AVAIL_RING, USED_RING),
            1
        );
        self.write(regs::STATUS, status | status::DRIVER_OK);
        self.read(regs::STATUS)
    }

    pub fn notify(&mut self, queue: u32) {
        self.write(regs::QUEUE_NOTIFY, queue);
    }
}
