//! What differs per architecture. Everything outside this directory is
//! architecture-neutral.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub(crate) use self::x86_64::{create_irqchip, instruction_pointer, setup_vcpu, setup_vm};

#[cfg(not(target_arch = "x86_64"))]
compile_error!("mecvisor-vmm supports x86_64 so far; aarch64 is the next step of issue 6");
