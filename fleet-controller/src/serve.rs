//! `fleet-controller` command line and the `serve` / `pubkey` commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;
use tracing::info;

use crate::broker::{self, BrokerError};
use crate::fleet::Fleet;
use crate::link;
use crate::signer::{self, SignerError};
use crate::store::{Store, StoreError};
use mqtt_transport::{BrokerUrl, Scheme, TlsFiles, TransportError};

/// mecvisor fleet controller: stores manifests, composes and signs each
/// device's desired state, and syncs it with edge agents over MQTT.
#[derive(Debug, Parser)]
#[command(name = "fleet-controller", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The controller's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller: HTTP API, MQTT link and (by default) an embedded broker.
    Serve(ServeArgs),
    /// Print the controller's public key (64 hex), creating the signing key if missing.
    Pubkey {
        /// Directory holding signing.key.
        #[arg(long, default_value = "/var/lib/mecvisor-controller")]
        data_dir: PathBuf,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Directory holding controller.db (SQLite) and signing.key (created on first start).
    #[arg(long, default_value = "/var/lib/mecvisor-controller")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub api: SocketAddr,
    /// Address the embedded MQTT broker listens on (ignored with --broker).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// External broker, mqtt://host:port or mqtts://host:port; no embedded broker then.
    #[arg(long)]
    pub broker: Option<String>,
    /// CA certificate (PEM) for mqtts.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mqtts.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mqtts.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The signing key could not be loaded or created.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The broker settings are wrong.
    #[error(transparent)]
    Link(#[from] TransportError),
    /// The API address cannot be used, or the server failed.
    #[error("HTTP API on {addr}: {source}")]
    Api {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Sets up logging to stderr in the chosen format (RUST_LOG filters; default
/// `info`, with the embedded broker's per-connection chatter at `warn`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    // Colours only for a person at a terminal (not journald, files, pipes),
    // and never with NO_COLOR set (https://no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Prints the public key, creating the signing key if missing.
pub fn pubkey(data_dir: &std::path::Path) -> Result<String, ServeError> {
    let key = signer::load_or_create(data_dir)?;
    Ok(mecvisor_protocol::envelope::verifying_key_to_hex(
        &key.verifying_key(),
    ))
}

/// Runs the controller until the process is stopped.
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = signer::load_or_create(&args.data_dir)?;
    let store = Store::open(&args.data_dir.join("controller.db"))?;
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let fleet = Arc::new(Fleet::new(store, key, outbox_tx));
    info!(public_key = %fleet.public_key_hex(), data_dir = %args.data_dir.display(), "controller starting");

    let tls = match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let url = match &args.broker {
        Some(url) => BrokerUrl::parse(url).map_err(TransportError::from)?,
        None => {
            broker::start(args.mqtt_listen)?;
            println!("broker listening on {}", args.mqtt_listen);
            let addr = broker::connect_addr(args.mqtt_listen);
            BrokerUrl {
                scheme: Scheme::Mqtt,
                host: addr.ip().to_string(),
                port: addr.port(),
            }
        }
    };
    let client_id = format!("fleet-controller-{}", std::process::id());
    let conn = link::options(&url, tls.as_ref(), &client_id, &args.data_dir)?;
    info!(broker = %url, "connecting to the MQTT broker");
    // Kept alive until serve returns: for mqtts it carries the TLS sessions.
    let _tls_bridge = conn.bridge;
    tokio::spawn(link::run(conn.options, fleet.clone(), outbox_rx));

    let listener = tokio::net::TcpListener::bind(args.api)
        .await
        .map_err(|source| ServeError::Api {
            addr: args.api,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Api {
        addr: args.api,
        source,
    })?;
    info!(%local, "api listening on {local}");
    println!("api listening on {local}");
    axum::serve(listener, crate::api::router(fleet))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|source| ServeError::Api {
            addr: local,
            source,
        })?;
    info!("controller stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    info!("shutdown requested");
}
