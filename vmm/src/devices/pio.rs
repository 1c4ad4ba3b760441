//! The x86 I/O port bus: port ranges mapped to devices. Accesses to ports
//! no device claims read as all ones and writes are dropped, as on real
//! hardware.

use super::ranges::{RangeError, Ranges};

/// A device on the port bus; `offset` is relative to its base port.
pub trait PortDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// Why a device could not be placed on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range is empty or runs past port 0xffff.
    #[error("port range {base:#x}+{len} is empty or past 0xffff")]
    BadRange {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
    },
    /// The range overlaps a device already there.
    #[error("ports {base:#x}+{len} overlap {other}")]
    Overlap {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
        /// The device already there.
        other: String,
    },
}

/// Devices by port range.
#[derive(Default)]
pub struct PortBus {
    ranges: Ranges<dyn PortDevice>,
}

impl PortBus {
    /// An empty bus.
    pub fn new() -> PortBus {
        PortBus::default()
    }

    /// Places `device` at ports `base .. base + len`, named for errors.
    pub fn insert(
        &mut self,
        name: &str,
        base: u16,
        len: u16,
        device: Box<dyn PortDevice>,
    ) -> Result<(), BusError> {
        self.ranges
            .insert(name, base.into(), len.into(), 0x1_0000, device)
            .map_err(|e| match e {
                RangeError::BadRange => BusError::BadRange { base, len },
                RangeError::Overlap(other) => BusError::Overlap { base, len, other },
            })
    }

    /// The device holding `port` (an access is routed by its first port),
    /// and the offset into it.
    fn slot(&mut self, port: u16) -> Option<(&mut (dyn PortDevice + 'static), u16)> {
        let (device, offset) = self.ranges.find(port.into(), port.into())?;
        // Inside a range of at most 0x10000 ports, the offset fits.
        Some((device, u16::try_from(offset).ok()?))
    }

    /// A guest read of `port`.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        match self.slot(port) {
            Some((device, offset)) => device.read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A guest write to `port`.
    pub fn write(&mut self, port: u16, data: &[u8]) {
        if let Some((device, offset)) = self.slot(port) {
            device.write(offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Writes a probe saw: (offset, bytes).
    type Seen = Arc<Mutex<Vec<(u16, Vec<u8>)>>>;

    /// Remembers accesses (a test device, standing for any device).
    struct Probe(Seen);

    impl PortDevice for Probe {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.lock().expect("lock").push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_its_offset_and_nothing_else() {
        let seen: Seen = Arc::default();
        let mut bus = PortBus::new();
        bus.insert("probe", 0x3f8, 8, Box::new(Probe(seen.clone())))
            .expect("insert");
        bus.write(0x3fb, &[7]);
        bus.write(0x400, &[9]);
        let mut byte = [0u8];
        bus.read(0x3fd, &mut byte);
        assert_eq!(byte, [5]);
        bus.read(0x80, &mut byte);
        assert_eq!(byte, [0xff], "unclaimed ports read as ones");
        assert_eq!(*seen.lock().expect("lock"), vec![(3, vec![7])]);
    }

    #[test]
    fn overlapping_and_bad_ranges_are_refused() {
        let mut bus = PortBus::new();
        let probe = || Box::new(Probe(Arc::default()));
        bus.insert("com1", 0x3f8, 8, probe()).expect("insert");
        let err = bus.insert("other", 0x3fc, 8, probe()).expect_err("overlap");
        assert!(err.to_string().contains("com1"), "{err}");
        assert!(bus.insert("past the end", 0xfffc, 8, probe()).is_err());
        assert!(bus.insert("empty", 0x10, 0, probe()).is_err());
        bus.insert("next", 0x400, 8, probe())
            .expect("adjacent is fine");
    }
}
