//! Network slices on an edge box.
//!
//! A slice is a VLAN on an uplink, a bridge its workloads' ports join, a
//! shaped share of the uplink and a wall against every other slice. This
//! crate turns the desired slices into kernel state through netlink, reads
//! the kernel state back and applies only the difference, so applying the
//! same slices twice changes nothing and slices no longer wanted are removed.
//! Kernel objects carry an ownership mark (the interface alias
//! `mecvisor slice=<name> role=<role>`); objects without it are never
//! touched.
//!
//! - [`model`]: slices with their rates resolved (tier defaults).
//! - [`conflicts`]: what makes a set of slices impossible on this host,
//!   refused before anything changes.
//! - [`names`]: kernel names and ownership marks.
//! - [`plan`]: desired vs observed -> the actions to take.
//! - [`shaping`]: HTB per uplink (egress) and per uplink ifb (ingress),
//!   classes per slice, classified by VLAN id.
//! - [`kernel`]: netlink: read links, carry out actions.
//! - [`isolation`]: nftables rules that keep slices apart (nf_tables netlink).
//! - [`netns`]: sockets opened inside another network namespace.
//! - [`slicer`]: the whole apply, with rollback of a failed one.
//! - [`status`]: per-slice state and counters, read from the kernel.

pub mod conflicts;
pub mod isolation;
pub mod kernel;
pub mod model;
pub mod names;
pub mod netns;
pub mod nla;
pub mod plan;
pub mod shaping;
pub mod slicer;
pub mod status;
pub mod workload_net;

pub use model::{Port, Rates, Slice};
pub use slicer::{ApplyReport, Slicer, SlicerError};
