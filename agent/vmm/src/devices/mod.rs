//! Devices the guest talks to. Each device sees only offsets within its
//! own range and the signals it was given; it never reaches into the VMM.
//! - [`pio`]: the x86 I/O port bus that routes a port access to its device;
//! - [`serial`]: the 8250 UART (COM1) whose output goes to a writer (the
//!   console log);
//! - [`i8042`]: the keyboard controller, only for the guest's "reset CPU"
//!   command (how Linux reboots on x86);
//! - [`signal`]: the events devices raise (interrupt lines, reset).

pub mod i8042;
pub mod pio;
pub mod serial;
pub mod signal;

use std::sync::{Arc, Mutex, MutexGuard};

use crate::vcpu::ExitHandler;
use pio::PortBus;
use signal::Signal;

/// Every device of a guest, as the vCPU run loop sees them: port accesses
/// go to the port bus; the run loop stops once the reset signal is raised.
/// (No MMIO device yet: MMIO outside RAM reads as ones, writes are dropped.)
pub struct Devices {
    /// The port bus.
    pub ports: PortBus,
    reset: Signal,
}

impl Devices {
    /// Devices on `ports`; `reset` is the signal that ends the guest.
    pub fn new(ports: PortBus, reset: Signal) -> Devices {
        Devices { ports, reset }
    }

    /// Whether the guest asked for a reset.
    pub fn reset_requested(&self) -> bool {
        self.reset.is_raised()
    }
}

impl ExitHandler for Devices {
    fn port_write(&mut self, port: u16, data: &[u8]) -> bool {
        self.ports.write(port, data);
        !self.reset.is_raised()
    }

    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        self.ports.read(port, data);
    }

    fn mmio_write(&mut self, _address: u64, _data: &[u8]) -> bool {
        !self.reset.is_raised()
    }

    fn mmio_read(&mut self, _address: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
}

/// The devices shared by every vCPU thread of a guest: one access at a
/// time, in the order the vCPUs make them.
#[derive(Clone)]
pub struct SharedDevices(Arc<Mutex<Devices>>);

impl SharedDevices {
    /// Shares `devices`.
    pub fn new(devices: Devices) -> SharedDevices {
        SharedDevices(Arc::new(Mutex::new(devices)))
    }

    /// Locks them. A vCPU thread that panicked while holding the lock left
    /// them as they were; device state stays usable, so the lock is taken
    /// anyway.
    pub fn lock(&self) -> MutexGuard<'_, Devices> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ExitHandler for SharedDevices {
    fn port_write(&mut self, port: u16, data: &[u8]) -> bool {
        self.lock().port_write(port, data)
    }

    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        self.lock().port_read(port, data)
    }

    fn mmio_write(&mut self, address: u64, data: &[u8]) -> bool {
        self.lock().mmio_write(address, data)
    }

    fn mmio_read(&mut self, address: u64, data: &mut [u8]) {
        self.lock().mmio_read(address, data)
    }
}
