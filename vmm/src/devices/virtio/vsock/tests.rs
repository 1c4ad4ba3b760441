//! The socket device through its transport, on real guest memory and
//! virtqueues laid out like a guest driver does, with host processes on
//! real Unix sockets.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use super::packet::{op, SHUTDOWN_BOTH, SHUTDOWN_SEND};
use super::subscriber::VsockBackend;
use super::testing::{at_eof, client, guest, packet, read_n, GUEST_CID, LIVE};
use super::{Vsock, VsockError, BUF_ALLOC, HOST_CID, MAX_CONNECTIONS};
use crate::devices::mmio::MmioDevice;
use crate::devices::virtio::mmio::regs;

#[test]
fn vsock_config_space_holds_the_cid() {
    let g = guest();
    assert_eq!(g.read(regs::DEVICE_ID), 19);
    {
        let mut t = g.lock();
        let mut features = [0u8; 4];
        t.write(regs::DEVICE_FEATURES_SEL, &1u32.to_le_bytes());
        t.read(regs::DEVICE_FEATURES, &mut features);
        assert_eq!(u32::from_le_bytes(features), 1, "VERSION_1");
        t.write(regs::DEVICE_FEATURES_SEL, &0u32.to_le_bytes());
        t.read(regs::DEVICE_FEATURES, &mut features);
        assert_eq!(features, [0; 4]);
        let mut cid = [0u8; 8];
        t.read(regs::CONFIG, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
        let mut low = [0xaa; 4];
        t.read(regs::CONFIG, &mut low);
        assert_eq!(low, [3, 0, 0, 0]);
        for (offset, len) in [(8, 1), (6, 4), (0xeff, 1)] {
            let mut bytes = vec![0xaa; len];
            t.read(regs::CONFIG + offset, &mut bytes);
            assert_eq!(bytes, vec![0; len], "{offset}");
        }
        t.write(regs::CONFIG, &[9; 8]);
        t.read(regs::CONFIG, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID, "read-only");
        t.write(regs::QUEUE_SEL, &3u32.to_le_bytes());
    }
    assert_eq!(g.read(regs::QUEUE_NUM_MAX), 0, "three queues");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        let path = g.dir.path().join(format!("bad{cid}"));
        assert!(matches!(Vsock::new(cid, &path), Err(VsockError::BadCid(c)) if c == cid));
    }
    assert!(matches!(
        Vsock::new(4, &g.path),
        Err(VsockError::Listen { .. })
    ));
}

#[test]
fn vsock_host_connect_reaches_the_guest_and_bytes_flow_both_ways() {
    let mut g = guest();
    let (mut host, request) = g.host_connect(1234);
    assert_eq!(
        (request.src_cid, request.dst_cid, request.dst_port),
        (HOST_CID, GUEST_CID, 1234)
    );
    assert!(request.src_port >= 1 << 30);
    assert_eq!((request.buf_alloc, request.fwd_cnt), (BUF_ALLOC, 0));
    assert!(g.line.take(), "interrupt");
    g.send(packet(op::RESPONSE, 1234, request.src_port), &[]);
    let ok = format!("OK {}\n", request.src_port);
    assert_eq!(read_n(&mut host, ok.len()), ok.as_bytes());

    host.write_all(b"ping").expect("write");
    g.host_events();
    let (rw, payload) = g.receive_one();
    assert_eq!(
        (rw.op, rw.src_port, rw.dst_port),
        (op::RW, request.src_port, 1234)
    );
    assert_eq!(payload, b"ping");
    g.send(packet(op::RW, 1234, request.src_port), b"pong");
    assert_eq!(read_n(&mut host, 4), b"pong");
    let counters = g.counters();
    assert_eq!((counters.tx_bytes, counters.rx_bytes), (4, 4));
    assert_eq!(g.read(regs::STATUS), LIVE);
}

#[test]
fn vsock_bytes_written_with_the_handshake_line_follow_it() {
    let mut g = guest();
    let mut host = client(&g.path);
    host.write_all(b"CONNECT 77\nearly bytes").expect("write");
    g.host_events();
    let (request, _) = g.receive_one();
    assert_eq!((request.op, request.dst_port), (op::REQUEST, 77));
    g.send(packet(op::RESPONSE, 77, request.src_port), &[]);
    let (rw, payload) = g.receive_one();
    assert_eq!(rw.op, op::RW);
    assert_eq!(payload, b"early bytes");
    let ok = format!("OK {}\n", request.src_port);
    assert_eq!(read_n(&mut host, ok.len()), ok.as_bytes());
}

#[test]
fn vsock_guest_connects_to_a_listening_port_socket() {
    let mut g = guest();
    let listener = UnixListener::bind(g.dir.path().join("vsock.sock_1024")).expect("bind");
    g.send(packet(op::REQUEST, 5000, 1024), &[]);
    let (response, _) = g.receive_one();
    assert_eq!(
        (
            response.op,
            response.src_port,
            response.dst_port,
            response.dst_cid
        ),
        (op::RESPONSE, 1024, 5000, GUEST_CID)
    );
    let (mut host, _) = listener.accept().expect("accept");
    host.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    g.send(packet(op::RW, 5000, 1024), b"hello host");
    assert_eq!(read_n(&mut host, 10), b"hello host");
    host.write_all(b"hello guest").expect("write");
    g.host_events();
    let (rw, payload) = g.receive_one();
    assert_eq!((rw.op, rw.dst_port), (op::RW, 5000));
    assert_eq!(payload, b"hello guest");
}

#[test]
fn vsock_guest_connect_to_a_missing_socket_gets_rst() {
    let mut g = guest();
    g.send(packet(op::REQUEST, 5000, 1025), &[]);
    let (rst, _) = g.receive_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 1025, 5000));
    assert_eq!(g.counters().connections_refused, 1);
    assert_eq!(g.connections(), 0);
}

#[test]
fn vsock_host_bytes_wait_for_guest_credit() {
    let mut g = guest();
    let (mut host, request) = g.host_connect(9);
    let local = request.src_port;
    let mut response = packet(op::RESPONSE, 9, local);
    response.buf_alloc = 1000;
    g.send(response, &[]);
    let _ = read_n(&mut host, format!("OK {local}\n").len());
    host.write_all(&[7; 3000]).expect("write");
    g.host_events();
    let got: usize = g.receive().iter().map(|(_, p)| p.len()).sum();
    assert_eq!(got, 1000, "only the credit");
    g.host_events();
    assert!(g.receive().is_empty(), "no credit left");
    // The guest consumed 600 bytes: 600 more may come.
    let mut update = packet(op::CREDIT_UPDATE, 9, local);
    update.buf_alloc = 1000;
    update.fwd_cnt = 600;
    g.send(update, &[]);
    let got: usize = g.receive().iter().map(|(_, p)| p.len()).sum();
    assert_eq!(got, 600);
    // Consumed all it got, and a bigger buffer.
    update.fwd_cnt = 1600;
    update.buf_alloc = 2000;
    g.send(update, &[]);
    let got: usize = g.receive().iter().map(|(_, p)| p.len()).sum();
    assert_eq!(got, 1400, "the rest");
}

/// Shrinks the send buffer of the device's end of connection 0, so that
/// the host socket fills up.
fn shrink_send_buffer(g: &super::testing::Guest) {
    let t = g.lock();
    let fd = t.device().backend.connections[0].stream.as_raw_fd();
    let size: libc::c_int = 1;
    // SAFETY: setsockopt on a socket of the device with a valid int.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0);
}

#[test]
fn vsock_guest_bytes_for_a_slow_host_are_buffered_then_credited() {
    let mut g = guest();
    let (mut host, local) = g.established(11);
    shrink_send_buffer(&g);
    let chunk = vec![0x5a; 16 << 10];
    for _ in 0..4 {
        g.send(packet(op::RW, 11, local), &chunk);
    }
    assert_eq!(g.counters().tx_bytes, u64::from(BUF_ALLOC));
    assert_eq!(g.connections(), 1, "within the credit");
    assert!(g.receive().is_empty(), "nothing consumed yet: no update");
    host.set_nonblocking(true).expect("nonblocking");
    let mut read = 0;
    let mut buf = vec![0; 1 << 16];
    while read < BUF_ALLOC as usize {
        match std::io::Read::read(&mut host, &mut buf) {
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => g.host_events(),
            Err(e) => panic!("{e}"),
        }
    }
    let updates = g.receive();
    let last = updates.last().expect("a credit update");
    assert_eq!(last.0.op, op::CREDIT_UPDATE);
    // The guest sent BUF_ALLOC bytes: its credit is what was forwarded.
    let guest_credit = last.0.fwd_cnt;
    assert!(guest_credit >= BUF_ALLOC / 2, "{last:?}");
    assert!(updates.iter().all(|(h, _)| h.op == op::CREDIT_UPDATE));
    g.host_events();
    assert_eq!(read, BUF_ALLOC as usize);
}

#[test]
fn vsock_guest_bytes_past_the_credit_reset_the_connection() {
    let mut g = guest();
    let (mut host, local) = g.established(12);
    shrink_send_buffer(&g);
    let chunk = vec![1; 16 << 10];
    // The host socket takes a few KiB: the fifth chunk is too many.
    for _ in 0..5 {
        g.send(packet(op::RW, 12, local), &chunk);
    }
    let (rst, _) = g.receive_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, local, 12));
    assert_eq!(g.counters().credit_violations, 1);
    assert_eq!(g.connections(), 0);
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut host, &mut rest).expect("to the end");
    assert!(rest.len() < BUF_ALLOC as usize);
}

#[test]
fn vsock_host_close_sends_the_guest_a_shutdown() {
    let mut g = guest();
    let (host, local) = g.established(13);
    drop(host);
    g.host_events();
    let (shutdown, _) = g.receive_one();
    assert_eq!(
        (shutdown.op, shutdown.flags, shutdown.dst_port),
        (op::SHUTDOWN, SHUTDOWN_SEND, 13)
    );
    // The guest closes its socket too: answered with an RST.
    let mut both = packet(op::SHUTDOWN, 13, local);
    both.flags = SHUTDOWN_BOTH;
    g.send(both, &[]);
    let (rst, _) = g.receive_one();
    assert_eq!(rst.op, op::RST);
    assert_eq!(g.connections(), 0);
}

#[test]
fn vsock_guest_rst_ends_the_host_stream() {
    let mut g = guest();
    let (mut host, local) = g.established(14);
    g.send(packet(op::RST, 14, local), &[]);
    assert!(at_eof(&mut host));
    assert!(g.receive().is_empty(), "an RST is not answered");
    assert_eq!(g.connections(), 0);
}

#[test]
fn vsock_guest_shutdown_send_ends_the_host_writing_side_only() {
    let mut g = guest();
    let (mut host, local) = g.established(15);
    g.send(packet(op::RW, 15, local), b"last words");
    let mut shutdown = packet(op::SHUTDOWN, 15, local);
    shutdown.flags = SHUTDOWN_SEND;
    g.send(shutdown, &[]);
    assert_eq!(read_n(&mut host, 10), b"last words");
    assert!(at_eof(&mut host));
    host.write_all(b"reply").expect("write");
    g.host_events();
    let (rw, payload) = g.receive_one();
    assert_eq!((rw.op, payload.as_slice()), (op::RW, &b"reply"[..]));
}

#[test]
fn vsock_guest_rst_refuses_a_host_connect() {
    let mut g = guest();
    let (mut host, request) = g.host_connect(16);
    g.send(packet(op::RST, 16, request.src_port), &[]);
    assert!(at_eof(&mut host), "closed without OK");
    assert_eq!(g.connections(), 0);
}

#[test]
fn vsock_malformed_handshakes_close_the_host_stream() {
    let mut g = guest();
    let lines: [&[u8]; 5] = [
        b"HELLO\n",
        b"CONNECT 99999999999\n",
        b"CONNECT x\n",
        &[b'C'; 40],
        b"CONNECT 12",
    ];
    for (i, line) in lines.iter().enumerate() {
        let mut host = client(&g.path);
        host.write_all(line).expect("write");
        if i == lines.len() - 1 {
            // A good start, then the end of the stream.
            host.shutdown(std::net::Shutdown::Write).expect("shutdown");
        }
        g.host_events();
        assert!(at_eof(&mut host), "{line:?}");
        assert_eq!(g.counters().handshakes_failed, i as u64 + 1);
    }
    assert!(g.receive().is_empty(), "nothing for the guest");
    assert_eq!(g.connections(), 0);
}

#[test]
fn vsock_handshakes_and_requests_time_out() {
    let mut g = guest();
    g.lock()
        .run_live(|v| {
            v.set_timeouts(Duration::from_millis(50));
            Ok(())
        })
        .expect("live");
    let mut silent = client(&g.path);
    g.host_events();
    let (mut unanswered, request) = g.host_connect(17);
    std::thread::sleep(Duration::from_millis(80));
    g.host_events();
    assert!(at_eof(&mut silent));
    assert!(at_eof(&mut unanswered));
    let (rst, _) = g.receive_one();
    assert_eq!((rst.op, rst.src_port), (op::RST, request.src_port));
    assert_eq!(g.counters().timeouts, 2);
}

#[test]
fn vsock_connection_table_is_bounded() {
    let mut g = guest();
    let mut hosts: Vec<_> = (0..MAX_CONNECTIONS).map(|_| client(&g.path)).collect();
    for _ in 0..MAX_CONNECTIONS / 8 {
        g.host_events();
    }
    assert_eq!(g.connections(), MAX_CONNECTIONS);
    let mut refused = client(&g.path);
    g.host_events();
    assert!(at_eof(&mut refused));
    let _listener = UnixListener::bind(g.dir.path().join("vsock.sock_80")).expect("bind");
    g.send(packet(op::REQUEST, 6000, 80), &[]);
    let (rst, _) = g.receive_one();
    assert_eq!((rst.op, rst.dst_port), (op::RST, 6000));
    assert_eq!(g.counters().connections_refused, 2);
    // One handshake fails: room for one more.
    hosts[0].write_all(b"nope\n").expect("write");
    g.host_events();
    assert_eq!(g.connections(), MAX_CONNECTIONS - 1);
    hosts.truncate(1);
    g.send(packet(op::REQUEST, 6000, 80), &[]);
    assert_eq!(g.receive_one().0.op, op::RESPONSE);
}

#[test]
fn vsock_reset_closes_every_connection() {
    let mut g = guest();
    let (mut host, _) = g.established(18);
    g.lock().write(regs::STATUS, &0u32.to_le_bytes());
    assert!(!g.lock().device().is_active());
    assert!(at_eof(&mut host));
    assert_eq!(g.connections(), 0);
}

#[test]
fn vsock_backend_subscriber_watches_connections() {
    let mut g = guest();
    let mut manager: EventManager<Box<dyn MutEventSubscriber + Send>> =
        EventManager::new().expect("event manager");
    manager.add_subscriber(Box::new(VsockBackend::new(g.transport.clone())));
    let run = |manager: &mut EventManager<_>| {
        // Rounds until nothing is ready (each round serves, then updates
        // the watches).
        while manager.run_with_timeout(100).expect("run") > 0 {}
    };
    let mut host = client(&g.path);
    host.write_all(b"CONNECT 20\n").expect("write");
    run(&mut manager);
    let (request, _) = g.receive_one();
    assert_eq!(request.op, op::REQUEST);
    g.send(packet(op::RESPONSE, 20, request.src_port), &[]);
    let ok = format!("OK {}\n", request.src_port);
    assert_eq!(read_n(&mut host, ok.len()), ok.as_bytes());
    // Host bytes arrive through the stream's watch alone.
    host.write_all(b"via epoll").expect("write");
    run(&mut manager);
    let (rw, payload) = g.receive_one();
    assert_eq!((rw.op, payload.as_slice()), (op::RW, &b"via epoll"[..]));
    // Closed and reopened, descriptor numbers reused: still watched.
    g.send(packet(op::RST, 20, request.src_port), &[]);
    run(&mut manager);
    drop(host);
    let mut again = client(&g.path);
    again.write_all(b"CONNECT 21\n").expect("write");
    run(&mut manager);
    let (request, _) = g.receive_one();
    assert_eq!((request.op, request.dst_port), (op::REQUEST, 21));
    g.send(packet(op::RESPONSE, 21, request.src_port), &[]);
    let _ = read_n(&mut again, format!("OK {}\n", request.src_port).len());
    again.write_all(b"again").expect("write");
    run(&mut manager);
    assert_eq!(g.receive_one().1, b"again");
}
