//! The embedded MQTT broker (rumqttd), configured in code, on its own threads.
//!
//! It is in-memory only; the sync protocol tolerates that (the controller's
//! database is the source of truth and agents say hello on every connect).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use mecvisor_protocol::MAX_MESSAGE_BYTES;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{debug, error, info, warn};

/// Largest MQTT packet either side accepts.
pub const MAX_PACKET_BYTES: usize = MAX_MESSAGE_BYTES + 64 * 1024;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The broker thread could not be spawned.
    #[error("cannot spawn the broker thread: {0}")]
    Spawn(std::io::Error),
    /// The broker did not start accepting connections in time.
    #[error("broker did not start listening on {0} within 10 s")]
    NotListening(SocketAddr),
}

/// The rumqttd configuration: one MQTT 3.1.1 listener on `listen`, payloads up
/// to [`MAX_PACKET_BYTES`], anonymous clients (deploy behind TLS termination
/// or use an external broker with ACLs for untrusted networks).
pub fn config(listen: SocketAddr) -> Config {
    let server = ServerSettings {
        name: "mecv-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PACKET_BYTES,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * MAX_PACKET_BYTES,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

/// Starts the embedded broker on its own threads and waits until it accepts
/// TCP connections on `listen`.
pub fn start(listen: SocketAddr) -> Result<(), BrokerError> {
    // Fail early and clearly if the port is taken (rumqttd only logs it).
    TcpListener::bind(listen)
        .map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })
        .map(drop)?;
    let mut broker = Broker::new(config(listen));
    thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Spawn)?;
    // Readiness without connecting (a bare TCP probe makes rumqttd log errors):
    // once the broker's listener holds the address, binding it fails.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let taken = matches!(TcpListener::bind(listen), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse);
        if taken {
            set_listener_nodelay(listen);
            info!(%listen, "broker listening on {listen}");
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening(listen))
}

/// Turns on TCP_NODELAY for every connection the embedded broker accepts.
///
/// rumqttd 0.20 leaves Nagle's algorithm on for its client sockets, so its
/// second small write in a row waits for the peer's delayed ACK: 40 ms on
/// every apply-to-ack (measured by `cargo xtask bench sync`). rumqttd has no
/// hook for socket options, but its listening socket lives in this process and
/// Linux copies TCP_NODELAY from a listener to each socket it accepts. So we
/// find the listener among our own descriptors by its bound address and set
/// the option once. Failure only costs latency, so it is logged, not fatal.
fn set_listener_nodelay(listen: SocketAddr) {
    use std::os::fd::{AsRawFd, BorrowedFd};

    use nix::sys::socket::{getsockname, getsockopt, setsockopt, sockopt, SockaddrStorage};

    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        warn!("cannot list /proc/self/fd; broker connections keep Nagle's algorithm");
        return;
    };
    let wanted = SockaddrStorage::from(listen);
    for fd in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
    {
        // SAFETY: `fd` is one of this process's open descriptors; it is only
        // borrowed for the calls below, and rumqttd keeps its listener open
        // for the life of the process. A descriptor closed meanwhile makes the
        // calls fail with EBADF, which is handled.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let is_listener = getsockopt(&borrowed, sockopt::AcceptConn).unwrap_or(false);
        if !is_listener || getsockname::<SockaddrStorage>(borrowed.as_raw_fd()).ok() != Some(wanted)
        {
            continue;
        }
        match setsockopt(&borrowed, sockopt::TcpNoDelay, &true) {
            Ok(()) => debug!(%listen, "TCP_NODELAY set on the broker listener"),
            Err(e) => warn!(%listen, error = %e, "cannot set TCP_NODELAY on the broker listener"),
        }
        return;
    }
    warn!(%listen, "broker listener not found; its connections keep Nagle's algorithm");
}

/// The address a local client uses to reach a listener (`0.0.0.0` -> loopback).
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;

    use nix::sys::socket::{getpeername, getsockopt, sockopt, SockaddrStorage};

    use super::*;

    /// The broker's accepted sockets have TCP_NODELAY (inherited from the
    /// listener we tuned), checked on the real accepted descriptor.
    #[test]
    fn accepted_broker_connections_have_nodelay() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        start(listen).expect("broker starts");
        let client = std::net::TcpStream::connect(listen).expect("connect");
        let client_addr = SockaddrStorage::from(client.local_addr().expect("local addr"));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let accepted = std::fs::read_dir("/proc/self/fd")
                .expect("fds")
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
                .find_map(|fd| {
                    // SAFETY: our own descriptor, borrowed only for these calls.
                    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                    use std::os::fd::AsRawFd;
                    (getpeername::<SockaddrStorage>(fd.as_raw_fd()).ok() == Some(client_addr))
                        .then(|| getsockopt(&fd, sockopt::TcpNoDelay).expect("getsockopt"))
                });
            if let Some(nodelay) = accepted {
                assert!(nodelay, "the broker's accepted socket has Nagle on");
                return;
            }
            assert!(Instant::now() < deadline, "accepted socket not found");
            thread::sleep(Duration::from_millis(20));
        }
    }
}
