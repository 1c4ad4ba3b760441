//! `edge-agent run`: wires store, reconciler, sync link, status socket and
//! metrics together on a single-threaded tokio runtime, and shuts down
//! gracefully on SIGTERM/SIGINT.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mecvisor_protocol::Label;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};
use tokio::task::LocalSet;
use tracing::{error, info, warn};

use crate::accept::{self, Identity};
use crate::assembly;
use crate::config::Config;
use crate::link::{self, LinkContext};
use crate::metrics;
use crate::reconciler::{self, Backoff, Reconciler};
use crate::status::{self, StatusError};
use crate::store::{Store, StoreError};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: std::path::PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker link could not be configured.
    #[error(transparent)]
    Link(#[from] mqtt_transport::TransportError),
    /// The status socket could not be opened.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The tokio runtime or signal handlers could not be set up.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    LocalSet::new().block_on(&runtime, run_local(config))
}

async fn run_local(config: Config) -> Result<(), AgentError> {
    let started = std::time::Instant::now();
    // rustls needs an explicit provider; ignore "already installed".
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| AgentError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = Store::open(&config.db_path(), config.outbox_max_entries)?;
    if let Some(previous) = store.meta("device")? {
        if previous != config.device {
            warn!(%previous, device = %config.device, "store was used by another device name");
        }
    }
    store.set_meta("device", &config.device)?;
    let identity = Identity {
        device: config.device.clone(),
        controller_key: config.controller_key,
    };
    let initial = match accept::load_stored(&identity, &store) {
        Ok(Some(doc)) => {
            info!(
                generation = doc.generation,
                "replaying the last accepted desired state"
            );
            Some(Arc::new(doc))
        }
        Ok(None) => {
            info!("no desired state yet; waiting for the controller");
            None
        }
        Err(e) => {
            error!(error = %e, "ignoring the stored desired state; objects are left as they are until a new one arrives");
            None
        }
    };
    let records = store.objects()?;
    let connection = link::mqtt_options(&config)?;
    // Kept alive while the agent runs: for mqtts it carries the TLS sessions.
    let _tls_bridge = connection.bridge;
    let options = connection.options;
    let listener = status::bind(&config.socket_path())?;

    let store = Rc::new(RefCell::new(store));
    let outbox_ready = Rc::new(Notify::new());
    let connected = Rc::new(Cell::new(false));
    let (desired_tx, desired_rx) = watch::channel(initial);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let reconciler = Reconciler::new(assembly::runtimes(&config), records, Backoff::default());
    let reconcile_task = tokio::task::spawn_local(reconciler::run(
        reconciler,
        desired_rx,
        store.clone(),
        outbox_ready.clone(),
        Duration::from_secs(config.resync_interval_s),
        shutdown_rx.clone(),
    ));
    let status_task = tokio::task::spawn_local(status::serve(
        listener,
        config.device.clone(),
        store.clone(),
        connected.clone(),
        shutdown_rx.clone(),
    ));
    let metrics_task = tokio::task::spawn_local(metrics::run(
        store.clone(),
        outbox_ready.clone(),
        Duration::from_secs(config.metrics_interval_s),
        started,
        shutdown_rx.clone(),
    ));
    let labels = config
        .labels
        .iter()
        .map(|(key, value)| Label {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    let link_task = tokio::task::spawn_local(link::run(
        LinkContext {
            identity,
            labels,
            store: store.clone(),
            outbox_ready,
            desired_tx,
            connected,
        },
        options,
        shutdown_rx,
    ));
    info!(
        device = %config.device,
        broker = %config.mqtt.url,
        socket = %config.socket_path().display(),
        "agent started"
    );

    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Runtime)?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    let _ = shutdown_tx.send(true);
    for (name, task) in [
        ("link", link_task),
        ("reconciler", reconcile_task),
        ("status", status_task),
        ("metrics", metrics_task),
    ] {
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            warn!(task = name, "did not stop in time");
        }
    }
    let _ = std::fs::remove_file(config.socket_path());
    drop(store);
    info!("agent stopped");
    Ok(())
}
