//! The microVMM's test guest image boots on each architecture (here under
//! QEMU, until the project's own VMM runs it), prints its boot marker, reads
//! its virtio disk and brings its virtio NIC up.

use std::time::Duration;

use mecvisor_hil::guest::DiskHead;
use mecvisor_hil::images::BootImage;
use mecvisor_hil::qemu::{MachineSpec, Net};
use mecvisor_hil::{missing_guest_prerequisite, skip_if, Arch};

#[test]
fn x86_64_guest_image_boots_reads_its_disk_and_brings_up_its_nic() {
    guest_boots(Arch::X86_64);
}

#[test]
fn aarch64_guest_image_boots_reads_its_disk_and_brings_up_its_nic() {
    guest_boots(Arch::Aarch64);
}

fn guest_boots(arch: Arch) {
    if skip_if(
        &format!("{} guest image", arch.name()),
        missing_guest_prerequisite(arch),
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let nonce = format!("{:x}", std::process::id() as u64 * 7919 + arch as u64);
    let head = DiskHead::new(&format!("MECVISOR-TEST-DISK {nonce}"));
    let disk = dir.path().join("disk.img");
    head.write_disk(&disk, 1 << 20);

    let spec = MachineSpec {
        arch,
        image: BootImage::load(arch, "guest").expect("guest image"),
        append: "panic=-1 loglevel=4 mecvisor.ip=10.0.2.15/24".into(),
        memory_mib: 256,
        disk: Some(disk),
        payload: None,
        net: Net::User,
        console_log: dir.path().join("console.log"),
        shell_socket: None,
        no_reboot: true,
    };
    let console = spec
        .run_to_exit(Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("{e}"));
    let line = |marker: &str| -> String {
        console
            .lines()
            .find_map(|l| {
                l.trim_end_matches('\r')
                    .strip_prefix(marker)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no {marker} on the console:\n{console}"))
    };
    assert!(
        line("MECVISOR-GUEST-BOOTED ").starts_with(arch.name()),
        "{console}"
    );
    assert_eq!(line("MECVISOR-GUEST-DISK "), head.report(), "{console}");
    let net = line("MECVISOR-GUEST-NET ");
    assert_eq!(net, "eth0 10.0.2.15/24 up", "{console}");
    // QEMU here offers no vsock device: the guest agent says so and exits.
    assert_eq!(line("MECVISOR-GUEST-VSOCK "), "none", "{console}");
    line("MECVISOR-GUEST-DONE");
}
