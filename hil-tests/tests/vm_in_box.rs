//! The microVMM boots the unmodified Debian cloud kernel inside the emulated
//! edge boxes (issue 6). This host's KVM cannot run Linux; the boxes' KVM
//! can (x86_64: nested SVM under QEMU; aarch64: QEMU's emulated EL2). The
//! guest image (`images/guest/`: the same Debian kernel and a
//! marker-printing initramfs) comes in on the payload disk, and `edge-agent
//! vmm` runs it with two vCPUs, a read-only virtio-blk disk the test wrote,
//! a virtio-net interface on a tap the box gives an address (and pings the
//! guest through), and its serial console on stdout. The guest finds both vCPUs and the
//! disk (x86_64: ACPI MADT and DSDT; aarch64: device tree + PSCI), prints
//! its markers and the digest of what it read, and powers off (ACPI sleep control register; PSCI
//! SYSTEM_OFF), which ends the VMM with status 0.

use std::time::Duration;

use mecvisor_hil::guest::{guest_for_box_or_skip, DiskHead};
use mecvisor_hil::{Arch, Lab};

const BOOT: Duration = Duration::from_secs(300);
/// The guest boots under KVM nested inside QEMU's emulation: slow.
const GUEST_RUN: Duration = Duration::from_secs(600);

#[test]
fn x86_64_box_boots_the_debian_kernel_on_the_microvmm() {
    boots_on_the_microvmm(
        Arch::X86_64,
        "console=ttyS0 reboot=k panic=-1 pci=off loglevel=4 i8042.noaux i8042.nomux i8042.dumbkbd",
    );
}

#[test]
fn aarch64_box_boots_the_debian_kernel_on_the_microvmm() {
    boots_on_the_microvmm(Arch::Aarch64, "console=ttyS0 panic=-1 loglevel=4");
}

fn boots_on_the_microvmm(arch: Arch, cmdline: &str) {
    let test = format!("{} microVMM in a box", arch.name());
    let Some(guest) = guest_for_box_or_skip(&test, arch) else {
        return;
    };
    let payload = tempfile::tempdir().expect("payload dir");
    std::fs::copy(&guest.kernel, payload.path().join("vmlinuz")).expect("copy the kernel");
    std::fs::copy(&guest.initramfs, payload.path().join("initrd.img")).expect("copy the initramfs");
    let head = DiskHead::new(&format!(
        "MECVISOR-TEST-DISK {} {}",
        arch.name(),
        std::process::id()
    ));
    head.write_disk(&payload.path().join("disk.img"), 1 << 20);

    let mut lab = Lab::start().expect("lab network");
    let mut edge = lab
        .boot_box_with_payload(
            arch,
            &format!("vmm-{}", arch.name().replace('_', "-")),
            Some(payload.path()),
        )
        .expect("boot the box");
    edge.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));

    // The VMM runs in the background; once its tap exists the box gives it
    // an address, and once the guest says its NIC is up the box pings it
    // (the guest lingers 60 s before powering off).
    let script = format!(
        "timeout -s TERM 580 edge-agent vmm \
         --kernel /mnt/payload/vmlinuz --initrd /mnt/payload/initrd.img \
         --disk /mnt/payload/disk.img,ro --net mvt0 \
         --memory-mib 128 --vcpus 2 \
         --cmdline '{cmdline} mecvisor.ip=10.0.2.15/24 mecvisor.linger=60' \
         > /tmp/vm.out 2>&1 & vmm=$!; \
         for _ in $(seq 600); do ip link show mvt0 >/dev/null 2>&1 && break; sleep 0.2; done; \
         ip addr add 10.0.2.1/24 dev mvt0 && ip link set mvt0 up; \
         for _ in $(seq 1500); do grep -q MECVISOR-GUEST-DONE /tmp/vm.out && break; sleep 0.2; done; \
         if ping -c 3 -W 5 10.0.2.15 >/tmp/ping.out 2>&1; then echo guest-answered-ping; \
         else echo guest-did-not-answer; cat /tmp/ping.out; fi; \
         wait $vmm; echo \"vmm-status=$?\"; tr -d '\\r' < /tmp/vm.out"
    );
    let run = edge
        .run(&script, GUEST_RUN)
        .unwrap_or_else(|e| lab.fail(&edge, &format!("running the VMM: {e}")));
    let out = run.output;
    eprintln!("{test}: VMM output:\n{out}");
    let booted = out
        .lines()
        .find_map(|l| l.strip_prefix("MECVISOR-GUEST-BOOTED "))
        .unwrap_or_else(|| panic!("the guest printed no boot marker:\n{out}"));
    assert!(booted.starts_with(&format!("{} ", arch.name())), "{booted}");
    assert!(
        out.contains("MECVISOR-GUEST-CPUS 2"),
        "the guest did not bring up both vCPUs:\n{out}"
    );
    assert!(
        out.contains(&format!("MECVISOR-GUEST-DISK {}", head.report())),
        "the guest did not read its virtio disk:\n{out}"
    );
    assert!(
        out.contains("MECVISOR-GUEST-NET eth0 10.0.2.15/24 up"),
        "the guest did not bring its virtio NIC up:\n{out}"
    );
    assert!(
        out.contains("guest-answered-ping"),
        "the guest did not answer a ping over virtio-net:\n{out}"
    );
    assert!(
        out.contains("MECVISOR-GUEST-DONE"),
        "the guest's init did not finish:\n{out}"
    );
    assert!(
        out.contains("seccomp=true"),
        "the VMM did not run its threads under seccomp filters:\n{out}"
    );
    assert!(
        out.contains("vmm-status=0") && out.contains("ended=PowerOff"),
        "the guest's power-off did not end the VMM cleanly:\n{out}"
    );
}
