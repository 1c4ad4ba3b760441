//! The tiny guest "kernel": an ELF64 x86-64 executable that the VMM loads
//! like a vmlinux and enters in 64-bit long mode.

/// Where the guest's code is loaded and entered (physical = virtual).
const LOAD_ADDRESS: u64 = 0x20_0000;
/// File offset of the code (page aligned, like a linker would put it).
const SEGMENT_OFFSET: usize = 0x1000;

/// What the guest prints on COM1 as its first action.
pub const MARKER: u8 = b'X';

/// `mov al, 'X'; mov dx, 0x3f8; out dx, al; jmp $`: one byte to COM1 from
/// the very first instructions, then spin.
const CODE: [u8; 9] = [0xb0, MARKER, 0x66, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xfe];

/// The tiny guest: an ELF header, one PT_LOAD program header and [`CODE`]
/// at [`LOAD_ADDRESS`], which is also the entry point.
pub fn tiny_guest() -> Vec<u8> {
    let code_len = CODE.len() as u64;
    let mut elf = Vec::with_capacity(SEGMENT_OFFSET + CODE.len());
    // ELF header (64 bytes).
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, little endian, version 1, System V
    elf.extend_from_slice(&[0; 8]); // padding
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff: right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx

    // Program header (56 bytes).
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    elf.extend_from_slice(&(SEGMENT_OFFSET as u64).to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&code_len.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&code_len.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.resize(SEGMENT_OFFSET, 0);
    elf.extend_from_slice(&CODE);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }

    #[test]
    fn one_load_segment_holding_the_code_at_the_entry_point() {
        let elf = tiny_guest();
        assert_eq!(&elf[..5], b"\x7fELF\x02");
        assert_eq!(u16_at(&elf, 18), 0x3e, "EM_X86_64");
        assert_eq!(u64_at(&elf, 24), LOAD_ADDRESS, "e_entry");
        let phoff = u64_at(&elf, 32) as usize;
        assert_eq!(u16_at(&elf, 54), 56, "e_phentsize");
        assert_eq!(u16_at(&elf, 56), 1, "e_phnum");
        let ph = &elf[phoff..phoff + 56];
        assert_eq!(
            u32::from_le_bytes(ph[..4].try_into().expect("4")),
            1,
            "PT_LOAD"
        );
        let (offset, vaddr, paddr) = (u64_at(ph, 8), u64_at(ph, 16), u64_at(ph, 24));
        let (filesz, memsz) = (u64_at(ph, 32), u64_at(ph, 40));
        assert_eq!((vaddr, paddr), (LOAD_ADDRESS, LOAD_ADDRESS));
        assert_eq!((filesz, memsz), (CODE.len() as u64, CODE.len() as u64));
        assert_eq!(&elf[offset as usize..], &CODE);
    }
}
