//! The sleep control register of a hardware-reduced ACPI platform (one I/O
//! port, named in the FADT): the guest powers off by writing SLP_EN with
//! the sleep type of `\_S5_`, which raises the power-off [`Signal`].

use super::pio::PortDevice;
use super::signal::Signal;

/// SLP_EN: the write asks for the transition.
const SLEEP_ENABLE: u8 = 1 << 5;
/// SLP_TYP occupies bits 4:2.
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0x7;

/// The sleep control port.
pub struct SleepControl {
    soft_off_type: u8,
    power_off: Signal,
}

impl SleepControl {
    /// A register that raises `power_off` when the guest enters the sleep
    /// state whose type is `soft_off_type` (S5, as the DSDT says).
    pub fn new(soft_off_type: u8, power_off: Signal) -> SleepControl {
        SleepControl {
            soft_off_type,
            power_off,
        }
    }
}

impl PortDevice for SleepControl {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Sleep status: never "woken"; the guest only polls it after a
        // sleep this VMM does not offer.
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        let [value] = data else { return };
        let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
        if value & SLEEP_ENABLE != 0 && sleep_type == self.soft_off_type {
            // Fails only if the eventfd counter would overflow (already raised).
            let _ = vm_superio::Trigger::trigger(&self.power_off);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slp_en_with_the_soft_off_type_powers_off() {
        let signal = Signal::new().unwrap();
        let mut port = SleepControl::new(5, signal.clone());
        port.write(0, &[5 << 2]); // type without SLP_EN
        port.write(0, &[(3 << 2) | SLEEP_ENABLE]); // another sleep state
        port.write(0, &[0, 0]); // a 16-bit access
        assert!(!signal.is_raised());
        port.write(0, &[(5 << 2) | SLEEP_ENABLE]);
        assert!(signal.is_raised());
    }
}
