//! aarch64 vCPU registers: the KVM_{GET,SET}_ONE_REG ids of the core and
//! system registers the boot needs, the vCPU's initialisation
//! (KVM_ARM_VCPU_INIT with PSCI 0.2, secondaries powered off), and the
//! boot state of the Linux arm64 boot protocol
//! (Documentation/arch/arm64/booting.rst): EL1h with D, A, I, F masked,
//! PC at the kernel, X0 = the FDT's address, X1..X3 = 0.
//!
//! The id arithmetic is plain numbers (tested on every host); the parts
//! that talk to KVM exist on aarch64 only.

/// KVM_REG_ARM64: the architecture field of a register id.
pub const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// KVM_REG_SIZE_U64: a 64-bit register.
pub const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// KVM_REG_ARM_CORE: the core register group (`struct kvm_regs`, indexed
/// in 32-bit words).
pub const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;
/// KVM_REG_ARM64_SYSREG: the system register group (encoded as op0, op1,
/// CRn, CRm, op2).
pub const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << 16;

/// Byte offset of X`n` in `struct kvm_regs` (its `user_pt_regs` comes
/// first: `regs[31]`, `sp`, `pc`, `pstate`).
const fn x_offset(n: u64) -> u64 {
    n * 8
}
/// Byte offset of `pc` in `struct kvm_regs`.
pub const PC_OFFSET: u64 = 32 * 8;
/// Byte offset of `pstate` in `struct kvm_regs`.
pub const PSTATE_OFFSET: u64 = 33 * 8;

/// The id of the 64-bit core register at byte `offset` of `struct kvm_regs`.
pub const fn core_reg_id(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset / 4)
}

/// The id of general-purpose register X`n` (n <= 30).
pub const fn x_reg_id(n: u64) -> u64 {
    core_reg_id(x_offset(n))
}

/// The id of PC.
pub const PC: u64 = core_reg_id(PC_OFFSET);
/// The id of PSTATE.
pub const PSTATE: u64 = core_reg_id(PSTATE_OFFSET);

/// The id of a 64-bit system register from its encoding.
pub const fn sys_reg_id(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// MPIDR_EL1 (S3_0_C0_C0_5): the vCPU's affinity, which the device tree's
/// cpu nodes name.
pub const MPIDR_EL1: u64 = sys_reg_id(3, 0, 0, 0, 5);

/// The affinity fields of MPIDR_EL1 (Aff3, Aff2, Aff1, Aff0): what a
/// cpu node's `reg` holds.
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// PSTATE.M = EL1h (EL1, using SP_EL1).
const PSR_MODE_EL1H: u64 = 0x5;
/// PSTATE.F: FIQs masked.
const PSR_F_BIT: u64 = 1 << 6;
/// PSTATE.I: IRQs masked.
const PSR_I_BIT: u64 = 1 << 7;
/// PSTATE.A: SErrors masked.
const PSR_A_BIT: u64 = 1 << 8;
/// PSTATE.D: debug exceptions masked.
const PSR_D_BIT: u64 = 1 << 9;
/// The PSTATE Linux must be entered with.
pub const BOOT_PSTATE: u64 = PSR_MODE_EL1H | PSR_F_BIT | PSR_I_BIT | PSR_A_BIT | PSR_D_BIT;

#[cfg(target_arch = "aarch64")]
pub use self::kvm::*;

#[cfg(target_arch = "aarch64")]
mod kvm {
    use kvm_bindings::{kvm_vcpu_init, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2};
    use kvm_ioctls::{VcpuFd, VmFd};

    use super::{x_reg_id, BOOT_PSTATE, MPIDR_EL1, PC, PSTATE};
    use crate::vcpu::{Vcpu, VcpuError};
    use crate::vm::{refused, VmError};

    // The offsets used for the ids are those of the kernel's struct.
    const _: () = {
        use std::mem::offset_of;
        assert!(offset_of!(kvm_bindings::user_pt_regs, pc) as u64 == super::PC_OFFSET);
        assert!(offset_of!(kvm_bindings::user_pt_regs, pstate) as u64 == super::PSTATE_OFFSET);
        assert!(offset_of!(kvm_bindings::kvm_regs, regs) == 0);
    };

    /// KVM_ARM_VCPU_INIT with the host's preferred target and PSCI 0.2;
    /// every vCPU but 0 starts powered off and waits for the guest's PSCI
    /// CPU_ON (which KVM handles in the kernel).
    pub fn init_vcpu(vm: &VmFd, vcpu: &VcpuFd, index: u8) -> Result<(), VmError> {
        let mut kvi = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut kvi)
            .map_err(refused("read the preferred vCPU target"))?;
        kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        if index > 0 {
            kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        vcpu.vcpu_init(&kvi).map_err(refused("initialise the vCPU"))
    }

    /// The vCPU's MPIDR_EL1 (KVM derives it from the vCPU id at init).
    pub fn read_mpidr(vcpu: &Vcpu) -> Result<u64, VcpuError> {
        get(vcpu, MPIDR_EL1, "read MPIDR_EL1")
    }

    /// The vCPU's PC, if it can be read (for error reports).
    pub fn read_pc(vcpu: &VcpuFd) -> Option<u64> {
        let mut bytes = [0u8; 8];
        vcpu.get_one_reg(PC, &mut bytes).ok()?;
        Some(u64::from_le_bytes(bytes))
    }

    /// The Linux boot state: PSTATE = EL1h, DAIF masked; PC = `entry`;
    /// X0 = `fdt_address`; X1..X3 = 0 (reserved by the protocol).
    pub fn setup_linux_boot(vcpu: &Vcpu, entry: u64, fdt_address: u64) -> Result<(), VcpuError> {
        set(vcpu, PSTATE, BOOT_PSTATE, "set PSTATE")?;
        set(vcpu, PC, entry, "set PC")?;
        set(vcpu, x_reg_id(0), fdt_address, "set X0")?;
        for n in 1..=3 {
            set(vcpu, x_reg_id(n), 0, "clear X1..X3")?;
        }
        Ok(())
    }

    fn set(vcpu: &Vcpu, id: u64, value: u64, what: &'static str) -> Result<(), VcpuError> {
        vcpu.fd()
            .set_one_reg(id, &value.to_le_bytes())
            .map(|_| ())
            .map_err(|source| VcpuError::Registers {
                index: vcpu.index(),
                what,
                source,
            })
    }

    fn get(vcpu: &Vcpu, id: u64, what: &'static str) -> Result<u64, VcpuError> {
        let mut bytes = [0u8; 8];
        vcpu.fd()
            .get_one_reg(id, &mut bytes)
            .map_err(|source| VcpuError::Registers {
                index: vcpu.index(),
                what,
                source,
            })?;
        Ok(u64::from_le_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_register_ids_match_the_kernel_uapi() {
        // Values as KVM documents them (Documentation/virt/kvm/api.rst,
        // "ARM64 core registers"): 0x6030 0000 0010 <offset / 4>.
        assert_eq!(x_reg_id(0), 0x6030_0000_0010_0000);
        assert_eq!(x_reg_id(1), 0x6030_0000_0010_0002);
        assert_eq!(x_reg_id(3), 0x6030_0000_0010_0006);
        assert_eq!(x_reg_id(30), 0x6030_0000_0010_003c);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
    }

    #[test]
    fn system_register_ids_encode_op0_op1_crn_crm_op2() {
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
        // The uapi's KVM_REG_ARM_TIMER_CVAL, ARM64_SYS_REG(3, 3, 14, 0, 2),
        // and KVM_REG_ARM_TIMER_CTL, ARM64_SYS_REG(3, 3, 14, 3, 1).
        assert_eq!(sys_reg_id(3, 3, 14, 0, 2), 0x6030_0000_0013_df02);
        assert_eq!(sys_reg_id(3, 3, 14, 3, 1), 0x6030_0000_0013_df19);
    }

    #[test]
    fn boot_pstate_is_el1h_with_daif_masked() {
        assert_eq!(BOOT_PSTATE, 0x3c5);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn the_ids_agree_with_kvm_bindings() {
        assert_eq!(KVM_REG_ARM64, kvm_bindings::KVM_REG_ARM64);
        assert_eq!(KVM_REG_SIZE_U64, kvm_bindings::KVM_REG_SIZE_U64);
        assert_eq!(KVM_REG_ARM_CORE, u64::from(kvm_bindings::KVM_REG_ARM_CORE));
        assert_eq!(
            KVM_REG_ARM64_SYSREG,
            u64::from(kvm_bindings::KVM_REG_ARM64_SYSREG)
        );
    }
}
