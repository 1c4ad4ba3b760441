//! Booting Linux on aarch64: the steps listed in the module doc of
//! [`super`], as [`boot_linux`] (everything from the GIC to vCPU 0's
//! registers) and the pieces it is made of, plus the platform devices on
//! the MMIO bus ([`platform`]).

use std::fs::File;
use std::io::{Read, Write};

use super::fdt::{build_fdt, FdtConfig, FdtError};
use super::kernel::{load_kernel, KernelError, LoadedKernel};
use super::layout::{
    fdt_address, INITRD_WINDOW, MAX_VCPUS_GICV2, PAGE_SIZE, RAM_START, RTC_BASE, RTC_SIZE,
    SERIAL_BASE, SERIAL_SIZE, SERIAL_SPI,
};
use super::regs;
use crate::devices::mmio::{MmioBus, MmioBusError, MmioDeviceInfo};
use crate::devices::pio::PortBus;
use crate::devices::rtc_pl031::Pl031;
use crate::devices::serial::SerialPort;
use crate::devices::signal::Signal;
use crate::devices::Platform;
use crate::memory::{GuestRam, MemoryError};
use crate::vcpu::{Vcpu, VcpuError};
use crate::vm::{Vm, VmError};

/// Largest guest RAM: RAM starts at 2 GiB with nothing above it; 32 GiB
/// keeps the initramfs in the window the boot protocol allows.
pub const MAX_MEMORY_MIB: u32 = 32 * 1024;
/// Most vCPUs per guest: what a GICv2 (the fallback) can serve.
pub const MAX_VCPUS: u8 = MAX_VCPUS_GICV2 as u8;

/// Why a Linux guest could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    /// The kernel image was refused.
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    /// The initramfs could not be read.
    #[error("initramfs: {0}")]
    ReadInitrd(#[source] std::io::Error),
    /// The initramfs does not fit between the kernel and the FDT.
    #[error("initramfs of {size} bytes does not fit between the kernel (which ends at {kernel_end:#x}) and {top:#x}")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
        /// Where the kernel ends.
        kernel_end: u64,
        /// Highest end it may have (the FDT, or the end of the window the
        /// boot protocol allows).
        top: u64,
    },
    /// RAM is too small for the kernel plus the 2 MiB the FDT needs.
    #[error("guest RAM of {ram} bytes leaves no room for the device tree after the kernel (which ends at {kernel_end:#x})")]
    NoRoomForFdt {
        /// Guest RAM size.
        ram: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// The VM has no GIC ([`Vm::create_irqchip`] was not done).
    #[error("the VM has no interrupt controller")]
    NoIrqchip,
    /// The device tree could not be built.
    #[error(transparent)]
    Fdt(#[from] FdtError),
    /// Guest memory could not be written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM refused a step (GIC, vCPU creation).
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A vCPU's registers could not be read or set.
    #[error(transparent)]
    Registers(#[from] VcpuError),
    /// A board device could not be placed.
    #[error(transparent)]
    MmioBus(#[from] MmioBusError),
    /// An eventfd for a device could not be created.
    #[error("device signal: {0}")]
    Signal(#[source] std::io::Error),
}

/// What [`load_linux`] placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedLinux {
    /// The kernel.
    pub kernel: LoadedKernel,
    /// Where the FDT goes (written later by [`write_fdt`]).
    pub fdt_address: u64,
    /// The initramfs as (start, size), if any.
    pub initrd: Option<(u64, u64)>,
}

/// Where virtio-mmio device `index` goes: its slot's window and SPI, or
/// `None` past the last slot.
pub fn virtio_mmio_slot(index: usize) -> Option<MmioDeviceInfo> {
    let (base, irq) = super::layout::virtio_mmio_slot(u32::try_from(index).ok()?)?;
    Some(MmioDeviceInfo {
        base,
        size: super::layout::VIRTIO_MMIO_SLOT_SIZE,
        irq,
    })
}

/// Guest RAM of `size` bytes at [`RAM_START`].
pub fn guest_ram(size: u64) -> Result<GuestRam, MemoryError> {
    GuestRam::new_at(RAM_START, size)
}

/// Loads `kernel` at the start of RAM (+ its text_offset) and the optional
/// `initrd` page-aligned right below the FDT's 2 MiB, and says where the
/// FDT goes.
pub fn load_linux(
    ram: &GuestRam,
    kernel: &mut File,
    initrd: Option<&mut File>,
) -> Result<LoadedLinux, LinuxBootError> {
    let loaded = load_kernel(ram, kernel)?;
    let fdt = fdt_address(ram.size())
        .filter(|address| *address >= loaded.end)
        .ok_or(LinuxBootError::NoRoomForFdt {
            ram: ram.size(),
            kernel_end: loaded.end,
        })?;
    let initrd = match initrd {
        None => None,
        Some(file) => {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(LinuxBootError::ReadInitrd)?;
            let size = bytes.len() as u64;
            let address = initrd_address(size, loaded.end, fdt)?;
            ram.write(address, &bytes)?;
            Some((address, size))
        }
    };
    Ok(LoadedLinux {
        kernel: loaded,
        fdt_address: fdt,
        initrd,
    })
}

/// The highest page-aligned start for an initramfs of `size` bytes that
/// ends at or below both `fdt` and the end of the 32 GiB window that holds
/// the kernel, and starts at or after `kernel_end`.
fn initrd_address(size: u64, kernel_end: u64, fdt: u64) -> Result<u64, LinuxBootError> {
    let top = fdt.min(RAM_START + INITRD_WINDOW);
    let too_large = LinuxBootError::InitrdTooLarge {
        size,
        kernel_end,
        top,
    };
    let address = top.checked_sub(size).ok_or(too_large)? & !(PAGE_SIZE - 1);
    if address < kernel_end {
        return Err(LinuxBootError::InitrdTooLarge {
            size,
            kernel_end,
            top,
        });
    }
    Ok(address)
}

/// Builds the device tree for `config` and writes it at `address`.
pub fn write_fdt(
    ram: &GuestRam,
    config: &FdtConfig<'_>,
    address: u64,
) -> Result<(), LinuxBootError> {
    let blob = build_fdt(config)?;
    ram.write(address, &blob)?;
    Ok(())
}

/// The board's devices: the serial console (a 16550A writing to
/// `console`, interrupt on [`SERIAL_SPI`]) and the PL031 on the MMIO bus,
/// at the addresses of [`super::layout`]. A reboot or power-off arrives as
/// a PSCI call that KVM turns into a vCPU exit, so `reset` and `power_off`
/// are not raised by any device here.
pub fn platform<W: Write + Send + 'static>(
    console: W,
    _reset: &Signal,
    _power_off: &Signal,
) -> Result<Platform, LinuxBootError> {
    let serial_irq = Signal::new().map_err(LinuxBootError::Signal)?;
    let mut mmio = MmioBus::new();
    mmio.insert(
        "serial",
        SERIAL_BASE,
        SERIAL_SIZE,
        Box::new(SerialPort::new(serial_irq.clone(), console)),
    )?;
    mmio.insert("rtc", RTC_BASE, RTC_SIZE, Box::new(Pl031::new()))?;
    Ok(Platform {
        ports: PortBus::new(),
        mmio,
        interrupts: vec![(serial_irq, SERIAL_SPI)],
    })
}

/// Puts `vcpu` (vCPU 0) at `entry` with the FDT at `fdt_address`.
pub fn start_boot_vcpu(vcpu: &Vcpu, entry: u64, fdt_address: u64) -> Result<(), LinuxBootError> {
    Ok(regs::setup_linux_boot(vcpu, entry, fdt_address)?)
}

/// Steps 2 to 8 of the boot (see [`super`]) on `vm`, whose RAM came from
/// [`guest_ram`]: the GIC, `vcpus` vCPUs, the kernel, initramfs and device
/// tree (announcing `virtio`), and vCPU 0's boot state. Returns the vCPUs,
/// ready to run once the caller has registered the devices' irqfds.
pub fn boot_linux(
    vm: &mut Vm,
    vcpus: u8,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
    virtio: &[MmioDeviceInfo],
) -> Result<Vec<Vcpu>, LinuxBootError> {
    vm.create_irqchip()?;
    let created = (0..vcpus)
        .map(|index| vm.create_vcpu(index, vcpus))
        .collect::<Result<Vec<_>, _>>()?;
    vm.finish_irqchip()?;
    let gic = vm.irqchip().ok_or(LinuxBootError::NoIrqchip)?.version();
    let mpidrs = created
        .iter()
        .map(regs::read_mpidr)
        .collect::<Result<Vec<_>, _>>()?;

    let loaded = load_linux(vm.ram(), kernel, initrd)?;
    let config = FdtConfig {
        cpu_mpidrs: &mpidrs,
        ram_base: vm.ram().base(),
        ram_size: vm.ram().size(),
        gic,
        cmdline,
        initrd: loaded.initrd,
        virtio,
    };
    write_fdt(vm.ram(), &config, loaded.fdt_address)?;
    if let Some(boot) = created.first() {
        start_boot_vcpu(boot, loaded.kernel.entry, loaded.fdt_address)?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use std::io::Seek;

    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_initrd_sits_page_aligned_below_the_fdt() {
        let fdt = RAM_START + 254 * MIB;
        assert_eq!(
            initrd_address(0x1_0001, RAM_START + 40 * MIB, fdt).expect("fits"),
            (fdt - 0x1_0001) & !0xfff
        );
        assert_eq!(initrd_address(0, RAM_START, fdt).expect("empty"), fdt);
    }

    #[test]
    fn the_initrd_stays_in_the_32_gib_window_and_after_the_kernel() {
        let fdt = RAM_START + (40 << 30);
        assert_eq!(
            initrd_address(MIB, RAM_START + 40 * MIB, fdt).expect("fits"),
            RAM_START + (32 << 30) - MIB
        );
        assert!(matches!(
            initrd_address(10 * MIB, RAM_START + 40 * MIB, RAM_START + 48 * MIB),
            Err(LinuxBootError::InitrdTooLarge { .. })
        ));
        assert!(matches!(
            initrd_address(u64::MAX, RAM_START, RAM_START + 48 * MIB),
            Err(LinuxBootError::InitrdTooLarge { .. })
        ));
    }

    #[test]
    fn linux_loads_with_the_initrd_below_the_fdt() {
        let mut image = vec![0u8; 0x3000];
        image[0x10..0x18].copy_from_slice(&0x10_0000u64.to_le_bytes());
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        let mut kernel = tempfile::tempfile().expect("tempfile");
        kernel.write_all(&image).expect("write");
        let mut initrd = tempfile::tempfile().expect("tempfile");
        initrd.write_all(&[7u8; 5000]).expect("write");
        initrd.rewind().expect("rewind");

        let ram = guest_ram(16 * MIB).expect("ram");
        let loaded = load_linux(&ram, &mut kernel, Some(&mut initrd)).expect("load");
        assert_eq!(loaded.kernel.entry, RAM_START);
        assert_eq!(loaded.fdt_address, RAM_START + 14 * MIB);
        assert_eq!(loaded.initrd, Some((RAM_START + 14 * MIB - 0x2000, 5000)));
        let mut back = [0u8; 4];
        ram.read(RAM_START + 14 * MIB - 0x2000, &mut back)
            .expect("read");
        assert_eq!(back, [7; 4]);

        let tiny = guest_ram(2 * MIB).expect("ram");
        assert!(matches!(
            load_linux(&tiny, &mut kernel, None),
            Err(LinuxBootError::NoRoomForFdt { .. })
        ));
    }
}
