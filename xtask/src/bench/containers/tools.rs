//! The peers (runc, crun, podman, skopeo) found on this host.

use std::process::{Command, Stdio};

/// The peers found on this host; `Err` holds why one is missing.
pub(super) struct Tools {
    pub(super) runc: Result<String, String>,
    pub(super) crun: Result<String, String>,
    pub(super) podman: Result<String, String>,
    pub(super) skopeo: Result<String, String>,
}

impl Tools {
    pub(super) fn find() -> Tools {
        Tools {
            runc: version("runc", "runc"),
            crun: version("crun", "crun"),
            podman: version("podman", "podman"),
            skopeo: version("skopeo", "skopeo"),
        }
    }
}

/// First line of `<program> --version`, or why it cannot be run.
fn version(program: &str, package: &str) -> Result<String, String> {
    match Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or(program)
            .trim()
            .to_string()),
        Ok(out) => Err(format!(
            "`{program} --version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(err) => Err(format!(
            "{program} is not installed ({err}; apt-get install {package})"
        )),
    }
}
