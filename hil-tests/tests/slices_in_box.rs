//! Network slicing end to end in an emulated edge box (issue 4, must-show
//! 4): the controller sends two slices, the box's agent (slicing switched
//! on by `mecvisor.slicing=`) builds them on its real uplink eth0, and
//! tcpdump on the lab side of the box's link sees each slice's frames
//! tagged with its own VLAN id, and no slice's frames on another's VLAN.
//! `edge-agent slices` in the box shows the slices with their counters;
//! removing them from the manifest removes them from the box.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mecvisor_e2e::wait_until;
use mecvisor_hil::{skip_unless_ready, Arch, Lab};
use network_slicing::names::{link_name, Role};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(300);
const CONVERGE: Duration = Duration::from_secs(120);

#[test]
fn x86_64_box_network_slicing_tags_each_slice_with_its_vlan() {
    slices_in_box(Arch::X86_64, "slicer-x86-64");
}

#[test]
fn aarch64_box_network_slicing_tags_each_slice_with_its_vlan() {
    slices_in_box(Arch::Aarch64, "slicer-aarch64");
}

/// (slice, VLAN id, gateway address, a peer address to ARP for)
const SLICES: [(&str, u16, &str, &str); 2] = [
    ("video", 100, "10.20.0.1/24", "10.20.0.2"),
    ("iot", 200, "10.21.0.1/24", "10.21.0.2"),
];

fn slices_in_box(arch: Arch, device: &str) {
    if skip_unless_ready(&format!("{} slices in a box", arch.name()), &[arch]) {
        return;
    }
    let mut lab = Lab::start().expect("lab network");
    let mut edge = lab
        .boot_box_with(arch, device, None, "mecvisor.slicing=eth0:100000")
        .expect("boot the box");
    edge.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));

    let manifests = lab.dir().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifest dir");
    let generation = apply(&lab, &manifests, device, true);
    let running = wait_until(CONVERGE, || {
        let d = lab.controller.describe(device)?;
        let objects = d["objects"].as_array()?;
        let all = objects.len() == 2 && objects.iter().all(|o| o["phase"] == "running");
        (d["applied_generation"].as_u64()? >= generation && all).then_some(())
    });
    if running.is_none() {
        lab.fail(&edge, "the slices never reported running");
    }

    let table = edge.sh("edge-agent slices");
    for (slice, vlan, _, _) in SLICES {
        assert!(
            table.lines().any(|l| l.starts_with(slice)
                && l.contains(&format!(" {vlan} eth0"))
                && l.contains(" up ")),
            "{table}"
        );
    }

    // Each slice's bridge gets an address and ARPs for a neighbour; the
    // requests leave through the slice's VLAN link on eth0. (Both bridges
    // carry eth0's MAC, taken from their VLAN ports, so frames are told
    // apart by the address they ask for.)
    let capture = Tcpdump::start(lab.netns(), &edge.tap, &lab.dir().join("capture"));
    for (slice, _, gateway, peer) in SLICES {
        let bridge = link_name(slice, Role::Bridge);
        edge.sh(&format!(
            "ip addr add {gateway} dev {bridge} && ping -c 2 -W 1 {peer}; true"
        ));
    }
    let lines = capture.stop();
    let all = lines.join("\n");
    for (slice, vlan, _, peer) in SLICES {
        let asks = format!("who-has {peer} ");
        let frames: Vec<&String> = lines.iter().filter(|l| l.contains(&asks)).collect();
        assert!(
            frames.len() >= 2,
            "{slice}: too few ARP requests seen:\n{all}"
        );
        for line in frames {
            assert!(
                line.contains(&format!("vlan {vlan},")),
                "{slice}'s frame did not leave on VLAN {vlan}: {line}\nall:\n{all}"
            );
        }
        let foreign = lines
            .iter()
            .filter(|l| l.contains(&format!("vlan {vlan},")))
            .find(|l| l.contains("who-has") && !l.contains(&asks));
        assert!(
            foreign.is_none(),
            "VLAN {vlan} carried another slice's frame: {foreign:?}"
        );
    }
    let table = edge.sh("edge-agent slices -o json");
    let status: Value = serde_json::from_str(&table).unwrap_or_else(|e| panic!("{e}: {table}"));
    for entry in status.as_array().expect("a list") {
        assert!(entry["egress"]["packets"].as_u64() >= Some(2), "{entry:#}");
    }

    // Slices gone from the manifest: gone from the box.
    let generation = apply(&lab, &manifests, device, false);
    let empty = wait_until(CONVERGE, || {
        let d = lab.controller.describe(device)?;
        (d["applied_generation"].as_u64()? >= generation).then_some(())
    });
    if empty.is_none() {
        lab.fail(&edge, "the slice removal was never applied");
    }
    let left = wait_until(CONVERGE, || {
        let table = edge.sh("edge-agent slices; ip link | grep -c ' mv' ; true");
        table.starts_with("no slices\n0").then_some(())
    });
    assert!(left.is_some(), "{}", edge.sh("edge-agent slices; ip link"));
}

fn apply(lab: &Lab, dir: &Path, device: &str, with_slices: bool) -> u64 {
    let mut text = format!("name: slicing\ndevices: [{device}]\n");
    if with_slices {
        text += "slices:\n";
        for (i, (slice, vlan, _, _)) in SLICES.iter().enumerate() {
            let tier = if i == 0 {
                "gold, cir_kbit: 50000"
            } else {
                "bronze"
            };
            text += &format!(
                "  - name: {slice}\n    vlan_id: {vlan}\n    uplink: eth0\n    qos: {{ tier: {tier} }}\n    subnet: 10.{}.0.0/24\n",
                20 + i
            );
        }
    } else {
        text += "slices: []\n";
    }
    text += "workloads: []\n";
    let path = dir.join("slicing.yaml");
    std::fs::write(&path, text).expect("write manifest");
    lab.controller.apply(&path);
    lab.controller
        .describe(device)
        .and_then(|d| d["desired_generation"].as_u64())
        .expect("desired generation after apply")
}

/// tcpdump on the lab side of a box's link (link-level headers, numeric).
struct Tcpdump {
    child: Child,
    out: std::path::PathBuf,
}

impl Tcpdump {
    fn start(netns: &str, tap: &str, dir: &Path) -> Tcpdump {
        std::fs::create_dir_all(dir).expect("capture dir");
        let out = dir.join(format!("{tap}.txt"));
        let err = dir.join(format!("{tap}.err"));
        let child = Command::new("ip")
            .args([
                "netns", "exec", netns, "tcpdump", "-i", tap, "-e", "-n", "-t", "-l",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("capture file"))
            .stderr(std::fs::File::create(&err).expect("capture log"))
            .spawn()
            .expect("start tcpdump (apt install tcpdump)");
        let listening = wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(&err)
                .ok()
                .filter(|t| t.contains("listening on"))
                .map(drop)
        });
        assert!(
            listening.is_some(),
            "tcpdump did not start: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        Tcpdump { child, out }
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and returns its lines.
    fn stop(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(500));
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
