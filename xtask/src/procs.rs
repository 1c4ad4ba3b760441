//! Child-process guards, free loopback ports and wait-for helpers.
//!
//! Every long-running process xtask starts is wrapped in a [`Proc`]: it is
//! stopped (SIGTERM, then SIGKILL) when the guard is dropped, so nothing is
//! left behind on error or panic. Processes are also tied to xtask with
//! `PR_SET_PDEATHSIG`, so they get SIGTERM even if xtask itself is killed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::shell;

/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Whether a spawned process should die with xtask or outlive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Gets SIGTERM when xtask exits (normal case).
    TiedToXtask,
    /// Own process group, survives xtask (demo --keep-running).
    Detachable,
}

/// A running child process whose output goes to a log file; stopped on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    detached: bool,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path, lifetime: Lifetime) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating handle of {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        match lifetime {
            Lifetime::TiedToXtask => {
                // SAFETY: the closure runs in the forked child before exec and
                // only calls prctl(2), which is async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
                            .map_err(std::io::Error::from)
                    });
                }
            }
            Lifetime::Detachable => {
                cmd.process_group(0);
            }
        }
        let line = shell::describe(cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {name}: `{line}`"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            detached: false,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log file of the process.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails with the end of the process's log if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited unexpectedly ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 25)
            ),
            Err(err) => Err(anyhow!(err).context(format!("checking whether {} runs", self.name))),
        }
    }

    /// Leaves the process running when the guard is dropped.
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Sends SIGTERM (once) if the process still runs.
    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
    }

    /// Waits until `deadline` for exit, then kills; returns a note when killed.
    fn reap(&mut self, deadline: Instant) -> Option<String> {
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return None,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Some(format!(
                        "{} (pid {}) ignored SIGTERM for {}s and was killed",
                        self.name,
                        self.child.id(),
                        STOP_GRACE.as_secs()
                    ));
                }
                Ok(None) => sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        stop_all(std::slice::from_mut(self));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.detached {
            self.stop();
        }
    }
}

/// Stops many processes at once: SIGTERM to all, one shared grace period, then SIGKILL.
pub fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter_mut() {
        p.terminate();
    }
    let deadline = Instant::now() + STOP_GRACE;
    for p in procs.iter_mut() {
        if let Some(note) = p.reap(deadline) {
            eprintln!("xtask: warning: {note}");
        }
    }
}

/// Last `lines` lines of a log file (best effort, for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_ok() {
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, release).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading bound address")?
        .port())
}

/// Polls `check` every `every` until it returns `Some`, or fails after `timeout`.
///
/// `check` returns `Ok(None)` for "not yet" and `Err` for a fatal problem (for
/// example a process died), which ends the wait at once. The timeout error
/// names `what` and the last "not yet" reason recorded through `note`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut(&mut String) -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut note = String::new();
    loop {
        if let Some(value) = check(&mut note)? {
            return Ok(value);
        }
        if start.elapsed() >= timeout {
            let last = if note.is_empty() {
                String::new()
            } else {
                format!(" (last state: {note})")
            };
            bail!(
                "timed out after {}s waiting for {what}{last}",
                timeout.as_secs()
            );
        }
        sleep(every);
    }
}

/// Resident set size of a process in KiB, from `VmRSS` in /proc/PID/status.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Serialises tests that fork: a child forked while another test holds a
    /// listener briefly inherits that socket, which would make the port look busy.
    static FORK_LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(4321));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        let kib = rss_kib(std::process::id()).expect("own /proc status");
        assert!(kib > 0);
    }

    #[test]
    fn guard_stops_process_on_drop() {
        let _lock = FORK_LOCK.lock();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("sleep.log");
        let pid = {
            let p = Proc::spawn(
                "sleep",
                Command::new("sleep").arg("60"),
                &log,
                Lifetime::TiedToXtask,
            )
            .expect("spawn sleep");
            p.pid()
        };
        // After drop the child was reaped, so its /proc entry is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn ensure_running_reports_exit_with_log() {
        let _lock = FORK_LOCK.lock();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("sh.log");
        let mut p = Proc::spawn(
            "failing-sh",
            Command::new("sh").args(["-c", "echo boom-marker; exit 3"]),
            &log,
            Lifetime::TiedToXtask,
        )
        .expect("spawn sh");
        let err = wait_for(
            "exit",
            Duration::from_secs(5),
            Duration::from_millis(10),
            |_| p.ensure_running().map(|()| None::<()>),
        )
        .expect_err("sh exits");
        let text = format!("{err:#}");
        assert!(text.contains("failing-sh exited"), "{text}");
        assert!(text.contains("boom-marker"), "{text}");
    }

    #[test]
    fn free_port_is_bindable() {
        let _lock = FORK_LOCK.lock();
        let port = free_port().expect("port");
        TcpListener::bind(("127.0.0.1", port)).expect("port still free");
    }
}
