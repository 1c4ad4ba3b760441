//! Drives an OCI runtime (runc, crun, youki) through its command line:
//! `create`, `start`, `state`, `kill`, `delete`. All three take the same
//! arguments for these; each gets its own state directory (`--root`) so
//! mecvisor's containers never mix with anything else on the box.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;

/// Which OCI runtime, and where its state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRuntime {
    /// The executable (`runc`, `crun`, `youki`, or a path).
    pub program: PathBuf,
    /// Its state directory (`--root`), on tmpfs so a reboot clears it.
    pub root: PathBuf,
}

/// Why a runtime command failed.
#[derive(Debug, thiserror::Error)]
pub enum OciRuntimeError {
    /// The runtime could not be started at all.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The executable.
        program: String,
        /// The error.
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{program} {command} {id}: {message}")]
    Failed {
        /// The executable.
        program: String,
        /// `create`, `kill`, ...
        command: &'static str,
        /// Container id.
        id: String,
        /// What it printed.
        message: String,
    },
    /// `state` printed something unexpected.
    #[error("{program} state {id}: unreadable output: {source}")]
    State {
        /// The executable.
        program: String,
        /// Container id.
        id: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// Status of a container as its runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, process not started.
    Creating,
    /// Created, waiting for `start`.
    Created,
    /// Running.
    Running,
    /// Paused (frozen).
    Paused,
    /// Its process exited.
    Stopped,
}

/// The runtime's `state` output (the OCI state).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct State {
    /// Container id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// Host PID of the container's init process (0 once stopped).
    #[serde(default)]
    pub pid: i32,
    /// Bundle directory.
    #[serde(default)]
    pub bundle: PathBuf,
}

impl OciRuntime {
    /// A runtime by program name, with state under `root`.
    pub fn new(program: impl Into<PathBuf>, root: impl Into<PathBuf>) -> OciRuntime {
        OciRuntime {
            program: program.into(),
            root: root.into(),
        }
    }

    /// Name for messages.
    pub fn name(&self) -> String {
        self.program.display().to_string()
    }

    /// The runtime's version line, to check it is installed.
    pub fn version(&self) -> Result<String, OciRuntimeError> {
        let out = self.run(
            "--version",
            "",
            Command::new(&self.program).arg("--version"),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }

    /// `create`: the command that makes a container; its stdio is given
    /// by the caller (the monitor passes pipes, which the container's
    /// process inherits). Returned unstarted so the caller can spawn it.
    pub fn create_command(&self, id: &str, bundle: &Path, pid_file: &Path, log: &Path) -> Command {
        let mut command = self.base();
        command
            .arg("--log")
            .arg(log)
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id);
        command
    }

    /// `start`: runs the created container's process.
    pub fn start(&self, id: &str) -> Result<(), OciRuntimeError> {
        self.run("start", id, self.base().args(["start", id]))
            .map(drop)
    }

    /// `state`; `None` when the runtime does not know the container.
    pub fn state(&self, id: &str) -> Result<Option<State>, OciRuntimeError> {
        let out = self
            .base()
            .args(["state", id])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr);
            if !self.knows(id) || message.contains("does not exist") {
                return Ok(None);
            }
            return Err(self.failed("state", id, &out));
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|source| OciRuntimeError::State {
                program: self.name(),
                id: id.to_string(),
                source,
            })
    }

    /// `kill --all`: sends `signal` (e.g. `TERM`, `KILL`) to every process.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), OciRuntimeError> {
        self.run("kill", id, self.base().args(["kill", "--all", id, signal]))
            .map(drop)
    }

    /// `delete --force`: removes the container (killing it if needed);
    /// succeeding when it is already gone.
    pub fn delete(&self, id: &str) -> Result<(), OciRuntimeError> {
        match self.run("delete", id, self.base().args(["delete", "--force", id])) {
            Ok(_) => Ok(()),
            Err(OciRuntimeError::Failed { message, .. })
                if !self.knows(id) || message.contains("does not exist") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `exec`: runs a command in the running container, returning its
    /// exit status and output (health checks).
    pub fn exec(&self, id: &str, args: &[String]) -> Result<Output, OciRuntimeError> {
        self.base()
            .args(["exec", id])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))
    }

    /// Whether the runtime has state for container `id`: runc, crun and
    /// youki keep one directory per container under `--root` (their
    /// "unknown container" messages differ; crun's names the missing file).
    fn knows(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }

    fn base(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.arg("--root").arg(&self.root);
        command
    }

    fn run(
        &self,
        command: &'static str,
        id: &str,
        cmd: &mut Command,
    ) -> Result<Output, OciRuntimeError> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failed(command, id, &out))
        }
    }

    fn spawn_error(&self, source: std::io::Error) -> OciRuntimeError {
        OciRuntimeError::Spawn {
            program: self.name(),
            source,
        }
    }

    fn failed(&self, command: &'static str, id: &str, out: &Output) -> OciRuntimeError {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if message.is_empty() {
            message = format!("exited with {}", out.status);
        }
        OciRuntimeError::Failed {
            program: self.name(),
            command,
            id: id.to_string(),
            message,
        }
    }
}
