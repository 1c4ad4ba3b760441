//! The server end to end over a Unix socket standing in for AF_VSOCK: the
//! server is generic over its listener, and this host has no vsock
//! transport to a guest, so the real `VsockListener` only runs inside a
//! guest (the hil lab). Power-off and uptime come from a fake system.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mecvisor_guest::server::{serve, Config};
use mecvisor_guest::system::System;

/// Uptime 77 s; counts power-off requests instead of powering off.
#[derive(Default)]
struct Fake {
    power_offs: AtomicUsize,
}

impl System for Fake {
    fn uptime(&self) -> io::Result<Duration> {
        Ok(Duration::from_secs(77))
    }

    fn power_off(&self) -> io::Error {
        self.power_offs.fetch_add(1, Ordering::SeqCst);
        io::Error::other("fake power off")
    }
}

/// Starts a server (its thread runs until the test process ends).
fn start(config: Config) -> (tempfile::TempDir, PathBuf, Arc<Fake>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("guest.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let fake = Arc::new(Fake::default());
    let system: Arc<dyn System> = fake.clone();
    std::thread::spawn(move || serve(&listener, system, config));
    (dir, path, fake)
}

fn connect(path: &PathBuf) -> BufReader<UnixStream> {
    let stream = UnixStream::connect(path).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    BufReader::new(stream)
}

fn ask(conn: &mut BufReader<UnixStream>, request: &[u8]) -> String {
    conn.get_mut().write_all(request).expect("write");
    let mut line = String::new();
    conn.read_line(&mut line).expect("read");
    line
}

fn is_closed(conn: &mut BufReader<UnixStream>) -> bool {
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("read to end") == 0
}

#[test]
fn health_power_off_and_refusals() {
    let (_dir, path, fake) = start(Config::default());
    let mut conn = connect(&path);
    assert_eq!(ask(&mut conn, b"HEALTH\n"), "OK 77\n");
    // Several lines in one write are answered in order.
    conn.get_mut()
        .write_all(b"HEALTH\nHEALTH\n")
        .expect("write");
    assert_eq!(ask(&mut conn, b""), "OK 77\n");
    assert_eq!(ask(&mut conn, b""), "OK 77\n");
    assert_eq!(ask(&mut conn, b"POWEROFF\n"), "OK\n");
    assert!(is_closed(&mut conn));
    assert_eq!(fake.power_offs.load(Ordering::SeqCst), 1);

    let mut conn = connect(&path);
    assert_eq!(ask(&mut conn, b"REBOOT\n"), "ERR unknown request\n");
    assert!(is_closed(&mut conn));

    let mut conn = connect(&path);
    let long = [b'H'; 65];
    assert_eq!(ask(&mut conn, &long), "ERR line longer than 64 bytes\n");
    assert!(is_closed(&mut conn));
    assert_eq!(fake.power_offs.load(Ordering::SeqCst), 1);
}

#[test]
fn idle_connections_are_closed_and_extra_ones_refused() {
    let (_dir, path, _fake) = start(Config {
        idle_timeout: Duration::from_millis(300),
        max_connections: 1,
    });
    let started = Instant::now();
    let mut first = connect(&path);
    assert_eq!(ask(&mut first, b"HEALTH\n"), "OK 77\n");
    // The one slot is taken: a second connection is turned away.
    let mut second = connect(&path);
    let mut line = String::new();
    second.read_line(&mut line).expect("read");
    assert_eq!(line, "ERR busy\n");
    // The first, silent, is closed after the idle timeout.
    assert!(is_closed(&mut first));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Its slot is free again (the thread may need a moment to finish).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut third = connect(&path);
        let reply = ask(&mut third, b"HEALTH\n");
        if reply == "OK 77\n" {
            break;
        }
        assert_eq!(reply, "ERR busy\n");
        assert!(Instant::now() < deadline, "the slot never came free");
        std::thread::sleep(Duration::from_millis(20));
    }
}
