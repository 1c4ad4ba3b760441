//! Containers in network slices, end to end in an emulated edge box (issue
//! 5): the box image carries crun (pure cgroup v2 there); the busybox OCI
//! layout comes in on the payload disk and is imported with `edge-agent
//! import` (an air-gapped site). A manifest applied with fleetctl puts two
//! slices with gateways on the box's uplink and four containers in them:
//! - `web` and `db` (slice `apps`) serve HTTP on 8080; `web` accepts TCP
//!   8080 from slice `guests`, `db` accepts nothing from other slices;
//! - `peer` (slice `apps`) and `visitor` (slice `guests`) probe both once a
//!   second and log what they reached.
//!
//! `peer` reaches both over its slice's bridge; `visitor`'s traffic is
//! routed between the slices' bridges and reaches `web` only. Then `web`'s
//! process is killed (on-failure restarts it, restarts = 1), the agent is
//! killed (init starts it again; `web` keeps its PID, adopted), and the box
//! is power-cycled with its link cut: the containers come back from the
//! stored desired state and the imported image, with no controller.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mecvisor_e2e::wait_until;
use mecvisor_hil::images::busybox_layout;
use mecvisor_hil::{missing_prerequisite, skip_if, Arch, EdgeBox, Lab};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(300);
const CONVERGE: Duration = Duration::from_secs(180);

#[test]
fn x86_64_box_runs_containers_in_slices_with_crun() {
    containers_in_box(Arch::X86_64, "ctr-x86-64");
}

#[test]
fn aarch64_box_runs_containers_in_slices_with_crun() {
    containers_in_box(Arch::Aarch64, "ctr-aarch64");
}

/// (slice, VLAN id, subnet prefix)
const SLICES: [(&str, u16, &str); 2] = [("apps", 100, "10.30.0"), ("guests", 200, "10.31.0")];

/// Where crun keeps its state in the box (the agent's default).
const CRUN_ROOT: &str = "/run/mecvisor/crun";

fn containers_in_box(arch: Arch, device: &str) {
    let test = format!("{} containers in a box", arch.name());
    let layout = busybox_layout();
    let missing = missing_prerequisite(&[arch]).or_else(|| layout.clone().err());
    if skip_if(&test, missing) {
        return;
    }
    let layout = layout.expect("checked above");
    let mut lab = Lab::start().expect("lab network");
    let payload = lab.dir().join("payload");
    std::fs::create_dir_all(&payload).expect("payload dir");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&layout)
        .arg(payload.join("busybox"))
        .status()
        .expect("cp");
    assert!(copied.success(), "copying {}", layout.display());
    let mut edge = lab
        .boot_box_with(arch, device, Some(&payload), "mecvisor.slicing=eth0:100000")
        .expect("boot the box");
    edge.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    let console = edge.boot_console();
    assert!(
        console.contains("containers: OCI runtime crun version"),
        "the box image carries no crun:\n{console}"
    );

    // An air-gapped import; the name it prints is what manifests use.
    let imported = edge.sh("edge-agent import /mnt/payload/busybox");
    let image = imported
        .lines()
        .filter_map(|l| l.split('\t').next())
        .find(|name| name.ends_with(":latest"))
        .unwrap_or_else(|| panic!("import printed no :latest image:\n{imported}"))
        .to_string();

    let manifests = lab.dir().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifest dir");
    let generation = apply(&lab, &manifests, device, &image);
    let running = wait_until(CONVERGE, || {
        let d = lab.controller.describe(device)?;
        let objects = d["objects"].as_array()?;
        let all = objects.len() == 6 && objects.iter().all(|o| o["phase"] == "running");
        (d["applied_generation"].as_u64()? >= generation && all).then_some(())
    });
    if running.is_none() {
        lab.fail(&edge, "the slices and containers never all ran");
    }
    let human = lab.controller.fleetctl(&["describe", "device", device]);
    assert!(
        human.contains("web") && human.contains("running"),
        "{human}"
    );

    // Within a slice everything is reachable; across slices only what the
    // target's allow rules open.
    expect_probe(&lab, &edge, "peer", "web reachable");
    expect_probe(&lab, &edge, "peer", "db reachable");
    expect_probe(&lab, &edge, "visitor", "web reachable");
    let blocked = expect_probe(&lab, &edge, "visitor", "db unreachable");
    assert!(
        !blocked.contains("probe db reachable"),
        "visitor reached db across slices:\n{blocked}"
    );
    eprintln!("{device}: slices:\n{}", edge.sh("edge-agent slices"));

    // Kill web's process: on-failure restarts it and counts the restart.
    let restarts = lab
        .controller
        .describe(device)
        .and_then(|d| object(&d, "web")?["restarts"].as_u64())
        .expect("web's restart count");
    let pid = crun_pid(&edge, "web").unwrap_or_else(|| lab.fail(&edge, "web has no pid"));
    edge.sh(&format!("kill -9 {pid}"));
    let restarted = wait_until(CONVERGE, || {
        let d = lab.controller.describe(device)?;
        let web = object(&d, "web")?;
        (web["phase"] == "running" && web["restarts"].as_u64() == Some(restarts + 1)).then_some(())
    });
    if restarted.is_none() {
        lab.fail(&edge, "web was not restarted once after the kill");
    }
    let new_pid = wait_until(CONVERGE, || crun_pid(&edge, "web").filter(|p| *p != pid))
        .unwrap_or_else(|| lab.fail(&edge, "web runs no new process"));
    let logs = edge.sh("edge-agent logs web");
    assert!(logs.contains("killed by signal 9"), "{logs}");

    // Kill the agent (init starts it again): web keeps its process.
    let mark = edge.kill_agent();
    if !edge.logged_since(mark, "container adopted as it runs", CONVERGE) {
        lab.fail(&edge, "the restarted agent adopted no container");
    }
    assert_eq!(crun_pid(&edge, "web"), Some(new_pid), "same web process");

    // Power cut with the link down: back from the state disk alone.
    edge.cut_link().expect("cut the link");
    edge.power_cycle().expect("power cycle");
    edge.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));
    let back = wait_until(CONVERGE, || {
        let ids = edge.sh(&format!(
            "crun --root {CRUN_ROOT} list -q 2>/dev/null; true"
        ));
        ["web", "db", "peer", "visitor"]
            .iter()
            .all(|name| ids.lines().any(|l| l == *name))
            .then_some(())
    });
    if back.is_none() {
        lab.fail(
            &edge,
            "the containers did not come back after the power cut",
        );
    }
    // Logs survive on the state disk: "web reachable" from before the cut
    // and again after it (a fresh line after the second "started").
    let again = wait_until(CONVERGE, || {
        let text = edge.sh("edge-agent logs visitor");
        let after = text.rsplit("mecvisor started").next()?;
        after.contains("probe web reachable").then_some(())
    });
    if again.is_none() {
        lab.fail(&edge, "visitor did not reach web after the power cut");
    }
}

/// Applies slices `apps` and `guests` with gateways and the four containers.
fn apply(lab: &Lab, dir: &Path, device: &str, image: &str) -> u64 {
    let mut text = format!("name: containers\ndevices: [{device}]\nslices:\n");
    for (slice, vlan, net) in SLICES {
        text += &format!(
            "  - name: {slice}\n    vlan_id: {vlan}\n    uplink: eth0\n    qos: {{ tier: bronze }}\n    subnet: {net}.0/24\n    gateway: {net}.1\n"
        );
    }
    let server = |name: &str| {
        format!(
            "[/bin/sh, -c, 'mkdir -p /tmp/www && echo hello-from-{name} > /tmp/www/index.html && echo {name} serving && exec httpd -f -p 8080 -h /tmp/www']"
        )
    };
    // (`timeout`, not wget's own -T: Debian's busybox 1.35 wget crashes
    // with -T.)
    let probe = "[/bin/sh, -c, 'while true; do for t in web=10.30.0.10 db=10.30.0.11; do \
                 n=${t%%=*}; if timeout 3 wget -q -O - http://${t#*=}:8080/ 2>/dev/null | grep -q hello-from-$n; \
                 then echo probe $n reachable; else echo probe $n unreachable; fi; done; sleep 1; done']";
    let workloads = [
        (
            "web",
            "apps",
            "10.30.0.10",
            server("web"),
            "on-failure",
            "    allow: [{ from_slice: guests, protocol: tcp, port: 8080 }]\n",
        ),
        ("db", "apps", "10.30.0.11", server("db"), "on-failure", ""),
        (
            "peer",
            "apps",
            "10.30.0.12",
            probe.to_string(),
            "always",
            "",
        ),
        (
            "visitor",
            "guests",
            "10.31.0.10",
            probe.to_string(),
            "always",
            "",
        ),
    ];
    text += "workloads:\n";
    for (name, slice, address, command, restart, allow) in workloads {
        text += &format!(
            "  - name: {name}\n    container:\n      image: \"{image}\"\n      command: {command}\n    slice: {slice}\n    address: {address}\n{allow}    resources: {{ memory_mib: 32 }}\n    restart: {restart}\n"
        );
    }
    let path = dir.join("containers.yaml");
    std::fs::write(&path, text).expect("write manifest");
    lab.controller.apply(&path);
    lab.controller
        .describe(device)
        .and_then(|d| d["desired_generation"].as_u64())
        .expect("desired generation after apply")
}

/// Waits until `edge-agent logs <workload>` shows `probe <what>`; returns
/// the log text.
fn expect_probe(lab: &Lab, edge: &EdgeBox, workload: &str, what: &str) -> String {
    let needle = format!("probe {what}");
    wait_until(CONVERGE, || {
        Some(edge.sh(&format!("edge-agent logs {workload}"))).filter(|t| t.contains(&needle))
    })
    .unwrap_or_else(|| {
        let logs = edge.sh(&format!("edge-agent logs {workload} --tail 20"));
        lab.fail(
            edge,
            &format!("{workload} never logged {needle:?}:\n{logs}"),
        )
    })
}

/// The PID of container `id`'s process, from crun.
fn crun_pid(edge: &EdgeBox, id: &str) -> Option<i64> {
    let text = edge.sh(&format!(
        "crun --root {CRUN_ROOT} state {id} 2>/dev/null; true"
    ));
    let state: Value = serde_json::from_str(&text).ok()?;
    (state["status"] == "running").then(|| state["pid"].as_i64())?
}

fn object<'a>(describe: &'a Value, name: &str) -> Option<&'a Value> {
    describe["objects"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == name)
}
