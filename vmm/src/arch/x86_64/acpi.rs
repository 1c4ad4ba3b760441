//! The ACPI tables an unmodified distribution kernel needs to find what
//! this VMM offers: the MADT lists the local APICs (one per vCPU, so the
//! secondary vCPUs are started) and the I/O APIC; the DSDT describes COM1
//! and each virtio-mmio device (`LNRO0005`: kernels without
//! CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES find them only here); the FADT says
//! the platform is hardware-reduced ACPI (no PM timer, no legacy PIC or
//! fixed-feature hardware) with a sleep control register that powers the
//! guest off, and no i8042, VGA or CMOS clock to probe.
//!
//! Layout: RSDP at [`RSDP_ADDRESS`], then XSDT, FADT, MADT and DSDT, each
//! 16-byte aligned, all below [`ACPI_TABLES_END`].

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use super::layout::{
    ACPI_TABLES_END, IOAPIC_ADDRESS, LAPIC_ADDRESS, RSDP_ADDRESS, SLEEP_CONTROL_PORT,
};
use crate::devices::mmio::MmioDeviceInfo;
use crate::devices::serial::{COM1_BASE, UART_PORTS};
use crate::memory::{GuestRam, MemoryError};

/// OEM id in every table.
const OEM_ID: [u8; 6] = *b"MECVSR";
/// OEM table id in every table.
const OEM_TABLE_ID: [u8; 8] = *b"MECVISOR";
/// OEM revision.
const OEM_REVISION: u32 = 1;
/// DSDT revision 2 and up: 64-bit AML integers.
const DSDT_REVISION: u8 = 6;
/// FADT IA-PC boot architecture flags: VGA not present (bit 2), CMOS RTC
/// not present (bit 5). The i8042 flag (bit 1) is left clear: the guest
/// skips probing the keyboard controller (it still resets through it).
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);
/// The sleep type of S5 (soft off) in `\_S5_`, which the guest writes into
/// the sleep control register.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Tables are placed on this alignment.
const TABLE_ALIGNMENT: u64 = 16;
/// The COM1 interrupt line.
const COM1_GSI: u32 = 4;

/// Why the ACPI tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in their range.
    #[error("the ACPI tables need {needed:#x} bytes from {RSDP_ADDRESS:#x}, more than the {ACPI_TABLES_END:#x} limit allows")]
    TooLarge {
        /// Bytes needed.
        needed: u64,
    },
    /// More devices than AML names or addresses allow.
    #[error("{0} virtio-mmio devices: at most 256, each below 4 GiB")]
    TooManyDevices(usize),
    /// Guest memory could not be written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT for `vcpus` vCPUs and the
/// `devices`; returns the RSDP's address (for `boot_params.acpi_rsdp_addr`).
pub fn write_tables(
    ram: &GuestRam,
    vcpus: u8,
    devices: &[MmioDeviceInfo],
) -> Result<u64, AcpiError> {
    let mut placer = Placer {
        next: align(RSDP_ADDRESS + bytes(&Rsdp::new(OEM_ID, 0)).len() as u64),
        tables: Vec::new(),
    };
    let dsdt = placer.place(dsdt(devices)?);
    let fadt = placer.place(bytes(&fadt(dsdt)));
    let madt = placer.place(bytes(&madt(vcpus)));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    let xsdt = placer.place(bytes(&xsdt));
    if placer.next > ACPI_TABLES_END {
        return Err(AcpiError::TooLarge {
            needed: placer.next - RSDP_ADDRESS,
        });
    }
    ram.write(RSDP_ADDRESS, &bytes(&Rsdp::new(OEM_ID, xsdt)))?;
    for (address, table) in &placer.tables {
        ram.write(*address, table)?;
    }
    Ok(RSDP_ADDRESS)
}

/// Hands out addresses to tables in order.
struct Placer {
    next: u64,
    tables: Vec<(u64, Vec<u8>)>,
}

impl Placer {
    fn place(&mut self, table: Vec<u8>) -> u64 {
        let address = self.next;
        self.next = align(address + table.len() as u64);
        self.tables.push((address, table));
        address
    }
}

fn align(address: u64) -> u64 {
    address.next_multiple_of(TABLE_ALIGNMENT)
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

fn fadt(dsdt: u64) -> acpi_tables::fadt::FADT {
    let sleep_register = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(SLEEP_CONTROL_PORT),
    );
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.sleep_control_reg = sleep_register;
    fadt.sleep_status_reg = sleep_register;
    fadt.finalize()
}

fn madt(vcpus: u8) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDRESS),
    );
    for index in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(
            index,
            index,
            EnabledStatus::Enabled,
        ));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDRESS, 0));
    madt
}

fn dsdt(devices: &[MmioDeviceInfo]) -> Result<Vec<u8>, AcpiError> {
    let mut body = Vec::new();
    // \_S5_: the sleep type the guest writes to power off.
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE])).to_aml_bytes(&mut body);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_GSI);
    let com1_ports = aml::IO::new(COM1_BASE, COM1_BASE, 1, UART_PORTS as u8);
    let com1_resources = aml::ResourceTemplate::new(vec![&com1_irq, &com1_ports]);
    let com1_hid = aml::EISAName::new("PNP0501");
    let com1_uid = 0u8;
    let com1 = [
        aml::Name::new("_HID".into(), &com1_hid),
        aml::Name::new("_UID".into(), &com1_uid),
        aml::Name::new("_CRS".into(), &com1_resources),
    ];
    let com1_children: Vec<&dyn Aml> = com1.iter().map(|n| n as &dyn Aml).collect();
    aml::Device::new("_SB_.COM1".into(), com1_children).to_aml_bytes(&mut body);
    for (index, device) in devices.iter().enumerate() {
        body.extend_from_slice(&virtio_device(index, device)?);
    }
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    Ok(dsdt.as_slice().to_vec())
}

/// One `LNRO0005` device: `\_SB_.VRxx` with its window and interrupt.
fn virtio_device(index: usize, device: &MmioDeviceInfo) -> Result<Vec<u8>, AcpiError> {
    let too_many = || AcpiError::TooManyDevices(index + 1);
    let uid = u8::try_from(index).map_err(|_| too_many())?;
    let base = u32::try_from(device.base).map_err(|_| too_many())?;
    let size = u32::try_from(device.size).map_err(|_| too_many())?;
    let window = aml::Memory32Fixed::new(true, base, size);
    let irq = aml::Interrupt::new(true, true, false, false, device.irq);
    let resources = aml::ResourceTemplate::new(vec![&window, &irq]);
    let hid: &'static str = "LNRO0005";
    let cca = aml::One {};
    let names = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &uid),
        aml::Name::new("_CCA".into(), &cca),
        aml::Name::new("_CRS".into(), &resources),
    ];
    let children: Vec<&dyn Aml> = names.iter().map(|n| n as &dyn Aml).collect();
    // Four characters, as AML names must be: "VR" and two hex digits.
    let path = format!("_SB_.VR{uid:02X}");
    Ok(bytes(&aml::Device::new(path.as_str().into(), children)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_at(ram: &GuestRam, address: u64) -> Vec<u8> {
        let mut header = [0u8; 8];
        ram.read(address, &mut header).unwrap();
        let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
        let mut table = vec![0u8; len];
        ram.read(address, &mut table).unwrap();
        table
    }

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn tables_chain_from_the_rsdp_with_valid_checksums() {
        let ram = GuestRam::new(2 << 20).unwrap();
        let devices = [
            MmioDeviceInfo {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            MmioDeviceInfo {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ];
        let rsdp_address = write_tables(&ram, 2, &devices).unwrap();
        assert_eq!(rsdp_address, RSDP_ADDRESS);
        let mut rsdp = [0u8; 36];
        ram.read(RSDP_ADDRESS, &mut rsdp).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));

        let xsdt = table_at(&ram, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        let signatures: Vec<Vec<u8>> = entries
            .iter()
            .map(|&a| table_at(&ram, a)[..4].to_vec())
            .collect();
        assert_eq!(signatures, vec![b"FACP".to_vec(), b"APIC".to_vec()]);

        let fadt = table_at(&ram, entries[0]);
        assert!(checksum_ok(&fadt));
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced ACPI");
        let dsdt = table_at(&ram, u64_at(&fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        assert!(contains(&dsdt, b"LNRO0005"));
        assert!(contains(&dsdt, b"VR00") && contains(&dsdt, b"VR01"));
        assert!(contains(&dsdt, b"_S5_") && contains(&dsdt, b"COM1"));
        // The second device's window base, as Memory32Fixed encodes it.
        assert!(contains(&dsdt, &0xd000_1000u32.to_le_bytes()));

        let madt = table_at(&ram, entries[1]);
        assert!(checksum_ok(&madt));
        // Header (44 bytes), then two local APICs (type 0) and an I/O APIC (type 1).
        assert_eq!(madt.len(), 44 + 8 + 8 + 12);
        assert_eq!((madt[44], madt[47]), (0, 0));
        assert_eq!((madt[52], madt[55]), (0, 1));
        assert_eq!(madt[60], 1);
        assert_eq!(
            u32::from_le_bytes(madt[64..68].try_into().unwrap()),
            IOAPIC_ADDRESS
        );
    }

    #[test]
    fn too_many_devices_are_refused() {
        let ram = GuestRam::new(2 << 20).unwrap();
        let devices: Vec<MmioDeviceInfo> = (0..300u64)
            .map(|i| MmioDeviceInfo {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                irq: 5,
            })
            .collect();
        assert!(matches!(
            write_tables(&ram, 1, &devices),
            Err(AcpiError::TooManyDevices(_) | AcpiError::TooLarge { .. })
        ));
    }
}
