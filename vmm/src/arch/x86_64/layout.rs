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

/// The ACPI root pointer (RSDP), where Linux also scans for it; the other
/// ACPI tables follow it, up to [`ACPI_TABLES_END`]. This range lies
/// between the e820 RAM entries, so the guest never uses it as memory.
pub const RSDP_ADDRESS: u64 = 0xe_0000;
/// End of the ACPI tables' range.
pub const ACPI_TABLES_END: u64 = 0xf_0000;
/// The I/O APIC's registers (KVM's in-kernel IOAPIC sits here).
pub const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
/// The local APICs' registers.
pub const LAPIC_ADDRESS: u32 = 0xfee0_0000;
/// I/O APIC inputs: GSIs 0..IOAPIC_PINS.
pub const IOAPIC_PINS: u32 = 24;
/// First virtio-mmio device window, in the 32-bit hole above RAM.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI of the first virtio-mmio device (0-4 are the PIT, keyboard,
/// cascade and COM2/COM1 lines); each further device takes the next one.
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// The I/O port of the ACPI sleep control register (how a hardware-reduced
/// ACPI guest powers off).
pub const SLEEP_CONTROL_PORT: u16 = 0x3c0;
