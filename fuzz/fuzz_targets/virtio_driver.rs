//! What the virtio fuzz targets share: splitting the input, and a
//! well-behaved driver's setup of a virtio-mmio transport (features
//! accepted as offered, queues at fixed places), so the fuzzed bytes reach
//! the device's request paths. Included by each target with `#[path]`.

use mecvisor_vmm::devices::mmio::MmioDevice;
use mecvisor_vmm::devices::virtio::mmio::{regs, MmioTransport};
use mecvisor_vmm::devices::virtio::{status, VirtioDevice};

/// Takes `n` bytes off the front of `data` (fewer at its end).
pub fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (now, rest) = data.split_at(n.min(data.len()));
    *data = rest;
    now
}

/// Input bytes 0..3: the queue size 2^(b % 9), flag bits for the target,
/// and up to 4 register writes (each a le16 offset in the first 0x200
/// bytes of the window and a le32 value) that follow.
pub struct Params {
    /// Queue size.
    pub size: u16,
    /// The target's flag bits.
    pub flags: u8,
    /// Register writes to make after the setup.
    pub register_writes: Vec<(u64, u32)>,
}

/// Reads [`Params`] off the front of `data`.
pub fn params(data: &mut &[u8]) -> Params {
    let [size_exponent, flags, writes] =
        <[u8; 3]>::try_from(take(data, 3)).unwrap_or([2, 0, 0]);
    let mut register_writes = Vec::new();
    for _ in 0..writes % 5 {
        if let Ok([o0, o1, v0, v1, v2, v3]) = <[u8; 6]>::try_from(take(data, 6)) {
            let offset = u64::from(u16::from_le_bytes([o0, o1]) % 0x200);
            register_writes.push((offset, u32::from_le_bytes([v0, v1, v2, v3])));
        }
    }
    Params {
        size: 1u16 << (size_exponent % 9),
        flags,
        register_writes,
    }
}

/// Writes a register.
pub fn write<D: VirtioDevice>(transport: &mut MmioTransport<D>, offset: u64, value: u32) {
    transport.write(offset, &value.to_le_bytes());
}

/// Reset, ACKNOWLEDGE, DRIVER, every offered feature accepted,
/// FEATURES_OK; returns the status to add DRIVER_OK to.
pub fn negotiate<D: VirtioDevice>(transport: &mut MmioTransport<D>) -> u32 {
    write(transport, regs::STATUS, 0);
    write(transport, regs::STATUS, status::ACKNOWLEDGE);
    write(transport, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    for page in 0..2 {
        let mut features = [0u8; 4];
        write(transport, regs::DEVICE_FEATURES_SEL, page);
        transport.read(regs::DEVICE_FEATURES, &mut features);
        write(transport, regs::DRIVER_FEATURES_SEL, page);
        write(transport, regs::DRIVER_FEATURES, u32::from_le_bytes(features));
    }
    let negotiated = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write(transport, regs::STATUS, negotiated);
    negotiated
}

/// Sets up queue `index` of `size` entries: descriptors at `desc`, the
/// available ring at `desc + 0x1000`, the used ring at `desc + 0x2000`.
pub fn queue<D: VirtioDevice>(transport: &mut MmioTransport<D>, index: u32, size: u16, desc: u64) {
    write(transport, regs::QUEUE_SEL, index);
    write(transport, regs::QUEUE_NUM, u32::from(size));
    write(transport, regs::QUEUE_DESC_LOW, desc as u32);
    write(transport, regs::QUEUE_AVAIL_LOW, (desc + 0x1000) as u32);
    write(transport, regs::QUEUE_USED_LOW, (desc + 0x2000) as u32);
    write(transport, regs::QUEUE_READY, 1);
}
