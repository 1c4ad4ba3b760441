//! virtio-vsock (VIRTIO 1.1 section 5.10) with a host side of Unix
//! sockets ("hybrid vsock"): stream sockets between the guest (its CID
//! in the config space) and host processes. Queues: receive (0),
//! transmit (1), event (2, never used: there is no migration). Offered:
//! VERSION_1 only. The parts:
//! - [`packet`]: the 44-byte packet header;
//! - `chain`: checks on descriptor chains, and copying packets in and out;
//! - `tx`: the guest's packets; `rx`: packets for the guest;
//! - `connection`: one connection's handshake, owed packets and credit;
//! - `backend`: the listener and the connection table;
//! - `handshake`, `host`: the host side's line and sockets;
//! - [`watch`], [`subscriber`]: what the event loop watches, and its
//!   subscriber.
//!
//! # The host side
//!
//! The device listens on a Unix socket at a path `P`:
//! - a host process connects to `P` and writes `CONNECT <port>\n`: the
//!   guest gets a REQUEST from host CID 2, a fresh port of 2^30 or more,
//!   to `port`; on its RESPONSE the process reads `OK <that port>\n`,
//!   then bytes flow; an RST, a malformed line (not exactly that within
//!   32 bytes) or no line or answer within 5 seconds closes the stream;
//! - a guest connection to host port `N` connects to the Unix socket
//!   `P_N`; none listening there, the guest gets an RST.
//!
//! Closing: the host stream's end sends the guest a SHUTDOWN (send
//! side); the guest's SHUTDOWN (send side) ends the host stream's
//! writing side once its bytes are through; a guest shut down both ways
//! is answered with an RST and its host stream closed; an RST from the
//! guest closes the host stream; a host stream error resets.
//!
//! # Threading and the event loop
//!
//! The device sits behind its [`MmioTransport`](super::mmio::MmioTransport)
//! in the mutex the vCPU threads share. Queue notifications act on the
//! vCPU thread (transmitted packets, flushing to host streams, filling
//! receive buffers); all host sockets are non-blocking. The event loop
//! ([`subscriber::VsockBackend`]) watches:
//! - the listener, [`Vsock::listener_fd`], readable, edge-triggered;
//! - each connection's stream, readable, writable or hung up,
//!   edge-triggered, added and removed as [`HostWatch::take_changes`]
//!   says;
//! - [`HostWatch::kick_fd`] and [`HostWatch::timer_fd`], level-triggered;
//!
//! and on any of them clears the kick and the timer
//! ([`HostWatch::clear`]), calls [`Vsock::process_host_events`] through
//! [`MmioTransport::run_live`](super::mmio::MmioTransport::run_live),
//! then applies the watch changes. Edge-triggered is safe because every
//! call retries every stream until it would block, or until the guest's
//! credit or receive buffers run out (a credit update or new buffers
//! retry them, on the vCPU thread).

mod backend;
mod chain;
mod connection;
mod handshake;
mod host;
pub mod packet;
mod rx;
pub mod subscriber;
mod tx;
pub mod watch;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{DeviceError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use backend::Backend;
pub use backend::MAX_CONNECTIONS;
pub use connection::BUF_ALLOC;
pub use watch::{FdChanges, HostWatch};

/// The virtio device ID of a socket device.
pub const DEVICE_TYPE: u32 = 19;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue.
pub const TX_QUEUE: u16 = 1;
/// The event queue.
pub const EVENT_QUEUE: u16 = 2;
/// The host's context ID.
pub const HOST_CID: u64 = 2;
/// Largest payload of one packet, either way (Linux's largest).
pub const MAX_PAYLOAD: usize = 64 << 10;

/// Why a socket device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// Not a CID a guest may have (3 to 2^32 - 2).
    #[error("guest CID {0} is reserved or past 32 bits")]
    BadCid(u64),
    /// The listener could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The kick eventfd or timer could not be created.
    #[error("cannot create the event loop's kick or timer: {0}")]
    Watch(io::Error),
}

/// What the device did since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockCounters {
    /// Packets taken from the transmit queue (well-formed chains).
    pub tx_packets: u64,
    /// Payload bytes from the guest taken for host streams.
    pub tx_bytes: u64,
    /// Transmit chains dropped as malformed (wrong direction, outside
    /// RAM, no end, too long, shorter than a header, `len` past the
    /// buffers or [`MAX_PAYLOAD`]).
    pub tx_malformed: u64,
    /// Packets from a CID other than the guest's (dropped) or to another
    /// than the host's (reset).
    pub bad_cid: u64,
    /// Packets of another socket type than stream (reset).
    pub bad_type: u64,
    /// Packets with an unknown op (reset).
    pub bad_op: u64,
    /// Packets for no connection (reset).
    pub unknown_connection: u64,
    /// Protocol violations on a connection (reset).
    pub protocol_errors: u64,
    /// Payload past the credit the device gave (connection reset).
    pub credit_violations: u64,
    /// Packets put in receive buffers.
    pub rx_packets: u64,
    /// Their payload bytes.
    pub rx_bytes: u64,
    /// Receive chains returned unused as malformed or too small.
    pub rx_malformed: u64,
    /// Connections refused: table full, or no host socket for a guest's.
    pub connections_refused: u64,
    /// Host connections closed for a bad or missing handshake line.
    pub handshakes_failed: u64,
    /// Handshakes or requests given up past their deadline.
    pub timeouts: u64,
    /// RSTs dropped because too many waited for receive buffers.
    pub resets_dropped: u64,
}

/// What the device holds between DRIVER_OK and a reset.
struct Active {
    rx: Queue,
    tx: Queue,
    memory: GuestMemoryMmap,
    interrupt: Interrupt,
}

/// A virtio socket device.
pub struct Vsock {
    backend: Backend,
    transmit: tx::Transmit,
    receive: rx::Receive,
    active: Option<Active>,
}

impl Vsock {
    /// A device for a guest of CID `guest_cid`, listening for host
    /// processes on a new Unix socket at `path` (guest connections go to
    /// `<path>_<port>`).
    pub fn new(guest_cid: u64, path: impl Into<PathBuf>) -> Result<Vsock, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::BadCid(guest_cid));
        }
        let path = path.into();
        let listener = host::listen(&path).map_err(|source| VsockError::Listen {
            path: path.clone(),
            source,
        })?;
        let watch = HostWatch::new().map_err(VsockError::Watch)?;
        Ok(Vsock {
            backend: Backend::new(guest_cid, path, listener, watch),
            transmit: tx::Transmit::new(),
            receive: rx::Receive::new(),
            active: None,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.backend.guest_cid
    }

    /// What happened so far.
    pub fn counters(&self) -> VsockCounters {
        self.backend.counters
    }

    /// Open connections (handshakes included).
    pub fn connections(&self) -> usize {
        self.backend.connections.len()
    }

    /// Whether the driver set it up and it serves its queues.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The listener host processes connect to (watch it readable,
    /// edge-triggered).
    pub fn listener_fd(&self) -> RawFd {
        self.backend.listener.as_raw_fd()
    }

    /// The event loop's handle on the kick, the timer and the watch
    /// list of connection streams. From the first call on, the device
    /// keeps the list's changes (and retired streams open) until
    /// [`HostWatch::take_changes`] takes them; the first change lists the
    /// streams already open.
    pub fn watch(&self) -> HostWatch {
        let watch = self.backend.watch.clone();
        watch.start(
            self.backend
                .connections
                .iter()
                .map(|c| c.stream.as_raw_fd()),
        );
        watch
    }

    /// Serves the host side: accepts host processes' connections, reads
    /// handshakes and host streams into the guest's receive buffers,
    /// flushes bytes to host streams, gives up on what timed out. Called
    /// by the event loop when any watched descriptor is ready (see the
    /// module documentation). Errors as for a queue notification.
    pub fn process_host_events(&mut self) -> Result<(), DeviceError> {
        if self.active.is_none() {
            return Err(DeviceError::NotActive);
        }
        self.backend.accept();
        self.backend.mark_readable();
        self.run()
    }

    /// One round: transmitted packets, host-side work, packets for the
    /// guest; one interrupt if any chain was used.
    fn run(&mut self) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Err(DeviceError::NotActive);
        };
        let sent = self
            .transmit
            .serve(&mut active.tx, &active.memory, &mut self.backend)?;
        self.backend.serve_host(Instant::now());
        let received = self
            .receive
            .serve(&mut active.rx, &active.memory, &mut self.backend)?;
        if sent || received {
            active.interrupt.signal_used_buffer();
        }
        Ok(())
    }

    /// Overrides the handshake and request timeouts (tests).
    #[cfg(test)]
    fn set_timeouts(&mut self, timeout: std::time::Duration) {
        self.backend.timeouts = backend::Timeouts {
            handshake: timeout,
            request: timeout,
        };
    }
}

/// How many chains the driver made available that the device has not
/// taken yet (no more than the queue's size, or the queue is broken).
fn pending(queue: &Queue, memory: &GuestMemoryMmap) -> Result<u16, DeviceError> {
    let available = queue.avail_idx(memory, Ordering::Acquire)?;
    let pending = (available - Wrapping(queue.next_avail())).0;
    if pending > queue.size() {
        return Err(virtio_queue::Error::InvalidAvailRingIndex.into());
    }
    Ok(pending)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.backend.guest_cid.to_le_bytes();
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| config.get(start..start.checked_add(data.len())?));
        match bytes {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::debug!("vsock: config write at {offset:#x} ignored");
    }

    fn activate(
        &mut self,
        _features: u64,
        queues: Vec<Queue>,
        memory: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> Result<(), DeviceError> {
        let got = queues.len();
        let Ok([rx, tx, _event]) = <[Queue; 3]>::try_from(queues) else {
            return Err(DeviceError::QueueCount { expected: 3, got });
        };
        for (index, queue) in [&rx, &tx].into_iter().enumerate() {
            if !queue.ready() {
                return Err(DeviceError::QueueNotReady(index));
            }
        }
        self.active = Some(Active {
            rx,
            tx,
            memory,
            interrupt,
        });
        // Host processes may have connected before: the listener is
        // watched edge-triggered.
        self.backend.watch.kick();
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        match index {
            RX_QUEUE | TX_QUEUE => self.run(),
            _ => {
                if self.active.is_none() {
                    return Err(DeviceError::NotActive);
                }
                Ok(())
            }
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.backend.close_all();
    }
}
