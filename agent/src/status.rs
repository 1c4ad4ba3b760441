//! Status: a unix socket (`data_dir/agent.sock`) on which the running agent
//! answers with its status JSON, and the client side of `edge-agent status`,
//! which falls back to reading the store when no agent listens.

use std::cell::{Cell, RefCell};
use std::io::Read;
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

/// Asks the running agent on `socket`; if nothing listens, reads the store
/// at `db` read-only and reports `running: false`.
pub fn query(socket: &Path, db: &Path, device: Option<&str>) -> Result<Status, StatusError> {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(mut stream) => {
            let read_err = |message: String| StatusError::Read {
                path: socket.to_path_buf(),
                message,
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| read_err(e.to_string()))?;
            let mut text = String::new();
            stream
                .read_to_string(&mut text)
                .map_err(|e| read_err(e.to_string()))?;
            serde_json::from_str(text.trim()).map_err(|e| read_err(format!("{e}: {text:?}")))
        }
        Err(_) => {
            let store = Store::open_read_only(db)?;
            let device = match device {
                Some(d) => d.to_string(),
                None => store.meta("device")?.unwrap_or_default(),
            };
            Ok(collect(&device, &store, false, false)?)
        }
    }
}

/// Human-readable status: a header and a table of objects.
pub fn render(status: &Status) -> String {
    let mut out = format!(
        "device {}  agent {}  link {}\napplied generation {}{}  outbox {}\n",
        status.device,
        if status.running {
            "running"
        } else {
            "NOT RUNNING"
        },
        status.link,
        status.applied_generation,
        if status.applied_hash.is_empty() {
            String::new()
        } else {
            format!(" ({})", status.applied_hash)
        },
        status.outbox_depth,
    );
    if status.objects.is_empty() {
        out.push_str("no objects\n");
        return out;
    }
    let width = |f: &dyn Fn(&StatusObject) -> usize, title: &str| {
        status
            .objects
            .iter()
            .map(f)
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let wn = width(&|o| o.name.len(), "NAME");
    let wk = width(&|o| o.kind.len(), "KIND");
    let wp = width(&|o| o.phase.as_str().len(), "PHASE");
    out.push_str(&format!(
        "{:wn$}  {:wk$}  {:wp$}  {:>8}  {:>4}  MESSAGE\n",
        "NAME", "KIND", "PHASE", "RESTARTS", "GEN"
    ));
    for o in &status.objects {
        out.push_str(&format!(
            "{:wn$}  {:wk$}  {:wp$}  {:>8}  {:>4}  {}\n",
            o.name,
            o.kind,
            o.phase.as_str(),
            o.restarts,
            o.generation,
            o.message
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectRecord;

    #[test]
    fn store_fallback_reports_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("agent.db");
        {
            let mut store = Store::open(&db, 100).unwrap();
            store.set_meta("device", "edge-1").unwrap();
            store
                .replace_objects(&[ObjectRecord {
                    name: "cam".into(),
                    kind: "container".into(),
                    phase: Phase::Unsupported,
                    message: "no container runtime on this agent yet".into(),
                    restarts: 0,
                    generation: 1,
                    spec: vec![],
                }])
                .unwrap();
        }
        let status = query(&dir.path().join("agent.sock"), &db, None).unwrap();
        assert_eq!(status.device, "edge-1");
        assert!(!status.running);
        assert_eq!(status.link, "disconnected");
        assert_eq!(status.objects[0].phase, Phase::Unsupported);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["objects"][0]["phase"], "unsupported");
        for key in [
            "device",
            "link",
            "running",
            "applied_generation",
            "applied_hash",
            "outbox_depth",
            "objects",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        let table = render(&status);
        assert!(table.contains("NOT RUNNING"), "{table}");
        assert!(table.contains("cam"), "{table}");
    }

    #[test]
    fn missing_store_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = query(
            &dir.path().join("agent.sock"),
            &dir.path().join("agent.db"),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, StatusError::Store(_)), "{err}");
    }
}
