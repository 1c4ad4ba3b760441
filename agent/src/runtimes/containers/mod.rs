//! The container runtime of the agent: images come from the content
//! store, containers run through the OCI runtime via [`containers::Manager`]
//! (one monitor process per container, which outlives the agent), health
//! checks run here.
//!
//! A watcher task notices within a quarter second when a container's
//! monitor records an exit or a health check turns a container unhealthy,
//! and wakes the reconciler, which restarts it by its policy with backoff.

mod probe;
mod resolve;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use containers::{
    LogLimits, Manager, ManagerConfig, MonitorCommand, Observation, OciRuntime, Started,
};
use content_store::ContentStore;
use mecvisor_protocol::{WorkloadKind, WorkloadSpec};
use network_slicing::Port;
use std::time::Instant;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::{ObjectKind, ObjectSpec, Observed, Runtime, RuntimeError, RuntimeFuture};
use crate::config::ContainersConfig;
use crate::health::{HealthSettings, HealthState};
use crate::slice_net::SharedSliceNet;

pub use resolve::{container_config, volumes_dir};

/// How often the watcher looks at exits and due health checks.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Where workloads' network namespaces are bound (tmpfs: gone on reboot,
/// made again when the containers are).
const NETNS_DIR: &str = "/run/mecvisor/netns";

/// A container this agent process applied or adopted.
struct Running {
    pid: i32,
    health: Option<HealthState>,
    exit_noticed: bool,
}

struct Inner {
    store: Arc<ContentStore>,
    manager: Arc<Manager>,
    state_dir: PathBuf,
    wake: Rc<Notify>,
    running: RefCell<BTreeMap<String, Running>>,
    /// Desired container specs, by name (health settings for containers
    /// adopted from an earlier agent process).
    desired: RefCell<BTreeMap<String, WorkloadSpec>>,
    /// Slices and ports, when network slicing is on.
    slice_net: Option<SharedSliceNet>,
}

/// Runs container workloads.
pub struct ContainerRuntime {
    inner: Rc<Inner>,
}

impl ContainerRuntime {
    /// Checks the OCI runtime is there, prepares the state directories and
    /// starts the watcher (on the current `LocalSet`). `wake` is notified
    /// whenever a container needs the reconciler's attention.
    pub fn start(
        config: &ContainersConfig,
        store: Arc<ContentStore>,
        slice_net: Option<SharedSliceNet>,
        wake: Rc<Notify>,
    ) -> Result<ContainerRuntime, String> {
        let runtime = OciRuntime::new(&config.runtime, &config.runtime_root);
        let version = runtime.version().map_err(|e| e.to_string())?;
        let program = std::env::current_exe()
            .map_err(|e| format!("cannot find the agent's own executable: {e}"))?;
        let manager = Manager::new(ManagerConfig {
            state: config.state_dir.clone(),
            runtime,
            monitor: MonitorCommand {
                program,
                prefix: vec!["container-monitor".into()],
            },
            logs: LogLimits {
                max_file_bytes: config.log_max_bytes,
                rotated_files: config.log_files,
            },
            start_timeout: Duration::from_secs(config.start_timeout_s),
        })
        .map_err(|e| format!("cannot create {}: {e}", config.state_dir.display()))?;
        info!(runtime = %version, state = %config.state_dir.display(), "container runtime ready");
        let inner = Rc::new(Inner {
            store,
            manager: Arc::new(manager),
            state_dir: config.state_dir.clone(),
            wake,
            running: RefCell::new(BTreeMap::new()),
            desired: RefCell::new(BTreeMap::new()),
            slice_net,
        });
        tokio::task::spawn_local(watch(Rc::downgrade(&inner)));
        Ok(ContainerRuntime { inner })
    }
}

/// Notices exits and runs due health checks until the runtime is dropped.
async fn watch(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let mut due = Vec::new();
        let mut wake = false;
        for (name, running) in inner.running.borrow_mut().iter_mut() {
            if !running.exit_noticed && inner.manager.dir(name).exit().exists() {
                running.exit_noticed = true;
                debug!(container = %name, "exit recorded by its monitor");
                wake = true;
            }
            if let Some(h) = &running.health {
                if !running.exit_noticed && h.next_due <= now {
                    due.push((
                        name.clone(),
                        running.pid,
                        h.settings.probe.clone(),
                        h.settings.timeout,
                    ));
                }
            }
        }
        for (name, pid, probe, timeout) in due {
            let pid_file = inner.manager.dir(&name).path().join("health.pid");
            let result = probe::check(
                &probe,
                inner.manager.runtime(),
                &name,
                pid,
                timeout,
                &pid_file,
            )
            .await;
            if let Err(reason) = &result {
                debug!(container = %name, %reason, "health check failed");
            }
            let mut running = inner.running.borrow_mut();
            let Some(h) = running.get_mut(&name).and_then(|r| r.health.as_mut()) else {
                continue;
            };
            if h.record(result, Instant::now()) {
                warn!(container = %name, status = %h.describe(), "container unhealthy");
                wake = true;
            }
        }
        if wake {
            inner.wake.notify_one();
        }
    }
}

/// Makes the workload's network namespace and port, puts the port in its
/// slice (with its address, allow rules and shaping); returns the
/// namespace to join.
async fn join_slice(
    inner: &Inner,
    workload: &WorkloadSpec,
    slice: &str,
) -> Result<PathBuf, RuntimeError> {
    let Some(shared) = &inner.slice_net else {
        return Err(RuntimeError::Failed(format!(
            "the workload joins slice {slice}, but network slicing is off on this agent"
        )));
    };
    let mut net = shared.lock().await;
    let desired = net
        .slice(slice)
        .cloned()
        .ok_or_else(|| RuntimeError::Failed(format!("slice {slice} is not desired on this box")))?;
    let address = workload
        .address
        .as_deref()
        .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .zip(desired.prefix());
    let gateway = desired.gateway.map(|(g, _)| g);
    let made = network_slicing::workload_net::ensure(
        net.kernel(),
        std::path::Path::new(NETNS_DIR),
        &workload.name,
        address,
        gateway,
    )
    .await
    .map_err(RuntimeError::failed)?;
    net.set_port(
        ObjectKind::Container,
        &workload.name,
        Port::of_workload(workload),
    );
    // Always applied: the port may have been rebuilt even when its entry
    // did not change.
    net.converge().await?;
    info!(workload = %workload.name, slice, port = %made.port, "workload port in its slice");
    Ok(made.netns)
}

/// Takes the workload's port out of its slice and removes its namespace
/// (nothing to do when it had none).
async fn leave_slice(inner: &Inner, workload: &str) -> Result<(), RuntimeError> {
    let Some(shared) = &inner.slice_net else {
        return Ok(());
    };
    let mut net = shared.lock().await;
    if net.set_port(ObjectKind::Container, workload, None) {
        net.converge().await?;
    }
    network_slicing::workload_net::remove(net.kernel(), std::path::Path::new(NETNS_DIR), workload)
        .await
        .map_err(RuntimeError::failed)
}

fn container_of(
    spec: &ObjectSpec,
) -> Result<(&WorkloadSpec, &mecvisor_protocol::ContainerSpec), RuntimeError> {
    match spec {
        ObjectSpec::Workload(w) => match &w.kind {
            WorkloadKind::Container(c) => Ok((w, c)),
            WorkloadKind::Vm(_) => Err(RuntimeError::wrong_kind(spec, ObjectKind::Container)),
        },
        ObjectSpec::Slice(_) => Err(RuntimeError::wrong_kind(spec, ObjectKind::Container)),
    }
}

impl Runtime for ContainerRuntime {
    fn desired_set(&mut self, specs: &[ObjectSpec]) {
        let mut desired = self.inner.desired.borrow_mut();
        desired.clear();
        for spec in specs {
            if let ObjectSpec::Workload(w) = spec {
                desired.insert(w.name.clone(), w.as_ref().clone());
            }
        }
        // The ports of desired containers that have one already (e.g.
        // running since before an agent restart): every slice apply must
        // keep them in their bridges.
        if let Some(shared) = &self.inner.slice_net {
            let ports = desired
                .iter()
                .filter_map(|(name, w)| Some((name.clone(), Port::of_workload(w)?)))
                .filter(|(_, p)| {
                    std::path::Path::new("/sys/class/net")
                        .join(&p.name)
                        .exists()
                })
                .collect();
            match shared.try_lock() {
                Ok(mut net) => net.set_ports(ObjectKind::Container, ports),
                Err(_) => warn!("slice state busy; workload ports not updated this pass"),
            }
        }
    }

    fn apply<'a>(&'a mut self, spec: &'a ObjectSpec) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            let (workload, container) = container_of(spec)?;
            let name = workload.name.clone();
            let image = inner
                .store
                .resolve_local(&container.image)
                .map_err(RuntimeError::failed)?
                .ok_or_else(|| {
                    RuntimeError::Failed(format!(
                        "image {} is not in the content store",
                        container.image
                    ))
                })?;
            let store = inner.store.clone();
            let unpack = image.clone();
            let rootfs = tokio::task::spawn_blocking(move || store.rootfs(&unpack))
                .await
                .map_err(RuntimeError::worker)?
                .map_err(RuntimeError::failed)?;
            let network_namespace = match &workload.slice {
                Some(slice) => Some(join_slice(inner, workload, slice).await?),
                None => None,
            };
            let volumes = volumes_dir(&inner.state_dir, &name);
            let mut config = container_config(
                workload,
                container,
                image.config.config.as_ref(),
                &rootfs,
                &volumes,
            )
            .map_err(RuntimeError::Failed)?;
            config.network_namespace = network_namespace;
            let unhealthy = inner
                .running
                .borrow()
                .get(&name)
                .and_then(|r| r.health.as_ref())
                .is_some_and(HealthState::unhealthy);
            let manager = inner.manager.clone();
            let id = name.clone();
            let started = tokio::task::spawn_blocking(move || {
                if unhealthy {
                    manager.recreate(&id, &config, &rootfs)
                } else {
                    manager.run(&id, &config, &rootfs)
                }
            })
            .await
            .map_err(RuntimeError::worker)?
            .map_err(RuntimeError::failed)?;
            let pid = match started {
                Started::Created { pid, rootfs } => {
                    info!(container = %name, pid, image = %image.digest, ?rootfs, "container running");
                    pid
                }
                Started::Adopted { pid } => {
                    info!(container = %name, pid, "container adopted as it runs");
                    pid
                }
            };
            let settings = container
                .health
                .as_ref()
                .and_then(HealthSettings::from_spec);
            let mut running = inner.running.borrow_mut();
            let keep = matches!(started, Started::Adopted { .. })
                .then(|| running.get_mut(&name).and_then(|r| r.health.take()))
                .flatten()
                .filter(|h| Some(&h.settings) == settings.as_ref());
            let health = keep.or_else(|| settings.map(|s| HealthState::new(s, Instant::now())));
            running.insert(
                name,
                Running {
                    pid,
                    health,
                    exit_noticed: false,
                },
            );
            Ok(())
        })
    }

    fn remove<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.running.borrow_mut().remove(name);
            let manager = inner.manager.clone();
            let volumes = volumes_dir(&inner.state_dir, name);
            let id = name.to_string();
            tokio::task::spawn_blocking(move || {
                manager.remove(&id).map_err(|e| e.to_string())?;
                match std::fs::remove_dir_all(&volumes) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("removing volumes {}: {e}", volumes.display()))
                    }
                    _ => Ok(()),
                }
            })
            .await
            .map_err(RuntimeError::worker)?
            .map_err(RuntimeError::Failed)?;
            leave_slice(inner, name).await
        })
    }

    fn present(&mut self) -> RuntimeFuture<'_, Vec<String>> {
        Box::pin(async move {
            let manager = self.inner.manager.clone();
            tokio::task::spawn_blocking(move || manager.list())
                .await
                .map_err(RuntimeError::worker)
        })
    }

    fn observe<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, Observed> {
        Box::pin(async move {
            let inner = &self.inner;
            let manager = inner.manager.clone();
            let id = name.to_string();
            let observation = tokio::task::spawn_blocking(move || manager.observe(&id))
                .await
                .map_err(RuntimeError::worker)?
                .map_err(RuntimeError::failed)?;
            Ok(match observation {
                Observation::Running { pid } => {
                    let mut running = inner.running.borrow_mut();
                    let entry = running.entry(name.to_string()).or_insert_with(|| {
                        // Started by an earlier agent process: adopt it,
                        // with its health check from the desired spec.
                        info!(container = name, pid, "container adopted as it runs");
                        let health = inner
                            .desired
                            .borrow()
                            .get(name)
                            .and_then(|w| match &w.kind {
                                WorkloadKind::Container(c) => c.health.as_ref(),
                                WorkloadKind::Vm(_) => None,
                            })
                            .and_then(HealthSettings::from_spec)
                            .map(|s| HealthState::new(s, Instant::now()));
                        Running {
                            pid,
                            health,
                            exit_noticed: false,
                        }
                    });
                    entry.pid = pid;
                    match entry.health.as_ref().filter(|h| h.unhealthy()) {
                        Some(h) => Observed::Stopped {
                            message: h.describe(),
                            success: false,
                        },
                        None => Observed::Running,
                    }
                }
                Observation::Exited(exit) => {
                    inner.running.borrow_mut().remove(name);
                    Observed::Stopped {
                        message: exit.describe(),
                        success: exit.success(),
                    }
                }
                Observation::Missing => {
                    inner.running.borrow_mut().remove(name);
                    Observed::Missing
                }
            })
        })
    }
}
