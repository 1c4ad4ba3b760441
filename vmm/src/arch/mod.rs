//! What differs per architecture. Everything outside this directory is
//! architecture-neutral.
//!
//! Each architecture provides the hooks [`crate::vm::Vm`] calls
//! (`setup_vm`, `setup_vcpu`, `create_irqchip` / `finish_irqchip` with its
//! `Irqchip` handle, `instruction_pointer`) and, for [`crate::Machine`],
//! its board: `guest_ram`, `platform` (the devices every guest gets),
//! `virtio_mmio_slot` (where the n-th virtio-mmio device goes),
//! `boot_linux` (interrupt controller, vCPUs, kernel, firmware tables),
//! the limits `MAX_MEMORY_MIB` / `MAX_VCPUS` and its `LinuxBootError`.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::boot::{
    boot_linux, guest_ram, platform, virtio_mmio_slot, LinuxBootError, MAX_MEMORY_MIB, MAX_VCPUS,
};
#[cfg(target_arch = "x86_64")]
pub(crate) use self::x86_64::{
    create_irqchip, finish_irqchip, instruction_pointer, setup_vcpu, setup_vm, Irqchip,
};

// aarch64: also built on other hosts for the tests of its KVM-free parts
// (layout, register ids, device tree, Image header).
#[cfg(any(target_arch = "aarch64", test))]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::boot::{
    boot_linux, guest_ram, platform, virtio_mmio_slot, LinuxBootError, MAX_MEMORY_MIB, MAX_VCPUS,
};
#[cfg(target_arch = "aarch64")]
pub(crate) use self::aarch64::{
    create_irqchip, finish_irqchip, instruction_pointer, setup_vcpu, setup_vm, Irqchip,
};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("mecvisor-vmm supports x86_64 and aarch64 only");
