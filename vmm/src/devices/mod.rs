//! Devices the guest talks to. Each device sees only offsets within its
//! own range and the signals it was given; it never reaches into the VMM.
//! - [`pio`]: the x86 I/O port bus that routes a port access to its device;
//! - [`mmio`]: the MMIO bus, the same for guest-physical ranges;
//! - [`serial`]: the 8250 UART (COM1 on x86, a 16550A on MMIO on aarch64)
//!   whose output goes to a writer (the console log);
//! - [`rtc_pl031`]: the PL031 RTC (aarch64);
//! - [`virtio`]: virtio devices behind the virtio-mmio transport (block);
//! - [`i8042`]: the keyboard controller, only for the guest's "reset CPU"
//!   command (how Linux reboots on x86);
//! - [`power`]: the ACPI sleep control port, how the guest powers off;
//! - [`signal`]: the events devices raise (interrupt lines, reset).

pub mod i8042;
pub mod mmio;
pub mod pio;
pub mod power;
mod ranges;
pub mod rtc_pl031;
pub mod serial;
pub mod signal;
pub mod virtio;

use std::sync::{Arc, Mutex, MutexGuard};

use crate::vcpu::ExitHandler;
use mmio::MmioBus;
use pio::PortBus;
use signal::Signal;

/// Every device of a guest, as the vCPU run loop sees them: port accesses
/// go to the port bus, MMIO outside RAM to the MMIO bus; the run loop
/// stops once the reset signal (or another end signal) is raised.
pub struct Devices {
    /// The port bus.
    pub ports: PortBus,
    /// The MMIO bus.
    pub mmio: MmioBus,
    reset: Signal,
    /// Further signals that end the guest (e.g. power off).
    ends: Vec<Signal>,
}

impl Devices {
    /// Devices on `ports` (none on MMIO); `reset` is the signal that ends
    /// the guest.
    pub fn new(ports: PortBus, reset: Signal) -> Devices {
        Devices::with_mmio(ports, MmioBus::new(), reset)
    }

    /// Devices on `ports` and `mmio`; `reset` is the signal that ends the
    /// guest.
    pub fn with_mmio(ports: PortBus, mmio: MmioBus, reset: Signal) -> Devices {
        Devices {
            ports,
            mmio,
            reset,
            ends: Vec::new(),
        }
    }

    /// Also stops the vCPUs once `signal` is raised.
    pub fn stop_on(&mut self, signal: Signal) {
        self.ends.push(signal);
    }

    /// Whether the guest asked for a reset.
    pub fn reset_requested(&self) -> bool {
        self.reset.is_raised()
    }

    fn ended(&self) -> bool {
        self.reset.is_raised() || self.ends.iter().any(Signal::is_raised)
    }
}

impl ExitHandler for Devices {
    fn port_write(&mut self, port: u16, data: &[u8]) -> bool {
        self.ports.write(port, data);
        !self.ended()
    }

    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        self.ports.read(port, data);
    }

    fn mmio_write(&mut self, address: u64, data: &[u8]) -> bool {
        self.mmio.write(address, data);
        !self.ended()
    }

    fn mmio_read(&mut self, address: u64, data: &mut [u8]) {
        self.mmio.read(address, data);
    }
}

/// The devices an architecture puts in every guest, and the interrupt
/// lines to wire (as KVM irqfds) once the interrupt controller exists.
pub struct Platform {
    /// Port devices (x86_64).
    pub ports: PortBus,
    /// MMIO devices.
    pub mmio: MmioBus,
    /// Each device's interrupt signal and the line (GSI) it raises.
    pub interrupts: Vec<(Signal, u32)>,
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
