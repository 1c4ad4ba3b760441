//! One VMM process per VM (`edge-agent vmm ...`), started in its own
//! process group so it outlives the agent, and recognised again after an
//! agent restart by the pid and start time it recorded (a reused pid never
//! passes for it).
//!
//! Per VM directory `<data_dir>/vms/<name>/`:
//! - `vmm.pid`: `<pid> <start time in clock ticks>`;
//! - `exit.json`: written by the VMM as it ends (how the guest ended);
//! - `spec`: fingerprint of the spec it runs, to tell a changed spec;
//! - `vmm.log`: the VMM's own log (stderr);
//! - `vsock.sock`: the guest's vsock ports, for the agent (health checks);
//! - `console/`: the guest's serial console, size-bounded
//!   (`edge-agent logs <vm>`);
//! - `disk<N>.img`: private copies of writable disks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Files of one VM.
#[derive(Debug, Clone)]
pub struct VmDir {
    path: PathBuf,
}

impl VmDir {
    /// The directory of VM `name` under `root`.
    pub fn new(root: &Path, name: &str) -> VmDir {
        VmDir {
            path: root.join(name),
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid record.
    pub fn pid_file(&self) -> PathBuf {
        self.path.join("vmm.pid")
    }

    /// The exit record the VMM writes.
    pub fn exit_file(&self) -> PathBuf {
        self.path.join("exit.json")
    }

    /// The spec fingerprint.
    pub fn spec_file(&self) -> PathBuf {
        self.path.join("spec")
    }

    /// The VMM's own log.
    pub fn vmm_log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }

    /// The socket host processes reach the guest's vsock ports through
    /// (`CONNECT <port>`; see `edge-agent vmm --vsock`).
    pub fn vsock_socket(&self) -> PathBuf {
        self.path.join(super::health::SOCKET_NAME)
    }

    /// The console log directory.
    pub fn console(&self) -> PathBuf {
        self.path.join("console")
    }
}

/// A VMM process as recorded: pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmProcess {
    /// Its pid.
    pub pid: i32,
    /// Its start time (field 22 of /proc/<pid>/stat).
    pub start_time: u64,
}

/// What a process looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running (or sleeping): the recorded process.
    Alive,
    /// Gone, or a zombie waiting to be reaped.
    Exited,
}

impl VmmProcess {
    /// Reads `/proc/<pid>/stat`: the start time, and whether it is a zombie.
    fn stat(pid: i32) -> Option<(char, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start
        // after the last ')'.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields.first()?.chars().next()?;
        let start_time = fields.get(19)?.parse().ok()?;
        Some((state, start_time))
    }

    /// The record of a process that runs now.
    pub fn of(pid: i32) -> Option<VmmProcess> {
        let (_, start_time) = VmmProcess::stat(pid)?;
        Some(VmmProcess { pid, start_time })
    }

    /// Whether the recorded process still runs (a pid reused by another
    /// process counts as exited).
    pub fn liveness(&self) -> Liveness {
        match VmmProcess::stat(self.pid) {
            Some((state, start)) if start == self.start_time && state != 'Z' => Liveness::Alive,
            _ => Liveness::Exited,
        }
    }

    /// Reads a record written by [`VmmProcess::save`].
    pub fn load(path: &Path) -> Option<VmmProcess> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start_time = words.next()?.parse().ok()?;
        Some(VmmProcess { pid, start_time })
    }

    /// Writes the record (through a temporary file and a rename, so a crash
    /// never leaves half a record).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_atomically(
            path,
            format!("{} {}\n", self.pid, self.start_time).as_bytes(),
        )
    }

    /// Sends `signal` if the recorded process still runs.
    pub fn signal(&self, signal: Signal) {
        if self.liveness() == Liveness::Alive {
            // It may exit in between; then there is nothing to signal.
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// How to start one VMM.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The agent's own executable (`edge-agent`).
    pub program: PathBuf,
    /// Arguments after `vmm`.
    pub args: Vec<String>,
}

/// Starts the VMM in its own process group (an agent restart or a signal
/// to the agent's group does not reach it), stdout/stderr to its log,
/// joining its cgroup through `cgroup_procs` (see
/// [`super::cgroup::VmCgroup::join_files`]) before it runs anything.
pub fn spawn(
    dir: &VmDir,
    launch: &Launch,
    cgroup_procs: Vec<std::fs::File>,
) -> std::io::Result<(Child, VmmProcess)> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.vmm_log())?;
    let mut command = Command::new(&launch.program);
    command
        .arg("vmm")
        .args(&launch.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    // SAFETY: the hook runs in the forked child before exec and only
    // write(2)s to files opened before the fork: async-signal-safe.
    unsafe {
        command.pre_exec(move || super::cgroup::join_self(&cgroup_procs));
    }
    let child = command.spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // Just started: /proc/<pid> exists unless it died at once.
    let process = VmmProcess::of(pid).unwrap_or(VmmProcess { pid, start_time: 0 });
    Ok((child, process))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_this_process_and_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let me = VmmProcess::of(std::process::id() as i32).unwrap();
        assert_eq!(me.liveness(), Liveness::Alive);
        let path = dir.path().join("vmm.pid");
        me.save(&path).unwrap();
        assert_eq!(VmmProcess::load(&path), Some(me));
        let reused = VmmProcess {
            start_time: me.start_time + 1,
            ..me
        };
        assert_eq!(
            reused.liveness(),
            Liveness::Exited,
            "a reused pid is not ours"
        );
    }

    #[test]
    fn an_exited_child_is_exited_before_and_after_it_is_reaped() {
        let mut child = Command::new("true").spawn().unwrap();
        let process = VmmProcess::of(child.id() as i32).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(process.liveness(), Liveness::Exited, "a zombie has exited");
        child.wait().unwrap();
        assert_eq!(process.liveness(), Liveness::Exited);
    }
}
