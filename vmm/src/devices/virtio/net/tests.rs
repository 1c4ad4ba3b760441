//! The network device through its transport, on real guest memory and
//! virtqueues laid out like a guest driver does, over an in-memory
//! [`FrameIo`] standing in for the tap. The stand-in is only for what a
//! tap cannot provide on demand (a full tap, a flood of frames arriving
//! while the guest adds buffers) and for the descriptor handling, which
//! does not depend on the back end; `tap_tests` runs the real path on a
//! real tap.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    FrameIo, Net, NetCounters, NetError, HEADER_LEN, MAX_FRAME, QUEUE_SIZE, VIRTIO_NET_F_MAC,
};
use crate::devices::mmio::MmioDevice;
use crate::devices::signal::Signal;
use crate::devices::virtio::mmio::{regs, MmioTransport};
use crate::devices::virtio::testing::{ram, Driver, Ring, F_INDIRECT, F_NEXT, F_WRITE, RAM_BYTES};
use crate::devices::virtio::{status, Interrupt, INTERRUPT_USED_BUFFER, VIRTIO_F_VERSION_1};

pub(super) const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub(super) const LIVE: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
/// Where transmit headers and frames go, and receive buffers.
pub(super) const TX_BUF: u64 = 0x10_0000;
pub(super) const RX_BUF: u64 = 0x20_0000;
/// The transmit queue's rings come after the receive queue's.
const TX_SHIFT: u64 = 0x3_0000;

/// What the stand-in holds: frames for the device to read, frames it
/// wrote, whether it refuses writes, and a hook run on every read.
#[derive(Default)]
pub(super) struct Fake {
    pub incoming: VecDeque<Vec<u8>>,
    pub sent: Vec<Vec<u8>>,
    pub full: bool,
    pub on_read: Option<Box<dyn FnMut() + Send>>,
}

/// The in-memory stand-in for a tap, shared with the test.
#[derive(Clone, Default)]
pub(super) struct Frames(Arc<Mutex<Fake>>);

impl Frames {
    pub(super) fn fake(&self) -> MutexGuard<'_, Fake> {
        self.0.lock().expect("fake frames")
    }
}

impl FrameIo for Frames {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut fake = self.fake();
        if let Some(hook) = fake.on_read.as_mut() {
            hook();
        }
        let frame = fake.incoming.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let len = frame.len().min(buf.len());
        buf[..len].copy_from_slice(&frame[..len]);
        Ok(len)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut fake = self.fake();
        if fake.full {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        fake.sent.push(frame.to_vec());
        Ok(())
    }
}

/// A started device and the driver's view of it.
pub(super) struct Nic<F: FrameIo> {
    pub driver: Driver<Net<F>>,
    pub rx: Ring,
    pub tx: Ring,
    pub memory: GuestMemoryMmap,
    pub line: Signal,
}

/// A device over `frames`, both queues of `size` entries, started as a
/// driver does.
pub(super) fn nic<F: FrameIo>(frames: F, size: u16) -> Nic<F> {
    let device = Net::new(frames, MAC).expect("net");
    let memory = ram();
    let line = Signal::new().expect("signal");
    let transport = MmioTransport::new(device, memory.clone(), Interrupt::new(line.clone()))
        .expect("transport");
    let mut nic = Nic {
        driver: Driver { transport },
        rx: Ring::new(&memory, size),
        tx: Ring::shifted(&memory, size, TX_SHIFT),
        memory,
        line,
    };
    nic.start();
    nic
}

impl<F: FrameIo> Nic<F> {
    /// Negotiates everything offered, sets up both queues, DRIVER_OK.
    pub(super) fn start(&mut self) {
        let status = self.driver.negotiate(u64::MAX);
        assert_ne!(status & status::FEATURES_OK, 0);
        for (index, ring) in [(0, &self.rx), (1, &self.tx)] {
            let (desc, avail, used) = ring.addresses();
            let size = ring.size;
            assert_eq!(self.driver.setup_queue(index, size, desc, avail, used), 1);
        }
        self.driver.write(regs::STATUS, status | status::DRIVER_OK);
        assert_eq!(self.driver.read(regs::STATUS), LIVE);
    }

    pub(super) fn device(&self) -> &Net<F> {
        self.driver.transport.device()
    }

    pub(super) fn counters(&self) -> NetCounters {
        self.device().counters()
    }

    /// Puts `header` then `frame` at [`TX_BUF`], split at `split` bytes
    /// into two descriptors, makes them available, notifies; returns the
    /// used length.
    pub(super) fn transmit(&mut self, header: &[u8; HEADER_LEN], frame: &[u8]) -> u32 {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(frame);
        self.tx.put(TX_BUF, &bytes);
        let split = (bytes.len() / 3) as u32;
        let rest = bytes.len() as u32 - split;
        let head = self.tx.chain(
            0,
            &[
                (TX_BUF, split, false),
                (TX_BUF + u64::from(split), rest, false),
            ],
        );
        self.submit_tx(head)
    }

    /// Makes the transmit chain at `head` available and notifies; it must
    /// come back. Returns its used length.
    pub(super) fn submit_tx(&mut self, head: u16) -> u32 {
        let before = self.tx.used_idx();
        self.tx.publish(head);
        self.driver.notify(1);
        assert_eq!(self.tx.used_idx(), before.wrapping_add(1), "returned");
        let (id, len) = self.tx.used(before);
        assert_eq!(id, u32::from(head));
        len
    }

    /// Makes `buffers` available as a receive chain at descriptor `first`.
    pub(super) fn post_rx(&mut self, first: u16, buffers: &[(u64, u32, bool)]) {
        let head = self.rx.chain(first, buffers);
        self.rx.publish(head);
    }
}

/// An Ethernet frame to the device's MAC with `payload`.
pub(super) fn ethernet(payload: &[u8]) -> Vec<u8> {
    let mut frame = MAC.to_vec();
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
    frame.extend_from_slice(payload);
    frame
}

/// `frame` as the tap gives it: a vnet header first (here not zeroed,
/// to show the device writes its own).
fn from_tap(frame: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x01; HEADER_LEN];
    bytes.extend_from_slice(frame);
    bytes
}

/// The header a receive buffer gets: zero but `num_buffers` = 1.
pub(super) fn rx_header() -> Vec<u8> {
    let mut header = vec![0; HEADER_LEN];
    header[10] = 1;
    header
}

fn fake_nic(size: u16) -> (Nic<Frames>, Frames) {
    let frames = Frames::default();
    (nic(frames.clone(), size), frames)
}

#[test]
fn offers_version_1_and_the_mac_and_nothing_else() {
    let (mut n, _) = fake_nic(16);
    assert_eq!(n.driver.read(regs::DEVICE_ID), 1);
    assert_eq!(
        n.driver.device_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    );
    let mut mac = [0u8; 6];
    n.driver.transport.read(regs::CONFIG, &mut mac);
    assert_eq!(mac, MAC);
    let mut byte = [0xaa];
    n.driver.transport.read(regs::CONFIG + 5, &mut byte);
    assert_eq!(byte, [0x56]);
    for (offset, len) in [(6, 1), (4, 4), (0xeff, 1)] {
        let mut bytes = vec![0xaa; len];
        n.driver.transport.read(regs::CONFIG + offset, &mut bytes);
        assert_eq!(bytes, vec![0; len], "{offset}");
    }
    n.driver.transport.write(regs::CONFIG, &[0; 6]);
    n.driver.transport.read(regs::CONFIG, &mut mac);
    assert_eq!(mac, MAC, "read-only");
    assert_eq!(n.driver.read(regs::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    n.driver.write(regs::QUEUE_SEL, 2);
    assert_eq!(n.driver.read(regs::QUEUE_NUM_MAX), 0, "no control queue");
}

#[test]
fn multicast_and_zero_macs_are_refused() {
    for mac in [[1, 0, 0, 0, 0, 0], [0xff; 6], [0; 6]] {
        assert!(matches!(
            Net::new(Frames::default(), mac),
            Err(NetError::BadMac(m)) if m == mac
        ));
    }
}

#[test]
fn a_frame_over_several_descriptors_goes_out_whole_with_a_zeroed_header() {
    let (mut n, frames) = fake_nic(16);
    let frame = ethernet(&[0x5a; 1000]);
    // A header asking for checksum offload and GSO, which were not offered.
    let header = [1, 4, 0x40, 0, 0x80, 0, 14, 0, 16, 0, 0, 0];
    assert!(!n.line.is_raised());
    assert_eq!(n.transmit(&header, &frame), 0);
    let mut expected = vec![0; HEADER_LEN];
    expected.extend_from_slice(&frame);
    assert_eq!(frames.fake().sent, vec![expected]);
    assert!(n.line.take());
    assert_eq!(n.driver.read(regs::INTERRUPT_STATUS), INTERRUPT_USED_BUFFER);
    let counters = n.counters();
    assert_eq!((counters.tx_frames, counters.tx_bytes), (1, 1014));
    // The largest frame, in one descriptor.
    let big = ethernet(&vec![7; MAX_FRAME - 14]);
    assert_eq!(n.transmit(&[0; HEADER_LEN], &big), 0);
    assert_eq!(frames.fake().sent[1].len(), HEADER_LEN + MAX_FRAME);
    assert_eq!(n.counters().tx_malformed, 0);
}

#[test]
fn frames_the_tap_does_not_take_are_dropped_and_counted() {
    let (mut n, frames) = fake_nic(16);
    frames.fake().full = true;
    assert_eq!(n.transmit(&[0; HEADER_LEN], &ethernet(b"lost")), 0);
    assert_eq!(n.counters().tx_dropped, 1);
    frames.fake().full = false;
    assert_eq!(n.transmit(&[0; HEADER_LEN], &ethernet(b"sent")), 0);
    assert_eq!(frames.fake().sent.len(), 1);
    assert_eq!(n.counters().tx_frames, 1);
}

/// Transmit chains that must be dropped: each comes back with length 0,
/// nothing is sent, the device goes on.
#[test]
fn malformed_transmit_chains_are_dropped_and_returned() {
    let (mut n, frames) = fake_nic(16);
    let end = RAM_BYTES as u64;
    let frame = ethernet(&[1; 100]);
    let mut bytes = vec![0; HEADER_LEN];
    bytes.extend_from_slice(&frame);
    n.tx.put(TX_BUF, &bytes);
    let len = bytes.len() as u32;
    let cases: [&[(u64, u32, bool)]; 8] = [
        // A device-writable buffer, first or after the frame.
        &[(TX_BUF, len, true)],
        &[(TX_BUF, len, false), (TX_BUF + 0x1000, 16, true)],
        // Outside RAM, straddling its end, wrapping around.
        &[(TX_BUF, 12, false), (end, 100, false)],
        &[(TX_BUF, 12, false), (end - 50, 100, false)],
        &[(TX_BUF, 12, false), (u64::MAX - 10, 100, false)],
        // Shorter than a header and an Ethernet header.
        &[(TX_BUF, HEADER_LEN as u32 + 13, false)],
        // Longer than the bound, in pieces or at once.
        &[(TX_BUF, 0x2_0000, false), (TX_BUF, 0x2_0000, false)],
        &[(TX_BUF, u32::MAX, false)],
    ];
    for (i, buffers) in cases.iter().enumerate() {
        let head = n.tx.chain(0, buffers);
        assert_eq!(n.submit_tx(head), 0, "{buffers:?}");
        assert_eq!(n.counters().tx_malformed, i as u64 + 1, "{buffers:?}");
    }
    // A loop, and a next index past the table.
    n.tx.descriptor(0, TX_BUF, 20, F_NEXT, 1);
    n.tx.descriptor(1, TX_BUF + 20, len - 20, F_NEXT, 0);
    assert_eq!(n.submit_tx(0), 0);
    n.tx.descriptor(1, TX_BUF + 20, len - 20, F_NEXT, 16);
    assert_eq!(n.submit_tx(0), 0);
    // A descriptor table entry of an indirect table outside RAM.
    n.tx.descriptor(0, end - 16, 48, F_INDIRECT, 0);
    assert_eq!(n.submit_tx(0), 0);
    assert_eq!(n.counters().tx_malformed, 11);
    assert!(frames.fake().sent.is_empty(), "nothing sent");
    assert_eq!(n.driver.read(regs::STATUS), LIVE);
    assert_eq!(n.transmit(&[0; HEADER_LEN], &frame), 0);
    assert_eq!(frames.fake().sent.len(), 1, "still serving");
}

#[test]
fn indirect_transmit_tables_are_bounded() {
    let (mut n, frames) = fake_nic(16);
    let table = 0x18_0000;
    let frame = ethernet(&[3; 50]);
    let mut bytes = vec![0; HEADER_LEN];
    bytes.extend_from_slice(&frame);
    n.tx.put(TX_BUF, &bytes);
    // Well formed: header and frame through a table.
    n.tx.descriptor_at(table, 0, TX_BUF, HEADER_LEN as u32, F_NEXT, 1);
    n.tx.descriptor_at(
        table,
        1,
        TX_BUF + HEADER_LEN as u64,
        frame.len() as u32,
        0,
        0,
    );
    n.tx.descriptor(0, table, 32, F_INDIRECT, 0);
    assert_eq!(n.submit_tx(0), 0);
    assert_eq!(frames.fake().sent.len(), 1);
    // A table of 300 empty descriptors then the frame: too many.
    for i in 0..300 {
        n.tx.descriptor_at(table, i, TX_BUF, 0, F_NEXT, i + 1);
    }
    n.tx.descriptor_at(table, 300, TX_BUF, bytes.len() as u32, 0, 0);
    n.tx.descriptor(0, table, 301 * 16, F_INDIRECT, 0);
    assert_eq!(n.submit_tx(0), 0);
    // A loop inside a table, a nested table, an empty table.
    n.tx.descriptor_at(table, 1, TX_BUF, 10, F_NEXT, 0);
    n.tx.descriptor(0, table, 32, F_INDIRECT, 0);
    assert_eq!(n.submit_tx(0), 0);
    n.tx.descriptor_at(table, 0, table, 32, F_INDIRECT, 0);
    assert_eq!(n.submit_tx(0), 0);
    n.tx.descriptor(0, table, 0, F_INDIRECT, 0);
    assert_eq!(n.submit_tx(0), 0);
    assert_eq!(n.counters().tx_malformed, 4);
    assert_eq!(frames.fake().sent.len(), 1);
}

#[test]
fn bad_transmit_ring_entries_are_skipped_or_need_a_reset() {
    let (mut n, frames) = fake_nic(16);
    let before = n.tx.used_idx();
    n.tx.publish(16);
    n.driver.notify(1);
    assert_eq!(n.tx.used_idx(), before, "not a descriptor: not returned");
    assert_eq!(n.transmit(&[0; HEADER_LEN], &ethernet(b"x")), 0);
    n.tx.set_avail_idx(n.tx.published().wrapping_add(17));
    n.driver.notify(1);
    assert_ne!(n.driver.read(regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(frames.fake().sent.len(), 1);
}

#[test]
fn a_received_frame_fills_a_chain_after_a_header() {
    let (mut n, frames) = fake_nic(16);
    let frame = ethernet(&[0xc3; 1500]);
    frames.fake().incoming.push_back(from_tap(&frame));
    // A header buffer, then the frame over two pieces.
    n.post_rx(
        0,
        &[
            (RX_BUF, HEADER_LEN as u32, true),
            (RX_BUF + 0x1000, 1000, true),
            (RX_BUF + 0x2000, 2000, true),
        ],
    );
    n.driver.notify(0);
    assert_eq!(n.rx.used(0), (0, (HEADER_LEN + frame.len()) as u32));
    assert_eq!(n.rx.get(RX_BUF, HEADER_LEN), rx_header());
    assert_eq!(n.rx.get(RX_BUF + 0x1000, 1000), frame[..1000]);
    assert_eq!(n.rx.get(RX_BUF + 0x2000, frame.len() - 1000), frame[1000..]);
    assert!(n.line.take());
    let counters = n.counters();
    assert_eq!((counters.rx_frames, counters.rx_bytes), (1, 1514));
}

#[test]
fn without_buffers_frames_wait_in_the_tap_until_the_guest_adds_some() {
    let (mut n, frames) = fake_nic(16);
    for i in 0..3u8 {
        frames
            .fake()
            .incoming
            .push_back(from_tap(&ethernet(&[i; 60])));
    }
    n.driver
        .transport
        .run_live(|net| net.process_rx())
        .expect("live");
    assert_eq!(frames.fake().incoming.len(), 3, "not read");
    assert!(!n.line.is_raised());
    n.post_rx(0, &[(RX_BUF, 2048, true)]);
    n.post_rx(1, &[(RX_BUF + 0x1000, 2048, true)]);
    n.driver.notify(0);
    assert_eq!(n.rx.used_idx(), 2);
    assert_eq!(frames.fake().incoming.len(), 1, "one left for later");
    assert_eq!(n.rx.get(RX_BUF + HEADER_LEN as u64 + 14, 1), [0]);
    assert_eq!(n.rx.get(RX_BUF + 0x1000 + HEADER_LEN as u64 + 14, 1), [1]);
    n.post_rx(2, &[(RX_BUF, 2048, true)]);
    n.driver.notify(0);
    assert_eq!(n.rx.used_idx(), 3);
    assert!(frames.fake().incoming.is_empty());
    assert_eq!(n.counters().rx_frames, 3);
}

#[test]
fn a_chain_too_small_for_its_frame_drops_the_frame() {
    let (mut n, frames) = fake_nic(16);
    frames
        .fake()
        .incoming
        .push_back(from_tap(&ethernet(&[1; 1500])));
    frames
        .fake()
        .incoming
        .push_back(from_tap(&ethernet(&[2; 10])));
    n.post_rx(0, &[(RX_BUF, 1000, true)]);
    n.post_rx(1, &[(RX_BUF + 0x1000, 1000, true)]);
    n.driver.notify(0);
    assert_eq!(n.rx.used(0), (0, 0));
    assert_eq!(n.rx.used(1), (1, (HEADER_LEN + 24) as u32));
    let counters = n.counters();
    assert_eq!((counters.rx_dropped, counters.rx_frames), (1, 1));
    // Frames too short for a header, or past the bound, are dropped too.
    frames.fake().incoming.push_back(vec![0; HEADER_LEN - 1]);
    frames
        .fake()
        .incoming
        .push_back(vec![0; HEADER_LEN + MAX_FRAME + 1]);
    n.post_rx(2, &[(RX_BUF, 0x2_0000, true)]);
    n.post_rx(3, &[(RX_BUF, 0x2_0000, true)]);
    n.driver.notify(0);
    assert_eq!((n.rx.used(2), n.rx.used(3)), ((2, 0), (3, 0)));
    assert_eq!(n.counters().rx_dropped, 3);
}

#[test]
fn malformed_receive_chains_drop_their_frame_and_are_returned() {
    let (mut n, frames) = fake_nic(16);
    let end = RAM_BYTES as u64;
    let cases: [&[(u64, u32, bool)]; 4] = [
        &[(RX_BUF, 2048, false)],
        &[(RX_BUF, 12, true), (RX_BUF + 0x1000, 2048, false)],
        &[(end - 100, 2048, true)],
        &[(RX_BUF, 12, true), (u64::MAX - 100, 2048, true)],
    ];
    for (i, buffers) in cases.iter().enumerate() {
        n.rx.put(RX_BUF, &[0xee; 16]);
        frames
            .fake()
            .incoming
            .push_back(from_tap(&ethernet(&[9; 46])));
        n.post_rx(0, buffers);
        n.driver.notify(0);
        assert_eq!(n.rx.used(i as u16), (0, 0), "{buffers:?}");
        assert_eq!(n.rx.get(RX_BUF, 16), vec![0xee; 16], "untouched");
    }
    // A loop.
    frames
        .fake()
        .incoming
        .push_back(from_tap(&ethernet(&[9; 46])));
    n.rx.descriptor(0, RX_BUF, 100, F_WRITE | F_NEXT, 1);
    n.rx.descriptor(1, RX_BUF + 100, 100, F_WRITE | F_NEXT, 0);
    n.rx.publish(0);
    n.driver.notify(0);
    assert_eq!(n.rx.used(4), (0, 0));
    assert_eq!(n.counters().rx_malformed, 5);
    assert!(frames.fake().incoming.is_empty(), "the frames were dropped");
    assert_eq!(n.driver.read(regs::STATUS), LIVE);
}

#[test]
fn a_flood_is_received_in_rounds_with_a_kick_between() {
    let (mut n, frames) = fake_nic(16);
    for i in 0..300u16 {
        let payload = i.to_le_bytes();
        frames
            .fake()
            .incoming
            .push_back(from_tap(&ethernet(&payload)));
    }
    // The guest adds a buffer for every frame the device reads, without
    // notifying: the device must stop after a round.
    let memory = n.memory.clone();
    let (_, avail, _) = n.rx.addresses();
    let mut published = 1u16;
    frames.fake().on_read = Some(Box::new(move || {
        let slot = u64::from(published % 16);
        let put = |at: u64, value: u16| {
            memory
                .write_slice(&value.to_le_bytes(), GuestAddress(at))
                .expect("available ring");
        };
        put(avail + 4 + 2 * slot, 0);
        published = published.wrapping_add(1);
        put(avail + 2, published);
    }));
    n.rx.descriptor(0, RX_BUF, 2048, F_WRITE, 0);
    n.rx.set_avail_idx(1);
    n.driver.notify(0);
    assert_eq!(n.rx.used_idx(), 256, "one round");
    assert!(kicked(n.device()));
    assert!(n.line.take());
    n.driver
        .transport
        .run_live(|net| net.process_rx())
        .expect("live");
    assert!(!kicked(n.device()), "cleared, nothing more to do");
    assert_eq!(n.rx.used_idx(), 300);
    assert_eq!(n.counters().rx_frames, 300);
    assert!(frames.fake().incoming.is_empty());
}

/// Whether the device's receive kick eventfd is readable.
fn kicked<F: FrameIo>(net: &Net<F>) -> bool {
    let mut poll = libc::pollfd {
        fd: net.rx_kick_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call, no waiting.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready == 1
}

#[test]
fn receiving_needs_a_live_device() {
    let frames = Frames::default();
    let mut net = Net::new(frames.clone(), MAC).expect("net");
    assert!(net.process_rx().is_err(), "not active");
    frames
        .fake()
        .incoming
        .push_back(from_tap(&ethernet(b"early")));
    let mut n = nic(frames.clone(), 16);
    n.driver.write(regs::STATUS, 0);
    assert!(!n.device().is_active());
    assert!(n
        .driver
        .transport
        .run_live(|net| net.process_rx())
        .is_none());
    assert_eq!(frames.fake().incoming.len(), 1, "left in the tap");
    // A broken receive ring makes the device need a reset.
    n.rx = Ring::new(&n.memory, 16);
    n.tx = Ring::shifted(&n.memory, 16, TX_SHIFT);
    n.start();
    n.rx.set_avail_idx(40);
    assert!(n
        .driver
        .transport
        .run_live(|net| net.process_rx())
        .is_none());
    assert_ne!(n.driver.read(regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(n
        .driver
        .transport
        .run_live(|net| net.process_rx())
        .is_none());
}

#[test]
fn a_reset_stops_the_device_and_a_restart_serves_fresh_rings() {
    let (mut n, frames) = fake_nic(16);
    assert_eq!(n.transmit(&[0; HEADER_LEN], &ethernet(b"one")), 0);
    n.driver.write(regs::STATUS, 0);
    assert!(!n.device().is_active());
    assert_eq!(n.driver.read(regs::QUEUE_READY), 0);
    n.tx.publish(0);
    n.driver.notify(1);
    assert_eq!(frames.fake().sent.len(), 1, "nothing while reset");
    n.rx = Ring::new(&n.memory, 8);
    n.tx = Ring::shifted(&n.memory, 8, TX_SHIFT);
    n.start();
    assert_eq!(n.transmit(&[0; HEADER_LEN], &ethernet(b"two")), 0);
    assert_eq!(frames.fake().sent.len(), 2);
    assert_eq!(n.tx.used_idx(), 1);
}
