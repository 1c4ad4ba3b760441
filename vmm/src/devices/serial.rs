//! The serial console: vm-superio's 8250 UART, on the port bus as COM1
//! (x86_64) or on the MMIO bus as a 16550A with one-byte registers
//! (aarch64). What the guest transmits goes to a writer (the console log);
//! the interrupt line is a [`Signal`].

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::mmio::MmioDevice;
use super::pio::PortDevice;
use super::signal::Signal;

/// COM1's base port.
pub const COM1_BASE: u16 = 0x3f8;
/// Ports a UART occupies.
pub const UART_PORTS: u16 = 8;

/// An 8250 UART writing the guest's output to `W`.
pub struct SerialPort<W: Write + Send> {
    uart: Serial<Signal, NoEvents, W>,
}

impl<W: Write + Send> SerialPort<W> {
    /// A UART raising `interrupt` and writing to `out`.
    pub fn new(interrupt: Signal, out: W) -> SerialPort<W> {
        SerialPort {
            uart: Serial::new(interrupt, out),
        }
    }

    /// The output writer.
    pub fn output(&self) -> &W {
        self.uart.writer()
    }
}

impl<W: Write + Send> PortDevice for SerialPort<W> {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // A full or failing log drops console output; the guest goes on.
            let _ = self.uart.write(offset, *byte);
        }
    }
}

/// On MMIO the registers are one byte apart (the device tree's default
/// reg-shift 0), so an offset is a register number as on the port bus.
impl<W: Write + Send> MmioDevice for SerialPort<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match u16::try_from(offset) {
            Ok(offset) => PortDevice::read(self, offset, data),
            Err(_) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Ok(offset) = u16::try_from(offset) {
            PortDevice::write(self, offset, data);
        }
    }
}
