//! Test binaries of other crates run inside the emulated boxes, whose
//! kernels have what this host's lacks (8021q VLAN links). `cargo xtask hil`
//! builds them static per architecture into `target/hil-payload/<arch>/`;
//! each box gets them on a read-only payload disk at /mnt/payload.

use std::path::PathBuf;
use std::time::Duration;

use mecvisor_hil::images::images_dir;
use mecvisor_hil::{missing_prerequisite, skip_if, Arch, Lab};

/// Where `cargo xtask hil` put the in-box test binaries for `arch`.
fn payload_dir(arch: Arch) -> PathBuf {
    images_dir()
        .parent()
        .map(|target| target.join("hil-payload").join(arch.name()))
        .unwrap_or_default()
}

#[test]
fn x86_64_box_runs_the_network_slicing_netns_tests() {
    slicing_tests_in_box(Arch::X86_64, "slices-x86-64");
}

#[test]
fn aarch64_box_runs_the_network_slicing_netns_tests() {
    slicing_tests_in_box(Arch::Aarch64, "slices-aarch64");
}

/// The in-box test binaries (built by `cargo xtask hil`, see its
/// `BOX_TESTS`) and how many tests each must pass there.
const BOX_TESTS: &[(&str, usize)] = &[
    ("netns_apply", 5),
    ("shaping", 2),
    ("isolation", 1),
    ("shaping_accuracy", 1),
];

fn slicing_tests_in_box(arch: Arch, device: &str) {
    let test = format!("{} network-slicing tests in a box", arch.name());
    let payload = payload_dir(arch);
    let missing = missing_prerequisite(&[arch]).or_else(|| {
        BOX_TESTS
            .iter()
            .map(|(binary, _)| payload.join(binary))
            .find(|path| !path.is_file())
            .map(|path| format!("{} is missing; `cargo xtask hil` builds it", path.display()))
    });
    if skip_if(&test, missing) {
        return;
    }
    let mut lab = Lab::start().expect("lab network");
    let mut edge = lab
        .boot_box_with_payload(arch, device, Some(&payload))
        .expect("boot the box");
    edge.wait_ready(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    for (binary, passed) in BOX_TESTS {
        let out = edge
            .run(
                &format!("/mnt/payload/{binary} --test-threads=1 --nocapture"),
                Duration::from_secs(300),
            )
            .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", edge.boot_console()));
        let expected = format!("test result: ok. {passed} passed");
        if !out.success() || !out.output.contains(&expected) {
            failures.push(format!(
                "{binary} failed (wanted \"{expected}\"):\n{}",
                out.output
            ));
        } else if out.output.contains("SKIPPED") {
            failures.push(format!(
                "{binary}: a test skipped in the box:\n{}",
                out.output
            ));
        } else {
            println!("{binary}: {expected}");
        }
        // Measurements the tests print, for the lab log.
        for line in out.output.lines().filter(|l| l.starts_with("MEASURED")) {
            println!("{}: {binary}: {line}", arch.name());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
