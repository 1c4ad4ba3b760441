//! Tiny guests on the host's real KVM (issue 6, must-show 1): payloads the
//! test assembles itself (machine code, with the assembly beside it) run
//! in 16-bit real mode and in 64-bit long mode; their port I/O, MMIO,
//! halts and triple faults come back as the VMM's exits. This host's nested
//! KVM runs such payloads but cannot boot Linux (see docs/design.md).
//! Skips, saying why, where /dev/kvm cannot be opened.
#![cfg(target_arch = "x86_64")]

#[macro_use]
mod common;

use common::{tiny_elf, Console};
use mecvisor_vmm::arch::x86_64::regs::{setup_long_mode, setup_real_mode};
use mecvisor_vmm::{ExitHandler, GuestRam, Stop, Vm};

/// The COM1 data port the payloads write to.
const COM1: u16 = 0x3f8;
/// A port the test's handler treats as "stop the vCPU".
const DONE_PORT: u16 = 0xf4;

/// Records what the guest did; answers port reads with `read_value`.
#[derive(Default)]
struct Recorder {
    port_writes: Vec<(u16, Vec<u8>)>,
    port_reads: Vec<u16>,
    mmio_writes: Vec<(u64, Vec<u8>)>,
    read_value: u8,
}

impl ExitHandler for Recorder {
    fn port_write(&mut self, port: u16, data: &[u8]) -> bool {
        self.port_writes.push((port, data.to_vec()));
        port != DONE_PORT
    }
    fn port_read(&mut self, port: u16, data: &mut [u8]) {
        self.port_reads.push(port);
        data.fill(self.read_value);
    }
    fn mmio_write(&mut self, address: u64, data: &[u8]) -> bool {
        self.mmio_writes.push((address, data.to_vec()));
        true
    }
    fn mmio_read(&mut self, _address: u64, data: &mut [u8]) {
        data.fill(0);
    }
}

fn vm_with_code(ram_bytes: u64, at: u64, code: &[u8]) -> Vm {
    let ram = GuestRam::new(ram_bytes).expect("guest RAM");
    ram.write(at, code).expect("load the payload");
    Vm::new(ram).expect("create the VM")
}

#[test]
fn real_mode_payload_does_port_io_and_mmio_then_halts() {
    skip_without_kvm!("real_mode_payload_does_port_io_and_mmio_then_halts");
    #[rustfmt::skip]
    let code: &[u8] = &[
        0xba, 0xf8, 0x03,             // mov dx, 0x3f8
        0xb0, b'R',                   // mov al, 'R'
        0xee,                         // out dx, al
        0xba, 0xfd, 0x03,             // mov dx, 0x3fd   (COM1 line status)
        0xec,                         // in al, dx       (the handler answers 0x60)
        0xba, 0xf8, 0x03,             // mov dx, 0x3f8
        0xee,                         // out dx, al      (echo what was read)
        0xb8, 0x00, 0x20,             // mov ax, 0x2000
        0x8e, 0xd8,                   // mov ds, ax
        0xc6, 0x06, 0x10, 0x00, 0x5a, // mov byte [0x0010], 0x5a  -> 0x20010, outside RAM
        0xf4,                         // hlt
    ];
    let vm = vm_with_code(64 * 1024, 0x1000, code);
    let mut vcpu = vm.create_vcpu(0, 1).expect("vCPU");
    setup_real_mode(&vcpu, 0x1000).expect("real mode");
    let mut guest = Recorder {
        read_value: 0x60,
        ..Recorder::default()
    };
    assert_eq!(vcpu.run(&mut guest).expect("run"), Stop::Halted);
    assert_eq!(
        guest.port_writes,
        vec![(COM1, vec![b'R']), (COM1, vec![0x60])]
    );
    assert_eq!(guest.port_reads, vec![COM1 + 5]);
    assert_eq!(guest.mmio_writes, vec![(0x20010, vec![0x5a])]);
    let regs = vcpu.fd().get_regs().expect("registers");
    assert_eq!(
        regs.rip,
        0x1000 + code.len() as u64,
        "stopped after the hlt"
    );
}

#[test]
fn long_mode_payload_runs_64_bit_code_with_paging_and_a_stack() {
    skip_without_kvm!("long_mode_payload_runs_64_bit_code_with_paging_and_a_stack");
    #[rustfmt::skip]
    let code: &[u8] = &[
        0x48, 0xb9, 0xf0, 0xde, 0xbc, 0x9a, 0x78, 0x56, 0x34, 0x12, // mov rcx, 0x123456789abcdef0
        0x66, 0xba, 0xf8, 0x03,                                     // mov dx, 0x3f8
        0xb0, b'L',                                                 // mov al, 'L'
        0xee,                                                       // out dx, al
        0x48, 0xb8, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, // mov rax, 0x10000000 (MMIO, mapped, no RAM)
        0xc6, 0x00, 0x2a,                                           // mov byte [rax], 0x2a
        0x50,                                                       // push rax
        0xf4,                                                       // hlt
    ];
    let vm = vm_with_code(2 << 20, 0x1000, code);
    let mut vcpu = vm.create_vcpu(0, 1).expect("vCPU");
    setup_long_mode(&vcpu, vm.ram(), 0x1000).expect("long mode");
    let mut guest = Recorder::default();
    assert_eq!(vcpu.run(&mut guest).expect("run"), Stop::Halted);
    assert_eq!(guest.port_writes, vec![(COM1, vec![b'L'])]);
    assert_eq!(guest.mmio_writes, vec![(0x1000_0000, vec![0x2a])]);
    let regs = vcpu.fd().get_regs().expect("registers");
    assert_eq!(regs.rcx, 0x1234_5678_9abc_def0, "a 64-bit register");
    assert_eq!(regs.rsp, 0x8ff0 - 8, "one push on the boot stack");
    let mut pushed = [0u8; 8];
    vm.ram().read(0x8ff0 - 8, &mut pushed).expect("stack");
    assert_eq!(u64::from_le_bytes(pushed), 0x1000_0000);
    let sregs = vcpu.fd().get_sregs().expect("special registers");
    assert_ne!(sregs.efer & (1 << 10), 0, "long mode active");
    assert_eq!(sregs.cs.l, 1);
}

#[test]
fn a_fault_with_no_handler_shuts_the_guest_down() {
    skip_without_kvm!("a_fault_with_no_handler_shuts_the_guest_down");
    // ud2 with a null IDT: #UD, then #DF, then a triple fault.
    let vm = vm_with_code(2 << 20, 0x1000, &[0x0f, 0x0b]);
    let mut vcpu = vm.create_vcpu(0, 1).expect("vCPU");
    setup_long_mode(&vcpu, vm.ram(), 0x1000).expect("long mode");
    assert_eq!(
        vcpu.run(&mut Recorder::default()).expect("run"),
        Stop::Shutdown
    );
}

#[test]
fn the_device_side_can_stop_the_vcpu() {
    skip_without_kvm!("the_device_side_can_stop_the_vcpu");
    #[rustfmt::skip]
    let code: &[u8] = &[
        0xb0, 0x01,       // mov al, 1
        0xe6, 0xf4,       // out 0xf4, al   (the test's "done" port)
        0xeb, 0xfe,       // jmp $          (never reached again: the loop stops)
    ];
    let vm = vm_with_code(64 * 1024, 0x1000, code);
    let mut vcpu = vm.create_vcpu(0, 1).expect("vCPU");
    setup_real_mode(&vcpu, 0x1000).expect("real mode");
    let mut guest = Recorder::default();
    assert_eq!(vcpu.run(&mut guest).expect("run"), Stop::Requested);
    assert_eq!(guest.port_writes, vec![(DONE_PORT, vec![1])]);
}

#[test]
fn too_little_ram_for_a_long_mode_boot_is_refused() {
    skip_without_kvm!("too_little_ram_for_a_long_mode_boot_is_refused");
    let vm = vm_with_code(16 * 1024, 0x1000, &[0xf4]);
    let vcpu = vm.create_vcpu(0, 1).expect("vCPU");
    let err = setup_long_mode(&vcpu, vm.ram(), 0x1000).expect_err("too small");
    assert!(err.to_string().contains("too small"), "{err}");
}

#[test]
fn a_guest_prints_on_com1_and_resets_through_the_i8042() {
    use mecvisor_vmm::devices::i8042::{KeyboardController, I8042_BASE, I8042_PORTS};
    use mecvisor_vmm::devices::pio::PortBus;
    use mecvisor_vmm::devices::serial::{SerialPort, COM1_BASE, UART_PORTS};
    use mecvisor_vmm::devices::signal::Signal;
    use mecvisor_vmm::devices::Devices;

    skip_without_kvm!("a_guest_prints_on_com1_and_resets_through_the_i8042");
    #[rustfmt::skip]
    let code: &[u8] = &[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'h',       // mov al, 'h'
        0xee,             // out dx, al
        0xb0, b'i',       // mov al, 'i'
        0xee,             // out dx, al
        0xb0, b'\n',      // mov al, '\n'
        0xee,             // out dx, al
        0xba, 0xfd, 0x03, // mov dx, 0x3fd
        0xec,             // in al, dx         (line status)
        0xa2, 0x00, 0x20, // mov [0x2000], al  (kept for the test)
        0xb0, 0xfe,       // mov al, 0xfe
        0xe6, 0x64,       // out 0x64, al      (i8042: reset the CPU)
        0xeb, 0xfe,       // jmp $
    ];
    let vm = vm_with_code(64 * 1024, 0x1000, code);
    let mut vcpu = vm.create_vcpu(0, 1).expect("vCPU");
    setup_real_mode(&vcpu, 0x1000).expect("real mode");
    let console = Console::default();
    let reset = Signal::new().expect("reset signal");
    let mut ports = PortBus::new();
    let uart = SerialPort::new(Signal::new().expect("irq"), console.clone());
    ports
        .insert("com1", COM1_BASE, UART_PORTS, Box::new(uart))
        .expect("com1");
    ports
        .insert(
            "i8042",
            I8042_BASE,
            I8042_PORTS,
            Box::new(KeyboardController::new(reset.clone())),
        )
        .expect("i8042");
    let mut devices = Devices::new(ports, reset.clone());
    assert_eq!(vcpu.run(&mut devices).expect("run"), Stop::Requested);
    assert!(devices.reset_requested());
    assert_eq!(console.0.lock().expect("console").as_slice(), b"hi\n");
    let mut status = [0u8];
    vm.ram().read(0x2000, &mut status).expect("read");
    assert_eq!(
        status[0] & 0x60,
        0x60,
        "transmitter empty in the line status: {:#x}",
        status[0]
    );
    assert!(reset.take(), "the reset eventfd fired");
}

#[test]
fn an_elf_kernel_is_loaded_and_entered_with_the_zero_page_in_rsi() {
    use mecvisor_vmm::arch::x86_64::kernel::{load_kernel, KernelFormat};
    use mecvisor_vmm::arch::x86_64::regs::setup_linux_boot;
    use mecvisor_vmm::arch::x86_64::zero_page::write_zero_page;

    skip_without_kvm!("an_elf_kernel_is_loaded_and_entered_with_the_zero_page_in_rsi");
    // Prints the first byte of the command line the zero page points at,
    // and the low byte of the e820 entry count.
    #[rustfmt::skip]
    let code: &[u8] = &[
        0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x228]  (hdr.cmd_line_ptr)
        0x8a, 0x00,                         // mov al, [rax]
        0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
        0xee,                               // out dx, al
        0x8a, 0x86, 0xe8, 0x01, 0x00, 0x00, // mov al, [rsi + 0x1e8]  (e820_entries)
        0xee,                               // out dx, al
        0xf4,                               // hlt
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vmlinux");
    std::fs::write(&path, tiny_elf(0x20_0000, code)).expect("write the ELF");
    let ram = GuestRam::new(4 << 20).expect("RAM");
    let kernel =
        load_kernel(&ram, &mut std::fs::File::open(&path).expect("open")).expect("load the ELF");
    assert_eq!(kernel.format, KernelFormat::Elf { pvh_entry: None });
    assert_eq!(kernel.entry, 0x20_0000);
    write_zero_page(&ram, &kernel, "console=ttyS0 mecvisor", None, None).expect("zero page");
    let vm = Vm::new(ram).expect("VM");
    let mut vcpu = vm.create_vcpu(0, 1).expect("vCPU");
    setup_linux_boot(&vcpu, vm.ram(), kernel.entry).expect("boot state");
    let mut guest = Recorder::default();
    assert_eq!(vcpu.run(&mut guest).expect("run"), Stop::Halted);
    assert_eq!(guest.port_writes, vec![(COM1, vec![b'c']), (COM1, vec![2])]);
}

#[test]
fn garbage_is_not_a_kernel() {
    use mecvisor_vmm::arch::x86_64::kernel::load_kernel;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("garbage");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).expect("write");
    let ram = GuestRam::new(4 << 20).expect("RAM");
    let err =
        load_kernel(&ram, &mut std::fs::File::open(&path).expect("open")).expect_err("garbage");
    let text = err.to_string();
    assert!(
        text.contains("as ELF") && text.contains("as bzImage"),
        "{text}"
    );
}

#[test]
fn a_kernel_reaching_past_guest_ram_is_refused() {
    use mecvisor_vmm::arch::x86_64::kernel::load_kernel;

    // 64 bytes of code at 3 MiB, but the segment claims 2 MiB of memory:
    // it would end past the 4 MiB of RAM.
    let mut elf = tiny_elf(0x30_0000, &[0xf4; 64]);
    let memsz_offset = 64 + 40;
    elf[memsz_offset..memsz_offset + 8].copy_from_slice(&(2u64 << 20).to_le_bytes());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big");
    std::fs::write(&path, elf).expect("write");
    let ram = GuestRam::new(4 << 20).expect("RAM");
    let err =
        load_kernel(&ram, &mut std::fs::File::open(&path).expect("open")).expect_err("too large");
    assert!(err.to_string().contains("past guest RAM"), "{err}");
}

/// Runs `f` on a thread and fails the test if it takes longer than 10 s
/// (a vCPU that cannot be stopped would otherwise hang the test run).
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not finish within 10 s"))
}

#[test]
fn a_spinning_vcpu_on_its_thread_is_stopped_on_request() {
    skip_without_kvm!("a_spinning_vcpu_on_its_thread_is_stopped_on_request");
    // jmp $: never exits to the VMM by itself.
    let vm = vm_with_code(2 << 20, 0x1000, &[0xeb, 0xfe]);
    let vcpu = vm.create_vcpu(0, 1).expect("vCPU");
    setup_long_mode(&vcpu, vm.ram(), 0x1000).expect("long mode");
    let running = vcpu.spawn(Recorder::default()).expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!running.is_finished(), "the guest spins until stopped");
    let (result, guest) = within_10s("stopping the vCPU", move || running.stop());
    assert_eq!(result.expect("run"), Stop::Requested);
    assert!(guest.port_writes.is_empty());
    drop(vm);
}

#[test]
fn a_vcpu_that_halted_by_itself_reports_the_halt_when_stopped() {
    skip_without_kvm!("a_vcpu_that_halted_by_itself_reports_the_halt_when_stopped");
    let vm = vm_with_code(64 * 1024, 0x1000, &[0xf4]);
    let vcpu = vm.create_vcpu(0, 1).expect("vCPU");
    setup_real_mode(&vcpu, 0x1000).expect("real mode");
    let running = vcpu.spawn(Recorder::default()).expect("spawn");
    let (result, _) = within_10s("the halt", move || running.join());
    assert_eq!(result.expect("run"), Stop::Halted);
}
