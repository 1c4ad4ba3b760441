//! One virtual CPU and its run loop. Exits for port I/O and MMIO go to an
//! [`ExitHandler`] (the device bus); the loop ends when the guest halts or
//! shuts down, or when the handler asks to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::signal::Signal;
use crate::seccomp::{SeccompError, ThreadFilter};

/// Why a vCPU stopped running guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The guest executed HLT (only seen without an in-kernel interrupt
    /// controller, which handles HLT itself).
    Halted,
    /// The guest shut down or triple-faulted.
    Shutdown,
    /// The guest powered off through a KVM system event (PSCI SYSTEM_OFF
    /// on aarch64; x86_64 powers off through the ACPI sleep control port
    /// instead).
    PowerOff,
    /// The guest asked for a reset through a KVM system event (PSCI
    /// SYSTEM_RESET on aarch64; x86_64 resets through the i8042 instead).
    Reset,
    /// The handler asked to stop (e.g. the guest reset), or the VMM did.
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
    /// Setting the vCPU up failed for a reason KVM did not report as an
    /// error code (e.g. it accepted only part of a register list).
    #[error("vCPU {index}: {what}: {message}")]
    Setup {
        /// The vCPU.
        index: u8,
        /// The step.
        what: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The thread's seccomp filter could not be installed (the guest
    /// never ran on it).
    #[error("vCPU {index}: {source}")]
    Seccomp {
        /// The vCPU.
        index: u8,
        /// Why.
        #[source]
        source: SeccompError,
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

/// The real-time signal (offset from SIGRTMIN) that kicks a vCPU thread out
/// of KVM_RUN; its handler does nothing, the interruption is the point.
const KICK_SIGNAL_OFFSET: i32 = 0;
/// How often a stop request re-sends the kick until the thread has left
/// (a kick landing just before KVM_RUN is entered would otherwise be lost).
const KICK_INTERVAL: Duration = Duration::from_millis(5);

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick handler (once per process). Without SA_RESTART, so
/// KVM_RUN returns EINTR.
fn install_kick_handler() -> std::io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(SIGRTMIN() + KICK_SIGNAL_OFFSET, ignore_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// A vCPU of a [`crate::Vm`].
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    stop: Arc<AtomicBool>,
}

/// A vCPU running guest code on its own thread, with the device side
/// (`H`) it was given.
pub struct RunningVcpu<H> {
    thread: JoinHandle<(Result<Stop, VcpuError>, H)>,
    stop: Arc<AtomicBool>,
}

impl<H> RunningVcpu<H> {
    /// Whether the guest code stopped by itself (halt, shutdown, reset).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the vCPU (kicking it out of KVM_RUN) and returns why it
    /// stopped and its device side. A vCPU that already stopped by itself
    /// reports that instead.
    pub fn stop(self) -> (Result<Stop, VcpuError>, H) {
        self.stop.store(true, Ordering::Release);
        while !self.thread.is_finished() {
            // The thread exists until joined; a failed kill means it is
            // already gone.
            let _ = self.thread.kill(SIGRTMIN() + KICK_SIGNAL_OFFSET);
            std::thread::sleep(KICK_INTERVAL);
        }
        self.join()
    }

    /// Waits until the guest code stops by itself.
    pub fn join(self) -> (Result<Stop, VcpuError>, H) {
        match self.thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, index: u8) -> Vcpu {
        Vcpu {
            fd,
            index,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs the vCPU on its own thread (`vcpu<index>`) with `handler` as
    /// its device side, until it stops by itself or is stopped.
    pub fn spawn<H: ExitHandler + Send + 'static>(
        self,
        handler: H,
    ) -> std::io::Result<RunningVcpu<H>> {
        self.spawn_notifying(handler, None, None)
    }

    /// Like [`Vcpu::spawn`], raising `exited` (when given) once the vCPU
    /// has stopped, so an event loop learns of it, and installing `filter`
    /// (when given) on the thread before it runs guest code.
    pub fn spawn_notifying<H: ExitHandler + Send + 'static>(
        mut self,
        mut handler: H,
        exited: Option<Signal>,
        filter: Option<ThreadFilter>,
    ) -> std::io::Result<RunningVcpu<H>> {
        install_kick_handler()?;
        let stop = self.stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || {
                let index = self.index;
                let confined = match &filter {
                    Some(filter) => filter
                        .apply()
                        .map_err(|source| VcpuError::Seccomp { index, source }),
                    None => Ok(()),
                };
                let result = confined.and_then(|()| self.run(&mut handler));
                if let Some(exited) = exited {
                    // An eventfd write fails only if its counter would
                    // overflow, i.e. when it is already readable.
                    let _ = vm_superio::Trigger::trigger(&exited);
                }
                (result, handler)
            })?;
        Ok(RunningVcpu { thread, stop })
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
            if self.stop.load(Ordering::Acquire) {
                return Ok(Stop::Requested);
            }
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                // Kicked (a stop request) or another signal: check again.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(source) => return Err(VcpuError::Run { index, source }),
            };
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
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => return Ok(Stop::PowerOff),
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => return Ok(Stop::Reset),
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
