//! `cargo xtask bench lab`: how fast an emulated edge box comes up, per
//! architecture (QEMU TCG on this host, so a pessimistic bound for real
//! hardware), and how big the static agent each box runs is.
//!
//! Boot-to-agent-connected is measured from QEMU's start to the agent's
//! "connected to broker" line on the box's serial console; the first boot
//! also records when the controller lists the box online (its hello). Later
//! samples are hard power cycles of the same box (state disk kept).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use mecvisor_hil::{missing_prerequisite, Arch as BoxArch, Lab};

use super::table::Table;
use crate::cross::{self, Arch};
use crate::images::{self, ImagesArgs};
use crate::timing::{ms, percentile};

/// Boots per architecture.
const BOOTS: usize = 5;
/// The agent logs this once its MQTT session is up.
const CONNECTED: &str = "connected to broker";
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the lab benchmark. What cannot be measured here (no root, no
/// emulator) is reported in the table, not raised, so `cargo xtask bench`
/// still prints the other benchmarks.
pub fn run() -> Result<Table> {
    let mut table = Table::new("edge box lab (QEMU TCG, 1 vCPU, 512 MiB)");
    if let Err(err) = measure(&mut table) {
        table.error("edge box lab", "", &err);
    }
    Ok(table)
}

fn measure(table: &mut Table) -> Result<()> {
    prepare_lab()?;

    for (arch, box_arch) in [
        (Arch::X86_64, BoxArch::X86_64),
        (Arch::Aarch64, BoxArch::Aarch64),
    ] {
        let size = std::fs::metadata(cross::out_dir(arch).join("edge-agent"))
            .with_context(|| format!("{} edge-agent", arch.name()))?
            .len();
        table.info(
            &format!("edge-agent static binary, {}", arch.name()),
            format!("{:.2} MB", size as f64 / 1e6),
        );
        match boots(box_arch) {
            Ok(samples) => report(table, arch.name(), &samples),
            Err(err) => table.error(
                &format!("boot to agent connected, {}", arch.name()),
                "",
                &err,
            ),
        }
    }
    table.note(format!(
        "{BOOTS} boots per architecture: the first cold, the rest hard power cycles; \
         QEMU TCG emulates every instruction, so real boxes boot faster"
    ));
    Ok(())
}

/// What a benchmark in the lab needs: root, the host packages, the images,
/// and the release binaries (the lab's controller runs from them).
pub(super) fn prepare_lab() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(anyhow!("needs root (network namespaces, taps, apt)"));
    }
    crate::debian::ensure_packages(crate::hil::HOST_PACKAGES, false)?;
    images::build(&ImagesArgs::default())?;
    let bins = crate::bins::build(true)?;
    let bin_dir = bins
        .controller
        .parent()
        .context("release binary directory")?
        .to_path_buf();
    std::env::set_var("MECVISOR_BIN_DIR", &bin_dir);
    Ok(())
}

struct BootSamples {
    to_connected: Vec<Duration>,
    to_ready: Vec<Duration>,
    first_hello_seen: Duration,
}

fn boots(arch: BoxArch) -> Result<BootSamples> {
    if let Some(why) = missing_prerequisite(&[arch]) {
        return Err(anyhow!(why));
    }
    let mut lab = Lab::start().map_err(|e| anyhow!(e))?;
    let name = format!("bench-{}", arch.name().replace('_', "-"));
    let started = Instant::now();
    let mut edge = lab.boot_box(arch, &name).map_err(|e| anyhow!(e))?;
    let mut samples = BootSamples {
        to_connected: Vec::new(),
        to_ready: Vec::new(),
        first_hello_seen: Duration::ZERO,
    };
    for boot in 0..BOOTS {
        if boot > 0 {
            edge.power_cycle().map_err(|e| anyhow!(e))?;
        }
        samples
            .to_ready
            .push(edge.wait_ready(BOOT_TIMEOUT).map_err(|e| anyhow!(e))?);
        samples.to_connected.push(
            edge.wait_console(CONNECTED, BOOT_TIMEOUT)
                .map_err(|e| anyhow!(e))?,
        );
        if boot == 0 {
            let online = mecvisor_e2e::wait_until(BOOT_TIMEOUT, || {
                let d = lab.controller.describe(&name)?;
                (d["online"] == true).then_some(started.elapsed())
            });
            samples.first_hello_seen =
                online.ok_or_else(|| anyhow!("{name} never showed up online"))?;
        }
    }
    drop(edge);
    drop(lab);
    Ok(samples)
}

fn report(table: &mut Table, arch: &str, samples: &BootSamples) {
    for (what, all) in [
        ("power-on to init ready", &samples.to_ready),
        ("power-on to agent connected", &samples.to_connected),
    ] {
        let (Some(p50), Some(min), Some(max)) = (
            percentile(all, 50.0),
            all.iter().min().copied(),
            all.iter().max().copied(),
        ) else {
            continue;
        };
        table.info(
            &format!("{what}, {arch}, p50 (min/max)"),
            format!("{} ({} / {})", ms(p50), ms(min), ms(max)),
        );
    }
    table.info(
        &format!("first boot to hello listed by the controller, {arch}"),
        ms(samples.first_hello_seen),
    );
}
