//! Must-shows 1-3 of the edge box lab, per architecture, on emulated boxes:
//! 1. the box boots, has /dev/kvm, and its cross-built agent's hello shows up
//!    in `fleetctl get devices` with the box's architecture;
//! 2. with its link cut the agent keeps running (same process); after the
//!    link is restored it reconnects on its own and acks what was applied
//!    meanwhile;
//! 3. power-cycled while cut, the box comes back with the agent's state
//!    intact (state disk), and converges once the link is back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mecvisor_e2e::site::write_manifest;
use mecvisor_e2e::wait_until;
use mecvisor_hil::{skip_unless_ready, Arch, EdgeBox, Lab};
use serde_json::Value;

/// Boot to "ready" under TCG: seconds on x86_64, longer on aarch64.
const BOOT: Duration = Duration::from_secs(300);
/// From "ready" (or a restored link) to the controller seeing the agent.
const CONVERGE: Duration = Duration::from_secs(120);

#[test]
fn x86_64_box_boots_syncs_survives_link_cut_and_power_cycle() {
    lifecycle(Arch::X86_64, "box-x86-64");
}

#[test]
fn aarch64_box_boots_syncs_survives_link_cut_and_power_cycle() {
    lifecycle(Arch::Aarch64, "box-aarch64");
}

fn lifecycle(arch: Arch, device: &str) {
    if skip_unless_ready(&format!("{} edge box lifecycle", arch.name()), &[arch]) {
        return;
    }
    let mut lab = Lab::start().expect("lab network");
    let mut edge = lab.boot_box(arch, device).expect("boot the box");
    let took = edge.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{device}: ready after {:.1} s", took.as_secs_f64());

    // 1. /dev/kvm and the hello with the architecture.
    let kvm = edge.sh("test -c /dev/kvm && echo kvm-present");
    assert!(
        kvm.contains("kvm-present"),
        "{device}: no /dev/kvm:\n{}",
        edge.boot_console()
    );
    let seen = wait_until(CONVERGE, || {
        let devices: Value =
            serde_json::from_str(&lab.controller.fleetctl(&["get", "devices", "-o", "json"]))
                .ok()?;
        devices
            .as_array()?
            .iter()
            .find(|d| d["name"] == device && d["online"] == true)
            .map(|d| d["arch"].as_str().unwrap_or_default().to_string())
    });
    let seen = seen.unwrap_or_else(|| lab.fail(&edge, "hello never reached the controller"));
    assert_eq!(seen, arch.name(), "architecture reported by {device}");
    let table = lab.controller.fleetctl(&["get", "devices"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(device) && l.contains(arch.name())),
        "{table}"
    );

    let manifests = lab.dir().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifest dir");
    let first = apply(&lab, &manifests, device, &["web-1"]);
    wait_acked(&lab, &edge, device, first);

    // 2. Link cut: the agent keeps running, nothing reaches it; restored: it
    // reconnects and acks what was applied meanwhile.
    let pid_before = agent_pid(&edge);
    edge.cut_link().expect("cut link");
    let second = apply(&lab, &manifests, device, &["web-1", "web-2"]);
    let offline = wait_until(CONVERGE, || {
        let d = lab.controller.describe(device)?;
        (d["online"] == false).then_some(())
    });
    if offline.is_none() {
        lab.fail(&edge, "controller never saw the box go offline");
    }
    assert_eq!(
        agent_pid(&edge),
        pid_before,
        "{device}: agent restarted during the cut"
    );
    let d = lab.controller.describe(device).expect("describe");
    assert!(
        d["acked_generation"].as_u64() < Some(second),
        "acked through a cut link: {d}"
    );
    let restored = Instant::now();
    edge.restore_link().expect("restore link");
    wait_acked(&lab, &edge, device, second);
    eprintln!(
        "{device}: reconnected and acked {:.1} s after the link came back",
        restored.elapsed().as_secs_f64()
    );
    assert_eq!(
        agent_pid(&edge),
        pid_before,
        "{device}: agent restarted instead of reconnecting"
    );

    // 3. Power cycle with the link cut: state comes back from the disk.
    edge.cut_link().expect("cut link");
    let third = apply(&lab, &manifests, device, &["web-3"]);
    edge.power_cycle().expect("power cycle");
    let took = edge.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{device}: ready again after {:.1} s", took.as_secs_f64());
    let status = wait_until(CONVERGE, || {
        let out = edge
            .run(
                "edge-agent status --config /etc/mecvisor/agent.toml -o json",
                Duration::from_secs(30),
            )
            .ok()?;
        let status: Value = serde_json::from_str(out.output.trim()).ok()?;
        (status["running"] == true).then_some(status)
    })
    .unwrap_or_else(|| lab.fail(&edge, "agent status unavailable after the power cycle"));
    assert_eq!(
        status["applied_generation"].as_u64(),
        Some(second),
        "{status}"
    );
    assert_eq!(status["link"], "disconnected", "{status}");
    let names: Vec<&str> = status["objects"]
        .as_array()
        .map(|objects| objects.iter().filter_map(|o| o["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&"web-2"),
        "objects after power cycle: {status}"
    );
    edge.restore_link().expect("restore link");
    wait_acked(&lab, &edge, device, third);
}

/// Writes and applies a manifest for `device`; returns its desired generation.
fn apply(lab: &Lab, dir: &std::path::Path, device: &str, workloads: &[&str]) -> u64 {
    // One manifest, re-applied with new content: a new generation each time.
    let path: PathBuf = write_manifest(dir, "lab", device, workloads);
    lab.controller.apply(&path);
    lab.controller
        .describe(device)
        .and_then(|d| d["desired_generation"].as_u64())
        .expect("desired generation after apply")
}

fn wait_acked(lab: &Lab, edge: &EdgeBox, device: &str, generation: u64) {
    let acked = wait_until(CONVERGE, || {
        let d = lab.controller.describe(device)?;
        (d["acked_generation"].as_u64()? >= generation).then_some(())
    });
    if acked.is_none() {
        lab.fail(edge, &format!("generation {generation} never acked"));
    }
}

fn agent_pid(edge: &EdgeBox) -> String {
    let pid = edge.sh("pidof edge-agent").trim().to_string();
    assert!(
        !pid.is_empty(),
        "{}: edge-agent is not running:\n{}",
        edge.name,
        edge.boot_console()
    );
    pid
}
