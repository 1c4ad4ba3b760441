//! The in-kernel interrupt controllers Linux expects on a PC: KVM's two
//! 8259 PICs, the IOAPIC and a local APIC per vCPU, plus the 8254 PIT
//! (the guest calibrates its clocks against it). Created before any vCPU;
//! each vCPU's local APIC then passes the PIC's output through LINT0 and
//! NMIs through LINT1, as firmware leaves it.

use kvm_bindings::{kvm_lapic_state, kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;

use crate::vcpu::{Vcpu, VcpuError};
use crate::vm::{refused, VmError};

/// The IRQ line (and GSI) of COM1.
pub const COM1_IRQ: u32 = 4;

/// Local APIC register offsets of the LVT entries for LINT0 and LINT1.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery modes (bits 10:8).
const DELIVERY_MODE_MASK: u32 = 0x700;
const DELIVERY_EXTINT: u32 = 0x700;
const DELIVERY_NMI: u32 = 0x400;

/// Creates the PICs, IOAPIC and local APICs, and the PIT with its speaker
/// port (0x61) kept in the kernel too.
pub fn create_irqchip(vm: &VmFd) -> Result<(), VmError> {
    vm.create_irq_chip()
        .map_err(refused("create the in-kernel interrupt controllers"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(refused("create the PIT"))
}

/// LINT0 = ExtINT (the PIC), LINT1 = NMI on `vcpu`'s local APIC.
pub fn set_lint(vcpu: &Vcpu) -> Result<(), VcpuError> {
    let registers = |what, source| VcpuError::Registers {
        index: vcpu.index(),
        what,
        source,
    };
    let mut lapic = vcpu
        .fd()
        .get_lapic()
        .map_err(|e| registers("read the local APIC", e))?;
    set_delivery_mode(&mut lapic, APIC_LVT_LINT0, DELIVERY_EXTINT);
    set_delivery_mode(&mut lapic, APIC_LVT_LINT1, DELIVERY_NMI);
    vcpu.fd()
        .set_lapic(&lapic)
        .map_err(|e| registers("set the local APIC", e))
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let bytes = &mut lapic.regs[offset..offset + 4];
    let mut value = [0u8; 4];
    for (v, b) in value.iter_mut().zip(bytes.iter()) {
        *v = *b as u8;
    }
    let updated = (u32::from_le_bytes(value) & !DELIVERY_MODE_MASK) | mode;
    for (b, v) in bytes.iter_mut().zip(updated.to_le_bytes()) {
        *b = v as _;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lapic: &kvm_lapic_state, offset: usize) -> u32 {
        let mut value = [0u8; 4];
        for (v, b) in value.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
            *v = *b as u8;
        }
        u32::from_le_bytes(value)
    }

    #[test]
    fn delivery_mode_replaces_only_bits_10_to_8() {
        let mut lapic = kvm_lapic_state::default();
        for (b, v) in lapic.regs[APIC_LVT_LINT0..APIC_LVT_LINT0 + 4]
            .iter_mut()
            .zip(0x0001_0500u32.to_le_bytes())
        {
            *b = v as _;
        }
        set_delivery_mode(&mut lapic, APIC_LVT_LINT0, DELIVERY_EXTINT);
        assert_eq!(read(&lapic, APIC_LVT_LINT0), 0x0001_0700);
        set_delivery_mode(&mut lapic, APIC_LVT_LINT1, DELIVERY_NMI);
        assert_eq!(read(&lapic, APIC_LVT_LINT1), 0x0000_0400);
    }
}
