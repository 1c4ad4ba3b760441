//! Untrusted virtqueues (a guest's driver lays them out however it likes):
//! any bytes become the descriptor table, the available ring and the rest
//! of a small guest RAM, plus a few register writes, for a virtio-blk
//! device on a temporary image, set up like a driver does and then
//! notified. Failed requests are fine; panics, hangs, a grown image and
//! writes to a read-only image are not (guest RAM is an mmap of its own:
//! vm-memory bounds every access).
//!
//! Input: byte 0: queue size 2^(b % 9); byte 1: bit 0 read-only, bit 1
//! notify twice; byte 2: register writes (b % 5), each le16 offset (in
//! the first 0x200 bytes of the window) and le32 value; then the
//! descriptor table (at 0x0, 16 bytes per entry), the available ring (at
//! 0x1000: flags, idx, one le16 per entry) and guest memory from 0x3000
//! (headers, buffers, indirect tables). The used ring is at 0x2000.
#![no_main]

#[path = "virtio_driver.rs"]
mod virtio_driver;

use std::io::Write;
use std::os::unix::fs::FileExt;

use libfuzzer_sys::fuzz_target;
use virtio_driver::{negotiate, params, queue, take, write, Params};
use mecvisor_vmm::devices::signal::Signal;
use mecvisor_vmm::devices::virtio::block::Block;
use mecvisor_vmm::devices::virtio::mmio::{regs, MmioTransport};
use mecvisor_vmm::devices::virtio::{status, Interrupt};
use mecvisor_vmm::GuestRam;

const RAM_BYTES: u64 = 64 << 10;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const MEMORY: u64 = 0x3000;
const IMAGE_BYTES: usize = 16 * 512;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Params {
        size,
        flags,
        register_writes,
    } = params(&mut data);
    let read_only = flags & 1 != 0;

    let ram = GuestRam::new(RAM_BYTES).expect("guest RAM");
    ram.write(DESC_TABLE, take(&mut data, usize::from(size) * 16))
        .expect("descriptor table");
    ram.write(AVAIL_RING, take(&mut data, 4 + 2 * usize::from(size)))
        .expect("available ring");
    let rest = take(&mut data, (RAM_BYTES - MEMORY) as usize);
    ram.write(MEMORY, rest).expect("guest memory");

    let mut image = tempfile::tempfile().expect("image");
    let original: Vec<u8> = (0..IMAGE_BYTES).map(|i| (i / 512) as u8).collect();
    image.write_all(&original).expect("fill the image");
    let device = Block::new(image.try_clone().expect("clone"), read_only, "fuzz").expect("device");
    let line = Signal::new().expect("signal");
    let mut transport =
        MmioTransport::new(device, ram.memory().clone(), Interrupt::new(line)).expect("transport");

    let negotiated = negotiate(&mut transport);
    queue(&mut transport, 0, size, DESC_TABLE);
    write(&mut transport, regs::STATUS, negotiated | status::DRIVER_OK);
    assert!(
        transport.device().is_active(),
        "a well-behaved setup activates"
    );

    for (offset, value) in register_writes {
        write(&mut transport, offset, value);
    }
    write(&mut transport, regs::QUEUE_NOTIFY, 0);
    if flags & 2 != 0 {
        write(&mut transport, regs::QUEUE_NOTIFY, 0);
    }

    let length = image.metadata().expect("image metadata").len();
    assert_eq!(length, IMAGE_BYTES as u64, "the image never grows");
    if read_only {
        let mut now = vec![0u8; IMAGE_BYTES];
        image.read_exact_at(&mut now, 0).expect("read the image");
        assert!(now == original, "a read-only image was written");
    }
});
