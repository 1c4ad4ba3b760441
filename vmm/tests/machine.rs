//! A whole machine (`mecvisor_vmm::Machine`) on the host's real KVM, with
//! the in-kernel interrupt controllers: a tiny ELF "kernel" the test
//! assembles is loaded with an initramfs and command line, reads both
//! through the zero page, prints on COM1 and reboots through the i8042,
//! which ends the machine; a guest that spins forever is stopped by
//! SIGTERM. Invalid configurations are refused before anything starts.
//! Skips, saying why, where /dev/kvm cannot be opened.
#![cfg(target_arch = "x86_64")]

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use common::{tiny_elf, Console};
use mecvisor_vmm::machine::DiskConfig;
use mecvisor_vmm::signals::TerminationSignals;
use mecvisor_vmm::{Ended, Machine, MachineConfig, MachineError};

fn config(kernel: PathBuf, initrd: Option<PathBuf>) -> MachineConfig {
    MachineConfig {
        kernel,
        initrd,
        cmdline: "mecvisor test".into(),
        memory_mib: 64,
        vcpus: 1,
        disks: Vec::new(),
        nets: Vec::new(),
        vsock: None,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write a test file");
    path
}

#[test]
fn a_kernel_reads_its_cmdline_and_initramfs_prints_and_reboots() {
    skip_without_kvm!("a_kernel_reads_its_cmdline_and_initramfs_prints_and_reboots");
    // Prints the command line's first byte, the initramfs's first two
    // bytes and the ACPI root pointer's first byte (all found through the
    // zero page in rsi), then resets the CPU. A second vCPU waits for an
    // INIT/SIPI that never comes and is stopped with the machine.
    #[rustfmt::skip]
    let code: &[u8] = &[
        0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
        0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x228]  (hdr.cmd_line_ptr)
        0x8a, 0x00,                         // mov al, [rax]
        0xee,                               // out dx, al
        0x8b, 0x9e, 0x18, 0x02, 0x00, 0x00, // mov ebx, [rsi + 0x218]  (hdr.ramdisk_image)
        0x8a, 0x03,                         // mov al, [rbx]
        0xee,                               // out dx, al
        0x8a, 0x43, 0x01,                   // mov al, [rbx + 1]
        0xee,                               // out dx, al
        0x48, 0x8b, 0x5e, 0x70,             // mov rbx, [rsi + 0x70]  (acpi_rsdp_addr)
        0x8a, 0x03,                         // mov al, [rbx]          ("RSD PTR ")
        0xee,                               // out dx, al
        0xb0, 0xfe,                         // mov al, 0xfe
        0xe6, 0x64,                         // out 0x64, al  (i8042: reset the CPU)
        0xeb, 0xfe,                         // jmp $
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = write(dir.path(), "vmlinux", &tiny_elf(0x20_0000, code));
    let initrd = write(dir.path(), "initrd", b"ZQ and the rest of an initramfs");
    let console = Console::default();
    let signals = TerminationSignals::block().expect("signalfd");
    let two_vcpus = MachineConfig {
        vcpus: 2,
        ..config(kernel, Some(initrd))
    };
    let machine = Machine::boot(&two_vcpus, console.clone()).expect("boot");
    let ended = machine.run(signals).expect("run");
    assert!(matches!(ended, Ended::Reset), "{ended:?}");
    assert_eq!(console.text(), "mZQR");
}

#[test]
fn a_write_to_the_acpi_sleep_control_port_powers_off() {
    skip_without_kvm!("a_write_to_the_acpi_sleep_control_port_powers_off");
    #[rustfmt::skip]
    let code: &[u8] = &[
        0x66, 0xba, 0xc0, 0x03, // mov dx, 0x3c0   (the FADT's sleep control register)
        0xb0, 0x34,             // mov al, 0x34    (SLP_EN | SLP_TYP 5, as in \_S5_)
        0xee,                   // out dx, al
        0xeb, 0xfe,             // jmp $
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = write(dir.path(), "vmlinux", &tiny_elf(0x20_0000, code));
    let signals = TerminationSignals::block().expect("signalfd");
    let machine = Machine::boot(&config(kernel, None), Console::default()).expect("boot");
    let ended = machine.run(signals).expect("run");
    assert!(matches!(ended, Ended::PowerOff), "{ended:?}");
}

#[test]
fn sigterm_stops_a_spinning_guest() {
    skip_without_kvm!("sigterm_stops_a_spinning_guest");
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = write(dir.path(), "vmlinux", &tiny_elf(0x20_0000, &[0xeb, 0xfe])); // jmp $
    let signals = TerminationSignals::block().expect("signalfd");
    let machine = Machine::boot(&config(kernel, None), Console::default()).expect("boot");
    // SAFETY: raise() sends SIGTERM to this thread, which blocked it above:
    // it waits in the signalfd instead of ending the test process.
    assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
    let ended = machine.run(signals).expect("run");
    assert!(
        matches!(ended, Ended::Terminated(libc::SIGTERM)),
        "{ended:?}"
    );
}

#[test]
fn invalid_configurations_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = write(dir.path(), "vmlinux", b"not looked at");
    let cases = [
        (
            MachineConfig {
                memory_mib: 16,
                ..config(kernel.clone(), None)
            },
            "memory of 16 MiB",
        ),
        (
            MachineConfig {
                vcpus: 0,
                ..config(kernel.clone(), None)
            },
            "0 vCPUs",
        ),
        (config(dir.path().join("missing"), None), "kernel"),
        (
            config(kernel.clone(), Some(dir.path().join("missing-initrd"))),
            "initramfs",
        ),
        (
            MachineConfig {
                disks: vec![DiskConfig {
                    path: dir.path().join("missing-disk"),
                    read_only: false,
                }],
                ..config(kernel.clone(), None)
            },
            "disk",
        ),
        (
            MachineConfig {
                disks: vec![
                    DiskConfig {
                        path: kernel.clone(),
                        read_only: true,
                    };
                    100
                ],
                ..config(kernel.clone(), None)
            },
            "100 disks",
        ),
    ];
    for (bad, needle) in cases {
        match bad.validate() {
            Err(MachineError::Invalid(why)) => assert!(why.contains(needle), "{why}"),
            other => panic!("{needle}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn an_initramfs_that_does_not_fit_is_refused() {
    skip_without_kvm!("an_initramfs_that_does_not_fit_is_refused");
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = write(dir.path(), "vmlinux", &tiny_elf(0x20_0000, &[0xf4]));
    let initrd = write(dir.path(), "initrd", &vec![0u8; 65 << 20]);
    let refused = Machine::boot(&config(kernel, Some(initrd)), Console::default());
    match refused {
        Err(e) => assert!(e.to_string().contains("does not fit"), "{e}"),
        Ok(_) => panic!("a 65 MiB initramfs was accepted into 64 MiB of RAM"),
    }
}

#[test]
fn a_disk_is_a_virtio_block_device_in_the_first_mmio_slot() {
    skip_without_kvm!("a_disk_is_a_virtio_block_device_in_the_first_mmio_slot");
    // Maps 0xd000_0000 (the first virtio-mmio window, above the boot
    // identity map) with a 2 MiB page, prints the window's magic value and
    // the device id, then resets.
    #[rustfmt::skip]
    let code: &[u8] = &[
        0x48, 0xc7, 0x04, 0x25, 0x18, 0xa0, 0x00, 0x00, 0x03, 0xc0, 0x00, 0x00, // mov qword [0xa018], 0xc003  (PDPT[3] -> PD at 0xc000)
        0x48, 0xb8, 0x83, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00,             // mov rax, 0xd0000083         (2 MiB page, present, writable)
        0x48, 0x89, 0x04, 0x25, 0x00, 0xc4, 0x00, 0x00,                         // mov [0xc400], rax           (PD[0x80])
        0x48, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00,             // mov rbx, 0xd0000000
        0x66, 0xba, 0xf8, 0x03,                                                 // mov dx, 0x3f8
        0x8b, 0x03,                                                             // mov eax, [rbx]      (MagicValue "virt")
        0xee,                                                                   // out dx, al
        0xc1, 0xe8, 0x08, 0xee,                                                 // shr eax, 8; out dx, al
        0xc1, 0xe8, 0x08, 0xee,                                                 // shr eax, 8; out dx, al
        0xc1, 0xe8, 0x08, 0xee,                                                 // shr eax, 8; out dx, al
        0x8b, 0x43, 0x08,                                                       // mov eax, [rbx + 8]  (DeviceID)
        0x04, 0x30,                                                             // add al, '0'
        0xee,                                                                   // out dx, al
        0xb0, 0xfe, 0xe6, 0x64,                                                 // mov al, 0xfe; out 0x64, al  (reset)
        0xeb, 0xfe,                                                             // jmp $
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = write(dir.path(), "vmlinux", &tiny_elf(0x20_0000, code));
    let disk = write(dir.path(), "disk.img", &[0u8; 4096]);
    let with_disk = MachineConfig {
        disks: vec![DiskConfig {
            path: disk,
            read_only: true,
        }],
        ..config(kernel, None)
    };
    let console = Console::default();
    let signals = TerminationSignals::block().expect("signalfd");
    let machine = Machine::boot(&with_disk, console.clone()).expect("boot");
    let ended = machine.run(signals).expect("run");
    assert!(matches!(ended, Ended::Reset), "{ended:?}");
    assert_eq!(console.text(), "virt2");
}
