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

/// An ELF64 x86-64 "kernel" with `code` at `address` (the crate's own
/// test payload builder).
pub fn tiny_elf(address: u64, code: &[u8]) -> Vec<u8> {
    mecvisor_vmm::payload::elf64_x86(address, code)
}
