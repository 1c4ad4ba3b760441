//! A KVM virtual machine: the VM file descriptor with the guest's RAM
//! registered as its memory, and the vCPUs created from it.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch;
use crate::memory::GuestRam;
use crate::vcpu::Vcpu;

/// The KVM API version every kernel since 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;

/// Why a VM could not be created or set up.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened (no KVM, or no permission).
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The kernel speaks another KVM API.
    #[error("KVM API version {0}, expected {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A KVM request was refused.
    #[error("{what}: {source}")]
    Kvm {
        /// The request, e.g. "create the VM".
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Wraps a KVM error with what was asked.
pub(crate) fn refused(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A virtual machine with its RAM.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    ram: GuestRam,
    irqchip: Option<arch::Irqchip>,
}

impl Vm {
    /// Opens /dev/kvm, creates the VM, does the architecture's VM-wide
    /// setup and registers `ram` as guest memory.
    pub fn new(ram: GuestRam) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(VmError::ApiVersion(version));
        }
        let fd = kvm.create_vm().map_err(refused("create the VM"))?;
        arch::setup_vm(&fd)?;
        for (slot, region) in ram.host_regions().iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: u32::try_from(slot).unwrap_or(u32::MAX),
                flags: 0,
                guest_phys_addr: region.guest_address,
                memory_size: region.size,
                userspace_addr: region.host_address,
            };
            // SAFETY: the region is a live mapping owned by `ram`, which the
            // Vm keeps (and so outlives every vCPU that can touch it), and no
            // two slots overlap: GuestRam's regions are disjoint.
            unsafe { fd.set_user_memory_region(region) }
                .map_err(refused("register guest memory"))?;
        }
        Ok(Vm {
            kvm,
            fd,
            ram,
            irqchip: None,
        })
    }

    /// Creates the in-kernel interrupt controllers (on x86_64 the PICs,
    /// IOAPIC and PIT; on aarch64 the GIC). Must come before the first
    /// vCPU, and [`Vm::finish_irqchip`] after the last. Without them the
    /// guest gets no interrupts (enough for the tiny test payloads, which
    /// also rely on HLT exiting to the VMM: with them, KVM handles HLT
    /// itself).
    pub fn create_irqchip(&mut self) -> Result<(), VmError> {
        self.irqchip = Some(arch::create_irqchip(&self.fd)?);
        Ok(())
    }

    /// Completes the interrupt controllers once every vCPU exists (the
    /// GIC's initialisation on aarch64; nothing on x86_64). No vCPU can be
    /// created afterwards on aarch64.
    pub fn finish_irqchip(&self) -> Result<(), VmError> {
        match &self.irqchip {
            Some(irqchip) => arch::finish_irqchip(irqchip),
            None => Ok(()),
        }
    }

    /// Whether [`Vm::create_irqchip`] was done.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip.is_some()
    }

    /// The interrupt controllers, once created (the aarch64 boot describes
    /// its GIC in the device tree).
    #[cfg(target_arch = "aarch64")]
    pub(crate) fn irqchip(&self) -> Option<&arch::Irqchip> {
        self.irqchip.as_ref()
    }

    /// Lets `event` raise interrupt line `gsi` without a trip through the
    /// VMM (KVM's irqfd): a device's interrupt signal.
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(refused("register an interrupt eventfd"))
    }

    /// The guest's RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Creates vCPU `index` of `count` with the architecture's per-vCPU
    /// setup (e.g. the host's supported CPUID, with this vCPU's APIC ID, on
    /// x86_64; KVM_ARM_VCPU_INIT with PSCI on aarch64); registers are set
    /// by the boot code.
    pub fn create_vcpu(&self, index: u8, count: u8) -> Result<Vcpu, VmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(refused("create a vCPU"))?;
        arch::setup_vcpu(&self.kvm, &self.fd, &fd, index, count)?;
        Ok(Vcpu::new(fd, index))
    }
}
