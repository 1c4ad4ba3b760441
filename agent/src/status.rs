//! Status: a unix socket (`data_dir/agent.sock`) on which the running agent
//! answers with its status JSON. The client side, `edge-agent status`, is
//! [`crate::cli::status`].

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use mecvisor_protocol::Phase;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::store::{Store, StoreError};

/// Why status could not be served or obtained.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The socket could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Another agent already serves this socket.
    #[error("another agent is already running and listening on {0}")]
    AlreadyRunning(PathBuf),
    /// The running agent's answer could not be read.
    #[error("cannot read status from {path}: {message}")]
    Read {
        /// Socket path.
        path: PathBuf,
        /// Problem.
        message: String,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The status document of the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Device name.
    pub device: String,
    /// `connected` or `disconnected`.
    pub link: String,
    /// Whether the agent process is running.
    pub running: bool,
    /// Generation of the last accepted desired state (0: none).
    pub applied_generation: u64,
    /// Its content hash (empty: none).
    pub applied_hash: String,
    /// Entries waiting in the outbox.
    pub outbox_depth: u64,
    /// Per-object state.
    pub objects: Vec<StatusObject>,
}

/// One object in the status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusObject {
    /// Object name.
    pub name: String,
    /// `slice`, `container` or `vm`.
    pub kind: String,
    /// Life-cycle phase.
    pub phase: Phase,
    /// Last error or explanation.
    pub message: String,
    /// Restart count.
    pub restarts: u32,
    /// Generation that last changed its spec.
    pub generation: u64,
}

/// Builds the status document from the store.
pub fn collect(
    device: &str,
    store: &Store,
    running: bool,
    connected: bool,
) -> Result<Status, StoreError> {
    let desired = store.desired()?;
    Ok(Status {
        device: device.to_string(),
        link: if connected {
            "connected"
        } else {
            "disconnected"
        }
        .to_string(),
        running,
        applied_generation: desired.as_ref().map_or(0, |d| d.generation),
        applied_hash: desired.map(|d| d.content_hash).unwrap_or_default(),
        outbox_depth: store.outbox_depth()?,
        objects: store
            .objects()?
            .into_iter()
            .map(|o| StatusObject {
                name: o.name,
                kind: o.kind,
                phase: o.phase,
                message: o.message,
                restarts: o.restarts,
                generation: o.generation,
            })
            .collect(),
    })
}

/// Binds the status socket, replacing a stale one left by a dead agent and
/// refusing to start when a live agent answers on it.
pub fn bind(path: &Path) -> Result<UnixListener, StatusError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StatusError::AlreadyRunning(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| StatusError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Serves status JSON (one document, then close) to every connection until shutdown.
pub async fn serve(
    listener: UnixListener,
    device: String,
    store: Rc<RefCell<Store>>,
    connected: Rc<Cell<bool>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (mut stream, _) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "status socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = collect(&device, &store.borrow(), true, connected.get());
        let body = match status {
            Ok(status) => serde_json::to_string(&status).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
        };
        tokio::task::spawn_local(async move {
            if let Err(e) = stream.write_all(format!("{body}\n").as_bytes()).await {
                debug!(error = %e, "status client went away");
            }
            let _ = stream.shutdown().await;
        });
    }
    debug!("status server stopped");
}
