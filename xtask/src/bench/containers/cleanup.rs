//! Leaving nothing behind: the benchmark's temp dir (unmounting what is
//! mounted under it), host paths and cgroups podman creates.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

/// The benchmark's temp dir (under /var/tmp: overlayfs needs a real file
/// system); anything still mounted under it is unmounted before removal.
pub(super) struct Scratch {
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub(super) fn new() -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix("mecvisor-bench-containers-")
            .tempdir_in("/var/tmp")
            .context("creating a temporary directory in /var/tmp")?;
        Ok(Scratch { dir: Some(dir) })
    }

    pub(super) fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            unmount_under(dir.path());
            if let Err(err) = dir.close() {
                eprintln!("xtask: warning: removing the benchmark's temp dir: {err}");
            }
        }
    }
}

/// Removes a directory tree after unmounting anything under it.
pub(super) fn remove_tree(dir: &Path) -> Result<()> {
    unmount_under(dir);
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow!(err).context(format!("removing {}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// Lazily unmounts every mount point at or under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        if let Err(err) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("xtask: warning: unmounting {}: {err}", point.display());
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let code = digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(code).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Host paths a peer may create outside the benchmark's directories:
/// whichever did not exist before are removed on drop.
pub(super) struct SystemPaths {
    absent: Vec<&'static str>,
}

impl SystemPaths {
    pub(super) fn snapshot(paths: &[&'static str]) -> SystemPaths {
        SystemPaths {
            absent: paths
                .iter()
                .copied()
                .filter(|p| std::fs::symlink_metadata(p).is_err())
                .collect(),
        }
    }
}

impl Drop for SystemPaths {
    fn drop(&mut self) {
        for path in &self.absent {
            let path = Path::new(path);
            let result = match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
                Ok(_) => std::fs::remove_file(path),
                Err(_) => Ok(()),
            };
            if let Err(err) = result {
                eprintln!("xtask: warning: removing {}: {err}", path.display());
            }
        }
    }
}

/// Name of the cgroup podman (cgroupfs manager) puts its containers and
/// conmon under.
const PODMAN_CGROUP_PARENT: &str = "libpod_parent";

/// podman's parent cgroup in every hierarchy where it did not exist
/// before; removed (with the empty cgroups left in it) on drop.
pub(super) struct PodmanCgroups {
    absent: Vec<PathBuf>,
}

impl PodmanCgroups {
    pub(super) fn snapshot() -> PodmanCgroups {
        let root = Path::new("/sys/fs/cgroup");
        let hierarchies = std::fs::read_dir(root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        PodmanCgroups {
            absent: std::iter::once(root.to_path_buf())
                .chain(hierarchies)
                .map(|h| h.join(PODMAN_CGROUP_PARENT))
                .filter(|p| !p.exists())
                .collect(),
        }
    }
}

impl Drop for PodmanCgroups {
    fn drop(&mut self) {
        for cgroup in self.absent.iter().filter(|p| p.exists()) {
            if let Err(err) = remove_cgroup(cgroup) {
                eprintln!(
                    "xtask: warning: removing cgroup {}: {err}",
                    cgroup.display()
                );
            }
        }
    }
}

/// Removes a cgroup directory and its child cgroups (rmdir, deepest
/// first; a cgroup that still has processes stays and is reported).
fn remove_cgroup(cgroup: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(cgroup)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_cgroup(&path)?;
        }
    }
    std::fs::remove_dir(cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount_path("/var/tmp/a\\040b"), "/var/tmp/a b");
        assert_eq!(unescape_mount_path("/plain/path"), "/plain/path");
        assert_eq!(unescape_mount_path("/end\\"), "/end\\");
    }
}
