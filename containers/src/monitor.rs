//! The monitor: one small process per container that outlives the agent.
//!
//! It creates and starts the container through the OCI runtime, holding
//! the pipes the container's stdout and stderr are connected to and
//! writing them to rotating log files; as child subreaper it becomes the
//! parent of the container's init process and collects its exit status,
//! checks the cgroup's OOM-kill counter, and records both in `exit.json`.
//! Because it runs in its own session, restarting or upgrading the agent
//! leaves the container and its logging untouched: the new agent finds
//! the container through the runtime's state and the monitor's files.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe, setsid, ForkResult, Pid};

use crate::layout::{ContainerDir, ExitRecord};
use crate::logs::{rfc3339, LogLimits, LogWriter, Stream};
use crate::oci_runtime::OciRuntime;

/// What a monitor is told on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorArgs {
    /// The runtime's state directory (where `containers/<id>` lives).
    pub state: PathBuf,
    /// Container id.
    pub id: String,
    /// The OCI runtime.
    pub runtime: OciRuntime,
    /// Log bounds.
    pub logs: LogLimits,
}

impl MonitorArgs {
    /// As command-line arguments (parsed back by [`MonitorArgs::parse`]).
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--state".into(),
            self.state.display().to_string(),
            "--id".into(),
            self.id.clone(),
            "--runtime".into(),
            self.runtime.program.display().to_string(),
            "--runtime-root".into(),
            self.runtime.root.display().to_string(),
            "--log-max-bytes".into(),
            self.logs.max_file_bytes.to_string(),
            "--log-files".into(),
            self.logs.rotated_files.to_string(),
        ]
    }

    /// Parses what [`MonitorArgs::to_args`] produced.
    pub fn parse(args: &[String]) -> Result<MonitorArgs, String> {
        let get = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
                .ok_or_else(|| format!("missing {name}"))
        };
        let number = |name: &str| -> Result<u64, String> {
            get(name)?.parse().map_err(|e| format!("{name}: {e}"))
        };
        Ok(MonitorArgs {
            state: get("--state")?.into(),
            id: get("--id")?,
            runtime: OciRuntime::new(get("--runtime")?, get("--runtime-root")?),
            logs: LogLimits {
                max_file_bytes: number("--log-max-bytes")?,
                rotated_files: u32::try_from(number("--log-files")?).map_err(|e| e.to_string())?,
            },
        })
    }
}

/// Entry point of the monitor process: detaches (the caller's child exits
/// at once, so the caller never keeps a zombie) and runs the container.
/// Returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let args = match MonitorArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("container monitor: {e}");
            return 2;
        }
    };
    // SAFETY: the monitor is single-threaded at this point (it is started
    // as a fresh process and has spawned no threads), so fork is sound.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => return 0,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            eprintln!("container monitor: fork: {e}");
            return 1;
        }
    }
    let _ = setsid();
    let dir = ContainerDir::new(&args.state, &args.id);
    match run(&args, &dir) {
        Ok(()) => 0,
        Err(e) => {
            record(&dir, &failure(e.clone()));
            eprintln!("container monitor {}: {e}", args.id);
            1
        }
    }
}

fn failure(message: String) -> ExitRecord {
    ExitRecord {
        code: None,
        signal: None,
        oom_killed: false,
        finished_at: rfc3339(SystemTime::now()),
        error: Some(message),
    }
}

fn record(dir: &ContainerDir, exit: &ExitRecord) {
    if let Ok(json) = serde_json::to_vec(exit) {
        let tmp = dir.path().join(".exit.json.tmp");
        let written = std::fs::write(&tmp, json)
            .and_then(|()| File::open(&tmp).and_then(|f| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, dir.exit()));
        if let Err(e) = written {
            eprintln!("container monitor: writing {}: {e}", dir.exit().display());
        }
    }
}

fn run(args: &MonitorArgs, dir: &ContainerDir) -> Result<(), String> {
    // SAFETY: setting a signal disposition to SIG_IGN installs no handler code.
    unsafe {
        let _ = signal(Signal::SIGHUP, SigHandler::SigIgn);
        let _ = signal(Signal::SIGPIPE, SigHandler::SigIgn);
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
        // A signal meant for the agent (a stop of its service, a group
        // kill) must not take the container's monitor with it.
        let _ = signal(Signal::SIGTERM, SigHandler::SigIgn);
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("becoming subreaper: {e}"))?;
    std::fs::write(dir.monitor_pid(), std::process::id().to_string())
        .map_err(|e| format!("writing monitor.pid: {e}"))?;
    let mut logs =
        LogWriter::open(&dir.logs(), args.logs).map_err(|e| format!("opening logs: {e}"))?;

    let (out_read, out_write) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_read, err_write) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let create = args
        .runtime
        .create_command(&args.id, &dir.bundle(), &dir.init_pid(), &dir.runtime_log())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_write))
        .stderr(Stdio::from(err_write))
        .status();
    // The write ends now live only in the container (dropped with the Command).
    let status = create.map_err(|e| format!("running {} create: {e}", args.runtime.name()))?;
    if !status.success() {
        let detail = drain_now(&out_read, &err_read) + &tail(&dir.runtime_log());
        return Err(format!(
            "{} create: {status}: {}",
            args.runtime.name(),
            detail.trim()
        ));
    }
    let init = read_pid(&dir.init_pid())?;
    if let Err(e) = args.runtime.start(&args.id) {
        let _ = args.runtime.delete(&args.id);
        return Err(e.to_string());
    }
    if let Err(e) = std::fs::write(dir.started(), rfc3339(SystemTime::now())) {
        // The container runs: keep draining its output and collect its
        // exit rather than abandon it (the agent still sees it via runc).
        eprintln!("container monitor {}: writing started: {e}", args.id);
    }
    let _ = logs.note(&format!("started, pid {init}"));

    let status = pump(&mut logs, out_read, err_read, init);
    let oom_killed = oom_kills(&args.id) > 0;
    let exit = ExitRecord {
        code: match status {
            WaitStatus::Exited(_, code) => Some(code),
            _ => None,
        },
        signal: match status {
            WaitStatus::Signaled(_, sig, _) => Some(sig as i32),
            _ => None,
        },
        oom_killed,
        finished_at: rfc3339(SystemTime::now()),
        error: None,
    };
    let _ = logs.flush_partial();
    let _ = logs.note(&exit.describe());
    record(dir, &exit);
    Ok(())
}

/// Copies output to the log until the init process has exited and the
/// pipes are closed (every process of the container's PID namespace dies
/// with its init; a pipe held by something else is given two seconds).
fn pump(logs: &mut LogWriter, out: OwnedFd, err: OwnedFd, init: Pid) -> WaitStatus {
    let mut open = [Some(out), Some(err)];
    let mut status = None;
    let mut exited_at: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let slots: Vec<usize> = (0..open.len()).filter(|i| open[*i].is_some()).collect();
        if slots.is_empty() && status.is_some() {
            break;
        }
        let ready: Vec<usize> = if slots.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
            Vec::new()
        } else {
            let mut polled: Vec<PollFd> = slots
                .iter()
                .filter_map(|i| open[*i].as_ref())
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            let _ = poll(&mut polled, PollTimeout::from(200u16));
            slots
                .iter()
                .zip(&polled)
                .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
                .map(|(slot, _)| *slot)
                .collect()
        };
        for slot in ready {
            let stream = if slot == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            let read = open[slot]
                .as_ref()
                .map(|fd| nix::unistd::read(fd, &mut buf));
            match read {
                Some(Ok(n)) if n > 0 => {
                    let _ = logs.write(stream, &buf[..n]);
                }
                Some(Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN)) => {}
                _ => open[slot] = None,
            }
        }
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(s) if s.pid() == Some(init) => {
                    status = Some(s);
                    exited_at = Some(Instant::now());
                }
                Ok(_) => {}
            }
        }
        if exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
    }
    status.unwrap_or(WaitStatus::StillAlive)
}

fn drain_now(out: &OwnedFd, err: &OwnedFd) -> String {
    let mut text = String::new();
    for fd in [out, err] {
        if let Ok(dup) = fd.try_clone() {
            let mut file = File::from(dup);
            let _ = nix::fcntl::fcntl(
                &file,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

/// The last lines of the runtime's log (its JSON lines carry the reason).
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" ")
}

fn read_pid(path: &Path) -> Result<Pid, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    text.trim()
        .parse::<i32>()
        .map(Pid::from_raw)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// OOM kills recorded in the container's memory cgroup (v2 `memory.events`
/// or v1 `memory.oom_control`).
pub fn oom_kills(id: &str) -> u64 {
    let cgroup = crate::bundle::cgroup_path(id);
    let candidates = [
        format!("/sys/fs/cgroup{cgroup}/memory.events"),
        format!("/sys/fs/cgroup/memory{cgroup}/memory.oom_control"),
    ];
    candidates
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = MonitorArgs {
            state: "/var/lib/mecvisor".into(),
            id: "web".into(),
            runtime: OciRuntime::new("crun", "/run/mecvisor/crun"),
            logs: LogLimits {
                max_file_bytes: 4096,
                rotated_files: 2,
            },
        };
        assert_eq!(MonitorArgs::parse(&args.to_args()), Ok(args));
        assert!(MonitorArgs::parse(&["--id".into()]).is_err());
    }
}
