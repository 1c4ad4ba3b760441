//! `cargo xtask bench containers`: container start latency and image pull
//! throughput of mecvisor's own code paths against the real tools on this
//! host, measured in the same run on the same image.
//!
//! 1. Start latency of a busybox container running `/bin/sleep 300`, from
//!    the command until the container's process runs:
//!    - mecvisor: `containers::Manager::run` (overlayfs root over the
//!      unpacked image, bundle, monitor, `runc create` + `runc start`;
//!      returns once the monitor reports the process started), the agent's
//!      path;
//!    - the bare runtime on one bundle generated once with
//!      `containers::bundle` (root = the unpacked image): `runc create` +
//!      `runc start`, `runc run -d`, `crun run -d`;
//!    - `podman run -d` of the same image loaded from an oci-archive into
//!      throw-away storage;
//!    - and, for reference, full round trips of `/bin/true` (`podman run
//!      --rm`, `runc run` + `runc delete`).
//!
//!    The peers take turns within every round, after one unmeasured
//!    warm-up round; figures are medians.
//!    Then the same start through the real agent (release fleet-controller
//!    and edge-agent, a manifest applied with fleetctl, the image from a
//!    loopback registry): from the agent logging the new desired state to
//!    it logging the container running (see `agent`).
//! 2. Pull throughput from a loopback registry (Debian's docker-registry):
//!    busybox plus a 64 MiB layer of random bytes (gzip), pulled into a
//!    fresh content store per round (then unpacked: `ContentStore::rootfs`),
//!    and `podman pull --tls-verify=false` into fresh storage per round.
//!    `podman pull` also stores the layers unpacked, so it compares with
//!    mecvisor's pull + unpack.
//!
//! Everything runs on loopback, and everything is removed afterwards
//! (containers, podman storage, mounts, the registry, temp dirs), also on
//! error. Needs root.

mod agent;
mod agent_log;
mod cleanup;
mod podman;
mod pull;
mod report;
mod runtime;
mod start;
mod start_env;
mod start_report;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use mecvisor_e2e::oci;

use self::cleanup::{PodmanCgroups, Scratch, SystemPaths};
use self::podman::PODMAN_SYSTEM_PATHS;
use self::report::Report;
use self::tools::Tools;
use super::table::Table;
use crate::{bins, shell};

/// Name of the busybox image in podman and in the content store.
const BUSYBOX_REF: &str = "localhost/mecvisor-bench/busybox:latest";

/// Options of the containers benchmark.
#[derive(Debug, Args)]
pub struct ContainersArgs {
    /// Measured rounds per figure (after one unmeasured warm-up round).
    #[arg(long, default_value_t = 10, value_name = "N")]
    rounds: usize,
    /// Internal: measure in this process and write the figures to FILE
    /// (how a debug xtask runs the measurement in a release build).
    #[arg(long, value_name = "FILE", hide = true)]
    containers_results: Option<PathBuf>,
}

/// Runs the benchmark and returns its table. Fails when not root.
///
/// mecvisor's code runs in this process, so its figures must come from an
/// optimized build (a debug build unpacks layers ~7x slower): a debug
/// xtask (`cargo xtask` is one) builds xtask with the release profile, the
/// one edge-agent ships with, and runs the measurement there.
pub fn run(args: &ContainersArgs) -> Result<Table> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "bench containers needs root (runc, cgroups, overlay mounts, podman storage): \
             run it as root, e.g. `sudo -E cargo xtask bench containers`"
        );
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let title = format!(
        "bench containers (release build; median of {} rounds after 1 warm-up)",
        args.rounds
    );
    if let Some(file) = &args.containers_results {
        let report = measure(args.rounds)?;
        std::fs::write(file, report.to_json())
            .with_context(|| format!("writing {}", file.display()))?;
        // The parent process prints the table.
        std::process::exit(0);
    }
    build_monitor()?;
    // The agent measurement runs the shipped binaries.
    bins::build(true)?;
    let report = if cfg!(debug_assertions) {
        measure_in_release_build(args.rounds)?
    } else {
        measure(args.rounds)?
    };
    Ok(report.into_table(&title))
}

/// Builds xtask with the release profile and runs the measurement in it.
fn measure_in_release_build(rounds: usize) -> Result<Report> {
    // Unwinding instead of the profile's abort, so a panic in the child
    // still runs its cleanup (containers, mounts, registry, temp dirs).
    shell::run(
        Command::new(bins::cargo())
            .current_dir(crate::workspace_root())
            .env("CARGO_PROFILE_RELEASE_PANIC", "unwind")
            .args(["build", "--release", "--package", "xtask"]),
    )?;
    let exe = bins::target_dir().join("release").join("xtask");
    let results = tempfile::Builder::new()
        .prefix("mecvisor-bench-containers-")
        .suffix(".json")
        .tempfile()
        .context("creating a results file")?;
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "containers", "--rounds", &rounds.to_string()])
        .arg("--containers-results")
        .arg(results.path());
    let line = shell::describe(&cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    let text = std::fs::read_to_string(results.path())
        .with_context(|| format!("reading {}", results.path().display()))?;
    Report::from_json(&text)
}

/// Measures everything in this process.
fn measure(rounds: usize) -> Result<Report> {
    let monitor = monitor_path()?;
    if !Path::new(oci::BUSYBOX).is_file() {
        bail!(
            "{} is missing: the test images are built from it (apt-get install busybox-static)",
            oci::BUSYBOX
        );
    }
    let scratch = Scratch::new()?;
    let _podman_paths = SystemPaths::snapshot(PODMAN_SYSTEM_PATHS);
    let _podman_cgroups = PodmanCgroups::snapshot();
    content_store::install_crypto_provider();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    let mut report = Report::default();
    let tools = Tools::find();
    let baselines =
        match start::start_latency(rounds, &monitor, scratch.path(), &tools, &mut report) {
            Ok(baselines) => baselines,
            Err(err) => {
                report.error("container start latency", &err);
                start::Baselines::default()
            }
        };
    if let Err(err) = agent::agent_latency(rounds, scratch.path(), &baselines, &mut report) {
        report.error("start: via the agent", &err);
    }
    if let Err(err) = pull::pull_throughput(rounds, scratch.path(), &tools, &tokio, &mut report) {
        report.error("image pull throughput", &err);
    }
    Ok(report)
}

/// Builds the container monitor (release, as edge-agent ships).
fn build_monitor() -> Result<()> {
    shell::run(
        Command::new(bins::cargo())
            .current_dir(crate::workspace_root())
            .args(["build", "--release", "--package", "containers", "--bins"]),
    )
}

/// The release container monitor built by [`build_monitor`].
fn monitor_path() -> Result<PathBuf> {
    let path = bins::target_dir()
        .join("release")
        .join("mecvisor-container-monitor");
    if !path.is_file() {
        bail!("the build did not produce {}", path.display());
    }
    Ok(path)
}
