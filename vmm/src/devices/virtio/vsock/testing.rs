//! A guest driver for the socket device's tests: the three queues laid
//! out in real guest memory, receive buffers kept posted, packets sent
//! and received, host processes on real Unix sockets in a temporary
//! directory.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::packet::{op, Header, HEADER_LEN, TYPE_STREAM};
use super::{Vsock, HOST_CID};
use crate::devices::mmio::MmioDevice;
use crate::devices::signal::Signal;
use crate::devices::virtio::mmio::{regs, MmioTransport};
use crate::devices::virtio::testing::{ram, Driver, Ring};
use crate::devices::virtio::{status, Interrupt};

pub(super) const GUEST_CID: u64 = 3;
pub(super) const LIVE: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
/// Receive buffers: descriptor `i` is [`RX_BUF_LEN`] bytes at
/// `RX_BUF + i * RX_BUF_LEN`.
pub(super) const RX_BUF: u64 = 0x10_0000;
pub(super) const RX_BUF_LEN: u32 = 0x1000;
/// Where transmitted packets are put.
pub(super) const TX_BUF: u64 = 0x20_0000;
/// The guest's advertised receive buffer, unless a test says otherwise.
pub(super) const GUEST_BUF_ALLOC: u32 = 256 << 10;
const QUEUE: u16 = 64;
const TX_SHIFT: u64 = 0x3_0000;
const EVENT_SHIFT: u64 = 0x6_0000;

/// A started device, its driver, and the host socket's directory.
pub(super) struct Guest {
    pub transport: Arc<Mutex<MmioTransport<Vsock>>>,
    pub rx: Ring,
    pub tx: Ring,
    pub line: Signal,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    /// Receive used entries read so far.
    rx_seen: u16,
}

/// A device with [`QUEUE`]-entry queues, all receive buffers posted.
pub(super) fn guest() -> Guest {
    let mut guest = guest_without_rx();
    for i in 0..QUEUE {
        guest.post_rx(i);
    }
    guest
}

/// A device with [`QUEUE`]-entry queues, no receive buffer posted.
pub(super) fn guest_without_rx() -> Guest {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vsock.sock");
    let device = Vsock::new(GUEST_CID, &path).expect("vsock");
    let memory = ram();
    let line = Signal::new().expect("signal");
    let transport = MmioTransport::new(device, memory.clone(), Interrupt::new(line.clone()))
        .expect("transport");
    let mut driver = Driver { transport };
    let rx = Ring::new(&memory, QUEUE);
    let tx = Ring::shifted(&memory, QUEUE, TX_SHIFT);
    let event = Ring::shifted(&memory, QUEUE, EVENT_SHIFT);
    let negotiated = driver.negotiate(u64::MAX);
    assert_ne!(negotiated & status::FEATURES_OK, 0);
    for (index, ring) in [(0, &rx), (1, &tx), (2, &event)] {
        let (desc, avail, used) = ring.addresses();
        assert_eq!(driver.setup_queue(index, QUEUE, desc, avail, used), 1);
    }
    driver.write(regs::STATUS, negotiated | status::DRIVER_OK);
    assert_eq!(driver.read(regs::STATUS), LIVE);
    Guest {
        transport: Arc::new(Mutex::new(driver.transport)),
        rx,
        tx,
        line,
        dir,
        path,
        rx_seen: 0,
    }
}

/// A packet from the guest (CID [`GUEST_CID`]) to the host.
pub(super) fn packet(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        kind: TYPE_STREAM,
        op,
        buf_alloc: GUEST_BUF_ALLOC,
        ..Header::default()
    }
}

impl Guest {
    pub fn lock(&self) -> MutexGuard<'_, MmioTransport<Vsock>> {
        self.transport.lock().expect("transport")
    }

    pub fn read(&self, register: u64) -> u32 {
        let mut word = [0u8; 4];
        self.lock().read(register, &mut word);
        u32::from_le_bytes(word)
    }

    pub fn notify(&self, queue: u32) {
        self.lock().write(regs::QUEUE_NOTIFY, &queue.to_le_bytes());
    }

    /// The event loop's call, as when a host socket is ready.
    pub fn host_events(&self) {
        self.lock()
            .run_live(|vsock| vsock.process_host_events())
            .expect("live");
    }

    /// Posts receive descriptor `i` (one buffer, header and payload).
    pub fn post_rx(&mut self, i: u16) {
        let head = self.rx.chain(
            i,
            &[(
                RX_BUF + u64::from(i) * u64::from(RX_BUF_LEN),
                RX_BUF_LEN,
                true,
            )],
        );
        self.rx.publish(head);
    }

    /// Sends `bytes` as one chain at descriptor 0 of the transmit queue,
    /// split into `pieces` descriptors; it must come back with length 0.
    pub fn send_raw(&mut self, bytes: &[u8], pieces: usize) {
        self.tx.put(TX_BUF, bytes);
        let step = bytes.len().div_ceil(pieces.max(1)).max(1);
        let buffers: Vec<(u64, u32, bool)> = (0..bytes.len().max(1))
            .step_by(step)
            .map(|at| {
                let len = step.min(bytes.len() - at.min(bytes.len()));
                (TX_BUF + at as u64, len as u32, false)
            })
            .collect();
        let head = self.tx.chain(0, &buffers);
        self.submit_tx(head);
    }

    /// Makes the transmit chain at `head` available, notifies; it must
    /// come back with length 0.
    pub fn submit_tx(&mut self, head: u16) {
        let before = self.tx.used_idx();
        self.tx.publish(head);
        self.notify(1);
        assert_eq!(self.tx.used_idx(), before.wrapping_add(1), "returned");
        assert_eq!(self.tx.used(before), (u32::from(head), 0));
    }

    /// Sends a packet with `payload` (its `len` set to the payload's).
    pub fn send(&mut self, mut header: Header, payload: &[u8]) {
        header.len = payload.len() as u32;
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_raw(&bytes, 1);
    }

    /// The packets the device put in receive buffers since the last
    /// call, their buffers posted again.
    pub fn receive(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut packets = Vec::new();
        while self.rx_seen != self.rx.used_idx() {
            let (id, len) = self.rx.used(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let id = id as u16;
            let at = RX_BUF + u64::from(id) * u64::from(RX_BUF_LEN);
            let bytes = self.rx.get(at, len as usize);
            let header_bytes: &[u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().expect("a header");
            let header = Header::parse(header_bytes);
            assert_eq!(header.len as usize, bytes.len() - HEADER_LEN, "{header:?}");
            packets.push((header, bytes[HEADER_LEN..].to_vec()));
            self.post_rx(id);
        }
        packets
    }

    /// The receive used entries since the last call, (id, length), no
    /// buffer posted again.
    pub fn receive_any(&mut self) -> Vec<(u32, u32)> {
        let mut used = Vec::new();
        while self.rx_seen != self.rx.used_idx() {
            used.push(self.rx.used(self.rx_seen));
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        used
    }

    /// Like [`Guest::receive`], expecting exactly one packet.
    pub fn receive_one(&mut self) -> (Header, Vec<u8>) {
        let mut packets = self.receive();
        assert_eq!(packets.len(), 1, "{packets:?}");
        packets.remove(0)
    }

    /// A host process connected to the device's socket, its handshake
    /// line written and served; returns it and the guest's REQUEST.
    pub fn host_connect(&mut self, port: u32) -> (UnixStream, Header) {
        let mut host = client(&self.path);
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .expect("handshake");
        self.host_events();
        let (request, _) = self.receive_one();
        assert_eq!(request.op, op::REQUEST, "{request:?}");
        (host, request)
    }

    /// [`Guest::host_connect`], accepted by the guest: returns the host
    /// stream (its `OK` line read) and the host side's port.
    pub fn established(&mut self, port: u32) -> (UnixStream, u32) {
        let (mut host, request) = self.host_connect(port);
        self.send(packet(op::RESPONSE, port, request.src_port), &[]);
        let expected = format!("OK {}\n", request.src_port);
        assert_eq!(read_n(&mut host, expected.len()), expected.as_bytes());
        (host, request.src_port)
    }

    pub fn counters(&self) -> super::VsockCounters {
        self.lock().device().counters()
    }

    pub fn connections(&self) -> usize {
        self.lock().device().connections()
    }
}

/// A host process's connection to `path`, with a read timeout.
pub(super) fn client(path: &std::path::Path) -> UnixStream {
    let stream = UnixStream::connect(path).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
}

/// Reads exactly `n` bytes.
pub(super) fn read_n(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    stream.read_exact(&mut bytes).expect("read");
    bytes
}

/// Whether `stream` is at its end (nothing more, peer gone or shut
/// down; a peer closing with bytes unread resets instead).
pub(super) fn at_eof(stream: &mut UnixStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}
