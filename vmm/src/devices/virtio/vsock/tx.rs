//! Transmit: the guest's packets, one per chain on the transmit queue (a
//! header, then `len` payload bytes, split across device-readable buffers
//! however the driver likes), checked ([`super::chain`]) and acted on.
//! Every chain goes back on the used ring with length 0. What is refused:
//! - a malformed chain, or a `len` past the chain or the bound: dropped;
//! - a source CID other than the guest's: dropped (a guest cannot speak
//!   for another);
//! - another destination than the host, another socket type than stream,
//!   an unknown op, a packet for no connection, a protocol violation on
//!   a connection (a second REQUEST, a stray RESPONSE, payload past the
//!   credit): answered with an RST (a violation also closes the
//!   connection).
//!
//! Each is counted in [`VsockCounters`](super::VsockCounters).

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::backend::{Backend, MAX_CONNECTIONS};
use super::chain;
use super::connection::{Connection, ReceiveError, State};
use super::packet::{op, Header, SHUTDOWN_BOTH, TYPE_STREAM};
use super::{host, pending, HOST_CID, MAX_PAYLOAD};
use crate::devices::virtio::DeviceError;

/// The transmit path's buffers, reused for every packet.
pub(super) struct Transmit {
    payload: Vec<u8>,
    descriptors: Vec<Descriptor>,
}

impl Transmit {
    /// Buffers for the largest payload.
    pub(super) fn new() -> Transmit {
        Transmit {
            payload: vec![0; MAX_PAYLOAD],
            descriptors: Vec::with_capacity(chain::MAX_DESCRIPTORS),
        }
    }

    /// Acts on the packets the driver made available on `queue` so far;
    /// returns whether any chain went back on the used ring.
    pub(super) fn serve(
        &mut self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
        backend: &mut Backend,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        for _ in 0..pending(queue, memory)? {
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                break;
            };
            let head = chain.head_index();
            if head >= queue.size() {
                tracing::warn!("vsock: transmit ring names descriptor {head}, skipped");
                backend.counters.tx_malformed += 1;
                continue;
            }
            let packet =
                chain::buffers(memory, chain, false, &mut self.descriptors).and_then(|total| {
                    chain::read_packet(memory, &self.descriptors, total, &mut self.payload, |h| {
                        h.op == op::RW
                    })
                });
            match packet {
                Ok(header) => {
                    let payload = if header.op == op::RW {
                        &self.payload[..header.len as usize]
                    } else {
                        &[]
                    };
                    backend.handle(&header, payload);
                }
                Err(e) => {
                    tracing::debug!("vsock: transmit chain dropped: {e}");
                    backend.counters.tx_malformed += 1;
                }
            }
            queue.add_used(memory, head, 0)?;
            used = true;
        }
        Ok(used)
    }
}

impl Backend {
    /// Acts on one packet from the guest.
    pub(super) fn handle(&mut self, header: &Header, payload: &[u8]) {
        self.counters.tx_packets += 1;
        if header.src_cid != self.guest_cid {
            self.counters.bad_cid += 1;
            return;
        }
        let found = self.find(header.dst_port, header.src_port);
        if header.op == op::RST {
            // Never answered.
            if let Some(index) = found {
                self.close(index, false);
            }
            return;
        }
        let refuse = |backend: &mut Backend| match found {
            Some(index) => backend.close(index, true),
            None => backend.queue_reset(header.dst_port, header.src_port),
        };
        if header.dst_cid != HOST_CID {
            self.counters.bad_cid += 1;
            return refuse(self);
        }
        if header.kind != TYPE_STREAM {
            self.counters.bad_type += 1;
            return refuse(self);
        }
        if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&header.op) {
            self.counters.bad_op += 1;
            return refuse(self);
        }
        match found {
            Some(index) => self.on_connection(index, header, payload),
            None if header.op == op::REQUEST => self.connect(header),
            None => {
                self.counters.unknown_connection += 1;
                refuse(self);
            }
        }
    }

    /// A guest's REQUEST to host port `dst_port`: connects to its socket.
    fn connect(&mut self, header: &Header) {
        if self.connections.len() >= MAX_CONNECTIONS {
            self.counters.connections_refused += 1;
            return self.queue_reset(header.dst_port, header.src_port);
        }
        let path = host::port_path(&self.path, header.dst_port);
        match host::connect(&path) {
            Ok(stream) => self.insert(Connection::from_guest(stream, header.dst_port, header)),
            Err(e) => {
                tracing::debug!("vsock: guest connection to {}: {e}", path.display());
                self.counters.connections_refused += 1;
                self.queue_reset(header.dst_port, header.src_port);
            }
        }
    }

    /// A packet for connection `index`.
    fn on_connection(&mut self, index: usize, header: &Header, payload: &[u8]) {
        let connection = &mut self.connections[index];
        connection.peer_credit(header);
        // Credit may have opened: try the host stream again.
        connection.may_read = true;
        let violation = match header.op {
            op::RESPONSE if connection.state == State::Requesting && connection.guest_knows() => {
                connection.established();
                false
            }
            op::SHUTDOWN => {
                connection.peer_shutdown |= header.flags & SHUTDOWN_BOTH;
                false
            }
            op::RW if connection.state == State::Established => match connection.receive(payload) {
                Ok(()) => {
                    self.counters.tx_bytes += payload.len() as u64;
                    false
                }
                Err(ReceiveError::Credit(over)) => {
                    tracing::debug!(
                        "vsock: guest port {}: {over} bytes past its credit",
                        header.src_port
                    );
                    self.counters.credit_violations += 1;
                    self.close(index, true);
                    return;
                }
                Err(ReceiveError::Io(e)) => {
                    tracing::debug!("vsock: host stream of port {}: {e}", header.dst_port);
                    self.close(index, true);
                    return;
                }
            },
            op::CREDIT_UPDATE => false,
            op::CREDIT_REQUEST => {
                connection.owed.credit_update = true;
                false
            }
            // A second REQUEST, a stray RESPONSE, payload before the
            // connection is up.
            _ => true,
        };
        if violation {
            self.counters.protocol_errors += 1;
            self.close(index, true);
        }
    }
}
