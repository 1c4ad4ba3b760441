//! The repository's example manifest runs as written (its images replaced
//! by what the lab has, see `mecvisor_hil::example`) in an emulated x86_64
//! edge box: both slices up on the box's uplink, both containers and the
//! VM running, each shown by `fleetctl describe`; the slices are in the
//! kernel (`edge-agent slices`) and the VM's guest booted. This is what
//! `cargo xtask demo --in-box` shows.

use std::time::Duration;

use mecvisor_hil::example::{self, DEVICE};
use mecvisor_hil::{skip_if, Arch};

#[test]
fn the_example_manifest_runs_in_an_x86_64_box() {
    let arch = Arch::X86_64;
    if skip_if("example manifest in a box", example::missing(arch)) {
        return;
    }
    let run = example::run(arch, Duration::from_secs(300), &mut |step| {
        eprintln!("example: {step}")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let described = run.lab.controller.fleetctl(&["describe", "device", DEVICE]);
    for name in ["video", "iot", "video-analytics", "mqtt-gateway", "upf"] {
        assert!(
            described
                .lines()
                .any(|l| l.contains(name) && l.contains("running")),
            "{name} is not running:\n{described}"
        );
    }
    let slices = example::box_sh(&run.edge, "edge-agent slices").unwrap();
    for slice in ["video", "iot"] {
        assert!(
            slices
                .lines()
                .any(|l| l.starts_with(slice) && l.contains(" up")),
            "slice {slice} is not up in the kernel:\n{slices}"
        );
    }
    let console = example::box_sh(&run.edge, "edge-agent logs upf").unwrap();
    assert!(
        console.contains(example::GUEST_BOOTED),
        "the VM's guest did not boot:\n{console}"
    );
}
