//! The guest agent of mecvisor's microVMs, `mecvisor-guest`: it listens on
//! virtio-vsock port [`PORT`] inside the guest and answers the host one
//! line at a time (see [`protocol`]):
//!
//! | request | reply |
//! | --- | --- |
//! | `HEALTH\n` | `OK <guest uptime in whole seconds>\n` |
//! | `POWEROFF\n` | `OK\n`, then the guest syncs its disks and powers off |
//! | anything else, or a line over [`MAX_LINE`] bytes | `ERR <reason>\n`, and the connection is closed |
//!
//! A connection idle for [`IDLE_TIMEOUT`] is closed. The host reaches the
//! port through the VMM's Unix socket (`CONNECT 1024\n`, see the agent's
//! `vms::health`).
//!
//! The parts: [`protocol`] (the pure line protocol), [`server`] (the
//! accept loop and one connection, over any [`server::Listener`]),
//! [`vsock`] (AF_VSOCK sockets), [`system`] (uptime and power-off).

pub mod protocol;
pub mod server;
pub mod system;
pub mod vsock;

use std::time::Duration;

/// The vsock port the guest agent listens on. The host side
/// (`edge-agent`'s `vms::health`) has the same number; a test there
/// checks the two match.
pub const PORT: u32 = 1024;

/// The longest request line, in bytes, without its `\n`.
pub const MAX_LINE: usize = 64;

/// How long a connection may stay silent before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
