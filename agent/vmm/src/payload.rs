//! Tiny guest images the VMM loads like a vmlinux: an ELF64 x86-64
//! executable with one PT_LOAD segment, entered in 64-bit long mode. For
//! tests and benchmarks on hosts whose KVM runs small payloads but not
//! Linux (see DESIGN.md, "Environments you will meet").

/// File offset of the code (page aligned, as a linker puts it).
const SEGMENT_OFFSET: u64 = 0x1000;

/// An ELF64 x86-64 executable whose single PT_LOAD segment holds `code`
/// at physical and virtual `address`, which is also its entry point.
pub fn elf64_x86(address: u64, code: &[u8]) -> Vec<u8> {
    let mut elf = Vec::with_capacity(SEGMENT_OFFSET as usize + code.len());
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, LE, v1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&address.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff: right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R + X
    elf.extend_from_slice(&SEGMENT_OFFSET.to_le_bytes()); // p_offset
    elf.extend_from_slice(&address.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&address.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.resize(SEGMENT_OFFSET as usize, 0);
    elf.extend_from_slice(code);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_and_entry_are_where_the_headers_say() {
        let elf = elf64_x86(0x20_0000, &[0xf4]);
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(
            u64::from_le_bytes(elf[24..32].try_into().unwrap()),
            0x20_0000
        );
        let offset = u64::from_le_bytes(elf[64 + 8..64 + 16].try_into().unwrap());
        assert_eq!(elf[offset as usize], 0xf4);
    }
}
