//! Model-specific registers set before a vCPU enters Linux: the syscall
//! and sysenter MSRs cleared, the TSC at zero, fast string operations
//! enabled, and MTRRs defaulting to write-back (without it a guest maps all
//! memory uncached).

use kvm_bindings::{kvm_msr_entry, Msrs};

use crate::vcpu::{Vcpu, VcpuError};

const IA32_TSC: u32 = 0x10;
const IA32_SYSENTER_CS: u32 = 0x174;
const IA32_SYSENTER_ESP: u32 = 0x175;
const IA32_SYSENTER_EIP: u32 = 0x176;
const IA32_MISC_ENABLE: u32 = 0x1a0;
const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled, default type write-back (6).
const MTRR_ENABLED_WRITE_BACK: u64 = (1 << 11) | 6;

/// The MSRs and values [`set_boot_msrs`] writes.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (IA32_TSC, 0),
        (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (IA32_MTRR_DEF_TYPE, MTRR_ENABLED_WRITE_BACK),
    ]
}

/// Writes [`boot_msrs`] to `vcpu`; every one must be accepted.
pub fn set_boot_msrs(vcpu: &Vcpu) -> Result<(), VcpuError> {
    let wanted = boot_msrs();
    let entries: Vec<kvm_msr_entry> = wanted
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| VcpuError::Setup {
        index: vcpu.index(),
        what: "build the MSR list",
        message: format!("{e:?}"),
    })?;
    let written = vcpu
        .fd()
        .set_msrs(&msrs)
        .map_err(|source| VcpuError::Registers {
            index: vcpu.index(),
            what: "set the boot MSRs",
            source,
        })?;
    if written != wanted.len() {
        let refused = wanted.get(written).map_or(0, |&(index, _)| index);
        return Err(VcpuError::Setup {
            index: vcpu.index(),
            what: "set the boot MSRs",
            message: format!("KVM refused MSR {refused:#x}"),
        });
    }
    Ok(())
}
