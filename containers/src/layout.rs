//! Files of one container under the runtime's state directory, and the
//! small records the monitor and the manager exchange through them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Paths of one container's directory.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    dir: PathBuf,
}

impl ContainerDir {
    /// The directory of container `id` under `state`.
    pub fn new(state: &Path, id: &str) -> ContainerDir {
        ContainerDir {
            dir: state.join("containers").join(id),
        }
    }

    /// The container's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// OCI bundle (config.json + rootfs).
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    /// The bundle's root file system.
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }

    /// Fingerprint of the config the container was created with.
    pub fn fingerprint(&self) -> PathBuf {
        self.dir.join("fingerprint")
    }

    /// The [`crate::ContainerConfig`] it was created with (how to stop it,
    /// also for an agent that restarted since).
    pub fn config(&self) -> PathBuf {
        self.dir.join("container.json")
    }

    /// PID of the monitor process.
    pub fn monitor_pid(&self) -> PathBuf {
        self.dir.join("monitor.pid")
    }

    /// PID of the container's init process (written by the runtime).
    pub fn init_pid(&self) -> PathBuf {
        self.dir.join("init.pid")
    }

    /// Written once the container's process runs.
    pub fn started(&self) -> PathBuf {
        self.dir.join("started")
    }

    /// How the container ended ([`ExitRecord`]).
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    /// The OCI runtime's own log.
    pub fn runtime_log(&self) -> PathBuf {
        self.dir.join("runtime.log")
    }

    /// The container's stdout/stderr logs.
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

/// How a container ended, written by its monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code when the process exited.
    pub code: Option<i32>,
    /// Signal number when it was killed.
    pub signal: Option<i32>,
    /// The kernel's OOM killer acted in the container's cgroup.
    pub oom_killed: bool,
    /// When (RFC 3339).
    pub finished_at: String,
    /// Set when the container never ran: why create or start failed.
    pub error: Option<String>,
}

impl ExitRecord {
    /// Whether it counts as a clean exit (restart policy on-failure).
    pub fn success(&self) -> bool {
        self.error.is_none() && self.code == Some(0) && !self.oom_killed
    }

    /// One line for operators: `exited with code 3`, `killed by signal 9 (OOM-killed at the memory limit)`.
    pub fn describe(&self) -> String {
        let mut text = match (&self.error, self.code, self.signal) {
            (Some(e), _, _) => format!("failed to start: {e}"),
            (None, Some(code), _) => format!("exited with code {code}"),
            (None, None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None, None) => "ended".to_string(),
        };
        if self.oom_killed {
            text.push_str(" (OOM-killed at the memory limit)");
        }
        text
    }
}
