//! Building and locating the project's binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::{shell, workspace_root};

/// Paths of the three product binaries of one build profile.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `edge-agent`.
    pub agent: PathBuf,
    /// `fleet-controller`.
    pub controller: PathBuf,
    /// `fleetctl`.
    pub fleetctl: PathBuf,
}

/// Target directory of the workspace (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Builds edge-agent, fleet-controller and fleetctl and returns their paths.
pub fn build(release: bool) -> Result<Bins> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root()).args([
        "build",
        "--bins",
        "--package",
        "edge-agent",
        "--package",
        "fleet-controller",
    ]);
    if release {
        cmd.arg("--release");
    }
    shell::run(&mut cmd)?;
    let dir = target_dir().join(if release { "release" } else { "debug" });
    let bins = Bins {
        agent: dir.join("edge-agent"),
        controller: dir.join("fleet-controller"),
        fleetctl: dir.join("fleetctl"),
    };
    for path in [&bins.agent, &bins.controller, &bins.fleetctl] {
        ensure_exists(path)?;
    }
    Ok(bins)
}

fn ensure_exists(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("the build did not produce {}", path.display());
    }
    Ok(())
}

/// The cargo binary that runs xtask (so the same toolchain is used).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}
