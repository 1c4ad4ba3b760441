//! Hardware-in-the-loop harness: emulated ARM64 and x86_64 edge boxes.
//!
//! A [`Lab`] is a private network namespace with a bridge (`10.77.0.1/24`)
//! on which the fleet controller and its embedded broker listen. Each
//! [`EdgeBox`] is a QEMU TCG machine booted from the images `cargo xtask
//! images` builds (Debian's cloud kernel + an initramfs with the cross-built
//! agent), with a tap on that bridge, its own ext4 state disk, its serial
//! console in a log file and a command channel on a virtio console. The
//! harness can cut and restore a box's link, power-cycle it (its state disk
//! kept) and run commands inside it.
//!
//! Everything is undone when dropped, also when a test panics: QEMU
//! processes are killed, the namespace (with its bridge and taps) deleted.

pub mod arch;
pub mod artifacts;
mod base64;
pub mod edge_box;
pub mod example;
pub mod guest;
pub mod images;
pub mod lab;
pub mod qemu;
pub mod shell;

pub use arch::Arch;
pub use edge_box::EdgeBox;
pub use lab::Lab;

use std::path::Path;
use std::process::{Command, Stdio};

/// Why the hil tests cannot run on this machine, or `None` when they can.
///
/// With `MECVISOR_HIL_REQUIRED=1` (set by `cargo xtask hil` and `cargo xtask
/// test`, which build the images first) a missing prerequisite is a test
/// failure instead of a skip.
pub fn missing_prerequisite(arches: &[Arch]) -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (network namespaces, taps)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    let ip_ok = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ip_ok {
        return Some("`ip netns` (iproute2) does not work here".into());
    }
    for &arch in arches {
        if which(arch.qemu_binary()).is_none() {
            return Some(format!(
                "{} is missing (apt-get install {})",
                arch.qemu_binary(),
                arch.qemu_package()
            ));
        }
        if let Err(why) = images::BootImage::load(arch, "edge-box") {
            return Some(why);
        }
    }
    if which("mkfs.ext4").is_none() {
        return Some("mkfs.ext4 is missing (apt-get install e2fsprogs)".into());
    }
    None
}

/// Why a guest image cannot be booted here (no root needed: user-mode
/// network), or `None`.
pub fn missing_guest_prerequisite(arch: Arch) -> Option<String> {
    if which(arch.qemu_binary()).is_none() {
        return Some(format!(
            "{} is missing (apt-get install {})",
            arch.qemu_binary(),
            arch.qemu_package()
        ));
    }
    images::BootImage::load(arch, "guest").err()
}

/// Skips (returns true after printing why) when the lab cannot run, unless
/// `MECVISOR_HIL_REQUIRED=1`, in which case a missing prerequisite panics.
pub fn skip_unless_ready(test: &str, arches: &[Arch]) -> bool {
    skip_if(test, missing_prerequisite(arches))
}

/// Skips (returns true after printing why) when `missing` names a missing
/// prerequisite, unless `MECVISOR_HIL_REQUIRED=1`, which makes it a failure.
pub fn skip_if(test: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return false;
    };
    if std::env::var_os("MECVISOR_HIL_REQUIRED").is_some_and(|v| v == "1") {
        panic!("{test}: {why} (MECVISOR_HIL_REQUIRED=1)");
    }
    mecvisor_e2e::skip(test, &why);
    true
}

/// The full path of `program` on $PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Environment variable naming the file [`record_figure`] appends to
/// (`cargo xtask hil` sets it and prints the file after the tests).
pub const FIGURES_ENV: &str = "MECVISOR_HIL_FIGURES";

/// Reports a figure a test measured (one line, e.g. the VMM's memory
/// besides guest RAM): on stderr, and appended to the file
/// [`FIGURES_ENV`] names, so the lab's summary shows it even though the
/// test harness captures the output of passing tests.
pub fn record_figure(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    let Some(path) = std::env::var_os(FIGURES_ENV) else {
        return;
    };
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = appended {
        eprintln!(
            "cannot record the figure in {}: {e}",
            path.to_string_lossy()
        );
    }
}
