//! mecvisor's microVMM, built on the rust-vmm crates (kvm-ioctls,
//! vm-memory, ...): one process per guest, run by the agent as
//! `edge-agent vmm`. See `docs/design.md`, "VMM", and `docs/microvmm.md`.
//!
//! The pieces, one concern per module:
//! - [`memory`]: the guest's RAM, mapped in this process;
//! - [`vm`]: a KVM virtual machine holding that RAM;
//! - [`vcpu`]: one virtual CPU and its run loop, handing port and MMIO
//!   accesses to an [`vcpu::ExitHandler`] (the devices);
//! - [`devices`]: what the guest talks to (port bus, serial console,
//!   reset), each device behind its own range;
//! - [`machine`]: a whole guest (RAM, VM, devices, kernel, vCPU threads)
//!   and its [`event_loop`], which ends on a vCPU stop or a termination
//!   [`signals`] (SIGTERM, SIGINT);
//! - [`payload`]: tiny ELF guests for tests and benchmarks;
//! - [`sandbox`]: the VMM process's jail (own mount namespace, a chroot
//!   holding only the VM's directory, no capabilities);
//! - [`arch`]: what differs per architecture (register setup, boot
//!   layout), under `arch/x86_64` and `arch/aarch64` only.

pub mod arch;
pub mod devices;
pub mod event_loop;
pub mod machine;
pub mod memory;
pub mod payload;
pub mod sandbox;
pub mod seccomp;
pub mod signals;
pub mod vcpu;
pub mod vm;

/// Guest memory in MiB when neither the VM workload's spec nor the
/// `edge-agent vmm` command line gives any.
pub const DEFAULT_MEMORY_MIB: u32 = 256;

pub use machine::{Ended, Machine, MachineConfig, MachineError};
pub use memory::{GuestRam, MemoryError};
pub use vcpu::{ExitHandler, Stop, Vcpu, VcpuError};
pub use vm::{Vm, VmError};
