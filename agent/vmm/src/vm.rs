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
    irqchip: bool,
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
            irqchip: false,
        })
    }

    /// Creates the in-kernel interrupt controllers (and, on x86_64, the
    /// PIT). Must come before the first vCPU. Without them the guest gets
    /// no interrupts (enough for the tiny test payloads, which also rely on
    /// HLT exiting to the VMM: with them, KVM handles HLT itself).
    pub fn create_irqchip(&mut self) -> Result<(), VmError> {
        arch::create_irqchip(&self.fd)?;
        self.irqchip = true;
        Ok(())
    }

    /// Whether [`Vm::create_irqchip`] was done.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
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
    /// x86_64); registers are set by the boot code.
    pub fn create_vcpu(&self, index: u8, count: u8) -> Result<Vcpu, VmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(refused("create a vCPU"))?;
        arch::setup_vcpu(&self.kvm, &fd, index, count)?;
        Ok(Vcpu::new(fd, index))
    }
}
