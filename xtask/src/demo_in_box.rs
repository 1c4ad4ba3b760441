//! `cargo xtask demo --in-box`: the example manifest with everything it
//! asks for (two slices, two containers, a VM) running inside an emulated
//! edge box from the lab (`mecvisor_hil::example`), for hosts that cannot
//! run slices or Linux guests themselves. Builds what the box needs first
//! (static cross build, box and guest images, the busybox image).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use mecvisor_hil::example::{self, DEVICE};

use crate::cross::Arch;
use crate::images::{self, ImagesArgs};
use crate::timing::human;

/// Boots the box, runs the example in it, shows it, and (unless
/// `keep_running`) tears it all down again.
pub fn run(arch: Arch, timeout: Duration, keep_running: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("--in-box needs root (the lab's network namespace and taps); the plain `cargo xtask demo` does not");
    }
    if keep_running {
        bail!("--keep-running is not available with --in-box: the emulated box lives as long as this process");
    }
    crate::debian::ensure_packages(crate::hil::HOST_PACKAGES, false)?;
    let started = Instant::now();
    println!("\n==> building what the box needs (cross build, images; cached after the first run)");
    images::build(&ImagesArgs {
        target: Some(arch),
        ..ImagesArgs::default()
    })?;
    let bins = crate::bins::build(false)?;
    if let Some(dir) = bins.controller.parent() {
        // The lab's controller and fleetctl are this build's.
        std::env::set_var("MECVISOR_BIN_DIR", dir);
    }
    println!("ready in {}", human(started.elapsed()));

    let lab_arch = match arch {
        Arch::X86_64 => mecvisor_hil::Arch::X86_64,
        Arch::Aarch64 => mecvisor_hil::Arch::Aarch64,
    };
    let run = example::run(lab_arch, timeout, &mut |step| println!("\n==> {step}"))
        .map_err(|e| anyhow!("the example did not come up in the box: {e}"))?;
    println!("\nchanged from examples/fleet.yaml to run here:");
    for change in &run.adjustments {
        println!("  - {change}");
    }
    println!("\n==> fleetctl describe device {DEVICE}");
    print!(
        "{}",
        run.lab.controller.fleetctl(&["describe", "device", DEVICE])
    );
    for (title, script) in [
        (
            "edge-agent slices (read from the box's kernel)",
            "edge-agent slices",
        ),
        ("edge-agent status", "edge-agent status"),
        (
            "edge-agent logs mqtt-gateway",
            "edge-agent logs mqtt-gateway --tail 3",
        ),
        (
            "edge-agent logs upf (the VM's serial console)",
            "edge-agent logs upf --tail 8",
        ),
    ] {
        println!("\n==> {title}");
        match example::box_sh(&run.edge, script) {
            Ok(out) => print!("{out}"),
            Err(e) => println!("{e}"),
        }
    }
    println!("\n==> stopping the box and the controller");
    drop(run);
    println!("demo finished in {}", human(started.elapsed()));
    Ok(())
}
