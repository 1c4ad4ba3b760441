//! mecvisor's container runtime. The agent does not reimplement a
//! container runtime: it generates OCI bundles and drives any OCI runtime
//! (runc by default, crun or youki) through its command line.
//!
//! - [`config`]: a container fully resolved ([`ContainerConfig`]).
//! - [`bundle`]: `config.json` with hardened defaults; [`seccomp`] profile.
//! - [`rootfs`]: per-container root file system (overlayfs or a copy).
//! - [`manager`]: run / observe / stop / remove / adopt.
//! - [`monitor`]: the per-container process that outlives the agent,
//!   collects the exit status and OOM kills, and writes [`logs`].
//! - [`oci_runtime`]: the runtime's CLI.

pub mod bundle;
pub mod config;
pub mod layout;
pub mod logs;
pub mod manager;
pub mod monitor;
pub mod oci_runtime;
pub mod rootfs;
pub mod seccomp;

pub use config::{BindMount, ContainerConfig, IdMapping, Limits};
pub use layout::ExitRecord;
pub use logs::LogLimits;
pub use manager::{ContainerError, Manager, ManagerConfig, MonitorCommand, Observation, Started};
pub use oci_runtime::OciRuntime;
