//! Loading an x86_64 Linux kernel into guest RAM with linux-loader: an ELF
//! vmlinux (segments at their physical addresses, entered in 64-bit mode
//! at its entry point; a PVH note is recorded) or a bzImage (its
//! protected-mode part at 1 MiB, entered at the 64-bit entry 0x200 past
//! it). Anything else is refused naming both attempts.

use std::fs::File;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::GuestAddress;

use super::layout::HIGH_MEMORY_START;
use crate::memory::GuestRam;

/// Offset of the 64-bit entry point from where a bzImage's protected-mode
/// code is loaded (Documentation/arch/x86/boot.rst).
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Which kind of image was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux; `pvh_entry` is its PVH entry when it has the note.
    Elf {
        /// The 32-bit PVH entry point, if the image has one.
        pvh_entry: Option<u64>,
    },
    /// A bzImage.
    BzImage,
}

/// A kernel in guest RAM.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// What it was.
    pub format: KernelFormat,
    /// Where to start it in 64-bit mode.
    pub entry: u64,
    /// First guest address after it.
    pub end: u64,
    /// The bzImage's setup header (the zero page starts from it).
    pub setup_header: Option<setup_header>,
}

/// Why a kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The image (with its zero-filled part) reaches past guest RAM.
    #[error("the kernel ends at {end:#x}, past guest RAM ({ram} bytes)")]
    TooLarge {
        /// Where it ends.
        end: u64,
        /// Guest RAM size.
        ram: u64,
    },
    /// Neither an ELF vmlinux nor a bzImage (or one that does not fit).
    #[error("not a loadable x86_64 kernel (as ELF: {elf}; as bzImage: {bzimage})")]
    Unrecognised {
        /// linux-loader's ELF verdict.
        elf: String,
        /// linux-loader's bzImage verdict.
        bzimage: String,
    },
}

/// Loads the kernel in `image` into `ram`; its end (including memory the
/// image declares but does not carry, e.g. .bss) must lie inside RAM.
pub fn load_kernel(ram: &GuestRam, image: &mut File) -> Result<LoadedKernel, KernelError> {
    let kernel = load_any(ram, image)?;
    if kernel.end > ram.size() {
        return Err(KernelError::TooLarge {
            end: kernel.end,
            ram: ram.size(),
        });
    }
    Ok(kernel)
}

fn load_any(ram: &GuestRam, image: &mut File) -> Result<LoadedKernel, KernelError> {
    let high = Some(GuestAddress(HIGH_MEMORY_START));
    let elf = match Elf::load(ram.memory(), None, image, high) {
        Ok(loaded) => {
            let pvh_entry = match loaded.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(address) => Some(address.0),
                _ => None,
            };
            return Ok(LoadedKernel {
                format: KernelFormat::Elf { pvh_entry },
                entry: loaded.kernel_load.0,
                end: loaded.kernel_end,
                setup_header: None,
            });
        }
        Err(e) => e.to_string(),
    };
    match BzImage::load(ram.memory(), None, image, high) {
        Ok(loaded) => Ok(LoadedKernel {
            format: KernelFormat::BzImage,
            entry: loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            end: loaded.kernel_end,
            setup_header: loaded.setup_header,
        }),
        Err(e) => Err(KernelError::Unrecognised {
            elf,
            bzimage: e.to_string(),
        }),
    }
}
