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
const TARGETS: [&str; 4] = [
    "desired_envelope",
    "uplink_messages",
    "layer_unpack",
    "kernel_loader",
];

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
        write_seeds(&dir, target)?;
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

/// Seeds for targets whose inputs have magic numbers libFuzzer would take
/// long to find: `fuzz/corpus/<target>/seed-*` (kept when present).
fn write_seeds(fuzz_dir: &std::path::Path, target: &str) -> Result<()> {
    let seeds: Vec<(&str, Vec<u8>)> = match target {
        "kernel_loader" => vec![("seed-elf", seed_elf()), ("seed-bzimage", seed_bzimage())],
        _ => return Ok(()),
    };
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    for (name, bytes) in seeds {
        let path = corpus.join(name);
        if !path.exists() {
            std::fs::write(&path, bytes)?;
        }
    }
    Ok(())
}

/// An ELF64 x86-64 executable with one PT_LOAD segment (a `hlt`) at 2 MiB.
fn seed_elf() -> Vec<u8> {
    let address: u64 = 0x20_0000;
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    elf.extend_from_slice(&2u16.to_le_bytes());
    elf.extend_from_slice(&0x3eu16.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&address.to_le_bytes());
    elf.extend_from_slice(&64u64.to_le_bytes());
    elf.extend_from_slice(&[0; 12]);
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&56u16.to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes());
    elf.extend_from_slice(&[0; 6]);
    for field in [1u32, 5] {
        elf.extend_from_slice(&field.to_le_bytes());
    }
    for field in [120u64, address, address, 1, 1, 8] {
        elf.extend_from_slice(&field.to_le_bytes());
    }
    elf.push(0xf4);
    elf
}

/// The start of a bzImage: one setup sector with the boot flag and the
/// "HdrS" setup header (protocol 2.15), then a little protected-mode code.
fn seed_bzimage() -> Vec<u8> {
    let mut image = vec![0u8; 2 * 512 + 64];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image
}
