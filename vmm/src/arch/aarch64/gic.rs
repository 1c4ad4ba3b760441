//! The in-kernel interrupt controller: a GICv3 (distributor plus one
//! redistributor per vCPU) or, where the host refuses one (GICv2-only
//! hardware), a GICv2 (distributor plus CPU interface), both emulated by
//! KVM's vgic at the addresses of [`super::layout`].
//!
//! Order (the kernel's rules): [`Gic::create`] before or after the vCPUs
//! exist, [`Gic::finalize`] (KVM_DEV_ARM_VGIC_CTRL_INIT) once all of them
//! exist and before any runs; no vCPU can be added after it.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_VGIC_V2_ADDR_TYPE_CPU, KVM_VGIC_V2_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};

use super::fdt::GicVersion;
use super::layout::{GIC_DIST_BASE, GIC_NR_IRQS, GIC_REDIST_BASE, GIC_V2_CPU_BASE};
use crate::vm::{refused, VmError};

/// The VM's GIC.
pub struct Gic {
    device: DeviceFd,
    version: GicVersion,
}

impl Gic {
    /// Creates a GICv3 (a GICv2 if KVM refuses v3), places its frames and
    /// sets the number of interrupts ([`GIC_NR_IRQS`]).
    pub fn create(vm: &VmFd) -> Result<Gic, VmError> {
        let gic = match create_device(vm, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3) {
            Ok(device) => {
                let gic = Gic {
                    device,
                    version: GicVersion::V3,
                };
                gic.set_address(KVM_VGIC_V3_ADDR_TYPE_DIST, GIC_DIST_BASE)?;
                gic.set_address(KVM_VGIC_V3_ADDR_TYPE_REDIST, GIC_REDIST_BASE)?;
                gic
            }
            Err(_) => {
                let device = create_device(vm, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2)
                    .map_err(refused("create an in-kernel GICv3 or GICv2"))?;
                let gic = Gic {
                    device,
                    version: GicVersion::V2,
                };
                gic.set_address(KVM_VGIC_V2_ADDR_TYPE_DIST, GIC_DIST_BASE)?;
                gic.set_address(KVM_VGIC_V2_ADDR_TYPE_CPU, GIC_V2_CPU_BASE)?;
                gic
            }
        };
        let nr_irqs: u32 = GIC_NR_IRQS;
        gic.set_attr(
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &nr_irqs as *const u32 as u64,
            "set the GIC's number of interrupts",
        )?;
        Ok(gic)
    }

    /// Which GIC KVM gave.
    pub fn version(&self) -> GicVersion {
        self.version
    }

    /// KVM_DEV_ARM_VGIC_CTRL_INIT: after every vCPU exists.
    pub fn finalize(&self) -> Result<(), VmError> {
        self.set_attr(
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            0,
            "initialise the GIC",
        )
    }

    fn set_address(&self, kind: u32, address: u64) -> Result<(), VmError> {
        self.set_attr(
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(kind),
            &address as *const u64 as u64,
            "place the GIC's registers",
        )
    }

    /// KVM_SET_DEVICE_ATTR; `addr` is the address of the value (a local of
    /// the caller that outlives this call), or 0 where the attribute takes
    /// none.
    fn set_attr(
        &self,
        group: u32,
        attr: u64,
        addr: u64,
        what: &'static str,
    ) -> Result<(), VmError> {
        let attribute = kvm_device_attr {
            flags: 0,
            group,
            attr,
            addr,
        };
        self.device
            .set_device_attr(&attribute)
            .map_err(refused(what))
    }
}

fn create_device(vm: &VmFd, type_: u32) -> Result<DeviceFd, kvm_ioctls::Error> {
    let mut device = kvm_create_device {
        type_,
        fd: 0,
        flags: 0,
    };
    vm.create_device(&mut device)
}
