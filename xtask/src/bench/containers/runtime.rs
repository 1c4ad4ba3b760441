//! Containers of the bare OCI runtimes and of the manager, removed on
//! drop, and running helper commands quietly.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use containers::Manager;

use crate::shell;

/// A container of a bare OCI runtime, deleted (`delete --force`) on drop.
pub(super) struct RuntimeContainer<'a> {
    program: &'static str,
    root: &'a Path,
    id: &'a str,
}

impl<'a> RuntimeContainer<'a> {
    pub(super) fn new(program: &'static str, root: &'a Path, id: &'a str) -> RuntimeContainer<'a> {
        RuntimeContainer { program, root, id }
    }

    fn base(&self) -> Command {
        let mut cmd = Command::new(self.program);
        cmd.arg("--root").arg(self.root);
        cmd
    }

    /// `<program> --root R <args...> [bundle] <id>`, stdio to /dev/null
    /// except stderr (kept in `errors` for the message when it fails).
    pub(super) fn run(&self, args: &[&str], bundle: Option<&Path>, errors: &Path) -> Result<()> {
        let mut cmd = self.base();
        cmd.args(args);
        if let Some(bundle) = bundle {
            cmd.arg(bundle);
        }
        cmd.arg(self.id);
        let stderr = std::fs::File::create(errors)
            .with_context(|| format!("creating {}", errors.display()))?;
        let line = shell::describe(&cmd);
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .with_context(|| format!("could not start `{line}`"))?;
        if !status.success() {
            let message = std::fs::read_to_string(errors).unwrap_or_default();
            bail!("`{line}` failed ({status}): {}", message.trim());
        }
        Ok(())
    }

    pub(super) fn ensure_running(&self) -> Result<()> {
        let out = quiet(self.base().args(["state", self.id]))?;
        let state: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing the runtime's state")?;
        if state["status"] != "running" {
            bail!(
                "{} {}: status {} after the start returned",
                self.program,
                self.id,
                state["status"]
            );
        }
        Ok(())
    }

    pub(super) fn delete(&self) {
        let _ = self
            .base()
            .args(["delete", "--force", self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for RuntimeContainer<'_> {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A container of the manager, removed on drop.
pub(super) struct ManagedContainer<'a> {
    pub(super) manager: &'a Manager,
    pub(super) id: &'a str,
}

impl Drop for ManagedContainer<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.manager.remove(self.id) {
            eprintln!("xtask: warning: removing container {}: {err}", self.id);
        }
    }
}

/// Runs `cmd` with output captured; fails with its stderr unless it exits 0.
pub(super) fn quiet(cmd: &mut Command) -> Result<Output> {
    let line = shell::describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
