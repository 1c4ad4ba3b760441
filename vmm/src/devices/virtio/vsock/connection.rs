//! One stream connection between a host process (a Unix stream) and a
//! guest socket: where its handshake is, what control packets it owes
//! the guest, and the credit of both directions (VIRTIO 1.1 section
//! 5.10.6.3):
//! - host to guest: never more payload in flight than the guest's last
//!   `buf_alloc - (tx_cnt - fwd_cnt)`; bytes the guest has no credit for
//!   stay in the host socket;
//! - guest to host: payload the host socket does not take at once is
//!   buffered, at most [`BUF_ALLOC`] bytes (what the device advertises);
//!   `fwd_cnt` counts only what reached the host socket, so the guest's
//!   credit never exceeds the free buffer. A guest sending past its
//!   credit breaks the connection.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::handshake::{self, Line, MAX_LINE};
use super::packet::{Header, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// The receive buffer the device advertises per connection (`buf_alloc`),
/// and the most guest payload it buffers for a slow host socket.
pub const BUF_ALLOC: u32 = 64 << 10;

/// Where the connection is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum State {
    /// A host process connected; its `CONNECT <port>\n` line so far.
    Handshake(Vec<u8>),
    /// A REQUEST to the guest is owed or sent; no RESPONSE yet.
    Requesting,
    /// Bytes flow.
    Established,
}

/// Control packets owed to the guest.
#[derive(Debug, Default)]
pub(super) struct Owed {
    pub request: bool,
    pub response: bool,
    /// SHUTDOWN flags to send (0: none).
    pub shutdown: u32,
    pub credit_update: bool,
}

/// What a handshake read came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HandshakeStep {
    /// More bytes are needed.
    Pending,
    /// The host process asked for guest port `0`.
    Connect(u32),
    /// A malformed line, an end of stream or an error.
    Failed,
}

/// Why guest payload was not taken.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReceiveError {
    /// More than the credit the device gave.
    #[error("{0} bytes past the advertised credit")]
    Credit(usize),
    /// The host socket failed.
    #[error("host socket: {0}")]
    Io(#[from] io::Error),
}

/// A connection and its credit state.
pub(super) struct Connection {
    /// The host side's port.
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    /// The host process's end.
    pub stream: UnixStream,
    pub state: State,
    /// When an unfinished handshake or request is given up.
    pub deadline: Option<Instant>,
    pub owed: Owed,
    /// The host process reached the end of its stream.
    pub host_eof: bool,
    /// The host stream may have bytes: not read to `WouldBlock` since
    /// the last readiness event.
    pub may_read: bool,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    /// Host bytes read past the handshake line, sent before the stream's.
    carry: Vec<u8>,
    /// Payload sent to the guest.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes for the host stream the socket did not take yet.
    to_host: VecDeque<u8>,
    /// Of those, the first ones written by the device (not the guest's).
    device_bytes: usize,
    /// Payload received from the guest.
    rx_cnt: u32,
    /// Of that, what reached the host stream.
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest was last told.
    fwd_cnt_sent: u32,
    host_write_closed: bool,
}

impl Connection {
    /// A host process's new connection, in handshake until `deadline`.
    pub fn from_host(stream: UnixStream, deadline: Instant) -> Connection {
        let mut connection = Connection::new(stream, 0, 0, State::Handshake(Vec::new()));
        connection.deadline = Some(deadline);
        connection
    }

    /// A guest's connection from `peer_port` to host port `local_port`,
    /// accepted: a RESPONSE is owed.
    pub fn from_guest(stream: UnixStream, local_port: u32, request: &Header) -> Connection {
        let mut connection =
            Connection::new(stream, local_port, request.src_port, State::Established);
        connection.owed.response = true;
        connection.peer_credit(request);
        connection
    }

    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Connection {
        Connection {
            local_port,
            peer_port,
            stream,
            state,
            deadline: None,
            owed: Owed::default(),
            host_eof: false,
            may_read: true,
            peer_shutdown: 0,
            carry: Vec::new(),
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            to_host: VecDeque::new(),
            device_bytes: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            host_write_closed: false,
        }
    }

    /// Whether the guest heard of it (a REQUEST went out or it came from
    /// the guest), so that closing it must tell the guest.
    pub fn guest_knows(&self) -> bool {
        match self.state {
            State::Handshake(_) => false,
            State::Requesting => !self.owed.request,
            State::Established => true,
        }
    }

    /// Takes the credit fields of a packet from the guest.
    pub fn peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// Payload bytes the guest can take now.
    pub fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Fills the device's credit fields of a packet to the guest.
    pub fn stamp(&mut self, header: &mut Header) {
        header.buf_alloc = BUF_ALLOC;
        header.fwd_cnt = self.fwd_cnt;
        self.fwd_cnt_sent = self.fwd_cnt;
        if header.op == super::packet::op::CREDIT_UPDATE {
            self.owed.credit_update = false;
        }
    }

    /// The control packet owed first (op, flags), taken off the list.
    pub fn take_control(&mut self) -> Option<(u16, u32)> {
        use super::packet::op;
        let owed = &mut self.owed;
        if std::mem::take(&mut owed.request) {
            return Some((op::REQUEST, 0));
        }
        if std::mem::take(&mut owed.response) {
            return Some((op::RESPONSE, 0));
        }
        if owed.shutdown != 0 {
            return Some((op::SHUTDOWN, std::mem::take(&mut owed.shutdown)));
        }
        if owed.credit_update {
            return Some((op::CREDIT_UPDATE, 0));
        }
        None
    }

    /// Whether payload could go to the guest now.
    pub fn can_send(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.credit() > 0
            && (self.may_read || !self.carry.is_empty())
    }

    /// Whether it has a packet for the guest.
    pub fn has_packet(&self) -> bool {
        let owed = &self.owed;
        owed.request || owed.response || owed.shutdown != 0 || owed.credit_update || self.can_send()
    }

    /// Reads host bytes for the guest into `buf` (sized by the caller to
    /// the credit and the guest's buffer): `Ok(0)` is the end of the
    /// host stream. Counts what it returns as sent.
    pub fn read_for_guest(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = if self.carry.is_empty() {
            loop {
                match self.stream.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if e.kind() == io::ErrorKind::WouldBlock {
                            self.may_read = false;
                        }
                        return Err(e);
                    }
                    Ok(len) => break len,
                }
            }
        } else {
            let len = self.carry.len().min(buf.len());
            buf[..len].copy_from_slice(&self.carry[..len]);
            self.carry.drain(..len);
            len
        };
        if len == 0 && !buf.is_empty() {
            self.host_eof = true;
        }
        // At most a packet's payload.
        self.tx_cnt = self.tx_cnt.wrapping_add(len as u32);
        Ok(len)
    }

    /// Reads the handshake line on (a host process's connection).
    pub fn read_handshake(&mut self) -> HandshakeStep {
        let State::Handshake(line) = &mut self.state else {
            return HandshakeStep::Pending;
        };
        let mut chunk = [0u8; MAX_LINE];
        loop {
            let room = MAX_LINE - line.len();
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return HandshakeStep::Failed,
                Ok(len) => line.extend_from_slice(&chunk[..len]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HandshakeStep::Pending,
                Err(_) => return HandshakeStep::Failed,
            }
            match handshake::parse(line) {
                Line::Incomplete => continue,
                Line::Malformed => return HandshakeStep::Failed,
                Line::Connect { port, len } => {
                    self.carry = line.split_off(len);
                    self.state = State::Requesting;
                    return HandshakeStep::Connect(port);
                }
            }
        }
    }

    /// The guest accepted a host process's connection: tell the process.
    pub fn established(&mut self) {
        self.state = State::Established;
        self.deadline = None;
        let reply = format!("OK {}\n", self.local_port);
        self.device_bytes += reply.len();
        self.to_host.extend(reply.as_bytes());
    }

    /// Payload from the guest for the host stream: written at once if
    /// nothing waits before it, else (and what the socket did not take)
    /// buffered.
    pub fn receive(&mut self, payload: &[u8]) -> Result<(), ReceiveError> {
        let buffered = self.to_host.len() - self.device_bytes;
        let over = (buffered + payload.len()).saturating_sub(BUF_ALLOC as usize);
        if over > 0 {
            return Err(ReceiveError::Credit(over));
        }
        // At most a packet's payload.
        self.rx_cnt = self.rx_cnt.wrapping_add(payload.len() as u32);
        let mut rest = payload;
        if self.to_host.is_empty() {
            let written = write_some(&mut self.stream, payload)?;
            self.forwarded(written);
            rest = &payload[written..];
        }
        self.to_host.extend(rest);
        self.flush()?;
        Ok(())
    }

    /// Writes buffered bytes to the host stream while it takes them; then
    /// closes its writing side if the guest sends no more.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            let written = write_some(&mut self.stream, front)?;
            if written == 0 {
                break;
            }
            self.to_host.drain(..written);
            let from_device = written.min(self.device_bytes);
            self.device_bytes -= from_device;
            self.forwarded(written - from_device);
        }
        if self.to_host.is_empty()
            && self.peer_shutdown & SHUTDOWN_SEND != 0
            && !self.host_write_closed
        {
            self.host_write_closed = true;
            if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                tracing::debug!("vsock: cannot shut the host stream's writing side: {e}");
            }
        }
        Ok(())
    }

    /// `len` guest bytes reached the host stream: a credit update is owed
    /// once the guest's view of its credit is down to half.
    fn forwarded(&mut self, len: usize) {
        // At most a buffer's worth.
        self.fwd_cnt = self.fwd_cnt.wrapping_add(len as u32);
        let guest_view = BUF_ALLOC.saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt_sent));
        if self.fwd_cnt != self.fwd_cnt_sent && guest_view < BUF_ALLOC / 2 {
            self.owed.credit_update = true;
        }
    }

    /// Whether every byte for the host stream was written.
    pub fn flushed(&self) -> bool {
        self.to_host.is_empty()
    }
}

/// Writes what `stream` takes of `bytes` now (0 if it would block),
/// without SIGPIPE for a host process that went away (EPIPE instead).
fn write_some(stream: &mut UnixStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for reading `bytes.len()` bytes for the
        // call, and the descriptor is the stream's own.
        let sent = unsafe {
            libc::send(
                stream.as_raw_fd(),
                bytes.as_ptr().cast::<libc::c_void>(),
                bytes.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if let Ok(sent) = usize::try_from(sent) {
            return Ok(sent);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}
