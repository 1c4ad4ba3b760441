//! Untrusted transmit queues of a socket device (a guest's driver lays
//! them out however it likes): any bytes become the descriptor table,
//! the available ring and the rest of a small guest RAM, plus a few
//! register writes, for a virtio-vsock device on Unix sockets in a
//! temporary directory, set up like a driver does, with one host
//! process's connection waiting for the guest (its REQUEST from host
//! port 2^30 to guest port 1024 already in a receive buffer) and a host
//! socket for guest connections to port 1024; then notified on its
//! transmit queue and served as the event loop would. Refused packets
//! and resets are fine; panics, hangs, more connections than the table
//! holds, and more bytes on the host stream than the guest sent plus the
//! `OK` line, are not (guest RAM is an mmap of its own: vm-memory bounds
//! every access).
//!
//! Input: byte 0: queue size 2^(b % 9); byte 1: bit 0 the host process
//! writes bytes too, bit 1 notify twice; byte 2: register writes
//! (b % 5), each le16 offset (in the first 0x200 bytes of the window)
//! and le32 value; then the transmit descriptor table (at 0x0, 16 bytes
//! per entry), its available ring (at 0x1000: flags, idx, one le16 per
//! entry) and guest memory from 0x3000 (headers, payloads, indirect
//! tables). The transmit used ring is at 0x2000; the receive queue (4
//! buffers of 4 KiB) and the event queue follow at 0x1_0000 and
//! 0x1_8000.
#![no_main]

#[path = "virtio_driver.rs"]
mod virtio_driver;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use libfuzzer_sys::fuzz_target;
use mecvisor_vmm::devices::signal::Signal;
use mecvisor_vmm::devices::virtio::mmio::{regs, MmioTransport};
use mecvisor_vmm::devices::virtio::vsock::{Vsock, MAX_CONNECTIONS};
use mecvisor_vmm::devices::virtio::{status, Interrupt};
use mecvisor_vmm::GuestRam;
use virtio_driver::{negotiate, params, queue, take, write, Params};

const RAM_BYTES: u64 = 128 << 10;
const DESC_TABLE: u64 = 0x0;
/// The available ring; the used ring follows at 0x2000.
const AVAIL_RING: u64 = 0x1000;
const MEMORY: u64 = 0x3000;
const RX_RINGS: u64 = 0x1_0000;
const RX_BUFFERS: u64 = 0x1_3000;
const EVENT_RINGS: u64 = 0x1_8000;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Params {
        size,
        flags,
        register_writes,
    } = params(&mut data);

    let ram = GuestRam::new(RAM_BYTES).expect("guest RAM");
    ram.write(DESC_TABLE, take(&mut data, usize::from(size) * 16))
        .expect("descriptor table");
    // Made available only once the host connection waits for the guest.
    let avail_ring = take(&mut data, 4 + 2 * usize::from(size));
    let rest = take(&mut data, (RX_RINGS - MEMORY) as usize);
    ram.write(MEMORY, rest).expect("guest memory");
    // Four receive buffers, made available.
    let mut avail = vec![0u8, 0, 4, 0];
    for i in 0..4u16 {
        let mut descriptor = [0u8; 16];
        descriptor[0..8].copy_from_slice(&(RX_BUFFERS + u64::from(i) * 0x1000).to_le_bytes());
        descriptor[8..12].copy_from_slice(&0x1000u32.to_le_bytes());
        descriptor[12..14].copy_from_slice(&2u16.to_le_bytes());
        ram.write(RX_RINGS + 16 * u64::from(i), &descriptor)
            .expect("receive descriptor");
        avail.extend_from_slice(&i.to_le_bytes());
    }
    ram.write(RX_RINGS + 0x1000, &avail).expect("receive ring");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v.sock");
    let _port_1024 = UnixListener::bind(dir.path().join("v.sock_1024")).expect("port socket");
    let device = Vsock::new(3, &path).expect("device");
    let line = Signal::new().expect("signal");
    let mut transport =
        MmioTransport::new(device, ram.memory().clone(), Interrupt::new(line)).expect("transport");

    let negotiated = negotiate(&mut transport);
    queue(&mut transport, 0, 4, RX_RINGS);
    queue(&mut transport, 1, size, DESC_TABLE);
    queue(&mut transport, 2, 4, EVENT_RINGS);
    write(&mut transport, regs::STATUS, negotiated | status::DRIVER_OK);
    assert!(
        transport.device().is_active(),
        "a well-behaved setup activates"
    );

    let mut host = UnixStream::connect(&path).expect("host connection");
    host.write_all(b"CONNECT 1024\n").expect("handshake");
    if flags & 1 != 0 {
        host.write_all(b"host bytes").expect("host bytes");
    }
    let _ = transport.run_live(|vsock| vsock.process_host_events());
    ram.write(AVAIL_RING, avail_ring).expect("available ring");

    for (offset, value) in register_writes {
        write(&mut transport, offset, value);
    }
    write(&mut transport, regs::QUEUE_NOTIFY, 1);
    if flags & 2 != 0 {
        write(&mut transport, regs::QUEUE_NOTIFY, 1);
    }
    let _ = transport.run_live(|vsock| vsock.process_host_events());

    let device = transport.device();
    assert!(device.connections() <= MAX_CONNECTIONS);
    host.set_nonblocking(true).expect("non-blocking");
    let mut received = Vec::new();
    let _ = host.read_to_end(&mut received);
    let ok_line = format!("OK {}\n", 1u32 << 30).len() as u64;
    assert!(
        received.len() as u64 <= device.counters().tx_bytes + ok_line,
        "{} bytes on the host stream for {:?}",
        received.len(),
        device.counters()
    );
});
