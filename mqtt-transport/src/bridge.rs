//! A private unix socket whose connections are carried to the broker over TLS.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use crate::url::BrokerUrl;

/// How long a TCP connect plus TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts rumqttc's plain connections on a unix socket (mode 0600) and
/// carries each one to the broker over TLS. Stops when dropped.
pub struct TlsBridge {
    socket: PathBuf,
    task: JoinHandle<()>,
}

impl TlsBridge {
    /// Binds `socket` (replacing a stale one) and starts accepting.
    pub fn start(
        socket: &Path,
        broker: &BrokerUrl,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(socket)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        let name = ServerName::try_from(broker.host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let target = Target {
            addr: (broker.host.clone(), broker.port),
            name,
            connector: TlsConnector::from(config),
        };
        let task = tokio::spawn(accept_loop(listener, Arc::new(target)));
        Ok(TlsBridge {
            socket: socket.to_path_buf(),
            task,
        })
    }

    /// Where rumqttc must connect.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for TlsBridge {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

struct Target {
    addr: (String, u16),
    name: ServerName<'static>,
    connector: TlsConnector,
}

async fn accept_loop(listener: UnixListener, target: Arc<Target>) {
    loop {
        match listener.accept().await {
            Ok((plain, _)) => {
                tokio::spawn(carry(plain, target.clone()));
            }
            Err(e) => {
                warn!(error = %e, "TLS bridge accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connects to the broker over TLS and copies bytes both ways until either
/// side closes. A failure closes the plain side, which rumqttc sees as a
/// connection error and retries with its own backoff.
async fn carry(mut plain: UnixStream, target: Arc<Target>) {
    let host = format!("{}:{}", target.addr.0, target.addr.1);
    let connect = async {
        let tcp = TcpStream::connect((target.addr.0.as_str(), target.addr.1)).await?;
        tcp.set_nodelay(true)?;
        target.connector.connect(target.name.clone(), tcp).await
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            warn!(broker = %host, error = %e, "TLS connection to broker failed");
            return;
        }
        Err(_) => {
            warn!(broker = %host, "TLS connection to broker timed out");
            return;
        }
    };
    debug!(broker = %host, "TLS session established");
    // When either side ends, end both: waiting for the other direction too
    // would keep a dead broker connection (half-open) alive after rumqttc
    // has already moved on to a new one.
    let (mut plain_rx, mut plain_tx) = plain.split();
    let (mut tls_rx, mut tls_tx) = tokio::io::split(tls);
    tokio::select! {
        up = tokio::io::copy(&mut plain_rx, &mut tls_tx) => {
            debug!(broker = %host, result = ?up, "client side closed; TLS session ends");
        }
        down = tokio::io::copy(&mut tls_rx, &mut plain_tx) => {
            debug!(broker = %host, result = ?down, "broker side closed; TLS session ends");
        }
    }
}
