//! The host side of the guest agent (`mecvisor-guest`, in the guest image):
//! asks a running VM's guest whether it is up, or to power off, through
//! the VMM's virtio-vsock device.
//!
//! The VMM listens on `<vm dir>/vsock.sock` ([`SOCKET_NAME`]); a client
//! writes `CONNECT 1024\n` and reads `OK <local port>\n` once the guest
//! accepted on vsock port [`GUEST_AGENT_PORT`] (the stream is closed when
//! nothing listens there). Then the guest agent's line protocol:
//! `HEALTH\n` -> `OK <uptime seconds>\n`, `POWEROFF\n` -> `OK\n`.
//!
//! # Use
//!
//! The VM runtime ([`super`]) uses both:
//! - a VM whose spec has `health: { guest_agent: true }` is checked with
//!   [`check`] on its check's interval (failures do not count during its
//!   start period); enough failures in a row make it unhealthy, and its
//!   restart policy replaces its VMM;
//! - to stop a VM, [`request_poweroff`] first; only when that fails, or
//!   the guest has not powered off in time, does the VMM get SIGTERM and
//!   then SIGKILL.
//!
//! Each call is one short connection; an error says which step failed
//! (no VMM socket, no guest agent listening, an unexpected answer, or a
//! timeout at a named step). A guest image without the agent (or a VM
//! without a vsock device) always fails at the handshake.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::{timeout_at, Instant};

/// The vsock port the guest agent listens on (`mecvisor_guest::PORT`; a
/// test checks they match).
pub const GUEST_AGENT_PORT: u32 = 1024;

/// The VMM's vsock socket in a VM's directory.
pub const SOCKET_NAME: &str = "vsock.sock";

/// The longest reply line read from the VMM or the guest.
const MAX_REPLY: u64 = 128;

/// Asks the guest agent whether the guest is up; returns its uptime
/// (whole seconds). `timeout` bounds the whole exchange.
pub async fn check(vm_dir: &Path, timeout: Duration) -> Result<Duration, String> {
    let mut session = Session::open(vm_dir, timeout).await?;
    let reply = session.request("HEALTH").await?;
    let seconds = reply
        .strip_prefix("OK ")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            format!("guest agent answered HEALTH with {reply:?}, not \"OK <seconds>\"")
        })?;
    Ok(Duration::from_secs(seconds))
}

/// Asks the guest agent to sync and power the guest off; `Ok` once it
/// acknowledged (the VMM exits shortly after). `timeout` bounds the
/// exchange.
pub async fn request_poweroff(vm_dir: &Path, timeout: Duration) -> Result<(), String> {
    let mut session = Session::open(vm_dir, timeout).await?;
    let reply = session.request("POWEROFF").await?;
    if reply != "OK" {
        return Err(format!(
            "guest agent answered POWEROFF with {reply:?}, not \"OK\""
        ));
    }
    Ok(())
}

/// One connection to the guest agent, within one deadline.
struct Session {
    stream: BufReader<UnixStream>,
    deadline: Instant,
    timeout: Duration,
}

impl Session {
    /// Connects to the VMM's socket and to the guest agent's port.
    async fn open(vm_dir: &Path, timeout: Duration) -> Result<Session, String> {
        let deadline = Instant::now() + timeout;
        let path = vm_dir.join(SOCKET_NAME);
        let connect = UnixStream::connect(&path);
        let stream = timeout_at(deadline, connect)
            .await
            .map_err(|_| {
                format!(
                    "connecting to {}: timed out after {timeout:?}",
                    path.display()
                )
            })?
            .map_err(|e| {
                format!(
                    "cannot connect to {} (VMM not running, or no vsock device): {e}",
                    path.display()
                )
            })?;
        let mut session = Session {
            stream: BufReader::new(stream),
            deadline,
            timeout,
        };
        let step = format!("connecting to guest vsock port {GUEST_AGENT_PORT}");
        session
            .send(&format!("CONNECT {GUEST_AGENT_PORT}"), &step)
            .await?;
        match session.read_line(&step).await? {
            Some(line) if line.starts_with("OK ") => Ok(session),
            Some(line) => Err(format!(
                "{step}: the VMM answered {line:?}, not \"OK <port>\""
            )),
            None => Err(format!(
                "{step}: the VMM closed the connection (no guest agent listening on that port)"
            )),
        }
    }

    /// Sends one request line and reads the reply line.
    async fn request(&mut self, request: &str) -> Result<String, String> {
        let step = format!("asking the guest agent {request}");
        self.send(request, &step).await?;
        self.read_line(&step)
            .await?
            .ok_or_else(|| format!("{step}: the guest agent closed the connection without a reply"))
    }

    async fn send(&mut self, line: &str, step: &str) -> Result<(), String> {
        let bytes = format!("{line}\n");
        timeout_at(
            self.deadline,
            self.stream.get_mut().write_all(bytes.as_bytes()),
        )
        .await
        .map_err(|_| self.timed_out(step))?
        .map_err(|e| format!("{step}: write failed: {e}"))
    }

    /// The next line without its `\n`; `None` when the stream ended first.
    async fn read_line(&mut self, step: &str) -> Result<Option<String>, String> {
        let mut line = Vec::new();
        let mut limited = (&mut self.stream).take(MAX_REPLY);
        timeout_at(self.deadline, limited.read_until(b'\n', &mut line))
            .await
            .map_err(|_| self.timed_out(step))?
            .map_err(|e| format!("{step}: read failed: {e}"))?;
        if line.last() != Some(&b'\n') {
            return if line.len() as u64 >= MAX_REPLY {
                Err(format!("{step}: reply longer than {MAX_REPLY} bytes"))
            } else {
                Ok(None)
            };
        }
        line.pop();
        String::from_utf8(line)
            .map(Some)
            .map_err(|_| format!("{step}: the reply is not UTF-8"))
    }

    fn timed_out(&self, step: &str) -> String {
        format!("{step}: no answer within {:?}", self.timeout)
    }
}

#[cfg(test)]
mod tests;
