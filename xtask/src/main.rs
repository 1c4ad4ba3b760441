//! `cargo xtask`: the project's task runner (CI pipeline, demo, benchmarks).
//!
//! Run `cargo xtask --help` for the list of commands. Every command runs from
//! the workspace root, whatever the current directory is.

mod api;
mod bench;
mod bins;
mod cluster;
mod cross;
mod deb;
mod debian;
mod demo;
mod demo_image;
mod demo_in_box;
#[cfg(test)]
mod doc_checks;
mod fuzz;
mod hil;
mod images;
mod procs;
mod shell;
mod supply_chain;
mod test;
mod timing;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

/// Task runner for the mecvisor workspace: CI pipeline, demo and benchmarks.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    about,
    after_help = "Examples:\n  \
      cargo xtask test                 # the CI pipeline (.ci/run)\n  \
      cargo xtask demo --keep-running  # controller + agent left up to play with\n  \
      cargo xtask bench sync           # latency / RSS / size figures vs targets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the CI pipeline (what `.ci/run` runs): install missing tools,
    /// rustfmt check, clippy -D warnings, cargo-deny (RustSec advisories,
    /// licences, bans, sources), build all binaries, run all tests, the
    /// edge box lab.
    ///
    /// Every step prints a header and its duration; the run stops at the
    /// first failed step and names it. A summary of all steps ends the run.
    Test(test::TestArgs),
    /// Run a local demo: fleet-controller (embedded MQTT broker) + one
    /// edge-agent (device edge-1) on free loopback ports, apply the example
    /// manifest with fleetctl, show the device converge and say which parts
    /// this host skipped and why. With --in-box, the whole example (slices,
    /// containers, VM) runs in an emulated edge box instead.
    ///
    /// Processes are stopped at the end (also on error) unless
    /// --keep-running is given.
    Demo(demo::DemoArgs),
    /// Run benchmarks (release build) and print a table of figures against
    /// the project's targets. Without a name, runs every benchmark.
    Bench(bench::BenchArgs),
    /// Build static musl binaries (edge-agent, fleet-controller, fleetctl,
    /// and the guest agent mecvisor-guest) for aarch64 and x86_64 into
    /// target/cross/<arch>/, with a
    /// SHA256SUMS file; installs zig and cargo-zigbuild when missing.
    Cross(cross::CrossArgs),
    /// Build the Debian package of the agent (static binary, systemd unit,
    /// example config) for aarch64 (arm64) and x86_64 (amd64).
    Deb(deb::DebArgs),
    /// Build the lab's images from Debian packages (edge box and microVMM
    /// guest per architecture, busybox OCI layout), content-addressed and
    /// cached in target/images/.
    Images(images::ImagesArgs),
    /// Run the edge box lab suite: cross builds, images, the Debian package
    /// in a fresh Debian root, and the hil tests on emulated ARM64/x86_64
    /// boxes (QEMU TCG). Needs root.
    Hil(hil::HilArgs),
    /// Fuzz every parser of untrusted bytes (cargo-fuzz targets in fuzz/);
    /// installs cargo-fuzz when missing.
    Fuzz(fuzz::FuzzArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Cross(args) => cross::run(&args),
        Command::Deb(args) => deb::run(&args),
        Command::Images(args) => images::run(&args),
        Command::Hil(args) => hil::run(&args),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

/// Set by `--no-install`: every step fails on a missing tool instead of
/// installing it.
static NO_INSTALL: AtomicBool = AtomicBool::new(false);

/// Forbids installing tools for the rest of this run.
pub fn forbid_installs() {
    NO_INSTALL.store(true, Ordering::Relaxed);
}

/// Whether a missing tool may be installed.
pub fn installs_allowed() -> bool {
    !NO_INSTALL.load(Ordering::Relaxed)
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match manifest_dir.parent() {
        Some(parent) => parent.to_path_buf(),
        // xtask always lives in a subdirectory of the workspace.
        None => manifest_dir,
    }
}
