//! The aarch64 guest-physical memory map. Devices live below 1 GiB, RAM
//! starts at 2 GiB (as in Firecracker and Cloud Hypervisor), so the first
//! 2 GiB never hold RAM and MMIO and RAM cannot collide whatever the RAM
//! size.
//!
//! ```text
//! 0x0000_0000 ..            unused (nothing answers; reads fault)
//! 0x0800_0000  64 KiB       GIC distributor (v3 and v2)
//! 0x0801_0000   8 KiB       GICv2 CPU interface (v2 fallback only)
//! 0x080a_0000 128 KiB/vCPU  GICv3 redistributors (up to 0x0900_0000)
//! 0x0900_0000   4 KiB       serial console, 16550A, SPI 1
//! 0x0901_0000   4 KiB       PL031 RTC, SPI 2
//! 0x0a00_0000   4 KiB × 32  virtio-mmio slots, SPI 16 + slot
//! 0x4000_0000 .. 0x8000_0000 reserved for later MMIO (e.g. PCIe)
//! 0x8000_0000 ..            RAM: the kernel at its text_offset from
//!                           the start, the initramfs below the FDT,
//!                           the FDT in the last 2 MiB
//! ```
//!
//! Interrupt numbers here are SPI numbers: the device tree names them as
//! `<GIC_SPI n flags>`, the GIC sees INTID 32 + n, and a KVM irqfd takes
//! n as its GSI (KVM's default arm64 routing maps GSI n to SPI n).

/// Size of one page (the granule every region here is aligned to).
pub const PAGE_SIZE: u64 = 0x1000;

/// GIC distributor base (GICv3 and GICv2 alike).
pub const GIC_DIST_BASE: u64 = 0x0800_0000;
/// GICv3 distributor size (64 KiB).
pub const GIC_V3_DIST_SIZE: u64 = 0x1_0000;
/// GICv2 distributor size (4 KiB, KVM_VGIC_V2_DIST_SIZE).
pub const GIC_V2_DIST_SIZE: u64 = 0x1000;
/// GICv2 CPU interface base.
pub const GIC_V2_CPU_BASE: u64 = 0x0801_0000;
/// GICv2 CPU interface size (8 KiB, KVM_VGIC_V2_CPU_SIZE).
pub const GIC_V2_CPU_SIZE: u64 = 0x2000;
/// First GICv3 redistributor; one per vCPU follows another.
pub const GIC_REDIST_BASE: u64 = 0x080a_0000;
/// One GICv3 redistributor: RD_base and SGI_base frames of 64 KiB each.
pub const GIC_REDIST_SIZE: u64 = 0x2_0000;
/// End of the redistributor window (the serial console follows).
pub const GIC_REDIST_END: u64 = SERIAL_BASE;
/// vCPUs whose redistributors fit in the window (123).
pub const MAX_VCPUS_GICV3: u64 = (GIC_REDIST_END - GIC_REDIST_BASE) / GIC_REDIST_SIZE;
/// vCPUs a GICv2 can address.
pub const MAX_VCPUS_GICV2: u64 = 8;

/// Interrupt IDs the GIC has: 32 private (SGIs, PPIs) then SPIs. KVM wants
/// a multiple of 32 between 64 and 1024.
pub const GIC_NR_IRQS: u32 = 128;
/// SPIs available (SPI numbers 0 .. this).
pub const GIC_NR_SPIS: u32 = GIC_NR_IRQS - 32;

/// Serial console (16550A) base.
pub const SERIAL_BASE: u64 = 0x0900_0000;
/// Serial console MMIO size.
pub const SERIAL_SIZE: u64 = PAGE_SIZE;
/// Serial console interrupt (SPI number).
pub const SERIAL_SPI: u32 = 1;
/// Input clock of the 16550A: the classic 1.8432 MHz, so that divisor 1
/// is 115200 baud (Linux's 8250 OF driver requires the property).
pub const SERIAL_CLOCK_HZ: u32 = 1_843_200;

/// PL031 RTC base.
pub const RTC_BASE: u64 = 0x0901_0000;
/// PL031 RTC MMIO size.
pub const RTC_SIZE: u64 = PAGE_SIZE;
/// PL031 RTC interrupt (SPI number; vm-superio's model never raises it).
pub const RTC_SPI: u32 = 2;
/// Frequency of the fixed APB clock the PL031 (an AMBA PrimeCell) names.
pub const APB_PCLK_HZ: u32 = 24_000_000;

/// First virtio-mmio slot.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
/// One virtio-mmio slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = PAGE_SIZE;
/// Number of virtio-mmio slots.
pub const VIRTIO_MMIO_SLOTS: u32 = 32;
/// SPI of slot 0; slot `i` has `VIRTIO_MMIO_FIRST_SPI + i`.
pub const VIRTIO_MMIO_FIRST_SPI: u32 = 16;

/// Start of RAM (2 GiB).
pub const RAM_START: u64 = 0x8000_0000;
/// Largest RAM accepted: what a 40-bit IPA space (KVM's default on arm64)
/// holds above [`RAM_START`].
pub const RAM_MAX_SIZE: u64 = (1 << 40) - RAM_START;

/// Kernels are loaded at a 2 MiB-aligned base plus their text_offset.
pub const KERNEL_ALIGNMENT: u64 = 0x20_0000;
/// Base the kernel's text_offset is added to: the start of RAM.
pub const KERNEL_BASE: u64 = RAM_START;

/// Space reserved for the FDT: the boot protocol caps it at 2 MiB.
pub const FDT_MAX_SIZE: u64 = 0x20_0000;
/// The initramfs must lie in a 1 GiB-aligned window of at most 32 GiB that
/// also holds the kernel (Documentation/arch/arm64/booting.rst).
pub const INITRD_WINDOW: u64 = 32 << 30;

/// Where the FDT goes in RAM of `ram_size` bytes at [`RAM_START`]: the last
/// 2 MiB-aligned 2 MiB (the kernel maps the FDT with 2 MiB blocks, so it
/// gets a 2 MiB region of its own). `None` if RAM is smaller than that.
pub fn fdt_address(ram_size: u64) -> Option<u64> {
    let end = RAM_START.checked_add(ram_size)?;
    let start = end.checked_sub(FDT_MAX_SIZE)? & !(FDT_MAX_SIZE - 1);
    (start >= RAM_START).then_some(start)
}

/// The MMIO base and SPI of virtio-mmio slot `slot`.
pub fn virtio_mmio_slot(slot: u32) -> Option<(u64, u32)> {
    (slot < VIRTIO_MMIO_SLOTS).then(|| {
        (
            VIRTIO_MMIO_BASE + u64::from(slot) * VIRTIO_MMIO_SLOT_SIZE,
            VIRTIO_MMIO_FIRST_SPI + slot,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every fixed MMIO range, for the overlap check.
    fn mmio_ranges() -> Vec<(&'static str, u64, u64)> {
        vec![
            ("gic dist", GIC_DIST_BASE, GIC_V3_DIST_SIZE),
            ("gicv2 cpu", GIC_V2_CPU_BASE, GIC_V2_CPU_SIZE),
            (
                "gic redist",
                GIC_REDIST_BASE,
                GIC_REDIST_END - GIC_REDIST_BASE,
            ),
            ("serial", SERIAL_BASE, SERIAL_SIZE),
            ("rtc", RTC_BASE, RTC_SIZE),
            (
                "virtio",
                VIRTIO_MMIO_BASE,
                u64::from(VIRTIO_MMIO_SLOTS) * VIRTIO_MMIO_SLOT_SIZE,
            ),
        ]
    }

    #[test]
    fn mmio_ranges_are_disjoint_aligned_and_below_ram() {
        let ranges = mmio_ranges();
        for (i, (name, base, size)) in ranges.iter().enumerate() {
            assert_eq!(base % PAGE_SIZE, 0, "{name}");
            assert!(base + size <= 0x4000_0000, "{name} below 1 GiB");
            for (other, b, s) in &ranges[i + 1..] {
                assert!(
                    base + size <= *b || b + s <= *base,
                    "{name} overlaps {other}"
                );
            }
        }
        assert_eq!(
            GIC_REDIST_BASE % 0x1_0000,
            0,
            "redistributors are 64 KiB aligned"
        );
        assert_eq!(MAX_VCPUS_GICV3, 123);
        assert_eq!(RAM_START % KERNEL_ALIGNMENT, 0);
    }

    #[test]
    fn interrupts_are_distinct_spis_within_the_gic() {
        let mut spis = vec![SERIAL_SPI, RTC_SPI];
        spis.extend((0..VIRTIO_MMIO_SLOTS).filter_map(|s| virtio_mmio_slot(s).map(|(_, spi)| spi)));
        let mut sorted = spis.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), spis.len());
        assert!(spis.iter().all(|spi| *spi < GIC_NR_SPIS));
        assert_eq!(GIC_NR_IRQS % 32, 0);
    }

    #[test]
    fn virtio_slots_are_numbered_from_the_window() {
        assert_eq!(virtio_mmio_slot(0), Some((0x0a00_0000, 16)));
        assert_eq!(virtio_mmio_slot(31), Some((0x0a01_f000, 47)));
        assert_eq!(virtio_mmio_slot(32), None);
    }

    #[test]
    fn the_fdt_takes_the_last_2_mib_of_ram() {
        assert_eq!(fdt_address(256 << 20), Some(RAM_START + (254 << 20)));
        assert_eq!(fdt_address(2 << 20), Some(RAM_START));
        // 3 MiB + 4 KiB: the last 2 MiB-aligned block inside RAM starts at +0.
        assert_eq!(fdt_address((3 << 20) + 4096), Some(RAM_START));
        assert_eq!(fdt_address(1 << 20), None);
    }
}
