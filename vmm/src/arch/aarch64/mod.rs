//! aarch64: the vCPUs' initialisation and boot registers ([`regs`]), the
//! in-kernel GIC (`gic`), the arm64 `Image` loader ([`kernel`]) and the
//! device tree ([`fdt`]) that describes the machine of [`layout`] to the
//! kernel, tied together by `boot::boot_linux`.
//!
//! Booting Linux (Documentation/arch/arm64/booting.rst), in order:
//! 1. RAM at 2 GiB (`boot::guest_ram`), the VM holding it ([`crate::Vm::new`];
//!    nothing else VM-wide is needed before vCPUs on arm64);
//! 2. the GIC ([`crate::Vm::create_irqchip`]): a vgic-v3 (v2 if refused) with
//!    its distributor and redistributors (or CPU interface) placed and
//!    [`layout::GIC_NR_IRQS`] interrupts;
//! 3. every vCPU ([`crate::Vm::create_vcpu`]): KVM_ARM_VCPU_INIT with the
//!    host's preferred target and PSCI 0.2; all but vCPU 0 powered off, to
//!    be started by the guest's PSCI CPU_ON, which KVM serves itself;
//! 4. the GIC's KVM_DEV_ARM_VGIC_CTRL_INIT ([`crate::Vm::finish_irqchip`]),
//!    now that all vCPUs exist;
//! 5. each vCPU's MPIDR_EL1, which its cpu node must carry;
//! 6. the Image at the start of RAM + text_offset, the FDT in the last
//!    2 MiB of RAM, the initramfs right below the FDT;
//! 7. the device tree: memory, cpus, PSCI, GIC, timer, PL031, the 16550A
//!    console, virtio-mmio slots, /chosen (bootargs, stdout-path, initrd);
//! 8. vCPU 0: PSTATE = EL1h with DAIF masked, PC = the Image's first byte,
//!    X0 = the FDT, X1..X3 = 0.
//!
//! Then the device interrupts are wired (irqfds, GSI = SPI number) and the
//! vCPUs run. A PSCI SYSTEM_OFF / SYSTEM_RESET ends a vCPU's run loop with
//! [`crate::Stop::Shutdown`] / [`crate::Stop::Reset`].

pub mod fdt;
pub mod kernel;
pub mod layout;
pub mod regs;

#[cfg(target_arch = "aarch64")]
pub mod boot;
#[cfg(target_arch = "aarch64")]
pub mod gic;

#[cfg(target_arch = "aarch64")]
pub(crate) use self::hooks::{
    create_irqchip, finish_irqchip, instruction_pointer, setup_vcpu, setup_vm, Irqchip,
};

/// The hooks [`crate::vm::Vm`] calls.
#[cfg(target_arch = "aarch64")]
mod hooks {
    use kvm_ioctls::{Kvm, VcpuFd, VmFd};

    use super::gic::Gic;
    use super::regs;
    use crate::vm::VmError;

    /// The VM's interrupt controller.
    pub(crate) type Irqchip = Gic;

    /// Nothing VM-wide is needed before the vCPUs on arm64.
    pub(crate) fn setup_vm(_vm: &VmFd) -> Result<(), VmError> {
        Ok(())
    }

    /// KVM_ARM_VCPU_INIT (PSCI 0.2; vCPUs other than 0 powered off).
    pub(crate) fn setup_vcpu(
        _kvm: &Kvm,
        vm: &VmFd,
        vcpu: &VcpuFd,
        index: u8,
        _count: u8,
    ) -> Result<(), VmError> {
        regs::init_vcpu(vm, vcpu, index)
    }

    /// The GIC (v3, else v2), placed.
    pub(crate) fn create_irqchip(vm: &VmFd) -> Result<Irqchip, VmError> {
        Gic::create(vm)
    }

    /// The GIC's initialisation, after the last vCPU.
    pub(crate) fn finish_irqchip(gic: &Irqchip) -> Result<(), VmError> {
        gic.finalize()
    }

    /// The guest's PC (for error reports).
    pub(crate) fn instruction_pointer(vcpu: &VcpuFd) -> Option<u64> {
        regs::read_pc(vcpu)
    }
}
