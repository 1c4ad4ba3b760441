//! Untrusted kernel images (the VMM loads whatever a VM workload names):
//! any bytes go through the x86_64 loader (ELF, then bzImage) into a small
//! guest RAM, and the zero page is written for whatever loaded. Errors are
//! fine; panics, hangs and writes outside guest RAM are not (guest RAM is
//! an mmap of its own: vm-memory bounds every access).
#![no_main]

use std::io::{Seek, Write};

use libfuzzer_sys::fuzz_target;
use mecvisor_vmm::arch::x86_64::kernel::load_kernel;
use mecvisor_vmm::arch::x86_64::zero_page::write_zero_page;
use mecvisor_vmm::GuestRam;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::tempfile().expect("temp file");
    file.write_all(data).expect("write the image");
    file.rewind().expect("rewind");
    let ram = GuestRam::new(8 << 20).expect("guest RAM");
    if let Ok(kernel) = load_kernel(&ram, &mut file) {
        assert!(kernel.end <= ram.size(), "loaded past guest RAM: {kernel:?}");
        let _ = write_zero_page(&ram, &kernel, "console=ttyS0", None, None);
    }
});
