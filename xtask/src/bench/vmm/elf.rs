//! The tiny guest "kernel": an ELF64 x86-64 executable (built by the VMM
//! crate's own payload builder) that the VMM loads like a vmlinux and
//! enters in 64-bit long mode.

/// Where the guest's code is loaded and entered (physical = virtual).
const LOAD_ADDRESS: u64 = 0x20_0000;

/// What the guest prints on COM1 as its first action.
pub const MARKER: u8 = b'X';

/// `mov al, 'X'; mov dx, 0x3f8; out dx, al; jmp $`: one byte to COM1 from
/// the very first instructions, then spin.
const CODE: [u8; 9] = [0xb0, MARKER, 0x66, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xfe];

/// The tiny guest: [`CODE`] at [`LOAD_ADDRESS`], which is also the entry
/// point.
pub fn tiny_guest() -> Vec<u8> {
    mecvisor_vmm::payload::elf64_x86(LOAD_ADDRESS, &CODE)
}
