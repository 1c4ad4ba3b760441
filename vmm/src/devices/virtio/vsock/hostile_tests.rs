//! A hostile guest: malformed chains on both queues, lying headers,
//! packets for nothing. None may panic, hang, or touch memory outside
//! guest RAM; each is counted and the device goes on serving.

use std::io::Write;

use super::packet::{op, HEADER_LEN};
use super::testing::{at_eof, client, guest, packet, read_n, Guest, LIVE, RX_BUF, TX_BUF};
use super::{HOST_CID, MAX_PAYLOAD};
use crate::devices::virtio::mmio::regs;
use crate::devices::virtio::status;
use crate::devices::virtio::testing::{F_INDIRECT, F_NEXT, RAM_BYTES};

/// The device still serves: a guest connection to a missing socket is
/// refused with an RST.
fn still_serving(g: &mut Guest) {
    g.send(packet(op::REQUEST, 999, 4242), &[]);
    let (rst, _) = g.receive_one();
    assert_eq!((rst.op, rst.dst_port), (op::RST, 999));
    assert_eq!(g.read(regs::STATUS), LIVE);
}

#[test]
fn vsock_malformed_transmit_chains_are_dropped_and_counted() {
    let mut g = guest();
    let end = RAM_BYTES as u64;
    let mut bytes = packet(op::REQUEST, 1, 2).to_bytes().to_vec();
    bytes.extend_from_slice(&[0; 64]);
    g.tx.put(TX_BUF, &bytes);
    let header = HEADER_LEN as u32;
    let cases: [&[(u64, u32, bool)]; 8] = [
        // A device-writable buffer, first or after the header.
        &[(TX_BUF, header, true)],
        &[(TX_BUF, header, false), (TX_BUF + 0x1000, 16, true)],
        // Outside RAM, straddling its end, wrapping around.
        &[(end, header, false)],
        &[(end - 20, header, false)],
        &[(TX_BUF, 20, false), (u64::MAX - 10, 24, false)],
        // Shorter than a header, in one piece or two.
        &[(TX_BUF, header - 1, false)],
        &[(TX_BUF, 20, false), (TX_BUF + 20, 3, false)],
        // Empty.
        &[(TX_BUF, 0, false)],
    ];
    for (i, buffers) in cases.iter().enumerate() {
        let head = g.tx.chain(0, buffers);
        g.submit_tx(head);
        assert_eq!(g.counters().tx_malformed, i as u64 + 1, "{buffers:?}");
    }
    // A loop, and a next index past the table.
    g.tx.descriptor(0, TX_BUF, 20, F_NEXT, 1);
    g.tx.descriptor(1, TX_BUF + 20, 24, F_NEXT, 0);
    g.submit_tx(0);
    g.tx.descriptor(1, TX_BUF + 20, 24, F_NEXT, 64);
    g.submit_tx(0);
    // An indirect table outside RAM, one of 300 descriptors, a nested one.
    let table = 0x30_0000;
    g.tx.descriptor(0, end - 16, 48, F_INDIRECT, 0);
    g.submit_tx(0);
    for i in 0..300 {
        g.tx.descriptor_at(table, i, TX_BUF, 0, F_NEXT, i + 1);
    }
    g.tx.descriptor_at(table, 300, TX_BUF, header, 0, 0);
    g.tx.descriptor(0, table, 301 * 16, F_INDIRECT, 0);
    g.submit_tx(0);
    g.tx.descriptor_at(table, 0, table, 32, F_INDIRECT, 0);
    g.tx.descriptor(0, table, 32, F_INDIRECT, 0);
    g.submit_tx(0);
    assert_eq!(g.counters().tx_malformed, 13);
    assert_eq!(g.counters().tx_packets, 0);
    assert!(g.receive().is_empty(), "nothing answered");
    still_serving(&mut g);
}

#[test]
fn vsock_len_past_the_buffers_or_the_bound_is_dropped() {
    let mut g = guest();
    let (mut host, local) = g.established(30);
    let mut rw = packet(op::RW, 30, local);
    for len in [10, u32::MAX, MAX_PAYLOAD as u32 + 1] {
        rw.len = len;
        let mut bytes = rw.to_bytes().to_vec();
        bytes.extend_from_slice(b"short");
        g.send_raw(&bytes, 1);
    }
    // A payload over the bound that the buffers do hold.
    rw.len = MAX_PAYLOAD as u32 + 1;
    let mut bytes = rw.to_bytes().to_vec();
    bytes.resize(HEADER_LEN + MAX_PAYLOAD + 1, 0);
    g.send_raw(&bytes, 1);
    assert_eq!(g.counters().tx_malformed, 4);
    assert_eq!(g.counters().tx_bytes, 0);
    g.send(packet(op::RW, 30, local), b"fine");
    assert_eq!(read_n(&mut host, 4), b"fine");
}

#[test]
fn vsock_a_header_split_across_descriptors_is_read_whole() {
    let mut g = guest();
    let (mut host, local) = g.established(31);
    let mut rw = packet(op::RW, 31, local);
    rw.len = 11;
    let mut bytes = rw.to_bytes().to_vec();
    bytes.extend_from_slice(b"split bytes");
    for pieces in [2, 7, bytes.len()] {
        g.send_raw(&bytes, pieces);
        assert_eq!(read_n(&mut host, 11), b"split bytes", "{pieces}");
    }
    assert_eq!(g.counters().tx_malformed, 0);
}

#[test]
fn vsock_lying_headers_are_refused_and_counted() {
    let mut g = guest();
    let (mut host, local) = g.established(32);
    // Another source CID: dropped, not answered, the connection intact.
    let mut spoofed = packet(op::RW, 32, local);
    spoofed.src_cid = 4;
    g.send(spoofed, b"spoofed");
    spoofed.op = op::RST;
    g.send(spoofed, &[]);
    assert_eq!(g.counters().bad_cid, 2);
    assert!(g.receive().is_empty());
    assert_eq!(g.connections(), 1);
    // Another destination, another type, unknown ops: RST each.
    let mut elsewhere = packet(op::REQUEST, 40, 41);
    elsewhere.dst_cid = 7;
    g.send(elsewhere, &[]);
    let mut datagram = packet(op::REQUEST, 40, 41);
    datagram.kind = 2;
    g.send(datagram, &[]);
    for unknown in [0, 8, 0xffff] {
        g.send(packet(unknown, 40, 41), &[]);
    }
    // Packets for no connection: RST; an RST for none: nothing.
    for op in [op::RW, op::RESPONSE, op::SHUTDOWN, op::CREDIT_UPDATE] {
        g.send(packet(op, 40, 41), b"x");
    }
    g.send(packet(op::RST, 40, 41), &[]);
    let answers = g.receive();
    assert_eq!(answers.len(), 9);
    for (header, _) in &answers {
        assert_eq!(
            (header.op, header.src_cid, header.src_port, header.dst_port),
            (op::RST, HOST_CID, 41, 40)
        );
    }
    let counters = g.counters();
    assert_eq!(
        (
            counters.bad_cid,
            counters.bad_type,
            counters.bad_op,
            counters.unknown_connection
        ),
        (3, 1, 3, 4)
    );
    // A second REQUEST on a live connection breaks it.
    g.send(packet(op::REQUEST, 32, local), &[]);
    assert_eq!(g.receive_one().0.op, op::RST);
    assert_eq!(g.counters().protocol_errors, 1);
    assert!(at_eof(&mut host));
    still_serving(&mut g);
}

#[test]
fn vsock_payload_before_the_response_resets() {
    let mut g = guest();
    let (mut host, request) = g.host_connect(33);
    g.send(packet(op::RW, 33, request.src_port), b"too early");
    assert_eq!(g.receive_one().0.op, op::RST);
    assert!(at_eof(&mut host));
    assert_eq!(g.counters().protocol_errors, 1);
}

#[test]
fn vsock_malformed_receive_chains_are_returned_empty() {
    // Bad receive chains first, then a good one: the device takes them
    // in order.
    let end = RAM_BYTES as u64;
    let cases: [&[(u64, u32, bool)]; 4] = [
        &[(RX_BUF, 4096, false)],
        &[(end - 10, 4096, true)],
        &[(RX_BUF, (HEADER_LEN - 1) as u32, true)],
        &[(RX_BUF, 20, true), (u64::MAX - 100, 4096, true)],
    ];
    let mut fresh = super::testing::guest_without_rx();
    for (i, buffers) in cases.iter().enumerate() {
        let head = fresh.rx.chain(2 * i as u16, buffers);
        fresh.rx.publish(head);
    }
    fresh.post_rx(10);
    fresh.send(packet(op::REQUEST, 999, 4242), &[]);
    assert_eq!(fresh.counters().rx_malformed, 4);
    let packets = fresh.receive_any();
    assert_eq!(packets.len(), 5);
    assert!(packets[..4].iter().all(|&(_, len)| len == 0));
    assert_eq!(packets[4].1, HEADER_LEN as u32, "the RST, in the good one");
    fresh.post_rx(11);
    still_serving(&mut fresh);
}

#[test]
fn vsock_resets_for_a_guest_without_buffers_are_bounded() {
    let mut g = super::testing::guest_without_rx();
    for port in 0..300 {
        g.send(packet(op::RW, port, 1), b"nowhere");
    }
    assert_eq!(g.counters().unknown_connection, 300);
    assert_eq!(g.counters().resets_dropped, 300 - 128);
    for i in 0..64 {
        g.post_rx(i);
    }
    g.notify(0);
    assert_eq!(g.receive().len(), 64);
}

#[test]
fn vsock_a_broken_ring_needs_a_reset() {
    let g = guest();
    let mut host = client(&g.path);
    host.write_all(b"CONNECT 1\n").expect("write");
    // The transmit ring's index runs ahead by more than its size.
    g.tx.set_avail_idx(g.tx.published().wrapping_add(65));
    g.notify(1);
    assert_ne!(g.read(regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(g.lock().run_live(|v| v.process_host_events()).is_none());
    // A descriptor index past the table on the transmit ring: skipped.
    let mut g = guest();
    g.tx.publish(64);
    g.notify(1);
    assert_eq!(g.counters().tx_malformed, 1);
    still_serving(&mut g);
}
