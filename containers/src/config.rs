//! What a container should be, fully resolved: the agent merges the
//! workload spec with the image's config into a [`ContainerConfig`]; the
//! bundle is generated from it alone.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A directory from the host mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Host directory (a volume directory the agent owns).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// Resource limits (cgroup).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes (swap included: no swap beyond it); 0 = none.
    pub memory_bytes: u64,
    /// CPU in thousandths of a core (CFS quota); 0 = none.
    pub cpu_millis: u32,
    /// Relative CPU weight when cores are contended (cgroup v1 shares, 2..262144); 0 = default.
    pub cpu_shares: u64,
    /// Largest number of processes; 0 = none.
    pub pids: i64,
}

/// A user namespace mapping: container uid/gid 0.. -> host `host_id`..
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    /// First host id.
    pub host_id: u32,
    /// How many ids.
    pub size: u32,
}

/// Everything needed to generate a container's bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Executable and arguments.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric group id.
    pub gid: u32,
    /// Host name inside the container.
    pub hostname: String,
    /// Mount the root file system read-only.
    pub read_only_root: bool,
    /// Volumes and other bind mounts.
    pub mounts: Vec<BindMount>,
    /// cgroup limits.
    pub limits: Limits,
    /// Network namespace to join (the workload's slice port lives there);
    /// `None` gives the container a namespace of its own with only loopback.
    pub network_namespace: Option<PathBuf>,
    /// Run in a user namespace with this mapping.
    pub user_namespace: Option<IdMapping>,
    /// Signal that asks the process to stop (`TERM` unless the image says otherwise).
    pub stop_signal: String,
    /// Seconds between the stop signal and SIGKILL.
    pub stop_timeout_s: u32,
}

impl ContainerConfig {
    /// A config running `args` as root with defaults for everything else.
    pub fn new(args: Vec<String>) -> ContainerConfig {
        ContainerConfig {
            args,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            hostname: "container".into(),
            read_only_root: false,
            mounts: Vec::new(),
            limits: Limits::default(),
            network_namespace: None,
            user_namespace: None,
            stop_signal: "TERM".into(),
            stop_timeout_s: 10,
        }
    }

    /// Stable fingerprint: a container whose config fingerprint is
    /// unchanged is adopted as it runs instead of being recreated.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }
}
