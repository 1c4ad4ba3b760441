//! Untrusted transmit queues (a guest's driver lays them out however it
//! likes): any bytes become the descriptor table, the available ring and
//! the rest of a small guest RAM, plus a few register writes, for a
//! virtio-net device over an in-memory frame sink, set up like a driver
//! does and then notified on its transmit queue. Dropped frames are fine;
//! panics, hangs, and a frame written that is shorter than a header and
//! an Ethernet header or longer than header + MAX_FRAME, or whose header
//! is not zeroed, are not (guest RAM is an mmap of its own: vm-memory
//! bounds every access).
//!
//! Input: byte 0: queue size 2^(b % 9); byte 1: bit 0 sink full (writes
//! refused), bit 1 notify twice; byte 2: register writes (b % 5), each
//! le16 offset (in the first 0x200 bytes of the window) and le32 value;
//! then the transmit descriptor table (at 0x0, 16 bytes per entry), its
//! available ring (at 0x1000: flags, idx, one le16 per entry) and guest
//! memory from 0x3000 (headers, frames, indirect tables). The transmit
//! used ring is at 0x2000; the receive queue is set up empty at 0x1_0000.
#![no_main]

#[path = "virtio_driver.rs"]
mod virtio_driver;

use std::io;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use virtio_driver::{negotiate, params, queue, take, write, Params};
use mecvisor_vmm::devices::signal::Signal;
use mecvisor_vmm::devices::virtio::mmio::{regs, MmioTransport};
use mecvisor_vmm::devices::virtio::net::{FrameIo, Net, HEADER_LEN, MAX_FRAME, MIN_FRAME};
use mecvisor_vmm::devices::virtio::{status, Interrupt};
use mecvisor_vmm::GuestRam;

const RAM_BYTES: u64 = 128 << 10;
const DESC_TABLE: u64 = 0x0;
/// The available ring; the used ring follows at 0x2000.
const AVAIL_RING: u64 = 0x1000;
const MEMORY: u64 = 0x3000;
const RX_RINGS: u64 = 0x1_0000;

/// Frames the device wrote, shared with the check after the run.
#[derive(Clone, Default)]
struct Sink {
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    full: bool,
}

impl FrameIo for Sink {
    fn read_frame(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.full {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.sent.lock().expect("sink").push(frame.to_vec());
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Params {
        size,
        flags,
        register_writes,
    } = params(&mut data);

    let ram = GuestRam::new(RAM_BYTES).expect("guest RAM");
    ram.write(DESC_TABLE, take(&mut data, usize::from(size) * 16))
        .expect("descriptor table");
    ram.write(AVAIL_RING, take(&mut data, 4 + 2 * usize::from(size)))
        .expect("available ring");
    let rest = take(&mut data, (RX_RINGS - MEMORY) as usize);
    ram.write(MEMORY, rest).expect("guest memory");

    let sink = Sink {
        sent: Arc::default(),
        full: flags & 1 != 0,
    };
    let mac = [0x52, 0x54, 0, 0, 0, 1];
    let device = Net::new(sink.clone(), mac).expect("device");
    let line = Signal::new().expect("signal");
    let mut transport =
        MmioTransport::new(device, ram.memory().clone(), Interrupt::new(line)).expect("transport");

    let negotiated = negotiate(&mut transport);
    queue(&mut transport, 0, 16, RX_RINGS);
    queue(&mut transport, 1, size, DESC_TABLE);
    write(&mut transport, regs::STATUS, negotiated | status::DRIVER_OK);
    assert!(
        transport.device().is_active(),
        "a well-behaved setup activates"
    );

    for (offset, value) in register_writes {
        write(&mut transport, offset, value);
    }
    write(&mut transport, regs::QUEUE_NOTIFY, 1);
    if flags & 2 != 0 {
        write(&mut transport, regs::QUEUE_NOTIFY, 1);
    }

    let sent = sink.sent.lock().expect("sink");
    for frame in sent.iter() {
        assert!(
            (HEADER_LEN + MIN_FRAME..=HEADER_LEN + MAX_FRAME).contains(&frame.len()),
            "a frame of {} bytes",
            frame.len()
        );
        assert!(frame[..HEADER_LEN].iter().all(|&b| b == 0), "header zeroed");
    }
    let counters = transport.device().counters();
    assert_eq!(counters.tx_frames, sent.len() as u64);
});
