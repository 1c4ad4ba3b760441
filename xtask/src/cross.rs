//! `cargo xtask cross`: static musl binaries of edge-agent, fleet-controller
//! and fleetctl for aarch64 and x86_64 edge boxes, and of the guest agent
//! `mecvisor-guest` for the microVMs' guest image.
//!
//! C dependencies (ring, bundled SQLite) are compiled with zig as the C
//! compiler and linker through cargo-zigbuild; both come from the package
//! registries (PyPI `ziglang`, crates.io `cargo-zigbuild`) and are installed
//! here when missing. See cross/README.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::bins::{cargo, target_dir};
use crate::shell;

/// The edge box architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    /// 64-bit ARM (aarch64-unknown-linux-musl).
    Aarch64,
    /// 64-bit x86 (x86_64-unknown-linux-musl).
    #[value(name = "x86_64")]
    X86_64,
}

impl Arch {
    /// Rust target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
            Arch::X86_64 => "x86_64-unknown-linux-musl",
        }
    }

    /// Short name, as in `target/cross/<name>/`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64",
            Arch::X86_64 => "x86_64",
        }
    }

    /// Debian's name for the architecture (`arm64`, `amd64`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Aarch64 => "arm64",
            Arch::X86_64 => "amd64",
        }
    }

    /// ELF `e_machine` of the architecture.
    fn elf_machine(self) -> u16 {
        match self {
            Arch::Aarch64 => 183,
            Arch::X86_64 => 62,
        }
    }
}

/// The binaries shipped to and around edge boxes.
const BINARIES: [&str; 3] = ["edge-agent", "fleet-controller", "fleetctl"];

/// The guest agent, shipped inside the guest image. Built by a cargo run of
/// its own (`-p mecvisor-guest` alone), so its bytes never depend on which
/// other packages were built with it (feature unification): the guest
/// image's cache key stays put.
pub const GUEST_BINARY: &str = "mecvisor-guest";

/// Options of `cargo xtask cross`.
#[derive(Debug, Args)]
pub struct CrossArgs {
    /// Architecture to build for; both when omitted.
    #[arg(long, value_enum)]
    target: Option<Arch>,
}

/// Builds, checks and collects the static binaries; prints where they are.
pub fn run(args: &CrossArgs) -> Result<()> {
    let arches = match args.target {
        Some(arch) => vec![arch],
        None => vec![Arch::Aarch64, Arch::X86_64],
    };
    for arch in arches {
        let dir = build_checked(arch)?;
        println!("{}: {}", arch.name(), dir.display());
    }
    Ok(())
}

/// Installs what is missing, builds one architecture, checks and smoke-runs
/// its binaries (the guest agent among them); returns their directory.
pub fn build_checked(arch: Arch) -> Result<PathBuf> {
    ensure_toolchain(&[arch])?;
    let dir = build(arch)?;
    build_guest(arch)?;
    smoke(arch, &dir, &BINARIES)?;
    smoke(arch, &dir, &[GUEST_BINARY])?;
    write_sums(&dir)?;
    Ok(dir)
}

/// Like [`build_checked`], for the guest agent only (what the guest image
/// needs); returns the directory holding [`GUEST_BINARY`].
pub fn build_guest_checked(arch: Arch) -> Result<PathBuf> {
    ensure_toolchain(&[arch])?;
    let dir = build_guest(arch)?;
    smoke(arch, &dir, &[GUEST_BINARY])?;
    Ok(dir)
}

/// Runs every built binary's `--version`: natively on a matching host, under
/// qemu-user (Debian `qemu-user-static`) otherwise, or says why it cannot.
fn smoke(arch: Arch, dir: &Path, names: &[&str]) -> Result<()> {
    let native = std::env::consts::ARCH == arch.name();
    let emulator = format!("/usr/bin/qemu-{}-static", arch.name());
    if !native && !Path::new(&emulator).exists() {
        println!(
            "smoke run skipped for {}: {emulator} is missing (apt-get install qemu-user-static)",
            arch.name()
        );
        return Ok(());
    }
    for &name in names {
        let binary = dir.join(name);
        let mut cmd = if native {
            Command::new(&binary)
        } else {
            let mut cmd = Command::new(&emulator);
            cmd.arg(&binary);
            cmd
        };
        let out = shell::output(cmd.arg("--version"))?;
        if !out.starts_with(name) {
            bail!("{} --version printed {out:?}", binary.display());
        }
        print!(
            "{} ({}): {out}",
            name,
            if native { "native" } else { "qemu-user" }
        );
    }
    Ok(())
}

/// Output directory of one architecture: `target/cross/<arch>/`.
pub fn out_dir(arch: Arch) -> PathBuf {
    target_dir().join("cross").join(arch.name())
}

/// Installs the rustup target, zig and cargo-zigbuild when missing.
fn ensure_toolchain(arches: &[Arch]) -> Result<()> {
    let installed = shell::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let may_install = |what: &str| -> Result<()> {
        if crate::installs_allowed() {
            Ok(())
        } else {
            bail!("{what} is missing (--no-install)")
        }
    };
    for arch in arches {
        if !installed.lines().any(|l| l.trim() == arch.triple()) {
            may_install(&format!("rustup target {}", arch.triple()))?;
            shell::run(Command::new("rustup").args(["target", "add", arch.triple()]))?;
        }
    }
    if !shell::succeeds(Command::new("python3").args(["-m", "ziglang", "version"])) {
        may_install("zig (PyPI ziglang)")?;
        println!("zig is missing; installing it from PyPI (ziglang)");
        shell::run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "ziglang"]))?;
    }
    if !shell::succeeds(Command::new(cargo()).args(["zigbuild", "--help"])) {
        may_install("cargo-zigbuild")?;
        println!("cargo-zigbuild is missing; installing it (about 2 minutes)");
        shell::run(Command::new(cargo()).args(["install", "cargo-zigbuild", "--locked"]))?;
    }
    Ok(())
}

/// Builds the edge box binaries of one architecture into [`out_dir`].
fn build(arch: Arch) -> Result<PathBuf> {
    println!("\n==> cross build for {}", arch.triple());
    zigbuild(arch, &["edge-agent", "fleet-controller"], &BINARIES)
}

/// Builds the guest agent of one architecture into [`out_dir`].
fn build_guest(arch: Arch) -> Result<PathBuf> {
    println!("\n==> cross build of {GUEST_BINARY} for {}", arch.triple());
    zigbuild(arch, &[GUEST_BINARY], &[GUEST_BINARY])
}

/// Runs one release build of `packages`, checks each of `binaries` is a
/// static ELF of the right machine and copies them to [`out_dir`].
fn zigbuild(arch: Arch, packages: &[&str], binaries: &[&str]) -> Result<PathBuf> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(crate::workspace_root()).args([
        "zigbuild",
        "--release",
        "--target",
        arch.triple(),
    ]);
    for package in packages {
        cmd.args(["-p", package]);
    }
    shell::run(&mut cmd)?;
    let built = target_dir().join(arch.triple()).join("release");
    let out = out_dir(arch);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for &name in binaries {
        let from = built.join(name);
        check_static_elf(&from, arch)?;
        std::fs::copy(&from, out.join(name))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(out)
}

/// Writes `SHA256SUMS` of every binary in `dir`.
fn write_sums(dir: &Path) -> Result<()> {
    let sums = shell::output(
        Command::new("sha256sum")
            .current_dir(dir)
            .args(BINARIES)
            .arg(GUEST_BINARY),
    )?;
    std::fs::write(dir.join("SHA256SUMS"), sums)
        .with_context(|| format!("writing {}/SHA256SUMS", dir.display()))
}

/// Checks an ELF file is for `arch` and has no program interpreter (that is,
/// is statically linked and runs on a box without a libc).
pub fn check_static_elf(path: &Path, arch: Arch) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let info =
        elf_info(&bytes).with_context(|| format!("{} is not a 64-bit ELF", path.display()))?;
    if info.machine != arch.elf_machine() {
        bail!(
            "{} is for ELF machine {}, not {}",
            path.display(),
            info.machine,
            arch.name()
        );
    }
    if info.has_interpreter {
        bail!(
            "{} is dynamically linked (it has a PT_INTERP header)",
            path.display()
        );
    }
    Ok(())
}

/// What [`elf_info`] reads from an ELF header.
#[derive(Debug, PartialEq, Eq)]
struct ElfInfo {
    machine: u16,
    has_interpreter: bool,
}

/// Reads the machine and whether a PT_INTERP program header exists from a
/// little-endian ELF64 image; `None` when it is not one (or is truncated).
fn elf_info(bytes: &[u8]) -> Option<ElfInfo> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    // Magic, 64-bit class, little-endian.
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let machine = u16_at(18)?;
    let phoff = usize::try_from(u64_at(32)?).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    const PT_INTERP: u32 = 3;
    let mut has_interpreter = false;
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        has_interpreter |= u32_at(at)? == PT_INTERP;
    }
    Some(ElfInfo {
        machine,
        has_interpreter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_test_binary() {
        // The test binary itself: an x86_64 or aarch64 glibc build, so it is
        // dynamically linked. A real file, not a fixture.
        let exe = std::fs::read(std::env::current_exe().expect("exe")).expect("read exe");
        let info = elf_info(&exe).expect("ELF");
        let expected = if cfg!(target_arch = "x86_64") {
            62
        } else {
            183
        };
        assert_eq!(info.machine, expected);
        assert!(info.has_interpreter, "a glibc test binary has PT_INTERP");
    }

    #[test]
    fn refuses_what_is_not_elf64() {
        assert_eq!(elf_info(b""), None);
        assert_eq!(elf_info(b"\x7fELF\x01\x01rest"), None);
        let mut truncated = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        truncated.truncate(40);
        assert_eq!(elf_info(&truncated), None);
    }
}
