//! The probes of a container's health check: a command run inside the
//! container (`runc exec`), a TCP connect, or an HTTP GET — the last two
//! made from a thread that has joined the container's network namespace,
//! so they reach ports bound to the container's own loopback too. The
//! settings and the tally of results are shared with VMs ([`crate::health`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::health::Probe;

/// Runs one check of container `id` whose init has host PID `pid`; an exec
/// probe's process id goes to `pid_file`, so one that overruns is killed
/// inside the container too (killing `runc exec` alone would leave it).
pub async fn check(
    probe: &Probe,
    runtime: &containers::OciRuntime,
    id: &str,
    pid: i32,
    timeout: Duration,
    pid_file: &std::path::Path,
) -> Result<(), String> {
    match probe {
        Probe::Exec(cmd) => {
            let _ = std::fs::remove_file(pid_file);
            let mut command = tokio::process::Command::new(&runtime.program);
            command
                .arg("--root")
                .arg(&runtime.root)
                .args(["exec", "--pid-file"])
                .arg(pid_file)
                .arg(id)
                .args(cmd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let output = match tokio::time::timeout(timeout, command.output()).await {
                Ok(done) => done.map_err(|e| format!("cannot run {}: {e}", runtime.name()))?,
                Err(_) => {
                    let probe_pid = std::fs::read_to_string(pid_file)
                        .ok()
                        .and_then(|t| t.trim().parse::<i32>().ok());
                    if let Some(p) = probe_pid.filter(|p| *p > 1) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    return Err(format!(
                        "{:?} did not finish in {timeout:?}; killed",
                        cmd.join(" ")
                    ));
                }
            };
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{:?} {}: {}",
                    cmd.join(" "),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        }
        Probe::Tcp(port) => in_netns(pid, timeout, Target::Tcp(*port)).await,
        Probe::Http { port, path } => {
            in_netns(pid, timeout, Target::Http(*port, path.clone())).await
        }
        // Refused for containers at validation.
        Probe::GuestAgent => Err("a container has no guest agent to ask".into()),
    }
}

enum Target {
    Tcp(u16),
    Http(u16, String),
}

/// Probes from a dedicated thread that joins the network namespace of
/// `pid` (a thread of the async runtime must never change namespace).
async fn in_netns(pid: i32, timeout: Duration, target: Target) -> Result<(), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("health-probe".into())
        .spawn(move || {
            let _ = tx.send(probe_in_netns(pid, timeout, &target));
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start a probe thread: {e}"));
    }
    match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
        Ok(Ok(result)) => result,
        _ => Err(format!("no answer in {timeout:?}")),
    }
}

fn probe_in_netns(pid: i32, timeout: Duration, target: &Target) -> Result<(), String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("container network namespace: {e}"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("joining the container network namespace: {e}"))?;
    let port = match target {
        Target::Tcp(p) | Target::Http(p, _) => *p,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("tcp {port}: {e}"))?;
    let Target::Http(_, path) = target else {
        return Ok(());
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: mecvisor-health\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("http {port}: {e}"))?;
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .map_err(|e| format!("http {port}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("http {port}{path}: not an HTTP answer"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("http {port}{path}: status {status}"))
    }
}
