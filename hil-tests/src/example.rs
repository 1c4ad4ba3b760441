//! The repository's example manifest (`examples/fleet.yaml`: two slices,
//! two containers, one VM) run for real in an emulated edge box: what
//! `cargo xtask demo --in-box` shows and `tests/example_in_box.rs` checks.
//!
//! The example names images in a registry the lab cannot reach, so the
//! run imports what the lab has (the busybox OCI image, the microVMM test
//! guest's kernel, initramfs and a disk) into the box's agent, as an
//! air-gapped site would, and points the example's workloads at them. The
//! slices, addresses, allow rules and shaping stay as written; every
//! change is listed in [`ExampleRun::adjustments`].

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::artifacts::{imported_reference, write_layout};
use crate::guest::DiskHead;
use crate::images::{busybox_layout, BootImage};
use crate::{missing_prerequisite, Arch, EdgeBox, Lab};

/// The example manifest, as shipped.
pub const EXAMPLE: &str = include_str!("../../examples/fleet.yaml");

/// The device the example is written for.
pub const DEVICE: &str = "edge-1";

/// The box's uplink capacity in kbit/s: room for the example's committed
/// rates (the video slice alone commits 200 Mbit/s).
const UPLINK_KBIT: u64 = 1_000_000;

/// What the VM gets in the emulated box (1 vCPU, 512 MiB in all).
const VM_MEMORY_MIB: u64 = 128;

/// A running example: the lab, its box, and what was changed to run it.
pub struct ExampleRun {
    /// The lab (controller on the lab bridge); dropped, it stops everything.
    pub lab: Lab,
    /// The box.
    pub edge: EdgeBox,
    /// The manifest applied (YAML).
    pub manifest: String,
    /// Each change made to the example, for people to read.
    pub adjustments: Vec<String>,
}

/// Why the example cannot run in a box of `arch` here, or `None`.
pub fn missing(arch: Arch) -> Option<String> {
    missing_prerequisite(&[arch])
        .or_else(|| BootImage::load(arch, "guest").err())
        .or_else(|| busybox_layout().err())
}

/// The guest's kernel command line in a box of `arch` (console on the
/// serial port; the guest stays up once its init is done).
fn guest_cmdline(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => {
            "console=ttyS0 reboot=k panic=-1 pci=off loglevel=4 i8042.noaux i8042.nomux \
             i8042.dumbkbd mecvisor.stay=1"
        }
        Arch::Aarch64 => "console=ttyS0 panic=-1 loglevel=4 mecvisor.stay=1",
    }
}

/// What the box imported, by use.
pub struct Imported {
    /// The busybox image (`name:latest`).
    pub busybox: String,
    /// The guest's kernel, initramfs and disk, pinned by digest.
    pub kernel: String,
    /// See [`Imported::kernel`].
    pub initrd: String,
    /// See [`Imported::kernel`].
    pub disk: String,
}

/// The example with its workloads pointed at `imported`, and the list of
/// changes. Containers run busybox's httpd on the port their allow rules
/// open (8080 without one); the VM boots the test guest.
pub fn adapt(
    example: &str,
    imported: &Imported,
    arch: Arch,
) -> Result<(String, Vec<String>), String> {
    let mut doc: Value =
        serde_norway::from_str(example).map_err(|e| format!("examples/fleet.yaml: {e}"))?;
    let mut adjustments = Vec::new();
    let workloads = doc["workloads"]
        .as_array_mut()
        .ok_or("examples/fleet.yaml has no workloads")?;
    for workload in workloads {
        let name = workload["name"].as_str().unwrap_or("?").to_string();
        if workload.get("container").is_some() {
            let port = container_port(workload);
            let slice = workload["slice"].as_str().unwrap_or("none").to_string();
            let container = &mut workload["container"];
            container["image"] = json!(imported.busybox);
            container["command"] = json!([
                "/bin/sh",
                "-c",
                format!("echo {name} up in slice {slice}; exec httpd -f -p {port} -h /")
            ]);
            container["args"] = json!([]);
            adjustments.push(format!(
                "{name}: image {} (imported; the example's registry is not reachable here), \
                 busybox httpd on port {port}",
                imported.busybox
            ));
        } else if workload.get("vm").is_some() {
            let vm = &mut workload["vm"];
            vm["kernel"] = json!(imported.kernel);
            vm["initrd"] = json!(imported.initrd);
            vm["disks"] = json!([{ "image": imported.disk, "read_only": true }]);
            vm["cmdline"] = json!(guest_cmdline(arch));
            vm["vcpus"] = json!(1);
            workload["resources"]["memory_mib"] = json!(VM_MEMORY_MIB);
            adjustments.push(format!(
                "{name}: the microVMM test guest (imported kernel, initramfs, disk), \
                 1 vCPU and {VM_MEMORY_MIB} MiB (the emulated box has 1 vCPU and 512 MiB)"
            ));
        }
    }
    let yaml = serde_norway::to_string(&doc).map_err(|e| format!("writing the manifest: {e}"))?;
    Ok((yaml, adjustments))
}

/// The port a container's allow rules open, 8080 without one.
fn container_port(workload: &Value) -> u64 {
    workload["allow"]
        .as_array()
        .and_then(|rules| rules.iter().find_map(|r| r["port"].as_u64()))
        .unwrap_or(8080)
}

/// Boots a box of `arch` in a new lab, imports the artifacts, applies the
/// adapted example and waits (up to `timeout`) until every object runs.
/// `progress` hears each step.
pub fn run(
    arch: Arch,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<ExampleRun, String> {
    if let Some(why) = missing_prerequisite(&[arch]) {
        return Err(why);
    }
    let guest = BootImage::load(arch, "guest")?;
    let layout = busybox_layout()?;
    let mut lab = Lab::start()?;
    let payload = lab.dir().join("payload");
    std::fs::create_dir_all(&payload).map_err(|e| format!("{}: {e}", payload.display()))?;
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&layout)
        .arg(payload.join("busybox"))
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if !copied.success() {
        return Err("copying the busybox layout failed".into());
    }
    let disk = payload.join("disk.img");
    DiskHead::new("MECVISOR-EXAMPLE-DISK").write_disk(&disk, 4096);
    write_layout(
        &payload.join("guest"),
        &[
            ("kernel", &guest.kernel),
            ("initrd", &guest.initramfs),
            ("disk", &disk),
        ],
    )?;
    std::fs::remove_file(&disk).map_err(|e| format!("{}: {e}", disk.display()))?;

    progress(&format!(
        "booting an emulated {} edge box ({DEVICE})",
        arch.name()
    ));
    let started = Instant::now();
    let mut edge = lab.boot_box_with(
        arch,
        DEVICE,
        Some(&payload),
        &format!("mecvisor.slicing=eth0:{UPLINK_KBIT}"),
    )?;
    edge.wait_ready(timeout)?;
    progress(&format!(
        "box up, agent connected, in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    progress("importing the images into the box's agent (edge-agent import)");
    let busybox = box_sh(
        &edge,
        "edge-agent import /mnt/payload/busybox --name demo/busybox",
    )?;
    let guest = box_sh(
        &edge,
        "edge-agent import /mnt/payload/guest --name demo/guest",
    )?;
    let pick = |printed: &str, tag: &str| {
        imported_reference(printed, tag)
            .ok_or_else(|| format!("import printed no :{tag}: {printed}"))
    };
    let imported = Imported {
        busybox: busybox
            .lines()
            .filter_map(|l| l.split('\t').next())
            .find(|name| name.ends_with(":latest"))
            .ok_or_else(|| format!("import printed no :latest image: {busybox}"))?
            .to_string(),
        kernel: pick(&guest, "kernel")?,
        initrd: pick(&guest, "initrd")?,
        disk: pick(&guest, "disk")?,
    };
    let (manifest, adjustments) = adapt(EXAMPLE, &imported, arch)?;
    let path = lab.dir().join("fleet.yaml");
    std::fs::write(&path, &manifest).map_err(|e| format!("{}: {e}", path.display()))?;
    progress("fleetctl apply -f fleet.yaml (the example, adapted as listed)");
    lab.controller.apply(&path);
    let expected = object_names(&manifest)?;
    let started = Instant::now();
    loop {
        let described = lab.controller.describe(DEVICE);
        let phases = phases(described.as_ref());
        let all_running = expected.iter().all(|name| {
            phases
                .iter()
                .any(|(n, phase)| n == name && phase == "running")
        });
        if all_running {
            progress(&format!(
                "every object of the example runs, {:.1} s after the apply",
                started.elapsed().as_secs_f64()
            ));
            break;
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "not every object ran within {}s: {phases:?}\n--- box console ---\n{}",
                timeout.as_secs(),
                edge.console_text()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // A VM runs once its VMM does; its guest has booted once its init says so.
    let vms = vm_names(&manifest)?;
    if !vms.is_empty() {
        progress("waiting for the VM's guest to boot (its serial console)");
    }
    for vm in vms {
        let console = loop {
            let console = box_sh(&edge, &format!("edge-agent logs {vm}"))?;
            if console.contains(GUEST_BOOTED) {
                break console;
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "the guest of VM {vm} did not boot within {}s:\n{console}",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        progress(&format!(
            "{vm}'s guest booted, {:.1} s after the apply ({} console lines)",
            started.elapsed().as_secs_f64(),
            console.lines().count()
        ));
    }
    Ok(ExampleRun {
        lab,
        edge,
        manifest,
        adjustments,
    })
}

/// What the test guest's init prints once it has booted.
pub const GUEST_BOOTED: &str = "MECVISOR-GUEST-BOOTED";

/// Names of the VM workloads of a manifest.
fn vm_names(manifest: &str) -> Result<Vec<String>, String> {
    let doc: Value = serde_norway::from_str(manifest).map_err(|e| e.to_string())?;
    Ok(doc["workloads"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|w| w.get("vm").is_some())
        .filter_map(|w| w["name"].as_str().map(str::to_string))
        .collect())
}

/// Runs `script` in the box; its output, or why not (non-zero exit too).
pub fn box_sh(edge: &EdgeBox, script: &str) -> Result<String, String> {
    let out = edge.run(script, Duration::from_secs(120))?;
    if out.status != 0 {
        return Err(format!(
            "`{script}` in the box exited {}: {}",
            out.status, out.output
        ));
    }
    Ok(out.output)
}

/// Names of every slice and workload of a manifest.
fn object_names(manifest: &str) -> Result<Vec<String>, String> {
    let doc: Value = serde_norway::from_str(manifest).map_err(|e| e.to_string())?;
    Ok(["slices", "workloads"]
        .iter()
        .flat_map(|key| doc[key].as_array().cloned().unwrap_or_default())
        .filter_map(|o| o["name"].as_str().map(str::to_string))
        .collect())
}

/// `(name, phase)` of every object in a `fleetctl describe -o json`.
fn phases(described: Option<&Value>) -> Vec<(String, String)> {
    described
        .and_then(|d| d["objects"].as_array())
        .map(|objects| {
            objects
                .iter()
                .map(|o| {
                    (
                        o["name"].as_str().unwrap_or("?").to_string(),
                        o["phase"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imported() -> Imported {
        Imported {
            busybox: "docker.io/demo/busybox:latest".into(),
            kernel: format!("docker.io/demo/guest@sha256:{}", "a".repeat(64)),
            initrd: format!("docker.io/demo/guest@sha256:{}", "b".repeat(64)),
            disk: format!("docker.io/demo/guest@sha256:{}", "c".repeat(64)),
        }
    }

    #[test]
    fn the_example_keeps_its_slices_and_rules_and_runs_what_the_lab_has() {
        let (yaml, adjustments) = adapt(EXAMPLE, &imported(), Arch::X86_64).unwrap();
        let doc: Value = serde_norway::from_str(&yaml).unwrap();
        let original: Value = serde_norway::from_str(EXAMPLE).unwrap();
        assert_eq!(doc["slices"], original["slices"], "slices as written");
        assert_eq!(doc["devices"], json!([DEVICE]));
        let gateway = doc["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "mqtt-gateway")
            .unwrap();
        assert_eq!(gateway["allow"], original["workloads"][1]["allow"]);
        assert_eq!(
            gateway["container"]["image"],
            "docker.io/demo/busybox:latest"
        );
        let command = gateway["container"]["command"][2].as_str().unwrap();
        assert!(command.contains("-p 1883"), "{command}");
        let vm = doc["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w.get("vm").is_some())
            .unwrap();
        assert_eq!(vm["vm"]["disks"][0]["read_only"], true);
        assert_eq!(vm["resources"]["memory_mib"], VM_MEMORY_MIB);
        assert_eq!(adjustments.len(), 3, "{adjustments:?}");
        assert_eq!(
            object_names(&yaml).unwrap(),
            ["video", "iot", "video-analytics", "mqtt-gateway", "upf"]
        );
    }
}
