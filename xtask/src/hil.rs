//! `cargo xtask hil`: the edge box lab's suite. Builds what the lab needs
//! (static cross builds, images, host binaries), checks the warm image
//! rebuild is all cache hits, verifies the Debian package in a fresh Debian
//! root, then runs the `mecvisor-hil` tests (emulated boxes) with missing
//! prerequisites counted as failures rather than skips.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::bins::cargo;
use crate::cross::Arch;
use crate::images::{self, ImagesArgs};
use crate::test::{run_cargo_tests, TestCounts};
use crate::timing::human;
use crate::{deb, shell, workspace_root};

/// Host packages the lab runs on: the emulators, mkfs.ext4 for state disks,
/// iproute2 for the lab namespace, qemu-user for the cross smoke runs,
/// debootstrap + systemd for the package check.
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "qemu-user-static",
    "e2fsprogs",
    "iproute2",
    "debootstrap",
    "systemd",
    "tcpdump",
];

/// Options of `cargo xtask hil`.
#[derive(Debug, Args)]
pub struct HilArgs {
    /// Run only the hil tests whose name contains this (cargo test filter);
    /// the package check is skipped then.
    filter: Option<String>,
    /// Keep each lab's directory (console logs, disks, controller log).
    #[arg(long)]
    keep: bool,
    /// Do not install missing host tools; fail naming them instead.
    #[arg(long)]
    no_install: bool,
}

/// Runs the lab suite.
pub fn run(args: &HilArgs) -> Result<()> {
    if args.no_install {
        crate::forbid_installs();
    }
    let mut counts = TestCounts::default();
    let result = suite(args.filter.as_deref(), args.keep, &mut counts);
    println!(
        "hil tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    result
}

/// The suite, adding the hil test results to `counts` (also used by
/// `cargo xtask test`).
pub fn suite(filter: Option<&str>, keep: bool, counts: &mut TestCounts) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the edge box lab needs root (network namespaces, taps, debootstrap); \
             `cargo xtask test --skip lab` runs everything else"
        );
    }
    crate::debian::ensure_packages(HOST_PACKAGES, false)?;
    let started = Instant::now();
    images::build(&ImagesArgs::default())?;
    println!("lab: images ready in {}", human(started.elapsed()));

    // Must-show 5: a rebuild with nothing changed is all cache hits.
    let warm = Instant::now();
    let artifacts = images::build(&ImagesArgs::default())?;
    let rebuilt: Vec<&str> = artifacts
        .iter()
        .filter(|a| !a.cached)
        .map(|a| a.name)
        .collect();
    if !rebuilt.is_empty() {
        bail!("warm image rebuild rebuilt {rebuilt:?}: the cache did not hold");
    }
    println!(
        "lab: warm image rebuild: {} artifacts, all cached, in {}",
        artifacts.len(),
        human(warm.elapsed())
    );

    if filter.is_none() {
        // Must-show 4: the agent's package on a fresh Debian root.
        let deb = deb::package(Arch::X86_64)?;
        deb::verify_install(&deb)?;
    }

    shell::run(Command::new(cargo()).current_dir(workspace_root()).args([
        "build",
        "--bins",
        "-p",
        "edge-agent",
        "-p",
        "fleet-controller",
    ]))?;
    for arch in [Arch::Aarch64, Arch::X86_64] {
        let payload = box_test_payload(arch)?;
        images::tools::unpack_tool(arch, "iperf3", &["iperf3"], &payload)?;
    }
    let mut args = vec!["test", "-p", "mecvisor-hil", "--no-fail-fast"];
    if let Some(filter) = filter {
        args.push(filter);
    }
    let figures = crate::bins::target_dir().join("hil-figures.txt");
    // A fresh file per run: only this run's figures are printed.
    let _ = std::fs::remove_file(&figures);
    let figures_path = figures.display().to_string();
    let mut envs = vec![
        ("MECVISOR_HIL_REQUIRED", "1"),
        ("MECVISOR_HIL_FIGURES", figures_path.as_str()),
    ];
    if keep {
        envs.push(("MECVISOR_HIL_KEEP", "1"));
    }
    let result = run_cargo_tests(&args, &envs, counts);
    if let Ok(text) = std::fs::read_to_string(&figures) {
        println!("lab: figures measured by the hil tests:");
        for line in text.lines() {
            println!("  {line}");
        }
    }
    result
}

/// Test binaries that run inside the emulated boxes (where the kernel has
/// what this host lacks), built static for `arch`.
/// Keep in step with `hil-tests/tests/in_box_tests.rs`.
const BOX_TESTS: &[(&str, &str)] = &[
    ("network-slicing", "netns_apply"),
    ("network-slicing", "shaping"),
    ("network-slicing", "isolation"),
    ("network-slicing", "shaping_accuracy"),
];

/// Builds one test or bench target (`kind` is `--test` or `--bench`) of
/// `package` as a static binary for `arch` with cargo zigbuild; returns the
/// executable's path.
pub fn static_target(
    arch: Arch,
    package: &str,
    kind: &str,
    name: &str,
    release: bool,
) -> Result<PathBuf> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root())
        .args([
            "zigbuild",
            "--target",
            arch.triple(),
            "-p",
            package,
            kind,
            name,
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit());
    if release {
        cmd.arg("--release");
    }
    println!("$ {}", shell::describe(&cmd));
    let out = shell::output(&mut cmd).map_err(|_| {
        anyhow::anyhow!(
            "building {package}'s {name} for {} failed (compiler output above)",
            arch.name()
        )
    })?;
    let executable = out
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["target"]["name"] == *name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo built no {name} binary for {}", arch.name()))?;
    crate::cross::check_static_elf(&executable, arch)?;
    Ok(executable)
}

/// Builds the in-box test binaries for `arch` into
/// `target/hil-payload/<arch>/` (what the hil tests put on a box's payload
/// disk); returns that directory.
pub fn box_test_payload(arch: Arch) -> Result<PathBuf> {
    let dir = crate::bins::target_dir()
        .join("hil-payload")
        .join(arch.name());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (package, test) in BOX_TESTS {
        let executable = static_target(arch, package, "--test", test, false)?;
        std::fs::copy(&executable, dir.join(test))
            .with_context(|| format!("copying {}", executable.display()))?;
    }
    Ok(dir)
}
