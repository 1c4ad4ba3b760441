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
const TARGETS: [&str; 7] = [
    "desired_envelope",
    "uplink_messages",
    "layer_unpack",
    "kernel_loader",
    "virtio_blk",
    "virtio_net_tx",
    "virtio_vsock_tx",
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
        "virtio_blk" => vec![
            ("seed-read", seed_virtio_blk(BLK_T_IN)),
            ("seed-write", seed_virtio_blk(BLK_T_OUT)),
            ("seed-flush", seed_virtio_blk(BLK_T_FLUSH)),
        ],
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

/// virtio-blk request types (VIRTIO 1.1, 5.2.6).
const BLK_T_IN: u32 = 0;
const BLK_T_OUT: u32 = 1;
const BLK_T_FLUSH: u32 = 4;

/// One well-formed request of `kind` in the virtio_blk target's input
/// format (see fuzz/fuzz_targets/virtio_blk.rs): a queue of 4, the header
/// at 0x3000, one sector of data at 0x3100 (none for a flush), the status
/// byte at 0x3200, and the available ring naming descriptor 0.
fn seed_virtio_blk(kind: u32) -> Vec<u8> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let descriptor = |address: u64, len: u32, flags: u16, next: u16| {
        let mut d = address.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        d
    };
    let mut input = vec![2, 0, 0]; // queue size 2^2, writable image, no register writes
    let table = match kind {
        BLK_T_FLUSH => [
            descriptor(0x3000, 16, NEXT, 1),
            descriptor(0x3200, 1, WRITE, 0),
            descriptor(0, 0, 0, 0),
            descriptor(0, 0, 0, 0),
        ],
        _ => [
            descriptor(0x3000, 16, NEXT, 1),
            descriptor(
                0x3100,
                512,
                NEXT | if kind == BLK_T_IN { WRITE } else { 0 },
                2,
            ),
            descriptor(0x3200, 1, WRITE, 0),
            descriptor(0, 0, 0, 0),
        ],
    };
    input.extend(table.concat());
    // Available ring: flags, idx = 1, ring = [0, 0, 0, 0].
    input.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut memory = vec![0u8; 0x201];
    memory[..4].copy_from_slice(&kind.to_le_bytes());
    memory[8..16].copy_from_slice(&1u64.to_le_bytes()); // sector 1
    memory[0x100..0x200].fill(0x5a);
    input.extend(memory);
    input
}
