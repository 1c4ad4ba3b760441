//! Health checks of workloads, whatever runs them: what to probe and how
//! often ([`HealthSettings`], from a workload's spec with the defaults
//! filled in) and the running tally of results that decides when a
//! workload is unhealthy ([`HealthState`]). The probes themselves belong
//! to the runtimes: a container's in `runtimes::containers::probe`, a VM's
//! guest agent in `runtimes::vms::health`.

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
    /// `crate::runtimes::vms::health`).
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
