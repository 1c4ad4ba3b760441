//! Container lifecycle on one box: run (create + start through a monitor),
//! observe, stop, remove, and adopt what an earlier agent process left
//! running.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::bundle;
use crate::config::ContainerConfig;
use crate::layout::{ContainerDir, ExitRecord};
use crate::logs::LogLimits;
use crate::monitor::MonitorArgs;
use crate::oci_runtime::{OciRuntime, OciRuntimeError, Status};
use crate::rootfs::{self, RootfsKind};

/// How to start a monitor process: the program and the arguments that
/// come before the monitor's own (`edge-agent container-monitor ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorCommand {
    /// Executable.
    pub program: PathBuf,
    /// Leading arguments (e.g. the subcommand).
    pub prefix: Vec<String>,
}

/// Settings of the container manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// State directory (containers live in `<state>/containers/<id>`).
    pub state: PathBuf,
    /// The OCI runtime.
    pub runtime: OciRuntime,
    /// The monitor.
    pub monitor: MonitorCommand,
    /// Log bounds per container.
    pub logs: LogLimits,
    /// Longest wait for a container to start.
    pub start_timeout: Duration,
}

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// File system work in the container's directory failed.
    #[error("container {id}: {context}: {source}")]
    Io {
        /// Container id.
        id: String,
        /// What was being done.
        context: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The bundle could not be generated.
    #[error("container {id}: {source}")]
    Bundle {
        /// Container id.
        id: String,
        /// The error.
        source: bundle::BundleError,
    },
    /// The OCI runtime failed.
    #[error("container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The error.
        source: OciRuntimeError,
    },
    /// It never reached running.
    #[error("container {id}: {reason}")]
    Start {
        /// Container id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// What [`Manager::observe`] sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Running, with the host PID of its init process.
    Running {
        /// Host PID.
        pid: i32,
    },
    /// It ended.
    Exited(ExitRecord),
    /// The runtime does not know it (never created, or gone with a reboot).
    Missing,
}

/// What [`Manager::run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A new container was created and started.
    Created {
        /// Host PID of its init.
        pid: i32,
        /// How its root file system was made.
        rootfs: RootfsKind,
    },
    /// The container already ran with this exact config; left as it was.
    Adopted {
        /// Host PID of its init.
        pid: i32,
    },
}

/// Runs containers through an OCI runtime.
pub struct Manager {
    config: ManagerConfig,
}

impl Manager {
    /// A manager; creates the state and runtime directories.
    pub fn new(config: ManagerConfig) -> std::io::Result<Manager> {
        std::fs::create_dir_all(config.state.join("containers"))?;
        std::fs::create_dir_all(&config.runtime.root)?;
        Ok(Manager { config })
    }

    /// The runtime in use.
    pub fn runtime(&self) -> &OciRuntime {
        &self.config.runtime
    }

    /// Directory of a container.
    pub fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir::new(&self.config.state, id)
    }

    /// Makes container `id` run `config` on the unpacked image at
    /// `image_root`. A container already running with the same config and
    /// image is adopted untouched; anything else under that id is stopped
    /// and replaced.
    pub fn run(
        &self,
        id: &str,
        config: &ContainerConfig,
        image_root: &Path,
    ) -> Result<Started, ContainerError> {
        self.start(id, config, image_root, true)
    }

    /// Like [`Manager::run`] but never adopts: a running container is
    /// stopped and replaced (e.g. after failing its health check).
    pub fn recreate(
        &self,
        id: &str,
        config: &ContainerConfig,
        image_root: &Path,
    ) -> Result<Started, ContainerError> {
        self.start(id, config, image_root, false)
    }

    fn start(
        &self,
        id: &str,
        config: &ContainerConfig,
        image_root: &Path,
        adopt: bool,
    ) -> Result<Started, ContainerError> {
        let dir = self.dir(id);
        let fingerprint = format!("{} {}", config.fingerprint(), image_root.display());
        let recorded = std::fs::read_to_string(dir.fingerprint()).unwrap_or_default();
        if adopt && recorded == fingerprint {
            if let Observation::Running { pid } = self.observe(id)? {
                info!(
                    id,
                    pid, "container already running with this config; adopted"
                );
                return Ok(Started::Adopted { pid });
            }
        }
        self.teardown(id)?;
        let io = |context| {
            move |source| ContainerError::Io {
                id: id.to_string(),
                context,
                source,
            }
        };
        for stale in [
            dir.exit(),
            dir.started(),
            dir.init_pid(),
            dir.monitor_pid(),
            dir.runtime_log(),
        ] {
            let _ = std::fs::remove_file(stale);
        }
        std::fs::create_dir_all(dir.bundle()).map_err(io("creating the bundle directory"))?;
        let shift = config.user_namespace.map(|m| m.host_id);
        let kind = rootfs::prepare(image_root, &dir.rootfs(), dir.path(), shift)
            .map_err(io("preparing the root file system"))?;
        let spec =
            bundle::spec(id, config, &dir.rootfs()).map_err(|source| ContainerError::Bundle {
                id: id.to_string(),
                source,
            })?;
        bundle::write(&dir.bundle(), &spec).map_err(|source| ContainerError::Bundle {
            id: id.to_string(),
            source,
        })?;
        let saved =
            serde_json::to_vec_pretty(config).map_err(|e| std::io::Error::other(e.to_string()));
        saved
            .and_then(|json| std::fs::write(dir.config(), json))
            .map_err(io("writing container.json"))?;
        std::fs::write(dir.fingerprint(), &fingerprint).map_err(io("writing the fingerprint"))?;
        self.spawn_monitor(id)?;
        let pid = self.wait_started(id)?;
        info!(id, pid, rootfs = ?kind, "container started");
        Ok(Started::Created { pid, rootfs: kind })
    }

    fn spawn_monitor(&self, id: &str) -> Result<(), ContainerError> {
        let args = MonitorArgs {
            state: self.config.state.clone(),
            id: id.to_string(),
            runtime: self.config.runtime.clone(),
            logs: self.config.logs,
        };
        let status = Command::new(&self.config.monitor.program)
            .args(&self.config.monitor.prefix)
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| ContainerError::Io {
                id: id.to_string(),
                context: "starting the monitor",
                source,
            })?;
        if !status.success() {
            return Err(ContainerError::Start {
                id: id.to_string(),
                reason: format!("monitor exited with {status}"),
            });
        }
        Ok(())
    }

    /// Waits for the monitor's `started` (or `exit.json` when it failed).
    fn wait_started(&self, id: &str) -> Result<i32, ContainerError> {
        let dir = self.dir(id);
        let deadline = Instant::now() + self.config.start_timeout;
        let mut pause = Duration::from_micros(500);
        loop {
            if dir.started().exists() {
                let pid = std::fs::read_to_string(dir.init_pid())
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
                return Ok(pid);
            }
            if let Some(exit) = read_exit(&dir) {
                return Err(ContainerError::Start {
                    id: id.to_string(),
                    reason: exit.describe(),
                });
            }
            if Instant::now() > deadline {
                return Err(ContainerError::Start {
                    id: id.to_string(),
                    reason: format!("not running after {:?}", self.config.start_timeout),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// How the container is doing.
    pub fn observe(&self, id: &str) -> Result<Observation, ContainerError> {
        let dir = self.dir(id);
        if let Some(exit) = read_exit(&dir) {
            return Ok(Observation::Exited(exit));
        }
        let state = self
            .config
            .runtime
            .state(id)
            .map_err(|source| ContainerError::Runtime {
                id: id.to_string(),
                source,
            })?;
        Ok(match state {
            None => Observation::Missing,
            Some(s) if s.status == Status::Running || s.status == Status::Paused => {
                Observation::Running { pid: s.pid }
            }
            Some(s) if s.status == Status::Stopped => {
                // The process ended; its monitor writes the record once the
                // output is drained. A monitor that is gone (killed) leaves
                // the exit status unknown.
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.monitor_alive(id) && Instant::now() < deadline {
                    if let Some(exit) = read_exit(&dir) {
                        return Ok(Observation::Exited(exit));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Observation::Exited(read_exit(&dir).unwrap_or(ExitRecord {
                    code: None,
                    signal: None,
                    oom_killed: crate::monitor::oom_kills(id) > 0,
                    finished_at: crate::logs::rfc3339(std::time::SystemTime::now()),
                    error: Some("stopped and its monitor is gone; exit status unknown".into()),
                }))
            }
            Some(_) => Observation::Missing,
        })
    }

    /// Whether the monitor of `id` still runs (its PID file names a live
    /// process whose command line is that monitor's).
    pub fn monitor_alive(&self, id: &str) -> bool {
        let Some(pid) = std::fs::read_to_string(self.dir(id).monitor_pid())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            return false;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let needle = format!("--id\0{id}\0");
        cmdline
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    /// Stops the container: its stop signal (from the config it was
    /// created with), then SIGKILL after its stop timeout. Returns how it
    /// ended, when known.
    pub fn stop(&self, id: &str) -> Result<Option<ExitRecord>, ContainerError> {
        let runtime = &self.config.runtime;
        if !matches!(self.observe(id)?, Observation::Running { .. }) {
            return Ok(read_exit(&self.dir(id)));
        }
        let saved: Option<ContainerConfig> = std::fs::read(self.dir(id).config())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let (signal, timeout) = saved.map_or(("TERM".to_string(), 10), |c| {
            (c.stop_signal, c.stop_timeout_s)
        });
        let timeout = Duration::from_secs(u64::from(timeout));
        debug!(id, signal, "stopping");
        if let Err(e) = runtime.kill(id, &signal) {
            warn!(id, error = %e, "stop signal not delivered");
        }
        if let Some(exit) = self.wait_exit(id, timeout) {
            return Ok(Some(exit));
        }
        warn!(
            id,
            timeout_s = timeout.as_secs(),
            "did not stop in time; killing"
        );
        let _ = runtime.kill(id, "KILL");
        Ok(self.wait_exit(id, Duration::from_secs(5)))
    }

    fn wait_exit(&self, id: &str, timeout: Duration) -> Option<ExitRecord> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(exit) = read_exit(&self.dir(id)) {
                return Some(exit);
            }
            if matches!(self.config.runtime.state(id), Ok(None)) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops and deletes the runtime's container and releases the root
    /// file system; the directory (logs, exit record) stays.
    fn teardown(&self, id: &str) -> Result<(), ContainerError> {
        let runtime_error = |source| ContainerError::Runtime {
            id: id.to_string(),
            source,
        };
        if self
            .config
            .runtime
            .state(id)
            .map_err(runtime_error)?
            .is_some()
        {
            self.stop(id)?;
            self.config.runtime.delete(id).map_err(runtime_error)?;
        }
        rootfs::release(&self.dir(id).rootfs()).map_err(|source| ContainerError::Io {
            id: id.to_string(),
            context: "unmounting the root file system",
            source,
        })
    }

    /// Removes the container entirely (stopping it first).
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        self.teardown(id)?;
        let dir = self.dir(id);
        match std::fs::remove_dir_all(dir.path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ContainerError::Io {
                id: id.to_string(),
                context: "removing the container directory",
                source: e,
            }),
            _ => {
                info!(id, "container removed");
                Ok(())
            }
        }
    }

    /// Ids of the containers with a directory here.
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.config.state.join("containers"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

fn read_exit(dir: &ContainerDir) -> Option<ExitRecord> {
    let bytes = std::fs::read(dir.exit()).ok()?;
    serde_json::from_slice(&bytes).ok()
}
