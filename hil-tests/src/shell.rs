//! The command channel into a box: the host end of its `hvc0` virtio
//! console, served inside the box by `images/edge-box/shell-server`.
//!
//! A request is `RUN <id> <base64 script>\n`. The box answers `@@ACK <id>@@`
//! when it has read the request, then the script's combined output in
//! base64, then `@@END <id> <status>@@`. A request that is not acknowledged
//! within a few seconds (the server not up yet, the box rebooting, or busy
//! with a long script, during which it reads nothing) is sent again under
//! the same id; the server runs a script once per id and answers a repeated
//! id with the recorded output, so a script runs at most once however late
//! the box reads the copies. Lines before the acknowledgement (e.g. the tty
//! echoing a request that arrived before the server turned echo off, or the
//! answers to stale copies) are ignored.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::base64;

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Exit status of the script.
    pub status: i32,
    /// Its stdout and stderr, interleaved.
    pub output: String,
}

impl CommandOutput {
    /// True when the script exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How long a request may go unacknowledged before it is sent again.
const ACK_WAIT: Duration = Duration::from_secs(3);

/// Why one attempt ended without an answer.
enum AttemptError {
    /// The box never acknowledged the request: safe to send it again.
    NotSeen(String),
    /// The box took the request but the answer did not come: do not resend.
    Lost(String),
}

/// Runs `script` (sh) in the box behind `socket`; fails when no answer comes
/// within `timeout`.
pub fn run(socket: &Path, script: &str, timeout: Duration) -> Result<CommandOutput, String> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no attempt made");
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    while Instant::now() < deadline {
        match attempt(socket, id, script, deadline) {
            Ok(output) => return Ok(output),
            Err(AttemptError::NotSeen(error)) => last_error = error,
            Err(AttemptError::Lost(error)) => {
                return Err(format!("command channel {}: {error}", socket.display()))
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "command channel {}: {last_error}",
        socket.display()
    ))
}

fn attempt(
    socket: &Path,
    id: u64,
    script: &str,
    deadline: Instant,
) -> Result<CommandOutput, AttemptError> {
    use AttemptError::{Lost, NotSeen};
    let mut stream = UnixStream::connect(socket).map_err(|e| NotSeen(format!("connect: {e}")))?;
    let request = format!("RUN {id} {}\n", base64::encode(script.as_bytes()));
    stream
        .write_all(request.as_bytes())
        .map_err(|e| NotSeen(format!("send: {e}")))?;
    let ack_deadline = (Instant::now() + ACK_WAIT).min(deadline);
    let ack = format!("@@ACK {id}@@");
    let end_prefix = format!("@@END {id} ");
    let mut reader = BufReader::new(stream);
    let mut acknowledged = false;
    let mut encoded = String::new();
    let mut line = String::new();
    loop {
        let until = if acknowledged { deadline } else { ack_deadline };
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(if acknowledged {
                Lost("the box took the command but did not finish it in time".into())
            } else {
                NotSeen("no acknowledgement".into())
            });
        }
        reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| Lost(e.to_string()))?;
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) if acknowledged => return Err(Lost("channel closed mid-command".into())),
            Ok(0) => return Err(NotSeen("channel closed".into())),
            Ok(_) => {}
            // A timeout: loop to the deadline check.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) if acknowledged => return Err(Lost(format!("read: {e}"))),
            Err(e) => return Err(NotSeen(format!("read: {e}"))),
        }
        let text = line.trim_end_matches(['\r', '\n']);
        if !acknowledged {
            acknowledged = text == ack;
            continue;
        }
        if let Some(rest) = text.strip_prefix(&end_prefix) {
            let status = rest
                .strip_suffix("@@")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Lost(format!("bad end line {text:?}")))?;
            let bytes =
                base64::decode(&encoded).ok_or_else(|| Lost("output is not base64".into()))?;
            return Ok(CommandOutput {
                status,
                output: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        encoded.push_str(text);
    }
}
