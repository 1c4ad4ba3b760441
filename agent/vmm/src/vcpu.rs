//! One virtual CPU and its run loop. Exits for port I/O and MMIO go to an
//! [`ExitHandler`] (the device bus); the loop ends when the guest halts or
//! shuts down, or when the handler asks to stop.

use kvm_ioctls::{VcpuExit, VcpuFd};

/// Why a vCPU stopped running guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The guest executed HLT (only seen without an in-kernel interrupt
    /// controller, which handles HLT itself).
    Halted,
    /// The guest shut down or triple-faulted.
    Shutdown,
    /// The handler asked to stop (e.g. the guest wrote a "done" port).
    Requested,
}

/// Why the run loop failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_RUN itself failed.
    #[error("vCPU {index}: KVM_RUN failed: {source}")]
    Run {
        /// The vCPU.
        index: u8,
        /// The kernel's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The hardware refused to enter the guest (invalid guest state).
    #[error("vCPU {index}: VM entry failed (hardware reason {reason:#x})")]
    FailEntry {
        /// The vCPU.
        index: u8,
        /// Hardware-specific reason.
        reason: u64,
    },
    /// KVM could not handle an exit (e.g. "emulation failure").
    #[error("vCPU {index}: KVM internal error (suberror {suberror}) at rip {rip:#x}")]
    Internal {
        /// The vCPU.
        index: u8,
        /// KVM_INTERNAL_ERROR_* (1 = emulation failure).
        suberror: u32,
        /// Where the guest was.
        rip: u64,
    },
    /// An exit this VMM does not handle.
    #[error("vCPU {index}: unexpected exit {exit}")]
    Unexpected {
        /// The vCPU.
        index: u8,
        /// The exit, as KVM reported it.
        exit: String,
    },
    /// Reading or writing registers failed.
    #[error("vCPU {index}: {what}: {source}")]
    Registers {
        /// The vCPU.
        index: u8,
        /// The request.
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// What the run loop asks of the devices. Returning `false` from a write
/// stops the loop ([`Stop::Requested`]).
pub trait ExitHandler {
    /// The guest wrote `data` to I/O port `port` (x86 only).
    fn port_write(&mut self, port: u16, data: &[u8]) -> bool;
    /// The guest reads I/O port `port`; fill `data` (x86 only).
    fn port_read(&mut self, port: u16, data: &mut [u8]);
    /// The guest wrote `data` at guest-physical `address`, outside RAM.
    fn mmio_write(&mut self, address: u64, data: &[u8]) -> bool;
    /// The guest reads guest-physical `address`, outside RAM; fill `data`.
    fn mmio_read(&mut self, address: u64, data: &mut [u8]);
}

/// A vCPU of a [`crate::Vm`].
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, index: u8) -> Vcpu {
        Vcpu { fd, index }
    }

    /// Its index in the VM.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The KVM vCPU (for the architecture's register setup).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs guest code until it halts or shuts down, or `handler` asks to
    /// stop.
    pub fn run(&mut self, handler: &mut dyn ExitHandler) -> Result<Stop, VcpuError> {
        let index = self.index;
        loop {
            let exit = self
                .fd
                .run()
                .map_err(|source| VcpuError::Run { index, source })?;
            match exit {
                VcpuExit::IoOut(port, data) => {
                    if !handler.port_write(port, data) {
                        return Ok(Stop::Requested);
                    }
                }
                VcpuExit::IoIn(port, data) => handler.port_read(port, data),
                VcpuExit::MmioWrite(address, data) => {
                    if !handler.mmio_write(address, data) {
                        return Ok(Stop::Requested);
                    }
                }
                VcpuExit::MmioRead(address, data) => handler.mmio_read(address, data),
                VcpuExit::Hlt => return Ok(Stop::Halted),
                VcpuExit::Shutdown => return Ok(Stop::Shutdown),
                VcpuExit::FailEntry(reason, _) => {
                    return Err(VcpuError::FailEntry { index, reason })
                }
                VcpuExit::InternalError => {
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so
                    // the kernel filled the `internal` member of the union.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    let rip = crate::arch::instruction_pointer(&self.fd).unwrap_or(u64::MAX);
                    return Err(VcpuError::Internal {
                        index,
                        suberror,
                        rip,
                    });
                }
                other => {
                    return Err(VcpuError::Unexpected {
                        index,
                        exit: format!("{other:?}"),
                    })
                }
            }
        }
    }
}
