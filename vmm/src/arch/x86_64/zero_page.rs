//! The zero page (`boot_params`) and command line a 64-bit Linux kernel
//! reads at boot: the setup header (the bzImage's own, or a minimal one
//! for an ELF vmlinux), where the command line and initramfs are, and the
//! e820 memory map (RAM below the EBDA, RAM from 1 MiB to the end).

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress};

use super::kernel::LoadedKernel;
use super::layout::{
    CMDLINE_ADDRESS, CMDLINE_MAX_BYTES, HIGH_MEMORY_START, LOW_MEMORY_END, ZERO_PAGE_ADDRESS,
};
use crate::memory::{GuestRam, MemoryError};

/// The boot sector signature the kernel checks.
const BOOT_FLAG: u16 = 0xaa55;
/// "HdrS": a setup header is present.
const HEADER_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id.
const LOADER_UNDEFINED: u8 = 0xff;
/// The kernel's alignment for an ELF vmlinux (16 MiB, as distribution
/// kernels are built).
const ELF_KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// e820 type of usable RAM.
const E820_RAM: u32 = 1;

/// Why the zero page could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// The command line is too long or holds a NUL byte.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The initramfs lies outside the 32-bit range the header can name.
    #[error("initramfs at {address:#x} ({size} bytes) is beyond 4 GiB")]
    InitrdTooHigh {
        /// Where it is.
        address: u64,
        /// Its size.
        size: u64,
    },
    /// Guest RAM does not reach past 1 MiB.
    #[error("guest RAM of {0} bytes ends below 1 MiB")]
    TooSmall(u64),
    /// Writing guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// An initramfs already in guest RAM.
#[derive(Debug, Clone, Copy)]
pub struct Initrd {
    /// Guest address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Writes `cmdline` and the zero page for `kernel` into `ram`, naming the
/// ACPI root pointer `acpi_rsdp` when there are ACPI tables.
pub fn write_zero_page(
    ram: &GuestRam,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<Initrd>,
    acpi_rsdp: Option<u64>,
) -> Result<(), ZeroPageError> {
    if ram.size() <= HIGH_MEMORY_START {
        return Err(ZeroPageError::TooSmall(ram.size()));
    }
    if cmdline.len() + 1 > CMDLINE_MAX_BYTES || cmdline.contains('\0') {
        return Err(ZeroPageError::Cmdline(format!(
            "{} bytes or a NUL byte; at most {} bytes without NUL",
            cmdline.len(),
            CMDLINE_MAX_BYTES - 1
        )));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    ram.write(CMDLINE_ADDRESS, &bytes)?;

    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(header) => params.hdr = header,
        None => {
            params.hdr.boot_flag = BOOT_FLAG;
            params.hdr.header = HEADER_MAGIC;
            params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_ADDRESS as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;
    if let Some(initrd) = initrd {
        let (Ok(address), Ok(size)) = (u32::try_from(initrd.address), u32::try_from(initrd.size))
        else {
            return Err(ZeroPageError::InitrdTooHigh {
                address: initrd.address,
                size: initrd.size,
            });
        };
        params.hdr.ramdisk_image = address;
        params.hdr.ramdisk_size = size;
    }
    let map = [
        (0, LOW_MEMORY_END),
        (HIGH_MEMORY_START, ram.size() - HIGH_MEMORY_START),
    ];
    for (i, (address, size)) in map.into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: address,
            size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = map.len() as u8;
    params.acpi_rsdp_addr = acpi_rsdp.unwrap_or(0);
    ram.memory()
        .write_obj(params, GuestAddress(ZERO_PAGE_ADDRESS))
        .map_err(|e| MemoryError::Access {
            address: ZERO_PAGE_ADDRESS,
            len: std::mem::size_of::<boot_params>(),
            message: e.to_string(),
        })?;
    Ok(())
}
