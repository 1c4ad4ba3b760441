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
use tracing::{error, info};

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
            info!(%listen, "broker listening on {listen}");
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening(listen))
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
