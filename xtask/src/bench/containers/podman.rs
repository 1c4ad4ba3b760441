//! podman with throw-away storage, and `podman run` of the busybox image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cleanup::remove_tree;
use super::runtime::quiet;
use super::start::SLEEP;
use super::BUSYBOX_REF;

/// Paths podman 4 writes outside its `--root`/`--runroot`/`--tmpdir`
/// (blob info cache, netavark's run dir, the shm lock file); removed at
/// the end when the benchmark created them.
pub(super) const PODMAN_SYSTEM_PATHS: &[&str] = &[
    "/var/lib/containers",
    "/run/containers",
    "/run/libpod",
    "/dev/shm/libpod_lock",
];

/// podman with throw-away storage and state under one directory; every
/// container and the directory are removed on drop.
pub(super) struct Podman {
    /// Storage (`--root`) and containers.conf.
    dir: PathBuf,
    /// `--runroot` and `--tmpdir` (on /run: podman refuses a runroot path
    /// longer than 50 characters, conmon's socket paths must fit).
    run_dir: PathBuf,
    /// `--ulimit` values podman can set here.
    nofile: (u64, u64),
    nproc: u64,
}

impl Podman {
    /// Podman with storage in `dir`; `tag` names its short run directory.
    pub(super) fn new(dir: &Path, tag: &str) -> Result<Podman> {
        let run_dir = PathBuf::from(format!("/run/mvbench{}-{tag}", std::process::id()));
        for d in [dir, run_dir.as_path()] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // File locks in its tmpdir instead of the host-wide /dev/shm/libpod_lock.
        std::fs::write(
            dir.join("containers.conf"),
            "# written by cargo xtask bench containers\n[engine]\nlock_type = \"file\"\n",
        )
        .context("writing podman's containers.conf")?;
        let nofile = own_limit("Max open files").unwrap_or((1024, 1024));
        // podman caps its own RLIMIT_NPROC at kernel.pid_max; asking for
        // more than it has fails without CAP_SYS_RESOURCE.
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(32768);
        let nproc = own_limit("Max processes").map_or(pid_max, |(_, hard)| hard.min(pid_max));
        Ok(Podman {
            dir: dir.to_path_buf(),
            run_dir,
            nofile,
            nproc,
        })
    }

    pub(super) fn global_flags(&self) -> Vec<String> {
        let path = |dir: &Path, name: &str| dir.join(name).display().to_string();
        vec![
            "--root".into(),
            path(&self.dir, "root"),
            "--runroot".into(),
            path(&self.run_dir, "runroot"),
            "--tmpdir".into(),
            path(&self.run_dir, "tmp"),
            "--storage-driver".into(),
            "overlay".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--runtime".into(),
            "runc".into(),
            "--events-backend".into(),
            "none".into(),
        ]
    }

    pub(super) fn run_flags(&self) -> Vec<String> {
        vec![
            "--network".into(),
            "none".into(),
            "--ulimit".into(),
            format!("nofile={}:{}", self.nofile.0, self.nofile.1),
            "--ulimit".into(),
            format!("nproc={}:{}", self.nproc, self.nproc),
        ]
    }

    pub(super) fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args(self.global_flags());
        cmd
    }

    /// `podman load` of an archive.
    pub(super) fn load(&self, archive: &Path) -> Result<()> {
        let out = podman_output(self.command().arg("load").arg("--input").arg(archive))?;
        if !out.contains(BUSYBOX_REF) {
            bail!(
                "podman load did not name the image {BUSYBOX_REF}: {}",
                out.trim()
            );
        }
        Ok(())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["rm", "--all", "--force", "--time", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for dir in [&self.run_dir, &self.dir] {
            if let Err(err) = remove_tree(dir) {
                eprintln!("xtask: warning: podman storage: {err:#}");
            }
        }
    }
}

/// `podman run -d` of `/bin/sleep 300` (`detached`), or `podman run --rm`
/// of `/bin/true` to its exit and removal; returns how long the command
/// took and removes the container (also when anything fails).
pub(super) fn start_once(podman: &Podman, id: &str, detached: bool) -> Result<Duration> {
    let _remove = PodmanContainer { podman, name: id };
    let mut cmd = podman.command();
    cmd.arg("run");
    if detached {
        cmd.arg("-d");
    } else {
        cmd.arg("--rm");
    }
    cmd.args(["--name", id]).args(podman.run_flags());
    cmd.arg(BUSYBOX_REF);
    if detached {
        cmd.args(SLEEP);
    } else {
        cmd.arg("/bin/true");
    }
    let started = Instant::now();
    let out = quiet(&mut cmd)?;
    let took = started.elapsed();
    if detached {
        let running = podman_output(podman.command().args([
            "inspect",
            "--format",
            "{{.State.Running}}",
            id,
        ]))?;
        if running.trim() != "true" {
            bail!(
                "podman run -d returned ({}) but the container does not run",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    }
    Ok(took)
}

/// A podman container removed on drop.
struct PodmanContainer<'a> {
    podman: &'a Podman,
    name: &'a str,
}

impl Drop for PodmanContainer<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .command()
            .args(["rm", "--force", "--ignore", "--time", "0", self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Soft and hard value of a line of /proc/self/limits.
fn own_limit(name: &str) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let mut words = line[name.len()..].split_whitespace();
    let soft = words.next()?.parse().ok()?;
    let hard = words.next()?.parse().ok()?;
    Some((soft, hard))
}

fn podman_output(cmd: &mut Command) -> Result<String> {
    let out = quiet(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
