//! A VM workload end to end in the emulated edge boxes (issue 6, must-show
//! 2 and 3): the guest image's kernel, initramfs and a disk come in on the
//! payload disk as OCI artifacts (an OCI image layout the test writes) and
//! are imported with `edge-agent import`; a manifest applied with fleetctl
//! puts a slice (VLAN 100 on the box's uplink, gateway 10.40.0.1) on the
//! box and runs them as a VM in it, its tap the VM's port. Then:
//! - `fleetctl describe` shows the VM running, and `edge-agent logs <vm>`
//!   shows the guest's boot marker, what it read from its disk and its NIC
//!   up with its slice address;
//! - the box pings the guest from the slice's gateway, over the bridge,
//!   the tap and virtio-net;
//! - the VMM process is killed with SIGKILL: on-failure restarts the VM
//!   (restarts goes up by one, the guest boots again);
//! - the agent is killed with SIGKILL (init starts it again): the VM keeps
//!   its VMM process, adopted.

use std::time::Duration;

use mecvisor_e2e::wait_until;
use mecvisor_hil::artifacts::{imported_reference, write_layout};
use mecvisor_hil::guest::{guest_for_box_or_skip, DiskHead};
use mecvisor_hil::{Arch, EdgeBox, Lab};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(300);
/// Up to running, including the guest's boot under nested KVM.
const CONVERGE: Duration = Duration::from_secs(300);

#[test]
fn x86_64_box_runs_a_vm_workload() {
    vm_workload(
        Arch::X86_64,
        "console=ttyS0 reboot=k panic=-1 pci=off loglevel=4 i8042.noaux i8042.nomux \
         i8042.dumbkbd mecvisor.stay=1",
    );
}

#[test]
fn aarch64_box_runs_a_vm_workload() {
    vm_workload(
        Arch::Aarch64,
        "console=ttyS0 panic=-1 loglevel=4 mecvisor.stay=1",
    );
}

fn object<'a>(describe: &'a Value, name: &str) -> Option<&'a Value> {
    describe["objects"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == name)
}

/// The pid of VM `name`'s VMM, from its record.
fn vmm_pid(edge: &EdgeBox, name: &str) -> Option<i64> {
    edge.sh(&format!(
        "cat /var/lib/mecvisor/agent/vms/{name}/vmm.pid 2>/dev/null; true"
    ))
    .split_whitespace()
    .next()?
    .parse()
    .ok()
}

/// Sums the `keys` of a cgroup's `memory.stat` text (bytes).
fn stat_sum(stat: &str, keys: &[&str]) -> u64 {
    stat.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(key, _)| keys.contains(key))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

/// The VMM of a running VM with `guest_mib` of RAM is confined: its cgroup
/// (`mecvisor-vms/guest1`) limits it to guest RAM + the overhead, what it
/// uses besides guest RAM fits in that overhead (printed: the measured
/// figure), and every thread runs under a seccomp filter.
fn check_confinement(edge: &EdgeBox, arch: Arch, pid: i64, guest_mib: u64) {
    let cgroup = "/sys/fs/cgroup/mecvisor-vms/guest1";
    let membership = edge.sh(&format!("cat /proc/{pid}/cgroup"));
    assert!(
        membership.contains("/mecvisor-vms/guest1"),
        "the VMM is not in its cgroup: {membership}"
    );
    let limit = edge.sh(&format!("cat {cgroup}/memory.max"));
    let overhead_mib = u64::from(edge_agent::runtimes::vms::cgroup::VMM_OVERHEAD_MIB);
    assert_eq!(
        limit.trim().parse::<u64>().ok(),
        Some((guest_mib + overhead_mib) << 20),
        "memory.max"
    );
    let stat = edge.sh(&format!("cat {cgroup}/memory.stat"));
    // Guest RAM is the VMM's anonymous mapping of exactly its size.
    let guest_rss_kib = edge
        .sh(&format!(
            "awk '/^Size:/ {{ s = $2 }} /^Rss:/ {{ if (s == {}) print $2 }}' /proc/{pid}/smaps",
            guest_mib << 10
        ))
        .trim()
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("no guest RAM mapping in the VMM's smaps"));
    let kernel = match stat_sum(&stat, &["kernel"]) {
        0 => stat_sum(
            &stat,
            &[
                "kernel_stack",
                "pagetables",
                "percpu",
                "sock",
                "slab_unreclaimable",
            ],
        ),
        bytes => bytes,
    };
    let used = stat_sum(&stat, &["anon"]) + kernel;
    let overhead = used.saturating_sub(guest_rss_kib << 10);
    let peak = edge.sh(&format!("cat {cgroup}/memory.peak 2>/dev/null; true"));
    mecvisor_hil::record_figure(&format!(
        "{}: VMM overhead besides guest RAM: {:.1} MiB (anon + kernel {:.1} MiB, guest RAM resident \
         {:.1} MiB, cgroup peak incl. page cache {} bytes; limit = guest + {overhead_mib} MiB)",
        arch.name(),
        overhead as f64 / 1048576.0,
        used as f64 / 1048576.0,
        guest_rss_kib as f64 / 1024.0,
        peak.trim()
    ));
    assert!(
        overhead < overhead_mib << 20,
        "the VMM needs {overhead} bytes besides guest RAM, more than its {overhead_mib} MiB \
         allowance:\n{stat}"
    );
    let modes = edge.sh(&format!("grep -h '^Seccomp:' /proc/{pid}/task/*/status"));
    let threads = modes.lines().count();
    assert!(
        threads >= 2 && modes.lines().all(|l| l.trim_end().ends_with('2')),
        "not every VMM thread is under a seccomp filter:\n{modes}"
    );
}

fn vm_workload(arch: Arch, cmdline: &str) {
    let test = format!("{} VM workload in a box", arch.name());
    let Some(guest) = guest_for_box_or_skip(&test, arch) else {
        return;
    };
    let payload = tempfile::tempdir().expect("payload dir");
    let head = DiskHead::new(&format!("MECVISOR-TEST-DISK {} workload", arch.name()));
    let disk = payload.path().join("disk.img");
    head.write_disk(&disk, 4096);
    write_layout(
        &payload.path().join("guest"),
        &[
            ("kernel", &guest.kernel),
            ("initrd", &guest.initramfs),
            ("disk", &disk),
        ],
    )
    .expect("write the guest's artifacts");

    let device = format!("vmw-{}", arch.name().replace('_', "-"));
    let mut lab = Lab::start().expect("lab network");
    let mut edge = lab
        .boot_box_with(
            arch,
            &device,
            Some(payload.path()),
            "mecvisor.slicing=eth0:100000",
        )
        .expect("boot the box");
    edge.wait_ready(BOOT).unwrap_or_else(|e| panic!("{e}"));

    // Air-gapped import; the names it prints map tags to digests.
    let imported = edge.sh("edge-agent import /mnt/payload/guest --name guest");
    let reference = |tag: &str| -> String {
        imported_reference(&imported, tag)
            .unwrap_or_else(|| panic!("import printed no guest:{tag}:\n{imported}"))
    };
    let manifest = format!(
        "name: guests\ndevices: [{device}]\nslices:\n  - name: apps\n    vlan_id: 100\n    \
         uplink: eth0\n    qos: {{ tier: bronze }}\n    subnet: 10.40.0.0/24\n    gateway: 10.40.0.1\n\
         workloads:\n  - name: guest1\n    vm:\n      \
         kernel: \"{}\"\n      initrd: \"{}\"\n      disks: [{{ image: \"{}\", read_only: true }}]\n      \
         cmdline: \"{cmdline} mecvisor.ip=10.40.0.10/24\"\n      vcpus: 1\n      \
         health: {{ guest_agent: true, interval_s: 5, timeout_s: 5, start_period_s: 300 }}\n    \
         slice: apps\n    \
         address: 10.40.0.10\n    resources: {{ memory_mib: 128 }}\n    restart: on-failure\n",
        reference("kernel"),
        reference("initrd"),
        reference("disk"),
    );
    let path = lab.dir().join("guests.yaml");
    std::fs::write(&path, &manifest).expect("write manifest");
    lab.controller.apply(&path);

    // Running, and the guest booted and read its disk.
    let running = |restarts: u64| {
        wait_until(CONVERGE, || {
            let d = lab.controller.describe(&device)?;
            let vm = object(&d, "guest1")?;
            (vm["phase"] == "running" && vm["restarts"].as_u64() == Some(restarts)).then_some(())
        })
    };
    if running(0).is_none() {
        let vmm_log = edge.sh("cat /var/lib/mecvisor/agent/vms/guest1/vmm.log 2>&1; true");
        lab.fail(&edge, &format!("the VM never ran; VMM log:\n{vmm_log}"));
    }
    let booted = |times: usize| {
        wait_until(CONVERGE, || {
            let logs = edge.sh("edge-agent logs guest1");
            (logs.matches("MECVISOR-GUEST-BOOTED").count() >= times).then_some(logs)
        })
    };
    let logs = booted(1).unwrap_or_else(|| {
        let logs = edge
            .sh("edge-agent logs guest1 --tail 40; cat /var/lib/mecvisor/agent/vms/guest1/vmm.log");
        lab.fail(
            &edge,
            &format!("no boot marker in the VM's console:\n{logs}"),
        )
    });
    let disk_line = format!("MECVISOR-GUEST-DISK {}", head.report());
    assert!(
        wait_until(CONVERGE, || edge
            .sh("edge-agent logs guest1")
            .contains(&disk_line)
            .then_some(()))
        .is_some(),
        "the guest did not read its disk:\n{logs}"
    );
    // The guest agent found the VMM's virtio-vsock device and listens.
    let vsock = wait_until(CONVERGE, || {
        let logs = edge.sh("edge-agent logs guest1");
        logs.contains("MECVISOR-GUEST-VSOCK ").then_some(logs)
    })
    .unwrap_or_default();
    assert!(
        vsock.contains("MECVISOR-GUEST-VSOCK listening"),
        "the guest agent does not listen on vsock:\n{vsock}"
    );
    // The agent's health check reaches the guest agent through the VMM's
    // vsock socket (jailed, under seccomp) and the guest's vsock driver.
    if !edge.logged_since(0, "guest agent answers: healthy", CONVERGE) {
        lab.fail(&edge, "the VM's health check never reached its guest agent");
    }
    let human = lab.controller.fleetctl(&["describe", "device", &device]);
    assert!(
        human.contains("guest1") && human.contains("running"),
        "{human}"
    );
    let net_up = wait_until(CONVERGE, || {
        edge.sh("edge-agent logs guest1")
            .contains("MECVISOR-GUEST-NET eth0 10.40.0.10/24 up")
            .then_some(())
    });
    if net_up.is_none() {
        lab.fail(&edge, "the guest's NIC never came up in its slice");
    }
    let ping = edge.sh("ping -c 3 -W 5 10.40.0.10 && echo guest-answered-ping; true");
    if !ping.contains("guest-answered-ping") {
        let slices = edge.sh("edge-agent slices; ip -br link; ip -br addr");
        lab.fail(
            &edge,
            &format!("the guest did not answer a ping in its slice:\n{ping}\n{slices}"),
        );
    }

    let pid = vmm_pid(&edge, "guest1").unwrap_or_else(|| lab.fail(&edge, "no VMM pid"));
    check_confinement(&edge, arch, pid, 128);

    // Kill the VMM: on-failure starts it again, and the guest boots again.
    edge.sh(&format!("kill -9 {pid}"));
    if running(1).is_none() {
        lab.fail(
            &edge,
            "the VM was not restarted once after its VMM was killed",
        );
    }
    let new_pid = wait_until(CONVERGE, || vmm_pid(&edge, "guest1").filter(|p| *p != pid))
        .unwrap_or_else(|| lab.fail(&edge, "no new VMM process"));
    if booted(2).is_none() {
        lab.fail(&edge, "the restarted guest did not boot");
    }

    // Kill the agent (init starts it again): the VMM keeps running, adopted.
    let mark = edge.kill_agent();
    if !edge.logged_since(mark, "VM adopted as it runs", CONVERGE) {
        lab.fail(&edge, "the restarted agent did not adopt the VM");
    }
    assert_eq!(
        vmm_pid(&edge, "guest1"),
        Some(new_pid),
        "the VMM was replaced"
    );
    assert!(
        edge.sh(&format!("kill -0 {new_pid} && echo alive"))
            .contains("alive"),
        "the VMM died with the agent"
    );
    let d = lab.controller.describe(&device).expect("describe");
    let vm = object(&d, "guest1").expect("guest1 described");
    assert_eq!(vm["restarts"].as_u64(), Some(1), "{vm:#}");

    // Removing the VM asks its guest agent to power the guest off: the
    // guest shuts down by itself and the VMM exits, no signal needed.
    let mark = edge.console_mark();
    let slice_only = manifest
        .split_once("workloads:")
        .map(|(head, _)| format!("{head}workloads: []\n"))
        .expect("the manifest lists workloads");
    std::fs::write(&path, slice_only).expect("write manifest");
    lab.controller.apply(&path);
    if !edge.logged_since(mark, "guest powered off cleanly", CONVERGE) {
        lab.fail(&edge, "removing the VM did not power its guest off cleanly");
    }
    assert!(
        !edge
            .sh(&format!(
                "kill -0 {new_pid} 2>/dev/null && echo alive; true"
            ))
            .contains("alive"),
        "the VMM outlived its removal"
    );
}
