//! `cargo xtask fuzz`: runs every cargo-fuzz target in `fuzz/` for a while.
//!
//! cargo-fuzz needs nightly-only compiler flags (sanitizers); this machine has
//! only the stable toolchain, so the run sets `RUSTC_BOOTSTRAP=1`, which lets
//! stable rustc accept them.

use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::bins::cargo;
use crate::{shell, workspace_root};

/// Every fuzz target, one per parser of untrusted bytes.
const TARGETS: [&str; 3] = ["desired_envelope", "uplink_messages", "layer_unpack"];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    seconds: u64,
    /// Fuzz only this target.
    #[arg(long, value_parser = TARGETS)]
    target: Option<String>,
}

/// Installs cargo-fuzz when missing, then fuzzes each target in turn.
pub fn run(args: &FuzzArgs) -> Result<()> {
    if !shell::succeeds(Command::new(cargo()).args(["fuzz", "--version"])) {
        println!("cargo-fuzz is missing; installing it (about 2 minutes)");
        shell::run(Command::new(cargo()).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let dir = workspace_root().join("fuzz");
    for target in TARGETS
        .iter()
        .filter(|t| args.target.as_deref().is_none_or(|only| only == **t))
    {
        println!("\n==> fuzzing {target} for {} s", args.seconds);
        shell::run(
            Command::new(cargo())
                .current_dir(&dir)
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={}", args.seconds)),
        )?;
    }
    println!("\nno crash found; findings would be in fuzz/artifacts/");
    Ok(())
}
