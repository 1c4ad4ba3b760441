//! x86_64: VM-wide setup, per-vCPU CPUID, and the boot register states
//! ([`regs`]) with the descriptor tables they need ([`gdt`]) at the
//! addresses of [`layout`].

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod kernel;
pub mod layout;
pub mod msr;
pub mod regs;
pub mod zero_page;

/// Nothing to keep for the interrupt controllers: the PICs, IOAPIC and
/// PIT need no handle.
pub(crate) type Irqchip = ();

/// The PICs, IOAPIC and PIT, before any vCPU.
pub(crate) fn create_irqchip(vm: &VmFd) -> Result<Irqchip, VmError> {
    interrupts::create_irqchip(vm)
}

/// Nothing to finish after the vCPUs on x86_64.
pub(crate) fn finish_irqchip(_irqchip: &Irqchip) -> Result<(), VmError> {
    Ok(())
}

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::vm::{refused, VmError};

/// VM-wide setup before any vCPU exists: the TSS and identity-map pages
/// KVM needs on Intel to emulate real mode (above guest RAM).
pub(crate) fn setup_vm(vm: &VmFd) -> Result<(), VmError> {
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(refused("set the TSS address"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(refused("set the identity map address"))?;
    Ok(())
}

/// Per-vCPU setup: the CPUID the host's KVM supports (without it the guest
/// sees no CPU features at all), normalised for vCPU `index` of `count`.
pub(crate) fn setup_vcpu(
    kvm: &Kvm,
    _vm: &VmFd,
    vcpu: &VcpuFd,
    index: u8,
    count: u8,
) -> Result<(), VmError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(refused("read the supported CPUID"))?;
    cpuid::normalize(&mut cpuid, index, count);
    vcpu.set_cpuid2(&cpuid)
        .map_err(refused("set the vCPU's CPUID"))
}

/// The guest's instruction pointer (for error reports).
pub(crate) fn instruction_pointer(vcpu: &VcpuFd) -> Option<u64> {
    vcpu.get_regs().ok().map(|r| r.rip)
}
