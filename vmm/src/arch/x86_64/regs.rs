//! Boot register states for a vCPU: 16-bit real mode at an address, or
//! 64-bit long mode with a flat GDT and an identity mapping of the first
//! GiB (the state the Linux 64-bit boot protocol expects).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::gdt;
use super::layout::{
    BOOT_STACK_POINTER, BOOT_STRUCTURES_END, GDT_ADDRESS, IDENTITY_MAPPED_BYTES, IDT_ADDRESS,
    PDPT_ADDRESS, PD_ADDRESS, PML4_ADDRESS, ZERO_PAGE_ADDRESS,
};
use crate::memory::{GuestRam, MemoryError};
use crate::vcpu::{Vcpu, VcpuError};

/// CR0: protection enable.
const CR0_PE: u64 = 1;
/// CR0: paging.
const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active (KVM_SET_SREGS does not derive it).
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is always set.
const RFLAGS_RESERVED: u64 = 1 << 1;
/// Page table entry: present, writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page directory entry: a 2 MiB page.
const PDE_HUGE: u64 = 0x80;

/// Why a boot state could not be set.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The boot structures did not fit in guest RAM.
    #[error("writing the boot structures: {0}")]
    Memory(#[from] MemoryError),
    /// Guest RAM ends before the boot structures do.
    #[error("guest RAM of {0} bytes is too small for the boot structures ({BOOT_STRUCTURES_END:#x} bytes)")]
    TooSmall(u64),
    /// The vCPU's registers could not be set.
    #[error(transparent)]
    Registers(#[from] VcpuError),
}

/// Real mode: execution starts at `entry` (below 64 KiB) with CS base 0 and
/// the other registers as after reset.
pub fn setup_real_mode(vcpu: &Vcpu, entry: u16) -> Result<(), BootError> {
    let mut sregs = get_sregs(vcpu)?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    set_sregs(vcpu, &sregs)?;
    set_regs(
        vcpu,
        &kvm_regs {
            rip: u64::from(entry),
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
    )
}

/// 64-bit long mode at `entry`: writes the GDT, a null IDT and the identity
/// page tables into `ram`, then loads segments, control registers and the
/// boot stack.
pub fn setup_long_mode(vcpu: &Vcpu, ram: &GuestRam, entry: u64) -> Result<(), BootError> {
    if ram.size() < BOOT_STRUCTURES_END {
        return Err(BootError::TooSmall(ram.size()));
    }
    let table = [
        gdt::entry(0, 0, 0),
        gdt::entry(gdt::CODE_64, 0, 0xfffff),
        gdt::entry(gdt::DATA, 0, 0xfffff),
        gdt::entry(gdt::TSS_64, 0, 0xfffff),
    ];
    for (i, descriptor) in table.iter().enumerate() {
        ram.write_u64(GDT_ADDRESS + 8 * i as u64, *descriptor)?;
    }
    ram.write_u64(IDT_ADDRESS, 0)?;
    write_identity_mapping(ram)?;

    let mut sregs = get_sregs(vcpu)?;
    sregs.gdt.base = GDT_ADDRESS;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = IDT_ADDRESS;
    sregs.idt.limit = 7;
    sregs.cs = gdt::segment(table[1], 1);
    let data = gdt::segment(table[2], 2);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(table[3], 3);
    sregs.cr3 = PML4_ADDRESS;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    set_sregs(vcpu, &sregs)?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.fd()
        .set_fpu(&fpu)
        .map_err(|source| registers(vcpu, "set the FPU state", source))?;
    set_regs(
        vcpu,
        &kvm_regs {
            rip: entry,
            rflags: RFLAGS_RESERVED,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            ..Default::default()
        },
    )
}

/// The Linux 64-bit boot protocol: long mode at the kernel's 64-bit
/// `entry` with rsi pointing at the zero page (written by
/// [`super::zero_page::write_zero_page`]).
pub fn setup_linux_boot(vcpu: &Vcpu, ram: &GuestRam, entry: u64) -> Result<(), BootError> {
    setup_long_mode(vcpu, ram, entry)?;
    let mut regs = vcpu
        .fd()
        .get_regs()
        .map_err(|source| registers(vcpu, "read the general registers", source))?;
    regs.rsi = ZERO_PAGE_ADDRESS;
    set_regs(vcpu, &regs)
}

/// PML4[0] -> PDPT[0] -> PD with 512 2 MiB pages: virtual = physical for
/// the first GiB.
fn write_identity_mapping(ram: &GuestRam) -> Result<(), MemoryError> {
    ram.write_u64(PML4_ADDRESS, PDPT_ADDRESS | PTE_PRESENT_RW)?;
    ram.write_u64(PDPT_ADDRESS, PD_ADDRESS | PTE_PRESENT_RW)?;
    let pages = IDENTITY_MAPPED_BYTES >> 21;
    for i in 0..pages {
        ram.write_u64(PD_ADDRESS + 8 * i, (i << 21) | PDE_HUGE | PTE_PRESENT_RW)?;
    }
    Ok(())
}

fn registers(vcpu: &Vcpu, what: &'static str, source: kvm_ioctls::Error) -> VcpuError {
    VcpuError::Registers {
        index: vcpu.index(),
        what,
        source,
    }
}

fn get_sregs(vcpu: &Vcpu) -> Result<kvm_sregs, BootError> {
    Ok(vcpu
        .fd()
        .get_sregs()
        .map_err(|source| registers(vcpu, "read the special registers", source))?)
}

fn set_sregs(vcpu: &Vcpu, sregs: &kvm_sregs) -> Result<(), BootError> {
    Ok(vcpu
        .fd()
        .set_sregs(sregs)
        .map_err(|source| registers(vcpu, "set the special registers", source))?)
}

fn set_regs(vcpu: &Vcpu, regs: &kvm_regs) -> Result<(), BootError> {
    Ok(vcpu
        .fd()
        .set_regs(regs)
        .map_err(|source| registers(vcpu, "set the general registers", source))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_mapping_covers_the_first_gib_with_2_mib_pages() {
        let ram = GuestRam::new(BOOT_STRUCTURES_END).expect("ram");
        write_identity_mapping(&ram).expect("tables");
        let read = |address: u64| {
            let mut bytes = [0u8; 8];
            ram.read(address, &mut bytes).expect("read");
            u64::from_le_bytes(bytes)
        };
        assert_eq!(read(PML4_ADDRESS), PDPT_ADDRESS | 3);
        assert_eq!(read(PDPT_ADDRESS), PD_ADDRESS | 3);
        assert_eq!(read(PD_ADDRESS), 0x83);
        assert_eq!(read(PD_ADDRESS + 8 * 511), (511 << 21) | 0x83);
    }
}
