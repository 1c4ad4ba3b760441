//! How edge-agent and fleet-controller reach an MQTT broker.
//!
//! - `mqtt://host:port`: plain TCP (loopback, lab networks).
//! - `mqtts://host:port`: TLS 1.2/1.3 with a CA bundle and a client
//!   certificate, done by rustls (ring provider) in this crate.
//!
//! rumqttc's own TLS feature is not compiled in: it drags in rustls-webpki
//! 0.102 (four RustSec advisories) and the unmaintained rustls-pemfile. Instead
//! rumqttc speaks plain MQTT to a private unix socket and [`bridge::TlsBridge`]
//! carries each of its connections to the broker over TLS. Every reconnect of
//! rumqttc is a fresh TLS session, so rumqttc's reconnect logic stays in charge.

pub mod bridge;
pub mod tls;
pub mod url;

use std::path::Path;
use std::time::Duration;

use rumqttc::{EventLoop, MqttOptions, Transport};

pub use bridge::TlsBridge;
pub use tls::TlsFiles;
pub use url::{BrokerUrl, Scheme};

/// Why a broker connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The broker URL is not `mqtt://host:port` or `mqtts://host:port`.
    #[error(transparent)]
    Url(#[from] url::UrlError),
    /// The TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// `mqtts://` needs a CA, a client certificate and a key.
    #[error("{0} needs ca, cert and key files")]
    MissingTlsFiles(String),
    /// The bridge socket could not be created.
    #[error("cannot create the TLS bridge socket {path}: {source}")]
    Bridge {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// A ready connection setup: rumqttc options, plus the bridge that must stay
/// alive as long as the client runs when the URL is `mqtts://`.
pub struct Connection {
    /// Options to build the rumqttc client from.
    pub options: MqttOptions,
    /// The TLS bridge, for `mqtts://`.
    pub bridge: Option<TlsBridge>,
}

/// Builds rumqttc options for `client_id` to reach `url`.
///
/// For `mqtts://`, `tls` must name the PEM files and `socket_dir` is where the
/// private bridge socket goes (the caller's data directory). Must be called
/// inside a tokio runtime, which then runs the bridge.
pub fn connect_options(
    client_id: &str,
    url: &BrokerUrl,
    tls: Option<&TlsFiles>,
    socket_dir: &Path,
    keep_alive: Duration,
) -> Result<Connection, TransportError> {
    match url.scheme {
        Scheme::Mqtt => {
            let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
            options.set_keep_alive(keep_alive);
            Ok(Connection {
                options,
                bridge: None,
            })
        }
        Scheme::Mqtts => {
            let files = tls.ok_or_else(|| TransportError::MissingTlsFiles(url.to_string()))?;
            let config = tls::client_config(files)?;
            let socket = socket_dir.join(format!("mqtt-tls-{client_id}.sock"));
            let bridge = TlsBridge::start(&socket, url, config).map_err(|source| {
                TransportError::Bridge {
                    path: socket.display().to_string(),
                    source,
                }
            })?;
            let mut options =
                MqttOptions::new(client_id, bridge.socket_path().display().to_string(), 0);
            options.set_transport(Transport::Unix);
            options.set_keep_alive(keep_alive);
            Ok(Connection {
                options,
                bridge: Some(bridge),
            })
        }
    }
}

/// Applies the socket settings every mecvisor MQTT connection wants to a
/// fresh rumqttc event loop: TCP_NODELAY, since sync messages are small and
/// latency-bound (Nagle plus delayed ACKs otherwise add tens of ms per hop).
pub fn tune_event_loop(event_loop: &mut EventLoop) {
    let mut network = event_loop.network_options();
    network.set_tcp_nodelay(true);
    event_loop.set_network_options(network);
}
