//! edge-agent library: the pieces of the mecvisor edge agent, used by the
//! `edge-agent` binary.
//!
//! - [`config`]: TOML configuration.
//! - [`store`]: SQLite store (desired doc, object states, outbox).
//! - [`outbox`]: typed outbox helpers.
//! - [`accept`]: acceptance of signed desired state.
//! - [`link`]: the MQTT sync link.
//! - [`runtime`]: the runtime interface per object kind.
//! - [`slicing`]: the network slicing runtime.
//! - [`containers`]: the container runtime (content store + OCI runtime).
//! - [`logs`]: `edge-agent logs`, a workload's output.
//! - [`slices`]: `edge-agent slices`, the kernel's view of the slices.
//! - [`vmm`]: `edge-agent vmm`, one KVM guest on the microVMM.
//! - [`vms`]: the VM runtime (one `edge-agent vmm` process per VM).
//! - [`reconciler`]: the per-object state machine.
//! - [`status`]: status socket and `edge-agent status`.
//! - [`metrics`]: agent self-metrics.
//! - [`agent`]: wiring and graceful shutdown.

pub mod accept;
pub mod agent;
pub mod config;
pub mod containers;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod outbox;
pub mod reconciler;
pub mod runtime;
pub mod slices;
pub mod slicing;
pub mod status;
pub mod store;
pub mod vmm;
pub mod vms;
