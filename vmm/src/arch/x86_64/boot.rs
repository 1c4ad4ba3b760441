//! Booting Linux on x86_64 ([`boot_linux`]): the in-kernel interrupt
//! controllers, the ACPI tables, the kernel, initramfs and command line in
//! guest RAM (with the zero page describing them), then the vCPUs: MSRs,
//! local APIC wiring, and the 64-bit boot protocol's registers on vCPU 0.
//! Plus the board's devices ([`platform`]): COM1, the i8042 (reboot) and
//! the ACPI sleep control port (power off).

use std::fs::File;
use std::io::{Read, Write};

use super::acpi::{self, AcpiError, S5_SLEEP_TYPE};
use super::interrupts::COM1_IRQ;
use super::kernel::{load_kernel, KernelError};
use super::layout::{
    IOAPIC_PINS, SLEEP_CONTROL_PORT, VIRTIO_FIRST_GSI, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use super::zero_page::{write_zero_page, Initrd, ZeroPageError};
use super::{interrupts, msr, regs};
use crate::devices::i8042::{KeyboardController, I8042_BASE, I8042_PORTS};
use crate::devices::mmio::{MmioBus, MmioDeviceInfo};
use crate::devices::pio::{BusError, PortBus};
use crate::devices::power::SleepControl;
use crate::devices::serial::{SerialPort, COM1_BASE, UART_PORTS};
use crate::devices::signal::Signal;
use crate::devices::Platform;
use crate::memory::{GuestRam, MemoryError};
use crate::vcpu::Vcpu;
use crate::vm::{Vm, VmError};

/// Largest guest RAM: one region from 0, which must end below the 32-bit
/// MMIO hole at 3 GiB.
pub const MAX_MEMORY_MIB: u32 = 3072;
/// Most vCPUs per guest (each announced in the ACPI MADT; APIC IDs are the
/// vCPU indices).
pub const MAX_VCPUS: u8 = 32;

/// Initramfs placement granularity.
const PAGE_SIZE: u64 = 4096;

/// Why a Linux guest could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    /// The kernel image was refused.
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    /// The initramfs could not be read.
    #[error("initramfs: {0}")]
    ReadInitrd(#[source] std::io::Error),
    /// The initramfs does not fit between the kernel and the end of RAM
    /// (or above what the kernel can reach).
    #[error("initramfs of {size} bytes does not fit in guest RAM of {ram} bytes after the kernel (which ends at {kernel_end:#x})")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
        /// Guest RAM size.
        ram: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// The zero page or command line could not be written.
    #[error(transparent)]
    ZeroPage(#[from] ZeroPageError),
    /// Guest memory could not be written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The boot vCPU's state could not be set.
    #[error(transparent)]
    Registers(#[from] regs::BootError),
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// KVM refused a step (interrupt controllers, vCPUs).
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A board device could not be placed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// An eventfd for a device could not be created.
    #[error("device signal: {0}")]
    Signal(#[source] std::io::Error),
}

/// Where virtio-mmio device `index` goes: its window above RAM and its
/// own I/O APIC input (GSIs 5..=23, so 19 devices), or `None` past that.
pub fn virtio_mmio_slot(index: usize) -> Option<MmioDeviceInfo> {
    let index = u32::try_from(index).ok()?;
    let irq = VIRTIO_FIRST_GSI.checked_add(index)?;
    (irq < IOAPIC_PINS).then(|| MmioDeviceInfo {
        base: VIRTIO_MMIO_START + u64::from(index) * VIRTIO_MMIO_SIZE,
        size: VIRTIO_MMIO_SIZE,
        irq,
    })
}

/// Guest RAM of `size` bytes from guest-physical 0.
pub fn guest_ram(size: u64) -> Result<GuestRam, MemoryError> {
    GuestRam::new(size)
}

/// The board's devices: COM1 writing to `console` (interrupt on GSI 4),
/// the i8042 raising `reset` on the guest's reset command, the ACPI sleep
/// control port raising `power_off` when the guest enters S5.
pub fn platform<W: Write + Send + 'static>(
    console: W,
    reset: &Signal,
    power_off: &Signal,
) -> Result<Platform, LinuxBootError> {
    let serial_irq = Signal::new().map_err(LinuxBootError::Signal)?;
    let mut ports = PortBus::new();
    ports.insert(
        "COM1",
        COM1_BASE,
        UART_PORTS,
        Box::new(SerialPort::new(serial_irq.clone(), console)),
    )?;
    ports.insert(
        "i8042",
        I8042_BASE,
        I8042_PORTS,
        Box::new(KeyboardController::new(reset.clone())),
    )?;
    ports.insert(
        "ACPI sleep control",
        SLEEP_CONTROL_PORT,
        1,
        Box::new(SleepControl::new(S5_SLEEP_TYPE, power_off.clone())),
    )?;
    Ok(Platform {
        ports,
        mmio: MmioBus::new(),
        interrupts: vec![(serial_irq, COM1_IRQ)],
    })
}

/// Everything up to running: the interrupt controllers, the ACPI tables
/// for `vcpus` vCPUs and the `virtio` devices, the kernel, initramfs and
/// command line, and `vcpus` vCPUs (vCPU 0 at the kernel's entry, the
/// others waiting for the guest's INIT/SIPI). Returns the vCPUs.
pub fn boot_linux(
    vm: &mut Vm,
    vcpus: u8,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
    virtio: &[MmioDeviceInfo],
) -> Result<Vec<Vcpu>, LinuxBootError> {
    vm.create_irqchip()?;
    let rsdp = acpi::write_tables(vm.ram(), vcpus, virtio)?;
    let cmdline = cmdline_with_devices(cmdline, virtio);
    let entry = load_linux(vm.ram(), kernel, initrd, &cmdline, Some(rsdp))?;
    let created = (0..vcpus)
        .map(|index| vm.create_vcpu(index, vcpus))
        .collect::<Result<Vec<_>, _>>()?;
    vm.finish_irqchip()?;
    for vcpu in &created {
        if vcpu.index() == 0 {
            start_boot_vcpu(vcpu, vm.ram(), entry, vm.has_irqchip())?;
        } else {
            prepare_vcpu(vcpu, vm.has_irqchip())?;
        }
    }
    Ok(created)
}

/// `cmdline` with a `virtio_mmio.device=<size>@<base>:<irq>` per device,
/// for kernels built with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES and without
/// ACPI (kernels without it, like Debian's, find the devices in the DSDT
/// and ignore the parameter; one with both claims each window once).
fn cmdline_with_devices(cmdline: &str, virtio: &[MmioDeviceInfo]) -> String {
    let mut full = cmdline.to_string();
    for device in virtio {
        full.push_str(&format!(
            " virtio_mmio.device={}K@{:#x}:{}",
            device.size >> 10,
            device.base,
            device.irq
        ));
    }
    full
}

/// Loads `kernel`, the optional `initrd` (at the top of RAM, page-aligned,
/// below the kernel's `initrd_addr_max`) and `cmdline`, with the zero page
/// naming the ACPI root pointer `acpi_rsdp` if given; returns the kernel's
/// 64-bit entry point.
pub fn load_linux(
    ram: &GuestRam,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
    acpi_rsdp: Option<u64>,
) -> Result<u64, LinuxBootError> {
    let loaded = load_kernel(ram, kernel)?;
    let initrd = match initrd {
        None => None,
        Some(file) => {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(LinuxBootError::ReadInitrd)?;
            let size = bytes.len() as u64;
            let limit = loaded
                .setup_header
                .map_or(u64::from(u32::MAX), |h| u64::from(h.initrd_addr_max));
            let top = ram.size().min(limit.saturating_add(1));
            let too_large = || LinuxBootError::InitrdTooLarge {
                size,
                ram: ram.size(),
                kernel_end: loaded.end,
            };
            let address = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
            if address < loaded.end {
                return Err(too_large());
            }
            ram.write(address, &bytes)?;
            Some(Initrd { address, size })
        }
    };
    write_zero_page(ram, &loaded, cmdline, initrd, acpi_rsdp)?;
    Ok(loaded.entry)
}

/// Puts the boot vCPU at `entry` per the 64-bit boot protocol, after
/// [`prepare_vcpu`].
pub fn start_boot_vcpu(
    vcpu: &Vcpu,
    ram: &GuestRam,
    entry: u64,
    irqchip: bool,
) -> Result<(), LinuxBootError> {
    prepare_vcpu(vcpu, irqchip)?;
    regs::setup_linux_boot(vcpu, ram, entry)?;
    Ok(())
}

/// What every vCPU gets: the MSRs Linux expects and, when the VM has an
/// in-kernel irqchip, its local APIC's LINT0/LINT1 wired as firmware leaves
/// them. A secondary vCPU then waits in KVM for the guest's INIT/SIPI.
pub fn prepare_vcpu(vcpu: &Vcpu, irqchip: bool) -> Result<(), LinuxBootError> {
    msr::set_boot_msrs(vcpu).map_err(regs::BootError::from)?;
    if irqchip {
        interrupts::set_lint(vcpu).map_err(regs::BootError::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_virtio_device_is_named_on_the_command_line_too() {
        let devices = [virtio_mmio_slot(0), virtio_mmio_slot(1)].map(|s| s.expect("slot"));
        assert_eq!(
            cmdline_with_devices("console=ttyS0", &devices),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(cmdline_with_devices("quiet", &[]), "quiet");
    }
}
