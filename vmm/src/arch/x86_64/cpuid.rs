//! The CPUID a vCPU reports: the host's KVM-supported leaves, adjusted so
//! each vCPU has its own APIC ID, the guest knows it runs on a hypervisor
//! (and so uses kvmclock and the KVM paravirtual features), and the
//! topology matches the vCPU count.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1: family, model, feature flags, APIC ID.
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 0xB: extended topology (x2APIC ID in EDX of every subleaf).
const LEAF_TOPOLOGY: u32 = 0xb;
/// Leaf 0x1F: V2 extended topology, same EDX meaning as 0xB.
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

/// Leaf 1 ECX: "running on a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 1 EBX bits 23:16: logical processors per package.
const EBX_COUNT_SHIFT: u32 = 16;
/// Leaf 1 EBX bits 31:24: initial APIC ID.
const EBX_APIC_ID_SHIFT: u32 = 24;

/// Adjusts `cpuid` (as read from KVM_GET_SUPPORTED_CPUID) for vCPU `index`
/// of `count`.
pub fn normalize(cpuid: &mut CpuId, index: u8, count: u8) {
    for entry in cpuid.as_mut_slice() {
        normalize_entry(entry, index, count);
    }
}

fn normalize_entry(entry: &mut kvm_cpuid_entry2, index: u8, count: u8) {
    match entry.function {
        LEAF_FEATURES => {
            entry.ebx = (entry.ebx & 0x0000_ffff)
                | (u32::from(count) << EBX_COUNT_SHIFT)
                | (u32::from(index) << EBX_APIC_ID_SHIFT);
            entry.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => entry.edx = u32::from(index),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xaabb_0800,
            ecx: 0,
            edx: EDX_HTT,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_carries_apic_id_count_and_hypervisor_bit() {
        let mut entry = leaf(LEAF_FEATURES, 0);
        normalize_entry(&mut entry, 3, 4);
        assert_eq!(entry.ebx, 0x0304_0800);
        assert_ne!(entry.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(entry.edx & EDX_HTT, 0);

        let mut single = leaf(LEAF_FEATURES, 0);
        normalize_entry(&mut single, 0, 1);
        assert_eq!(single.ebx, 0x0001_0800);
        assert_eq!(single.edx & EDX_HTT, 0, "one vCPU: no HTT");
    }

    #[test]
    fn topology_leaves_carry_the_x2apic_id() {
        for function in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
            for subleaf in 0..2 {
                let mut entry = leaf(function, subleaf);
                normalize_entry(&mut entry, 5, 8);
                assert_eq!(entry.edx, 5);
            }
        }
        let mut other = leaf(0x8000_0001, 0);
        normalize_entry(&mut other, 5, 8);
        assert_eq!(other.edx, EDX_HTT, "other leaves untouched");
    }
}
