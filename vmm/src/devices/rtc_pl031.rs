//! The PL031 real-time clock (aarch64's RTC): vm-superio's model on the
//! MMIO bus. It counts seconds from the host's clock plus whatever offset
//! the guest loads; its alarm (match) interrupt is not modelled, so it
//! never raises its line.

use vm_superio::rtc_pl031::NoEvents;
use vm_superio::Rtc;

use super::mmio::MmioDevice;

/// Size of the PL031's register window.
pub const PL031_SIZE: u64 = 0x1000;

/// A PL031.
pub struct Pl031 {
    rtc: Rtc<NoEvents>,
}

impl Default for Pl031 {
    fn default() -> Pl031 {
        Pl031::new()
    }
}

impl Pl031 {
    /// An RTC reading the host's time.
    pub fn new() -> Pl031 {
        Pl031 { rtc: Rtc::new() }
    }
}

/// The register offset of a 32-bit access at `offset`, if it is one: the
/// PL031's registers are 32 bits wide and word-aligned.
fn register(offset: u64, len: usize) -> Option<u16> {
    if len != 4 || offset & 3 != 0 || offset >= PL031_SIZE {
        return None;
    }
    u16::try_from(offset).ok()
}

impl MmioDevice for Pl031 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Anything but a register read (and write-only or unknown
        // registers, which the model leaves alone) reads as zero.
        data.fill(0);
        if let (Some(register), Ok(word)) =
            (register(offset, data.len()), <&mut [u8; 4]>::try_from(data))
        {
            self.rtc.read(register, word);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(register), Ok(word)) =
            (register(offset, data.len()), <&[u8; 4]>::try_from(data))
        {
            self.rtc.write(register, word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(rtc: &mut Pl031, offset: u64) -> u32 {
        let mut word = [0xaa; 4];
        rtc.read(offset, &mut word);
        u32::from_le_bytes(word)
    }

    #[test]
    fn the_data_register_counts_host_seconds_and_loads_move_it() {
        let mut rtc = Pl031::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let seen = u64::from(read(&mut rtc, 0x000));
        assert!(seen.abs_diff(now) <= 2, "RTCDR {seen} vs host {now}");
        rtc.write(0x008, &1_000_000u32.to_le_bytes());
        let after = read(&mut rtc, 0x000);
        assert!((1_000_000..1_000_003).contains(&after), "{after}");
        assert_eq!(read(&mut rtc, 0x00c), 1, "always enabled");
    }

    #[test]
    fn primecell_ids_identify_a_pl031() {
        let mut rtc = Pl031::new();
        let ids: Vec<u32> = (0..8).map(|i| read(&mut rtc, 0xfe0 + 4 * i)).collect();
        // Peripheral id 0x00041031, PrimeCell id 0xb105f00d.
        assert_eq!(ids, [0x31, 0x10, 0x04, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    }

    #[test]
    fn odd_accesses_read_zero_and_write_nothing() {
        let mut rtc = Pl031::new();
        assert_eq!(read(&mut rtc, 0x002), 0, "unaligned");
        assert_eq!(read(&mut rtc, 0x01c), 0, "write-only RTCICR");
        let mut byte = [0xaa];
        rtc.read(0x000, &mut byte);
        assert_eq!(byte, [0], "byte reads are not served");
        rtc.write(0x008, &[1, 2]);
        rtc.write(0x1008, &0u32.to_le_bytes());
        assert_eq!(read(&mut rtc, 0x008), 0, "the load register is untouched");
    }
}
