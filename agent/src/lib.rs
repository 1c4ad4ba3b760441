//! edge-agent library: the pieces of the mecvisor edge agent, used by the
//! `edge-agent` binary.
//!
//! The agent's life, in the order a document travels:
//! - [`config`]: the TOML configuration;
//! - [`link`]: the MQTT sync link (hello, desired documents in, acks and
//!   reports out), over [`mqtt_transport`];
//! - [`accept`]: checks of a signed desired document (signature, device,
//!   generation) before it is stored and acked;
//! - [`store`]: the SQLite store (last accepted document, object states,
//!   the durable [`outbox`] of acks and reports);
//! - [`reconciler`]: drives every object towards the document, one
//!   explicit state machine per object;
//! - [`runtimes`]: the interface the reconciler drives and the runtimes
//!   behind it (slices, containers, VMs, unsupported kinds);
//! - [`assembly`]: picks the runtimes from the config, the one place that
//!   knows them all;
//! - shared by the runtimes: [`artifacts`] (the content store as the
//!   artifact store), [`health`] (health-check settings and tallies) and
//!   [`slice_net`] (the slices and ports the slicer applies as one set);
//! - [`status`]: the status socket; [`metrics`]: self-metrics;
//! - [`agent`]: wiring and graceful shutdown of `edge-agent run`;
//! - [`cli`]: the command line, with the local commands (`status`, `logs`,
//!   `import`, `slices`, `vmm`).

pub mod accept;
pub mod agent;
pub mod artifacts;
pub mod assembly;
pub mod cli;
pub mod config;
pub mod health;
pub mod link;
pub mod metrics;
pub mod outbox;
pub mod reconciler;
pub mod runtimes;
pub mod slice_net;
pub mod status;
pub mod store;
