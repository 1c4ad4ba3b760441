//! The MMIO bus: guest-physical ranges outside RAM mapped to devices (on
//! aarch64 the serial console and the RTC; virtio-mmio devices on both
//! architectures). Accesses no device claims read as all ones and writes
//! are dropped, as for the port bus.

use std::sync::{Arc, Mutex};

use super::ranges::{RangeError, Ranges};

/// Where a device sits on the MMIO bus and the interrupt line it raises,
/// as the guest is told (x86_64: ACPI DSDT, the line a GSI; aarch64: the
/// device tree, the line an SPI number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Guest-physical base of its registers.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// Its interrupt line.
    pub irq: u32,
}

/// A device on the MMIO bus; `offset` is relative to its base address.
pub trait MmioDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared with another thread (e.g. a virtio-net transport the
/// VMM's event loop also drives): each access locks it. A thread that
/// panicked while holding the lock left it as it was; it is used anyway.
impl<T: MmioDevice> MmioDevice for Arc<Mutex<T>> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .read(offset, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .write(offset, data)
    }
}

/// Why a device could not be placed on the bus.
#[derive(Debug, thiserror::Error)]
pub enum MmioBusError {
    /// The range is empty or does not end below 2^64.
    #[error("MMIO range {base:#x}+{len:#x} is empty or does not end below 2^64")]
    BadRange {
        /// First address.
        base: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The range overlaps a device already there.
    #[error("MMIO range {base:#x}+{len:#x} overlaps {other}")]
    Overlap {
        /// First address.
        base: u64,
        /// Length in bytes.
        len: u64,
        /// The device already there.
        other: String,
    },
}

/// Devices by guest-physical range.
#[derive(Default)]
pub struct MmioBus {
    ranges: Ranges<dyn MmioDevice>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> MmioBus {
        MmioBus::default()
    }

    /// Places `device` at `base .. base + len`, named for errors.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: Box<dyn MmioDevice>,
    ) -> Result<(), MmioBusError> {
        self.ranges
            .insert(name, base, len, u64::MAX, device)
            .map_err(|e| match e {
                RangeError::BadRange => MmioBusError::BadRange { base, len },
                RangeError::Overlap(other) => MmioBusError::Overlap { base, len, other },
            })
    }

    /// The device whose range holds all of `address .. address + len`, and
    /// the offset into it. An access straddling a range's end belongs to no
    /// device.
    fn slot(&mut self, address: u64, len: usize) -> Option<(&mut (dyn MmioDevice + 'static), u64)> {
        let last = address.checked_add((len as u64).saturating_sub(1))?;
        self.ranges.find(address, last)
    }

    /// A guest read at `address`.
    pub fn read(&mut self, address: u64, data: &mut [u8]) {
        match self.slot(address, data.len()) {
            Some((device, offset)) => device.read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A guest write at `address`.
    pub fn write(&mut self, address: u64, data: &[u8]) {
        if let Some((device, offset)) = self.slot(address, data.len()) {
            device.write(offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Writes a probe saw: (offset, bytes).
    type Seen = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

    /// Remembers accesses (a test device, standing for any device).
    struct Probe(Seen);

    impl MmioDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.lock().expect("lock").push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_its_offset_and_nothing_else() {
        let seen: Seen = Arc::default();
        let mut bus = MmioBus::new();
        bus.insert("probe", 0x0900_0000, 0x1000, Box::new(Probe(seen.clone())))
            .expect("insert");
        bus.write(0x0900_0010, &[1, 2, 3, 4]);
        bus.write(0x0900_1000, &[9]);
        bus.write(0x08ff_ffff, &[9]);
        let mut word = [0u8; 4];
        bus.read(0x0900_0ffc, &mut word);
        assert_eq!(word, [0xfc; 4]);
        bus.read(0x0a00_0000, &mut word);
        assert_eq!(word, [0xff; 4], "unclaimed addresses read as ones");
        assert_eq!(*seen.lock().expect("lock"), vec![(0x10, vec![1, 2, 3, 4])]);
    }

    #[test]
    fn overlapping_and_bad_ranges_are_refused() {
        let mut bus = MmioBus::new();
        let probe = || Box::new(Probe(Arc::default()));
        bus.insert("uart", 0x0900_0000, 0x1000, probe())
            .expect("insert");
        let err = bus
            .insert("other", 0x08ff_f800, 0x1000, probe())
            .expect_err("overlap");
        assert!(err.to_string().contains("uart"), "{err}");
        assert!(bus.insert("inside", 0x0900_0800, 0x10, probe()).is_err());
        assert!(bus
            .insert("around", 0x08ff_0000, 0x10_0000, probe())
            .is_err());
        assert!(bus
            .insert("past the end", u64::MAX - 0xff, 0x1000, probe())
            .is_err());
        assert!(bus.insert("empty", 0x1000, 0, probe()).is_err());
        bus.insert("next", 0x0900_1000, 0x1000, probe())
            .expect("adjacent is fine");
        let mut byte = [0u8];
        bus.read(u64::MAX, &mut byte);
        assert_eq!(byte, [0xff]);
    }

    #[test]
    fn accesses_straddling_a_range_end_are_unclaimed() {
        let seen: Seen = Arc::default();
        let mut bus = MmioBus::new();
        bus.insert("probe", 0x1000, 0x100, Box::new(Probe(seen.clone())))
            .expect("insert");
        let mut word = [0u8; 4];
        bus.read(0x10fe, &mut word);
        assert_eq!(word, [0xff; 4]);
        bus.write(0x10fe, &[1, 2, 3, 4]);
        bus.write(u64::MAX, &[1, 2]);
        bus.read(u64::MAX - 1, &mut word);
        assert!(seen.lock().expect("lock").is_empty());
    }
}
