//! The command channel into a box: the host end of its `hvc0` virtio
//! console, served inside the box by `images/edge-box/shell-server`.
//!
//! A request is `RUN <id> <base64 script>\n`; the answer is the script's
//! combined output in base64, then `@@END <id> <status>@@`. A request the box
//! did not see (its server not up yet, or the box rebooting) is sent again
//! with a new id until the deadline.

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

/// How long one attempt waits for its answer before the request is resent.
const ATTEMPT: Duration = Duration::from_secs(5);

/// Runs `script` (sh) in the box behind `socket`, trying until `timeout`.
pub fn run(socket: &Path, script: &str, timeout: Duration) -> Result<CommandOutput, String> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("no attempt made");
    while Instant::now() < deadline {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let wait = ATTEMPT.min(deadline.saturating_duration_since(Instant::now()));
        match attempt(socket, id, script, wait) {
            Ok(output) => return Ok(output),
            Err(error) => last_error = error,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "command channel {}: {last_error}",
        socket.display()
    ))
}

fn attempt(socket: &Path, id: u64, script: &str, wait: Duration) -> Result<CommandOutput, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(wait.max(Duration::from_millis(100))))
        .map_err(|e| e.to_string())?;
    let request = format!("RUN {id} {}\n", base64::encode(script.as_bytes()));
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let started = Instant::now();
    let mut reader = BufReader::new(stream);
    let mut encoded = String::new();
    let end_prefix = format!("@@END {id} ");
    let mut line = String::new();
    while started.elapsed() < wait {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("channel closed".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("no answer: {e}")),
        }
        let text = line.trim_end();
        if let Some(rest) = text.strip_prefix(&end_prefix) {
            let status = rest
                .trim_end_matches("@@")
                .parse()
                .map_err(|_| format!("bad end line {text:?}"))?;
            let bytes = base64::decode(&encoded).ok_or("output is not base64")?;
            return Ok(CommandOutput {
                status,
                output: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        if text.starts_with("@@END ") {
            // The answer to an earlier, abandoned attempt.
            encoded.clear();
        } else {
            encoded.push_str(text);
        }
    }
    Err("no answer in time".into())
}
