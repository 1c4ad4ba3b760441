//! Tiny guest images the VMM loads like a vmlinux: an ELF64 x86-64
//! executable with one PT_LOAD segment, entered in 64-bit long mode. For
//! tests and benchmarks on hosts whose KVM runs small payloads but not
//! Linux (see docs/design.md, "Environments you will meet").

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

/// x86-64 code that maps the 2 MiB page holding `base` (in the 2nd to
/// 512th GiB; the boot identity map covers only the first), then drives
/// the virtio-mmio device whose window starts there to DRIVER_OK, as a
/// guest driver would: acknowledge, accept
/// VIRTIO_F_VERSION_1 only, then set up `queues` queues of 8 entries in
/// zeroed RAM from `rings` on (64 KiB per queue) and mark each ready. The
/// rings stay empty (no buffers). Append `jmp $` or more code after it.
#[cfg(target_arch = "x86_64")]
pub fn virtio_mmio_activate(base: u64, queues: u32, rings: u64) -> Vec<u8> {
    use crate::arch::x86_64::layout::{BOOT_STRUCTURES_END, PDPT_ADDRESS};
    use crate::devices::virtio::mmio::regs;
    use crate::devices::virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
    // A page directory for base's GiB in the free page after the boot
    // structures, with one 2 MiB page (present, writable, huge).
    let directory = BOOT_STRUCTURES_END;
    let mut code = Vec::new();
    for (entry, value) in [
        (PDPT_ADDRESS + 8 * (base >> 30), directory | 0x3),
        (
            directory + 8 * ((base >> 21) & 0x1ff),
            (base & !0x1f_ffff) | 0x83,
        ),
    ] {
        code.extend_from_slice(&[0x48, 0xb8]); // mov rax, imm64
        code.extend_from_slice(&value.to_le_bytes());
        code.extend_from_slice(&[0x48, 0x89, 0x04, 0x25]); // mov [disp32], rax
        code.extend_from_slice(&(entry as u32).to_le_bytes());
    }
    code.extend_from_slice(&[0x48, 0xbb]); // mov rbx, imm64
    code.extend_from_slice(&base.to_le_bytes());
    // mov dword [rbx + register], value
    let mut write = |register: u64, value: u32| {
        code.extend_from_slice(&[0xc7, 0x83]);
        code.extend_from_slice(&(register as u32).to_le_bytes());
        code.extend_from_slice(&value.to_le_bytes());
    };
    write(regs::STATUS, ACKNOWLEDGE);
    write(regs::STATUS, ACKNOWLEDGE | DRIVER);
    write(regs::DRIVER_FEATURES_SEL, 1);
    write(regs::DRIVER_FEATURES, 1); // bit 32: VIRTIO_F_VERSION_1
    write(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for queue in 0..queues {
        let area = rings + u64::from(queue) * 0x1_0000;
        write(regs::QUEUE_SEL, queue);
        write(regs::QUEUE_NUM, 8);
        for (low, address) in [
            (regs::QUEUE_DESC_LOW, area),
            (regs::QUEUE_AVAIL_LOW, area + 0x1000),
            (regs::QUEUE_USED_LOW, area + 0x2000),
        ] {
            write(low, address as u32);
            write(low + 4, (address >> 32) as u32);
        }
        write(regs::QUEUE_READY, 1);
    }
    write(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    code
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
