//! The i8042 keyboard controller, reduced to what guests use it for here:
//! the "reset CPU" command (0xfe to port 0x64), which raises the reset
//! [`Signal`] (the VMM then ends the guest, like a reboot or poweroff).

use vm_superio::I8042Device;

use super::pio::PortDevice;
use super::signal::Signal;

/// The controller's base port (data port 0x60, command port 0x64).
pub const I8042_BASE: u16 = 0x60;
/// Ports it occupies.
pub const I8042_PORTS: u16 = 5;

/// The keyboard controller.
pub struct KeyboardController {
    device: I8042Device<Signal>,
}

impl KeyboardController {
    /// A controller that raises `reset` on the guest's reset command.
    pub fn new(reset: Signal) -> KeyboardController {
        KeyboardController {
            device: I8042Device::new(reset),
        }
    }
}

impl PortDevice for KeyboardController {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |o| self.device.read(o));
        data.fill(value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // The eventfd write can only fail if its counter overflows.
            let _ = self.device.write(offset, *byte);
        }
    }
}
