//! The host side of the device: the listener, the connection table (at
//! most [`MAX_CONNECTIONS`], handshakes included), the RSTs owed for
//! connections already gone, and the host-side work of every round:
//! accepting, reading handshakes, flushing bytes to host streams, giving
//! up on handshakes and requests past their deadline.

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::connection::{Connection, HandshakeStep, State};
use super::packet::{op, Header, TYPE_STREAM};
use super::watch::HostWatch;
use super::{VsockCounters, HOST_CID};

/// Most connections at once (handshakes included); more are refused.
pub const MAX_CONNECTIONS: usize = 64;
/// Most RSTs waiting for a receive buffer; more are dropped (counted).
const MAX_RESETS: usize = 128;
/// Connections accepted per round at most.
const ACCEPT_BUDGET: usize = 16;
/// The first local port of host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// How long a host process has for its handshake line, and the guest to
/// answer a REQUEST.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub handshake: Duration,
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            handshake: Duration::from_secs(5),
            request: Duration::from_secs(5),
        }
    }
}

/// The connection table and what surrounds it.
pub(super) struct Backend {
    pub guest_cid: u64,
    /// The listener's path; guest connections go to `<path>_<port>`.
    pub path: PathBuf,
    pub listener: UnixListener,
    pub connections: Vec<Connection>,
    /// RSTs for the guest about connections that are gone.
    pub resets: VecDeque<Header>,
    pub watch: HostWatch,
    pub counters: VsockCounters,
    pub timeouts: Timeouts,
    /// Where the round-robin over connections for the guest resumes.
    pub cursor: usize,
    next_port: u32,
}

impl Backend {
    pub fn new(guest_cid: u64, path: PathBuf, listener: UnixListener, watch: HostWatch) -> Backend {
        Backend {
            guest_cid,
            path,
            listener,
            connections: Vec::new(),
            resets: VecDeque::new(),
            watch,
            counters: VsockCounters::default(),
            timeouts: Timeouts::default(),
            cursor: 0,
            next_port: FIRST_LOCAL_PORT,
        }
    }

    /// The connection from guest port `peer` to host port `local`.
    pub fn find(&self, local: u32, peer: u32) -> Option<usize> {
        self.connections
            .iter()
            .position(|c| c.local_port == local && c.peer_port == peer && c.state_has_ports())
    }

    /// Queues an RST for the guest: from host port `local` to its `peer`.
    pub fn queue_reset(&mut self, local: u32, peer: u32) {
        if self.resets.len() >= MAX_RESETS {
            self.counters.resets_dropped += 1;
            return;
        }
        self.resets.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local,
            dst_port: peer,
            kind: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    /// Adds a connection (the caller checked the table has room).
    pub fn insert(&mut self, connection: Connection) {
        self.watch.add(connection.stream.as_raw_fd());
        self.connections.push(connection);
    }

    /// Closes connection `index`: its host stream sees the end (and the
    /// stream goes to the event loop to unwatch); the guest gets an RST
    /// if `reset` and it knew of the connection.
    pub fn close(&mut self, index: usize, reset: bool) {
        let connection = self.connections.swap_remove(index);
        if reset && connection.guest_knows() {
            self.queue_reset(connection.local_port, connection.peer_port);
        }
        if let Err(e) = connection.stream.shutdown(Shutdown::Both) {
            tracing::debug!("vsock: shutting a host stream: {e}");
        }
        self.watch.retire(connection.stream);
    }

    /// Closes every connection without telling the guest (a reset).
    pub fn close_all(&mut self) {
        while !self.connections.is_empty() {
            self.close(self.connections.len() - 1, false);
        }
        self.resets.clear();
        self.watch.set_timer(false);
    }

    /// A fresh local port for a host-initiated connection.
    fn allocate_port(&mut self) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.connections.iter().any(|c| c.local_port == port) {
                return port;
            }
        }
    }

    /// Accepts host processes' connections waiting on the listener.
    pub fn accept(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("vsock: accepting on {}: {e}", self.path.display());
                    return;
                }
            };
            if self.connections.len() >= MAX_CONNECTIONS {
                self.counters.connections_refused += 1;
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!("vsock: a host connection stays blocking, closed: {e}");
                continue;
            }
            let deadline = Instant::now() + self.timeouts.handshake;
            self.insert(Connection::from_host(stream, deadline));
        }
        // More may wait: the listener is watched edge-triggered.
        self.watch.kick();
    }

    /// Host-side work: handshake lines, buffered bytes to host streams,
    /// deadlines.
    pub fn serve_host(&mut self, now: Instant) {
        let mut index = 0;
        while index < self.connections.len() {
            if self.serve_one(index, now) {
                index += 1;
            }
        }
        let pending = self.connections.iter().any(|c| c.deadline.is_some());
        self.watch.set_timer(pending);
    }

    /// Serves connection `index`; returns false if it was closed.
    fn serve_one(&mut self, index: usize, now: Instant) -> bool {
        let connection = &mut self.connections[index];
        if connection.deadline.is_some_and(|d| d <= now) {
            self.counters.timeouts += 1;
            self.close(index, true);
            return false;
        }
        if matches!(connection.state, State::Handshake(_)) {
            return match connection.read_handshake() {
                HandshakeStep::Pending => true,
                HandshakeStep::Failed => {
                    self.counters.handshakes_failed += 1;
                    self.close(index, false);
                    false
                }
                HandshakeStep::Connect(port) => {
                    let local = self.allocate_port();
                    let deadline = now + self.timeouts.request;
                    let connection = &mut self.connections[index];
                    connection.local_port = local;
                    connection.peer_port = port;
                    connection.owed.request = true;
                    connection.deadline = Some(deadline);
                    true
                }
            };
        }
        if let Err(e) = connection.flush() {
            tracing::debug!("vsock: host stream of port {}: {e}", connection.local_port);
            self.close(index, true);
            return false;
        }
        if connection.peer_shutdown == super::packet::SHUTDOWN_BOTH && connection.flushed() {
            // The guest is done both ways and everything reached the host.
            self.close(index, true);
            return false;
        }
        true
    }

    /// Whether a packet waits for the guest.
    pub fn has_packet(&self) -> bool {
        !self.resets.is_empty() || self.connections.iter().any(Connection::has_packet)
    }

    /// Every stream may have become readable (a readiness event came).
    pub fn mark_readable(&mut self) {
        for connection in &mut self.connections {
            connection.may_read = true;
        }
    }
}

impl Connection {
    /// Whether its ports are known (not in handshake).
    fn state_has_ports(&self) -> bool {
        !matches!(self.state, State::Handshake(_))
    }
}
