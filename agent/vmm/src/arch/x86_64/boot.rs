//! Booting Linux on x86_64: the kernel, initramfs and command line into
//! guest RAM (with the zero page describing them), then the boot vCPU's
//! state: MSRs, local APIC wiring and the 64-bit boot protocol's registers.

use std::fs::File;
use std::io::Read;

use super::kernel::{load_kernel, KernelError};
use super::zero_page::{write_zero_page, Initrd, ZeroPageError};
use super::{interrupts, msr, regs};
use crate::memory::{GuestRam, MemoryError};
use crate::vcpu::Vcpu;

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
}

/// Loads `kernel`, the optional `initrd` (at the top of RAM, page-aligned,
/// below the kernel's `initrd_addr_max`) and `cmdline`; returns the
/// kernel's 64-bit entry point.
pub fn load_linux(
    ram: &GuestRam,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &str,
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
    write_zero_page(ram, &loaded, cmdline, initrd)?;
    Ok(loaded.entry)
}

/// Puts the boot vCPU at `entry` per the 64-bit boot protocol, with the
/// MSRs Linux expects and, when the VM has an in-kernel irqchip, its local
/// APIC's LINT0/LINT1 wired as firmware leaves them.
pub fn start_boot_vcpu(
    vcpu: &Vcpu,
    ram: &GuestRam,
    entry: u64,
    irqchip: bool,
) -> Result<(), LinuxBootError> {
    msr::set_boot_msrs(vcpu).map_err(regs::BootError::from)?;
    if irqchip {
        interrupts::set_lint(vcpu).map_err(regs::BootError::from)?;
    }
    regs::setup_linux_boot(vcpu, ram, entry)?;
    Ok(())
}
