//! The health client against a test peer on a real Unix socket in a
//! temporary VM directory. The peer stands in for the VMM's vsock device
//! and the guest agent behind it: it speaks the VMM's host-side handshake
//! (`CONNECT <port>\n` -> `OK <local port>\n`, or a closed stream when
//! nothing listens) and then the guest agent's lines. A real VMM with a
//! booted guest cannot run on this host's KVM in unit tests; the hil lab
//! boots the real guest image.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use super::*;

/// How the stand-in guest behaves after the handshake.
#[derive(Clone, Copy)]
enum Guest {
    /// Answers like `mecvisor-guest` with an uptime of 4242 s.
    Agent,
    /// No guest agent on the port: the VMM closes the host stream.
    NotListening,
    /// Accepts, then never answers.
    Silent,
    /// Answers every request with this line.
    Says(&'static str),
}

/// Serves every connection to `<dir>/vsock.sock` as `guest`; reports
/// each request line the guest got.
fn peer(dir: &Path, guest: Guest) -> mpsc::UnboundedReceiver<String> {
    let listener = UnixListener::bind(dir.join(SOCKET_NAME)).expect("bind");
    let (seen, requests) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                stream.read_line(&mut line).await.expect("read");
                if line != format!("CONNECT {GUEST_AGENT_PORT}\n") {
                    return;
                }
                if matches!(guest, Guest::NotListening) {
                    return;
                }
                let ok = stream.get_mut().write_all(b"OK 1073741824\n").await;
                ok.expect("write");
                loop {
                    line.clear();
                    if stream.read_line(&mut line).await.expect("read") == 0 {
                        return;
                    }
                    let _ = seen.send(line.trim_end().to_string());
                    let reply = match (guest, line.as_str()) {
                        (Guest::Silent, _) => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        (Guest::Says(reply), _) => reply,
                        (_, "HEALTH\n") => "OK 4242\n",
                        (_, "POWEROFF\n") => "OK\n",
                        _ => "ERR unknown request\n",
                    };
                    stream
                        .get_mut()
                        .write_all(reply.as_bytes())
                        .await
                        .expect("write");
                }
            });
        }
    });
    requests
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "current_thread")]
async fn health_reports_the_guest_uptime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut requests = peer(dir.path(), Guest::Agent);
    assert_eq!(
        check(dir.path(), TIMEOUT).await,
        Ok(Duration::from_secs(4242))
    );
    assert_eq!(requests.recv().await.as_deref(), Some("HEALTH"));
}

#[tokio::test(flavor = "current_thread")]
async fn poweroff_is_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut requests = peer(dir.path(), Guest::Agent);
    assert_eq!(request_poweroff(dir.path(), TIMEOUT).await, Ok(()));
    assert_eq!(requests.recv().await.as_deref(), Some("POWEROFF"));
}

#[tokio::test(flavor = "current_thread")]
async fn no_vmm_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = check(dir.path(), TIMEOUT).await.expect_err("no socket");
    assert!(err.starts_with("cannot connect to "), "{err}");
    assert!(err.contains("vsock.sock"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn no_guest_agent_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _requests = peer(dir.path(), Guest::NotListening);
    let err = check(dir.path(), TIMEOUT).await.expect_err("not listening");
    assert_eq!(
        err,
        "connecting to guest vsock port 1024: the VMM closed the connection \
         (no guest agent listening on that port)"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_silent_guest_times_out_at_its_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _requests = peer(dir.path(), Guest::Silent);
    let err = check(dir.path(), Duration::from_millis(200))
        .await
        .expect_err("silent");
    assert_eq!(err, "asking the guest agent HEALTH: no answer within 200ms");
}

#[tokio::test(flavor = "current_thread")]
async fn unexpected_answers_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _requests = peer(dir.path(), Guest::Says("ERR unknown request\n"));
    let err = check(dir.path(), TIMEOUT).await.expect_err("ERR");
    assert!(err.contains("\"ERR unknown request\""), "{err}");
    let err = request_poweroff(dir.path(), TIMEOUT)
        .await
        .expect_err("ERR");
    assert!(
        err.contains("POWEROFF with \"ERR unknown request\""),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let _requests = peer(dir.path(), Guest::Says("OK soon\n"));
    let err = check(dir.path(), TIMEOUT).await.expect_err("not a number");
    assert!(err.contains("not \"OK <seconds>\""), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let endless: &'static str = "x".repeat(500).leak();
    let _requests = peer(dir.path(), Guest::Says(endless));
    let err = check(dir.path(), TIMEOUT).await.expect_err("too long");
    assert!(err.contains("reply longer than 128 bytes"), "{err}");
}

#[test]
fn the_port_is_the_guest_agents() {
    assert_eq!(GUEST_AGENT_PORT, mecvisor_guest::PORT);
}
