//! `cargo xtask bench vmm`: mecvisor's microVMM (`edge-agent vmm`, crate
//! `vmm/`), the static release binary edge boxes run.
//!
//! 1. On this host (this architecture's static musl binary, as shipped),
//!    with a tiny guest the benchmark writes itself (an ELF
//!    whose first instructions write `X` to COM1 and then spin; this host's
//!    KVM runs such guests but cannot boot Linux):
//!    - the VMM process's RSS without guest memory (total RSS minus the
//!      resident part of the guest-RAM mapping), against Firecracker's
//!      published "memory overhead < 5 MiB";
//!    - the time from spawning the process to the first guest instruction
//!      (the `X` readable on its stdout pipe), 20 runs.
//! 2. In the emulated edge boxes (x86_64 and aarch64, QEMU TCG with nested
//!    KVM), the guest image of `images/guest/` (Debian's kernel and a
//!    marker-printing initramfs) from just before the VMM starts to its
//!    `MECVISOR-GUEST-BOOTED` console line, 3 runs per architecture; and
//!    the same guest on Debian's QEMU with KVM in the same box
//!    (`qemu-system-x86_64 -M microvm`, `qemu-system-aarch64 -M virt`), 3
//!    runs alternating with the VMM's, and the ratio of the medians.
//!
//! What cannot be measured here is an ERROR row with the reason.

mod elf;
mod host;
mod in_box;
mod qemu_peer;

use anyhow::Result;

use super::table::Table;

/// Runs the benchmark; failures become ERROR rows, not aborts.
pub fn run() -> Result<Table> {
    let mut table = Table::new("microVMM (edge-agent vmm, static release build)");
    host::measure(&mut table);
    in_box::measure(&mut table);
    Ok(table)
}
