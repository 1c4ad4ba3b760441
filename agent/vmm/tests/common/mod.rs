//! Helpers shared by the VMM's integration tests: the KVM probe, a console
//! the tests can read, and a builder for tiny ELF "kernels".
#![allow(dead_code)]

/// Why /dev/kvm cannot be used here, or `None`.
pub fn kvm_missing() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("cannot open /dev/kvm: {e}")),
    }
}

/// Returns from the test (printing why) when KVM is missing.
macro_rules! skip_without_kvm {
    ($test:expr) => {
        if let Some(why) = $crate::common::kvm_missing() {
            eprintln!("SKIPPED {}: {why}", $test);
            return;
        }
    };
}

/// The serial output, shared between the UART (writer) and the test.
#[derive(Clone, Default)]
pub struct Console(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Console {
    /// What the guest printed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("console")).into_owned()
    }
}

impl std::io::Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("console").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An ELF64 executable (x86-64) whose single PT_LOAD segment holds `code`
/// at physical and virtual `address`, entered there.
pub fn tiny_elf(address: u64, code: &[u8]) -> Vec<u8> {
    const SEGMENT_OFFSET: u64 = 0x1000;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, LE, v1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&address.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
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
