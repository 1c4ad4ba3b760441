//! The block device through its transport, on real guest memory and a
//! virtqueue laid out like a guest driver does, over a temporary image.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use super::request::MAX_DESCRIPTORS;
use super::{
    Block, BlockError, QUEUE_SIZE, SEG_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
};
use crate::devices::mmio::MmioDevice;
use crate::devices::signal::Signal;
use crate::devices::virtio::mmio::{regs, MmioTransport};
use crate::devices::virtio::testing::{ram, Driver, Ring, F_INDIRECT, F_NEXT, F_WRITE, RAM_BYTES};
use crate::devices::virtio::{status, Interrupt, INTERRUPT_USED_BUFFER, VIRTIO_F_VERSION_1};
use vm_memory::GuestMemoryMmap;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

const SECTORS: u64 = 256;
const HEADER: u64 = 0x10_0000;
const STATUS: u64 = 0x10_0100;
const DATA: u64 = 0x20_0000;
const ID: &str = "mecvisor-disk-0";
const LIVE: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

/// The byte sector `n` of the image starts filled with.
fn pattern(sector: u64) -> u8 {
    sector as u8 ^ 0x5a
}

struct Disk {
    driver: Driver<Block>,
    ring: Ring,
    memory: GuestMemoryMmap,
    line: Signal,
    image: File,
}

/// A started device on an image of [`SECTORS`] patterned sectors, queue
/// 0 of `queue_size` entries.
fn disk(read_only: bool, queue_size: u16) -> Disk {
    let mut image = tempfile::tempfile().expect("image");
    for sector in 0..SECTORS {
        image.write_all(&[pattern(sector); 512]).expect("fill");
    }
    let device = Block::new(image.try_clone().expect("clone"), read_only, ID).expect("block");
    let memory = ram();
    let line = Signal::new().expect("signal");
    let transport = MmioTransport::new(device, memory.clone(), Interrupt::new(line.clone()))
        .expect("transport");
    let mut driver = Driver { transport };
    let ring = Ring::new(&memory, queue_size);
    assert_eq!(driver.start(queue_size), LIVE);
    Disk {
        driver,
        ring,
        memory,
        line,
        image,
    }
}

impl Disk {
    /// Header, then `data`, then a status byte; returns (used length,
    /// status).
    fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u32, u8) {
        let mut buffers = vec![(HEADER, 16, false)];
        buffers.extend_from_slice(data);
        buffers.push((STATUS, 1, true));
        self.header(kind, sector);
        let head = self.ring.chain(0, &buffers);
        self.submit(head)
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        self.ring.put(HEADER, &header);
        self.ring.put(STATUS, &[0xff]);
    }

    /// Makes the chain at `head` available and notifies; it must come
    /// back on the used ring. Returns (used length, status byte).
    fn submit(&mut self, head: u16) -> (u32, u8) {
        let before = self.ring.used_idx();
        self.ring.publish(head);
        self.driver.notify(0);
        assert_eq!(self.ring.used_idx(), before.wrapping_add(1), "completed");
        let (id, len) = self.ring.used(before);
        assert_eq!(id, u32::from(head));
        (len, self.ring.get(STATUS, 1)[0])
    }

    fn image_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.image
            .read_exact_at(&mut bytes, offset)
            .expect("read image");
        bytes
    }

    /// The device still serves a plain read.
    fn still_serves(&mut self) {
        self.ring.put(DATA, &[0; 512]);
        assert_eq!(self.request(T_IN, 7, &[(DATA, 512, true)]), (513, S_OK));
        assert_eq!(self.ring.get(DATA, 512), vec![pattern(7); 512]);
        assert_eq!(self.driver.read(regs::STATUS), LIVE);
    }
}

#[test]
fn offers_flush_seg_max_and_version_1_and_reports_the_capacity() {
    let mut d = disk(false, 16);
    let features = d.driver.device_features();
    for bit in [VIRTIO_F_VERSION_1, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX] {
        assert_ne!(features & bit, 0, "{bit:#x}");
    }
    assert_eq!(features & VIRTIO_BLK_F_RO, 0);
    assert_eq!(d.driver.read(regs::DEVICE_ID), 2);
    let low = d.driver.read(regs::CONFIG);
    let high = d.driver.read(regs::CONFIG + 4);
    assert_eq!(u64::from(high) << 32 | u64::from(low), SECTORS);
    let mut capacity = [0u8; 8];
    d.driver.transport.read(regs::CONFIG, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), SECTORS);
    assert_eq!(d.driver.read(regs::CONFIG + 12), SEG_MAX);
    assert_eq!(d.driver.read(regs::CONFIG + 20), 512);
    assert_eq!(d.driver.read(regs::CONFIG + 24), 0, "past the config space");
    assert_eq!(d.driver.read(regs::CONFIG + 0xefc), 0);
    let mut byte = [0xaa];
    d.driver.transport.read(u64::MAX, &mut byte);
    assert_eq!(byte, [0]);
    d.driver.transport.write(regs::CONFIG, &[1, 2, 3, 4]);
    assert_eq!(d.driver.read(regs::CONFIG), SECTORS as u32, "read-only");
    assert_eq!(d.driver.transport.device().sectors(), SECTORS);
}

#[test]
fn a_written_sector_reads_back_through_the_device_and_is_in_the_file() {
    let mut d = disk(false, 16);
    let written: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    d.ring.put(DATA, &written);
    assert_eq!(d.request(T_OUT, 3, &[(DATA, 1024, false)]), (1, S_OK));
    assert_eq!(d.image_bytes(3 * 512, 1024), written);
    assert_eq!(
        d.image_bytes(5 * 512, 512),
        vec![pattern(5); 512],
        "untouched"
    );
    // Back in two scattered pieces, one straddling a sector boundary.
    let (a, b) = (DATA + 0x1_0000, DATA + 0x2_0000);
    assert_eq!(
        d.request(T_IN, 3, &[(a, 700, true), (b, 324 + 512, true)]),
        (1024 + 512 + 1, S_OK)
    );
    assert_eq!(d.ring.get(a, 700), written[..700]);
    assert_eq!(d.ring.get(b, 324), written[700..]);
    assert_eq!(d.ring.get(b + 324, 512), vec![pattern(5); 512]);
    // Larger than the bounce buffer.
    let big = vec![0xc3u8; 200 * 512];
    d.ring.put(DATA, &big);
    assert_eq!(d.request(T_OUT, 50, &[(DATA, 200 * 512, false)]), (1, S_OK));
    assert_eq!(d.image_bytes(50 * 512, big.len()), big);
}

#[test]
fn flush_and_get_id() {
    let mut d = disk(false, 16);
    assert_eq!(d.request(T_FLUSH, 0, &[]), (1, S_OK));
    d.ring.put(DATA, &[0xff; 32]);
    assert_eq!(d.request(T_GET_ID, 0, &[(DATA, 32, true)]), (21, S_OK));
    let mut id = ID.as_bytes().to_vec();
    id.resize(20, 0);
    assert_eq!(d.ring.get(DATA, 20), id);
    assert_eq!(d.ring.get(DATA + 20, 12), vec![0xff; 12]);
    d.ring.put(DATA, &[0xff; 32]);
    assert_eq!(
        d.request(
            T_GET_ID,
            0,
            &[(DATA, 8, true), (DATA + 8, 0, true), (DATA + 16, 4, true)]
        ),
        (13, S_OK)
    );
    assert_eq!(d.ring.get(DATA, 8), ID.as_bytes()[..8]);
    assert_eq!(d.ring.get(DATA + 8, 8), vec![0xff; 8]);
    assert_eq!(d.ring.get(DATA + 16, 4), ID.as_bytes()[8..12]);
}

#[test]
fn a_read_only_disk_offers_ro_and_refuses_writes() {
    let mut d = disk(true, 16);
    assert_ne!(d.driver.device_features() & VIRTIO_BLK_F_RO, 0);
    d.ring.put(DATA, &[1; 512]);
    assert_eq!(d.request(T_OUT, 0, &[(DATA, 512, false)]), (1, S_IOERR));
    assert_eq!(d.image_bytes(0, 512), vec![pattern(0); 512]);
    assert_eq!(d.request(T_FLUSH, 0, &[]), (1, S_OK));
    d.still_serves();
}

#[test]
fn requests_past_the_end_fail() {
    let mut d = disk(false, 16);
    let last = SECTORS - 1;
    d.ring.put(DATA, &[9; 1024]);
    for (sector, len) in [
        (last, 1024),
        (SECTORS, 512),
        (u64::MAX, 512),
        (u64::MAX / 512 + 1, 512),
    ] {
        assert_eq!(
            d.request(T_IN, sector, &[(DATA, len, true)]),
            (1, S_IOERR),
            "{sector}"
        );
        assert_eq!(
            d.request(T_OUT, sector, &[(DATA, len, false)]),
            (1, S_IOERR),
            "{sector}"
        );
    }
    assert_eq!(
        d.image.metadata().expect("metadata").len(),
        SECTORS * 512,
        "not grown"
    );
    assert_eq!(d.request(T_IN, last, &[(DATA, 512, true)]), (513, S_OK));
    assert_eq!(
        d.request(T_IN, SECTORS + 1, &[]),
        (1, S_IOERR),
        "empty, past the end"
    );
    assert_eq!(
        d.request(T_IN, SECTORS + 1, &[(DATA, 0, true)]),
        (1, S_IOERR)
    );
}

#[test]
fn lengths_that_are_not_whole_sectors_fail() {
    let mut d = disk(false, 16);
    d.ring.put(DATA, &[9; 1024]);
    assert_eq!(d.request(T_IN, 0, &[(DATA, 100, true)]), (1, S_IOERR));
    assert_eq!(d.request(T_OUT, 0, &[(DATA, 513, false)]), (1, S_IOERR));
    assert_eq!(d.image_bytes(0, 512), vec![pattern(0); 512]);
    assert_eq!(d.image_bytes(512, 1), vec![pattern(1)]);
    d.still_serves();
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mut d = disk(false, 16);
    for kind in [2, 11, 13, 0xdead_beef] {
        assert_eq!(
            d.request(kind, 0, &[(DATA, 512, true)]),
            (1, S_UNSUPP),
            "{kind}"
        );
    }
    d.still_serves();
}

#[test]
fn buffers_outside_guest_ram_fail() {
    let mut d = disk(false, 16);
    let end = RAM_BYTES as u64;
    for (addr, len) in [
        (end, 512),
        (end - 256, 512),
        (u64::MAX - 511, 512),
        (u64::MAX, 512),
    ] {
        assert_eq!(
            d.request(T_IN, 0, &[(addr, len, true)]),
            (1, S_IOERR),
            "{addr:#x}"
        );
        assert_eq!(
            d.request(T_OUT, 0, &[(addr, len, false)]),
            (1, S_IOERR),
            "{addr:#x}"
        );
    }
    for addr in [end, end - 8, u64::MAX - 8] {
        assert_eq!(
            d.request(T_GET_ID, 0, &[(addr, 20, true)]),
            (1, S_IOERR),
            "{addr:#x}"
        );
    }
    // A good buffer before a bad one: nothing is written to the disk.
    d.ring.put(DATA, &[1; 512]);
    assert_eq!(
        d.request(T_OUT, 0, &[(DATA, 512, false), (end, 512, false)]),
        (1, S_IOERR)
    );
    assert_eq!(d.image_bytes(0, 512), vec![pattern(0); 512]);
    // A header outside RAM.
    d.ring.put(STATUS, &[0xff]);
    let head = d.ring.chain(0, &[(end, 16, false), (STATUS, 1, true)]);
    assert_eq!(d.submit(head), (1, S_IOERR));
    d.still_serves();
}

#[test]
fn buffers_in_the_wrong_direction_fail() {
    let mut d = disk(false, 16);
    d.ring.put(DATA, &[0xee; 512]);
    assert_eq!(d.request(T_IN, 0, &[(DATA, 512, false)]), (1, S_IOERR));
    assert_eq!(
        d.ring.get(DATA, 512),
        vec![0xee; 512],
        "a read-only buffer is not written"
    );
    assert_eq!(d.request(T_OUT, 0, &[(DATA, 512, true)]), (1, S_IOERR));
    assert_eq!(d.image_bytes(0, 512), vec![pattern(0); 512]);
    assert_eq!(
        d.request(T_IN, 0, &[(DATA, 512, true), (DATA + 512, 512, false)]),
        (1, S_IOERR)
    );
    assert_eq!(d.request(T_GET_ID, 0, &[(DATA, 20, false)]), (1, S_IOERR));
    // The header in a device-writable descriptor, or too short.
    d.header(T_IN, 0);
    let head = d.ring.chain(
        0,
        &[(HEADER, 16, true), (DATA, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(d.submit(head), (1, S_IOERR));
    d.header(T_IN, 0);
    let head = d.ring.chain(
        0,
        &[(HEADER, 15, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(d.submit(head), (1, S_IOERR));
    // Only a status byte.
    d.header(T_IN, 0);
    let head = d.ring.chain(0, &[(STATUS, 1, true)]);
    assert_eq!(d.submit(head), (1, S_IOERR));
    d.still_serves();
}

#[test]
fn requests_without_a_status_byte_are_handed_back_untouched() {
    let mut d = disk(false, 16);
    let end = RAM_BYTES as u64;
    let no_status: [&[(u64, u32, bool)]; 5] = [
        &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, false)],
        &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 0, true)],
        &[(HEADER, 16, false), (DATA, 512, true), (end, 1, true)],
        &[(HEADER, 16, false)],
        &[(HEADER, 16, false), (DATA, 512, false)],
    ];
    for buffers in no_status {
        d.header(T_IN, 0);
        d.ring.put(DATA, &[0xee; 512]);
        let head = d.ring.chain(0, buffers);
        assert_eq!(d.submit(head), (0, 0xff), "{buffers:?}");
        assert_eq!(d.ring.get(DATA, 512), vec![0xee; 512], "no data moved");
    }
    d.header(T_OUT, 0);
    let head = d.ring.chain(
        0,
        &[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, false)],
    );
    assert_eq!(d.submit(head), (0, 0xff));
    assert_eq!(
        d.image_bytes(0, 512),
        vec![pattern(0); 512],
        "nothing written"
    );
    d.still_serves();
}

#[test]
fn descriptor_loops_end() {
    let mut d = disk(false, 16);
    // 0 -> 1 -> 0 -> ...: no end, no status.
    d.header(T_IN, 0);
    d.ring.descriptor(0, HEADER, 16, F_NEXT, 1);
    d.ring.descriptor(1, DATA, 512, F_NEXT, 0);
    assert_eq!(d.submit(0), (0, 0xff));
    // A writable descriptor pointing at itself after a header: as many
    // descriptors as the queue has, then the walk stops.
    d.header(T_IN, 0);
    d.ring.descriptor(1, STATUS, 1, F_NEXT | F_WRITE, 1);
    assert_eq!(d.submit(0), (1, S_IOERR));
    // A next index past the table ends the chain there.
    d.header(T_IN, 0);
    d.ring.descriptor(1, DATA, 512, F_NEXT, 999);
    assert_eq!(d.submit(0), (0, 0xff));
    d.still_serves();
}

#[test]
fn descriptor_loops_longer_than_a_request_end() {
    let mut d = disk(false, QUEUE_SIZE);
    d.header(T_IN, 0);
    d.ring.descriptor(0, HEADER, 16, F_NEXT, 1);
    d.ring.descriptor(1, STATUS, 1, F_NEXT | F_WRITE, 2);
    d.ring.descriptor(2, STATUS, 1, F_NEXT | F_WRITE, 1);
    assert_eq!(d.submit(0), (1, S_IOERR));
    d.still_serves();
}

#[test]
fn chains_longer_than_seg_max_fail() {
    let mut d = disk(false, QUEUE_SIZE);
    let data = |n: usize| -> Vec<(u64, u32, bool)> {
        (0..n).map(|i| (DATA + 512 * i as u64, 512, true)).collect()
    };
    let most = MAX_DESCRIPTORS - 2;
    assert_eq!(most, SEG_MAX as usize);
    assert_eq!(
        d.request(T_IN, 0, &data(most)),
        (most as u32 * 512 + 1, S_OK)
    );
    assert_eq!(
        d.ring.get(DATA + 512 * (most as u64 - 1), 512),
        vec![pattern(most as u64 - 1); 512]
    );
    assert_eq!(d.request(T_IN, 0, &data(most + 1)), (1, S_IOERR));
    assert_eq!(d.request(T_IN, 0, &data(250)), (1, S_IOERR));
    d.still_serves();
}

#[test]
fn indirect_tables_are_bounded_too() {
    let mut d = disk(false, 16);
    let table = 0x18_0000;
    // A well-formed request through an indirect table.
    d.header(T_IN, 2);
    d.ring.descriptor_at(table, 0, HEADER, 16, F_NEXT, 1);
    d.ring
        .descriptor_at(table, 1, DATA, 512, F_NEXT | F_WRITE, 2);
    d.ring.descriptor_at(table, 2, STATUS, 1, F_WRITE, 0);
    d.ring.descriptor(0, table, 48, F_INDIRECT, 0);
    assert_eq!(d.submit(0), (513, S_OK));
    assert_eq!(d.ring.get(DATA, 512), vec![pattern(2); 512]);
    // A loop inside a table of 16: the walk ends after 16 descriptors
    // (what it then makes of the request does not matter).
    d.ring
        .descriptor_at(table, 2, STATUS, 1, F_NEXT | F_WRITE, 1);
    d.ring.descriptor(0, table, 16 * 16, F_INDIRECT, 0);
    d.submit(0);
    // A table running out of RAM, a huge table, a nested table.
    let end = RAM_BYTES as u64;
    d.ring.descriptor(0, end - 32, 64, F_INDIRECT, 0);
    assert_eq!(d.submit(0).0, 0);
    d.ring.descriptor(0, 0, !15, F_INDIRECT, 0);
    assert_eq!(d.submit(0).0, 0);
    d.ring.descriptor_at(table, 0, table, 48, F_INDIRECT, 0);
    d.ring.descriptor(0, table, 48, F_INDIRECT, 0);
    assert_eq!(d.submit(0).0, 0);
    d.still_serves();
}

#[test]
fn bad_available_entries_are_skipped_or_need_a_reset() {
    let mut d = disk(false, 16);
    // A head past the queue: not a request, nothing to hand back.
    let before = d.ring.used_idx();
    d.ring.publish(16);
    d.driver.notify(0);
    assert_eq!(d.ring.used_idx(), before);
    d.still_serves();
    // An available index running ahead by more than the queue size.
    let used = d.ring.used_idx();
    d.ring.set_avail_idx(d.ring.published().wrapping_add(17));
    d.driver.notify(0);
    assert_ne!(d.driver.read(regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(d.ring.used_idx(), used, "nothing served");
}

#[test]
fn the_interrupt_is_raised_once_requests_complete() {
    let mut d = disk(false, 16);
    assert!(!d.line.take());
    assert_eq!(d.driver.read(regs::INTERRUPT_STATUS), 0);
    d.ring.put(DATA, &[0; 512]);
    // Two requests, one notification.
    d.header(T_IN, 1);
    d.ring.chain(
        0,
        &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    d.ring.chain(
        3,
        &[
            (HEADER, 16, false),
            (DATA + 512, 512, true),
            (STATUS, 1, true),
        ],
    );
    d.ring.publish(0);
    d.ring.publish(3);
    assert!(!d.line.is_raised(), "not before the notification");
    d.driver.notify(0);
    assert_eq!(d.ring.used_idx(), 2);
    assert!(d.line.take());
    assert_eq!(d.driver.read(regs::INTERRUPT_STATUS), INTERRUPT_USED_BUFFER);
    d.driver.write(regs::INTERRUPT_ACK, INTERRUPT_USED_BUFFER);
    assert_eq!(d.driver.read(regs::INTERRUPT_STATUS), 0);
    // A notification with nothing new raises nothing.
    d.driver.notify(0);
    assert!(!d.line.take());
}

#[test]
fn a_status_reset_returns_the_device_to_its_initial_state() {
    let mut d = disk(false, 16);
    d.still_serves();
    assert!(d.driver.transport.device().is_active());
    d.driver.write(regs::STATUS, 0);
    assert!(!d.driver.transport.device().is_active());
    assert_eq!(d.driver.read(regs::STATUS), 0);
    assert_eq!(d.driver.read(regs::INTERRUPT_STATUS), 0);
    assert_eq!(d.driver.read(regs::QUEUE_READY), 0);
    // Notifications go nowhere until the driver starts it again.
    let used = d.ring.used_idx();
    d.header(T_IN, 0);
    let head = d.ring.chain(
        0,
        &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    d.ring.publish(head);
    d.driver.notify(0);
    assert_eq!(d.ring.used_idx(), used);
    // Started again on fresh rings, it serves from their beginning.
    d.ring = Ring::new(&d.memory, 8);
    assert_eq!(d.driver.start(8), LIVE);
    d.still_serves();
    assert_eq!(d.ring.used_idx(), 1);
}

#[test]
fn odd_images_and_ids() {
    let mut image = tempfile::tempfile().expect("image");
    image.write_all(&[0; 1000]).expect("fill");
    let block = Block::new(image.try_clone().expect("clone"), false, "").expect("block");
    assert_eq!(block.sectors(), 1, "the partial sector is not used");
    assert!(matches!(
        Block::new(image, false, "an ID longer than twenty bytes"),
        Err(BlockError::IdTooLong(30))
    ));
    let missing = std::path::Path::new("/nonexistent/mecvisor/disk.img");
    assert!(matches!(
        Block::open(missing, true, ""),
        Err(BlockError::Open { .. })
    ));
}
