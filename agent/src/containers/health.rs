//! Health checks of running containers: a command run inside the
//! container (`runc exec`), a TCP connect, or an HTTP GET — the last two
//! made from a thread that has joined the container's network namespace,
//! so they reach ports bound to the container's own loopback too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mecvisor_protocol::HealthCheck;

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Run a command in the container; healthy on exit 0.
    Exec(Vec<String>),
    /// Connect to a TCP port.
    Tcp(u16),
    /// GET a path; healthy on 2xx and 3xx.
    Http {
        /// Port.
        port: u16,
        /// Path.
        path: String,
    },
    /// VMs only: the guest agent answers HEALTH over vsock (see
    /// `crate::vms::health`).
    GuestAgent,
}

/// A workload's health check with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// What to probe.
    pub probe: Probe,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive failures that make the container unhealthy.
    pub retries: u32,
    /// Grace time after a start during which failures do not count.
    pub start_period: Duration,
}

impl HealthSettings {
    /// From the spec (validated: exactly one probe); `None` without one.
    pub fn from_spec(check: &HealthCheck) -> Option<HealthSettings> {
        let probe = if let Some(cmd) = &check.exec {
            Probe::Exec(cmd.clone())
        } else if let Some(port) = check.tcp_port {
            Probe::Tcp(port)
        } else if check.guest_agent {
            Probe::GuestAgent
        } else {
            let http = check.http.as_ref()?;
            Probe::Http {
                port: http.port,
                path: http.path.clone(),
            }
        };
        let secs = |v: Option<u32>, default: u64| Duration::from_secs(v.map_or(default, u64::from));
        Some(HealthSettings {
            probe,
            interval: secs(check.interval_s, 10),
            timeout: secs(check.timeout_s, 3),
            retries: check.retries.unwrap_or(3),
            start_period: secs(check.start_period_s, 0),
        })
    }
}

/// The running tally of one workload's checks.
#[derive(Debug, Clone)]
pub struct HealthState {
    /// Settings.
    pub settings: HealthSettings,
    /// When the container (re)started.
    pub started: Instant,
    /// When the next check is due.
    pub next_due: Instant,
    /// Consecutive failures counted.
    pub failures: u32,
    /// The last failure's reason.
    pub last_failure: Option<String>,
}

impl HealthState {
    /// A fresh tally for a container started now.
    pub fn new(settings: HealthSettings, now: Instant) -> HealthState {
        HealthState {
            next_due: now + settings.interval.min(Duration::from_secs(1)),
            settings,
            started: now,
            failures: 0,
            last_failure: None,
        }
    }

    /// Whether `retries` consecutive checks failed.
    pub fn unhealthy(&self) -> bool {
        self.failures >= self.settings.retries
    }

    /// Records a check's result; returns true when this made it unhealthy.
    pub fn record(&mut self, result: Result<(), String>, now: Instant) -> bool {
        self.next_due = now + self.settings.interval;
        match result {
            Ok(()) => {
                self.failures = 0;
                self.last_failure = None;
                false
            }
            Err(_) if now < self.started + self.settings.start_period => false,
            Err(reason) => {
                let was = self.unhealthy();
                self.failures = self.failures.saturating_add(1);
                self.last_failure = Some(reason);
                !was && self.unhealthy()
            }
        }
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        format!(
            "unhealthy: {} consecutive failed checks, last: {}",
            self.failures,
            self.last_failure.as_deref().unwrap_or("?")
        )
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(retries: u32, start_period: u64) -> HealthSettings {
        HealthSettings {
            probe: Probe::Tcp(80),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries,
            start_period: Duration::from_secs(start_period),
        }
    }

    #[test]
    fn turns_unhealthy_after_retries_consecutive_failures() {
        let t0 = Instant::now();
        let mut state = HealthState::new(settings(3, 0), t0);
        assert!(!state.record(Err("refused".into()), t0));
        assert!(!state.record(Ok(()), t0));
        assert!(!state.record(Err("refused".into()), t0));
        assert!(!state.record(Err("refused".into()), t0));
        assert!(state.record(Err("refused".into()), t0), "third in a row");
        assert!(state.unhealthy());
        assert!(!state.record(Err("refused".into()), t0), "reported once");
        assert!(state.describe().contains("4 consecutive"));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let t0 = Instant::now();
        let mut state = HealthState::new(settings(1, 30), t0);
        assert!(!state.record(Err("starting".into()), t0 + Duration::from_secs(5)));
        assert!(state.record(Err("down".into()), t0 + Duration::from_secs(31)));
    }

    #[test]
    fn defaults_fill_in() {
        let s = HealthSettings::from_spec(&HealthCheck {
            exec: Some(vec!["true".into()]),
            ..HealthCheck::default()
        })
        .expect("settings");
        assert_eq!(s.interval, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!(s.retries, 3);
        assert_eq!(s.probe, Probe::Exec(vec!["true".into()]));
    }
}
