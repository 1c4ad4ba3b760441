//! Receive: packets for the guest, one per chain the driver made
//! available on the receive queue (a header, then payload, over the
//! chain's device-writable buffers in order): RSTs owed for closed
//! connections first, then the connections' in turn, each giving its
//! owed control packet (REQUEST, RESPONSE, SHUTDOWN, CREDIT_UPDATE) or
//! payload read from its host stream, as much as the chain, the guest's
//! credit and [`MAX_PAYLOAD`] allow. A chain is taken only for a packet:
//! with nothing to send it stays for later. A malformed chain, or one
//! too small for a header, goes back with length 0 (counted).

use std::io;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::backend::Backend;
use super::chain;
use super::packet::{op, Header, HEADER_LEN, SHUTDOWN_SEND, TYPE_STREAM};
use super::{pending, HOST_CID, MAX_PAYLOAD};
use crate::devices::virtio::DeviceError;

/// The receive path's buffers, reused for every packet.
pub(super) struct Receive {
    payload: Vec<u8>,
    descriptors: Vec<Descriptor>,
}

impl Receive {
    /// Buffers for the largest payload.
    pub(super) fn new() -> Receive {
        Receive {
            payload: vec![0; MAX_PAYLOAD],
            descriptors: Vec::with_capacity(chain::MAX_DESCRIPTORS),
        }
    }

    /// Fills chains of `queue` with packets while both wait, at most a
    /// queue's worth (then the watch is kicked for more); returns whether
    /// any chain went back on the used ring.
    pub(super) fn serve(
        &mut self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
        backend: &mut Backend,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        for _ in 0..queue.size() {
            if !backend.has_packet() || pending(queue, memory)? == 0 {
                return Ok(used);
            }
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                return Ok(used);
            };
            let head = chain.head_index();
            if head >= queue.size() {
                tracing::warn!("vsock: receive ring names descriptor {head}, skipped");
                backend.counters.rx_malformed += 1;
                continue;
            }
            let capacity = match chain::buffers(memory, chain, true, &mut self.descriptors) {
                Ok(capacity) if capacity >= HEADER_LEN as u64 => capacity,
                result => {
                    if let Err(e) = result {
                        tracing::debug!("vsock: receive chain refused: {e}");
                    }
                    backend.counters.rx_malformed += 1;
                    queue.add_used(memory, head, 0)?;
                    used = true;
                    continue;
                }
            };
            let room = usize::try_from(capacity - HEADER_LEN as u64)
                .unwrap_or(MAX_PAYLOAD)
                .min(MAX_PAYLOAD);
            let Some(header) = backend.next_packet(&mut self.payload[..room]) else {
                // Nothing after all (the host streams had no bytes).
                queue.go_to_previous_position();
                return Ok(used);
            };
            let len = header.len as usize;
            let written = chain::scatter(memory, &self.descriptors, 0, &header.to_bytes())
                .and_then(|()| {
                    chain::scatter(
                        memory,
                        &self.descriptors,
                        HEADER_LEN as u64,
                        &self.payload[..len],
                    )
                });
            let used_len = match written {
                Ok(()) => {
                    backend.counters.rx_packets += 1;
                    backend.counters.rx_bytes += len as u64;
                    (HEADER_LEN + len) as u32
                }
                Err(e) => {
                    // Checked inside RAM, so not expected.
                    tracing::warn!("vsock: receive buffer write failed: {e}");
                    backend.counters.rx_malformed += 1;
                    0
                }
            };
            queue.add_used(memory, head, used_len)?;
            used = true;
        }
        if backend.has_packet() {
            backend.watch.kick();
        }
        Ok(used)
    }
}

impl Backend {
    /// The next packet for the guest, its payload (if any) put in `buf`
    /// (whose length bounds it).
    pub(super) fn next_packet(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some(reset) = self.resets.pop_front() {
            return Some(reset);
        }
        let count = self.connections.len();
        for step in 0..count {
            let index = (self.cursor + step) % count;
            match self.packet_of(index, buf) {
                Next::Packet(header) => {
                    self.cursor = index + 1;
                    return Some(header);
                }
                Next::Closed => return self.resets.pop_front(),
                Next::Nothing => {}
            }
        }
        None
    }

    /// Connection `index`'s next packet.
    fn packet_of(&mut self, index: usize, buf: &mut [u8]) -> Next {
        let guest_cid = self.guest_cid;
        let connection = &mut self.connections[index];
        let mut header = Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: connection.local_port,
            dst_port: connection.peer_port,
            kind: TYPE_STREAM,
            ..Header::default()
        };
        if let Some((op, flags)) = connection.take_control() {
            header.op = op;
            header.flags = flags;
        } else {
            if !connection.can_send() || buf.is_empty() {
                return Next::Nothing;
            }
            let room = buf.len().min(connection.credit() as usize);
            match connection.read_for_guest(&mut buf[..room]) {
                Ok(0) => {
                    header.op = op::SHUTDOWN;
                    header.flags = SHUTDOWN_SEND;
                }
                Ok(len) => {
                    header.op = op::RW;
                    // At most MAX_PAYLOAD.
                    header.len = len as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Nothing,
                Err(e) => {
                    tracing::debug!("vsock: host stream of port {}: {e}", connection.local_port);
                    self.close(index, true);
                    return Next::Closed;
                }
            }
        }
        connection.stamp(&mut header);
        Next::Packet(header)
    }
}

/// What a connection had for the guest.
enum Next {
    Packet(Header),
    Nothing,
    /// It broke and was closed (an RST is queued).
    Closed,
}
