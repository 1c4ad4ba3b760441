//! Where x86_64 boot structures live in guest-physical memory (the layout
//! of the Linux 64-bit boot protocol as Firecracker uses it), and the
//! pages KVM reserves above guest RAM.

/// The GDT: null, code, data, TSS descriptors.
pub const GDT_ADDRESS: u64 = 0x500;
/// The IDT: one null gate, so any exception ends in a triple fault.
pub const IDT_ADDRESS: u64 = 0x520;
/// Top of the boot stack.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot identity mapping.
pub const PML4_ADDRESS: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_ADDRESS: u64 = 0xa000;
/// Page directory (512 entries of 2 MiB: the first GiB).
pub const PD_ADDRESS: u64 = 0xb000;
/// First byte after the boot structures: guest RAM must reach at least
/// here for a long-mode boot.
pub const BOOT_STRUCTURES_END: u64 = 0xc000;
/// How much the boot identity mapping covers.
pub const IDENTITY_MAPPED_BYTES: u64 = 1 << 30;
/// Three pages KVM uses for the real-mode TSS (Intel without unrestricted
/// guest), just below 4 GiB.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// One page KVM uses for its identity page table, below the TSS pages.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The zero page (`boot_params`) handed to Linux in rsi.
pub const ZERO_PAGE_ADDRESS: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_ADDRESS: u64 = 0x20000;
/// Longest command line accepted, with its NUL (the kernel's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_BYTES: usize = 2048;
/// Start of high memory: kernels load at or above it.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// End of the usable RAM below 1 MiB (the EBDA and the BIOS area follow).
pub const LOW_MEMORY_END: u64 = 0x9_fc00;
