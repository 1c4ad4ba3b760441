//! The flattened device tree the arm64 kernel boots with (vm-fdt): on this
//! machine it is the only way the guest learns of its RAM, CPUs, GIC,
//! timer and devices (no ACPI tables are written, and the Debian kernel's
//! virtio-mmio driver cannot take devices from the command line).
//!
//! The serial console is a 16550A on MMIO (`ns16550a`), not a PL011: the
//! VMM already has a 16550 model (vm-superio's `Serial`, the x86 COM1), and
//! the Debian arm64 kernel has the 8250 OF platform driver built in
//! (SERIAL_OF_PLATFORM=y) and an `ns16550a` earlycon; a PL011 would need a
//! second UART model with its PrimeCell id registers for nothing.
//!
//! Nothing here talks to KVM, so the tree is built and checked on any host.

use vm_fdt::{FdtWriter, FdtWriterNode};

use super::layout::{
    APB_PCLK_HZ, FDT_MAX_SIZE, GIC_DIST_BASE, GIC_REDIST_BASE, GIC_REDIST_SIZE, GIC_V2_CPU_BASE,
    GIC_V2_CPU_SIZE, GIC_V2_DIST_SIZE, GIC_V3_DIST_SIZE, MAX_VCPUS_GICV2, MAX_VCPUS_GICV3,
    RTC_BASE, RTC_SIZE, RTC_SPI, SERIAL_BASE, SERIAL_CLOCK_HZ, SERIAL_SIZE, SERIAL_SPI,
};
use super::regs::MPIDR_AFFINITY_MASK;
use crate::devices::mmio::MmioDeviceInfo;

/// phandle of the GIC (every interrupt's parent).
const GIC_PHANDLE: u32 = 1;
/// phandle of the APB clock.
const CLOCK_PHANDLE: u32 = 2;

/// First cell of a GIC interrupt specifier: a shared interrupt.
const GIC_SPI: u32 = 0;
/// First cell of a GIC interrupt specifier: a per-CPU interrupt.
const GIC_PPI: u32 = 1;
/// Trigger (third cell): rising edge.
const IRQ_TYPE_EDGE_RISING: u32 = 1;
/// Trigger (third cell): high level.
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;

/// The architected timer's PPIs, in the order the binding lists them:
/// secure physical, non-secure physical, virtual, hypervisor physical
/// (INTIDs 29, 30, 27, 26).
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// Which GIC the guest has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2: distributor and CPU interface, at most 8 CPUs.
    V2,
    /// GICv3: distributor and one redistributor per CPU.
    V3,
}

/// What the tree describes.
#[derive(Debug, Clone)]
pub struct FdtConfig<'a> {
    /// MPIDR_EL1 of each vCPU, vCPU 0 first.
    pub cpu_mpidrs: &'a [u64],
    /// Guest-physical start of RAM.
    pub ram_base: u64,
    /// RAM size in bytes.
    pub ram_size: u64,
    /// The GIC KVM created.
    pub gic: GicVersion,
    /// Kernel command line (/chosen/bootargs).
    pub cmdline: &'a str,
    /// Initramfs as (guest-physical start, size), if any.
    pub initrd: Option<(u64, u64)>,
    /// virtio-mmio devices to announce.
    pub virtio: &'a [MmioDeviceInfo],
}

/// Why the tree could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// vm-fdt refused a node or property (e.g. a NUL in the command line).
    #[error("device tree: {0}")]
    Writer(#[from] vm_fdt::Error),
    /// No vCPU was given.
    #[error("device tree: no CPUs")]
    NoCpus,
    /// More vCPUs than the GIC can serve.
    #[error("device tree: {count} vCPUs, but the {gic:?} GIC serves at most {max}")]
    TooManyCpus {
        /// vCPUs requested.
        count: usize,
        /// The GIC.
        gic: GicVersion,
        /// Its limit.
        max: u64,
    },
    /// The blob exceeds the 2 MiB the boot protocol allows.
    #[error("device tree of {0} bytes is larger than the 2 MiB the kernel accepts")]
    TooLarge(usize),
}

/// The path of the serial console node (/chosen/stdout-path).
pub fn serial_node_path() -> String {
    format!("/uart@{SERIAL_BASE:x}")
}

/// Builds the device tree blob.
pub fn build_fdt(config: &FdtConfig<'_>) -> Result<Vec<u8>, FdtError> {
    let count = config.cpu_mpidrs.len();
    if count == 0 {
        return Err(FdtError::NoCpus);
    }
    let max = match config.gic {
        GicVersion::V2 => MAX_VCPUS_GICV2,
        GicVersion::V3 => MAX_VCPUS_GICV3,
    };
    if count as u64 > max {
        return Err(FdtError::TooManyCpus {
            count,
            gic: config.gic,
            max,
        });
    }

    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "mecvisor")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    chosen(&mut fdt, config)?;
    memory(&mut fdt, config)?;
    cpus(&mut fdt, config.cpu_mpidrs)?;
    psci(&mut fdt)?;
    gic(&mut fdt, config.gic, count)?;
    timer(&mut fdt, config.gic, count)?;
    clock(&mut fdt)?;
    rtc(&mut fdt)?;
    serial(&mut fdt)?;
    for device in config.virtio {
        virtio_mmio(&mut fdt, device)?;
    }

    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(FdtError::TooLarge(blob.len()));
    }
    Ok(blob)
}

fn chosen(fdt: &mut FdtWriter, config: &FdtConfig<'_>) -> Result<(), FdtError> {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", config.cmdline)?;
    fdt.property_string("stdout-path", &serial_node_path())?;
    if let Some((start, size)) = config.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", start + size)?;
    }
    end(fdt, node)
}

fn memory(fdt: &mut FdtWriter, config: &FdtConfig<'_>) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("memory@{:x}", config.ram_base))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[config.ram_base, config.ram_size])?;
    end(fdt, node)
}

fn cpus(fdt: &mut FdtWriter, mpidrs: &[u64]) -> Result<(), FdtError> {
    let node = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 0)?;
    for mpidr in mpidrs {
        let affinity = mpidr & MPIDR_AFFINITY_MASK;
        let cpu = fdt.begin_node(&format!("cpu@{affinity:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u64("reg", affinity)?;
        end(fdt, cpu)?;
    }
    end(fdt, node)
}

fn psci(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let node = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-0.2".to_string(), "arm,psci".to_string()],
    )?;
    fdt.property_string("method", "hvc")?;
    end(fdt, node)
}

fn gic(fdt: &mut FdtWriter, version: GicVersion, cpus: usize) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("intc@{GIC_DIST_BASE:x}"))?;
    match version {
        GicVersion::V3 => {
            fdt.property_string("compatible", "arm,gic-v3")?;
            fdt.property_array_u64(
                "reg",
                &[
                    GIC_DIST_BASE,
                    GIC_V3_DIST_SIZE,
                    GIC_REDIST_BASE,
                    GIC_REDIST_SIZE * cpus as u64,
                ],
            )?;
        }
        GicVersion::V2 => {
            fdt.property_string("compatible", "arm,cortex-a15-gic")?;
            fdt.property_array_u64(
                "reg",
                &[
                    GIC_DIST_BASE,
                    GIC_V2_DIST_SIZE,
                    GIC_V2_CPU_BASE,
                    GIC_V2_CPU_SIZE,
                ],
            )?;
        }
    }
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_null("interrupt-controller")?;
    // Cells for child nodes (a GICv3 ITS, later), as QEMU writes them;
    // dtc also expects #address-cells on an interrupt provider.
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_phandle(GIC_PHANDLE)?;
    end(fdt, node)
}

fn timer(fdt: &mut FdtWriter, version: GicVersion, cpus: usize) -> Result<(), FdtError> {
    // A GICv2 PPI specifier also names the CPUs it reaches (bits 15:8).
    let flags = match version {
        GicVersion::V3 => IRQ_TYPE_LEVEL_HIGH,
        GicVersion::V2 => IRQ_TYPE_LEVEL_HIGH | (((1u32 << cpus) - 1) << 8),
    };
    let cells: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|ppi| [GIC_PPI, *ppi, flags])
        .collect();
    let node = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.property_null("always-on")?;
    end(fdt, node)
}

fn clock(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let node = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", APB_PCLK_HZ)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(CLOCK_PHANDLE)?;
    end(fdt, node)
}

fn rtc(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("pl031@{RTC_BASE:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl031".to_string(), "arm,primecell".to_string()],
    )?;
    fdt.property_array_u64("reg", &[RTC_BASE, RTC_SIZE])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, RTC_SPI, IRQ_TYPE_LEVEL_HIGH])?;
    fdt.property_u32("clocks", CLOCK_PHANDLE)?;
    fdt.property_string("clock-names", "apb_pclk")?;
    end(fdt, node)
}

fn serial(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("uart@{SERIAL_BASE:x}"))?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &[SERIAL_BASE, SERIAL_SIZE])?;
    // The model raises its line through an irqfd, i.e. as an edge.
    fdt.property_array_u32("interrupts", &[GIC_SPI, SERIAL_SPI, IRQ_TYPE_EDGE_RISING])?;
    fdt.property_u32("clock-frequency", SERIAL_CLOCK_HZ)?;
    end(fdt, node)
}

fn virtio_mmio(fdt: &mut FdtWriter, device: &MmioDeviceInfo) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("virtio_mmio@{:x}", device.base))?;
    fdt.property_string("compatible", "virtio,mmio")?;
    fdt.property_array_u64("reg", &[device.base, device.size])?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, device.irq, IRQ_TYPE_EDGE_RISING])?;
    // KVM guests' memory accesses are cache-coherent with the VMM's.
    fdt.property_null("dma-coherent")?;
    end(fdt, node)
}

fn end(fdt: &mut FdtWriter, node: FdtWriterNode) -> Result<(), FdtError> {
    Ok(fdt.end_node(node)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::layout::{virtio_mmio_slot, RAM_START, VIRTIO_MMIO_SLOT_SIZE};
    use super::*;

    const FDT_MAGIC: u32 = 0xd00d_feed;
    const FDT_BEGIN_NODE: u32 = 1;
    const FDT_END_NODE: u32 = 2;
    const FDT_PROP: u32 = 3;
    const FDT_NOP: u32 = 4;
    const FDT_END: u32 = 9;

    /// Node path -> property name -> value, read back from a blob by a
    /// minimal reader of the flattened format (devicetree spec, ch. 5).
    type Tree = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

    fn be32(blob: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(blob[at..at + 4].try_into().expect("4 bytes"))
    }

    fn cstr(bytes: &[u8]) -> String {
        let end = bytes.iter().position(|b| *b == 0).expect("NUL-terminated");
        String::from_utf8(bytes[..end].to_vec()).expect("UTF-8")
    }

    fn parse(blob: &[u8]) -> Tree {
        assert_eq!(be32(blob, 0), FDT_MAGIC, "magic");
        assert_eq!(be32(blob, 4) as usize, blob.len(), "totalsize");
        let structs = be32(blob, 8) as usize;
        let strings = be32(blob, 12) as usize;
        assert_eq!(be32(blob, 20), 17, "version");
        let strings_size = be32(blob, 32) as usize;
        let structs_size = be32(blob, 36) as usize;
        assert!(structs + structs_size <= blob.len() && strings + strings_size <= blob.len());

        let mut tree = Tree::new();
        let mut path: Vec<String> = Vec::new();
        let mut at = structs;
        let full = |path: &[String]| {
            if path.len() <= 1 {
                "/".to_string()
            } else {
                path[1..].iter().map(|p| format!("/{p}")).collect()
            }
        };
        loop {
            let token = be32(blob, at);
            at += 4;
            match token {
                FDT_BEGIN_NODE => {
                    let name = cstr(&blob[at..]);
                    at += (name.len() + 1).div_ceil(4) * 4;
                    path.push(name);
                    let previous = tree.insert(full(&path), BTreeMap::new());
                    assert!(previous.is_none(), "duplicate node {}", full(&path));
                }
                FDT_END_NODE => {
                    path.pop().expect("balanced nodes");
                }
                FDT_PROP => {
                    let len = be32(blob, at) as usize;
                    let name_offset = be32(blob, at + 4) as usize;
                    at += 8;
                    let name = cstr(&blob[strings + name_offset..strings + strings_size]);
                    let value = blob[at..at + len].to_vec();
                    at += len.div_ceil(4) * 4;
                    tree.get_mut(&full(&path))
                        .expect("property inside a node")
                        .insert(name, value);
                }
                FDT_NOP => {}
                FDT_END => break,
                other => panic!("unknown token {other:#x} at {at:#x}"),
            }
        }
        assert!(path.is_empty(), "every node ended");
        assert!(at <= structs + structs_size);
        tree
    }

    fn prop<'t>(tree: &'t Tree, node: &str, name: &str) -> &'t [u8] {
        tree.get(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .get(name)
            .unwrap_or_else(|| panic!("no {node}:{name}"))
    }

    fn string(tree: &Tree, node: &str, name: &str) -> String {
        cstr(prop(tree, node, name))
    }

    fn cells(tree: &Tree, node: &str, name: &str) -> Vec<u32> {
        prop(tree, node, name)
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("cell")))
            .collect()
    }

    fn u64s(tree: &Tree, node: &str, name: &str) -> Vec<u64> {
        prop(tree, node, name)
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("u64")))
            .collect()
    }

    fn virtio(n: u32) -> Vec<MmioDeviceInfo> {
        (0..n)
            .filter_map(virtio_mmio_slot)
            .map(|(base, spi)| MmioDeviceInfo {
                base,
                size: VIRTIO_MMIO_SLOT_SIZE,
                irq: spi,
            })
            .collect()
    }

    fn config<'a>(
        mpidrs: &'a [u64],
        gic: GicVersion,
        devices: &'a [MmioDeviceInfo],
    ) -> FdtConfig<'a> {
        FdtConfig {
            cpu_mpidrs: mpidrs,
            ram_base: RAM_START,
            ram_size: 512 << 20,
            gic,
            cmdline: "console=ttyS0 earlycon panic=-1",
            initrd: Some((0x9000_0000, 0x12_3456)),
            virtio: devices,
        }
    }

    #[test]
    fn a_gicv3_tree_describes_the_machine() {
        let mpidrs = [0x8000_0000, 0x8000_0001];
        let devices = virtio(2);
        let blob = build_fdt(&config(&mpidrs, GicVersion::V3, &devices)).expect("fdt");
        let tree = parse(&blob);

        assert_eq!(string(&tree, "/", "compatible"), "linux,dummy-virt");
        assert_eq!(cells(&tree, "/", "#address-cells"), [2]);
        assert_eq!(cells(&tree, "/", "#size-cells"), [2]);
        assert_eq!(cells(&tree, "/", "interrupt-parent"), [GIC_PHANDLE]);

        assert_eq!(
            string(&tree, "/chosen", "bootargs"),
            "console=ttyS0 earlycon panic=-1"
        );
        assert_eq!(string(&tree, "/chosen", "stdout-path"), "/uart@9000000");
        assert_eq!(u64s(&tree, "/chosen", "linux,initrd-start"), [0x9000_0000]);
        assert_eq!(u64s(&tree, "/chosen", "linux,initrd-end"), [0x9012_3456]);

        assert_eq!(string(&tree, "/memory@80000000", "device_type"), "memory");
        assert_eq!(
            u64s(&tree, "/memory@80000000", "reg"),
            [RAM_START, 512 << 20]
        );

        // MPIDR bit 31 (RES1) is not part of the affinity.
        assert_eq!(u64s(&tree, "/cpus/cpu@0", "reg"), [0]);
        assert_eq!(u64s(&tree, "/cpus/cpu@1", "reg"), [1]);
        assert_eq!(string(&tree, "/cpus/cpu@1", "enable-method"), "psci");
        assert_eq!(cells(&tree, "/cpus", "#size-cells"), [0]);

        assert_eq!(
            prop(&tree, "/psci", "compatible"),
            b"arm,psci-0.2\0arm,psci\0"
        );
        assert_eq!(string(&tree, "/psci", "method"), "hvc");

        let gic = "/intc@8000000";
        assert_eq!(string(&tree, gic, "compatible"), "arm,gic-v3");
        assert_eq!(
            u64s(&tree, gic, "reg"),
            [0x0800_0000, 0x1_0000, 0x080a_0000, 2 * 0x2_0000]
        );
        assert_eq!(cells(&tree, gic, "#interrupt-cells"), [3]);
        assert!(prop(&tree, gic, "interrupt-controller").is_empty());
        assert_eq!(cells(&tree, gic, "#address-cells"), [2]);
        assert_eq!(cells(&tree, gic, "phandle"), [GIC_PHANDLE]);

        assert_eq!(string(&tree, "/timer", "compatible"), "arm,armv8-timer");
        assert_eq!(
            cells(&tree, "/timer", "interrupts"),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );

        assert_eq!(cells(&tree, "/apb-pclk", "clock-frequency"), [24_000_000]);
        let rtc = "/pl031@9010000";
        assert_eq!(
            prop(&tree, rtc, "compatible"),
            b"arm,pl031\0arm,primecell\0"
        );
        assert_eq!(
            cells(&tree, rtc, "clocks"),
            cells(&tree, "/apb-pclk", "phandle")
        );
        assert_eq!(string(&tree, rtc, "clock-names"), "apb_pclk");
        assert_eq!(cells(&tree, rtc, "interrupts"), [0, 2, 4]);

        let uart = "/uart@9000000";
        assert_eq!(string(&tree, uart, "compatible"), "ns16550a");
        assert_eq!(u64s(&tree, uart, "reg"), [0x0900_0000, 0x1000]);
        assert_eq!(cells(&tree, uart, "interrupts"), [0, 1, 1]);
        assert_eq!(cells(&tree, uart, "clock-frequency"), [1_843_200]);

        for (node, spi) in [("/virtio_mmio@a000000", 16), ("/virtio_mmio@a001000", 17)] {
            assert_eq!(string(&tree, node, "compatible"), "virtio,mmio");
            assert_eq!(cells(&tree, node, "interrupts"), [0, spi, 1]);
        }
        assert_eq!(
            u64s(&tree, "/virtio_mmio@a001000", "reg"),
            [0x0a00_1000, 0x1000]
        );
        assert!(!tree.contains_key("/virtio_mmio@a002000"));
    }

    #[test]
    fn a_gicv2_tree_names_the_cpu_interface_and_ppi_cpu_mask() {
        let mpidrs = [0x8000_0000, 0x8000_0001, 0x8000_0002];
        let blob = build_fdt(&config(&mpidrs, GicVersion::V2, &[])).expect("fdt");
        let tree = parse(&blob);
        let gic = "/intc@8000000";
        assert_eq!(string(&tree, gic, "compatible"), "arm,cortex-a15-gic");
        assert_eq!(
            u64s(&tree, gic, "reg"),
            [0x0800_0000, 0x1000, 0x0801_0000, 0x2000]
        );
        assert_eq!(cells(&tree, "/timer", "interrupts")[2], 0x704);
        assert!(!tree.keys().any(|node| node.starts_with("/virtio_mmio")));
    }

    #[test]
    fn no_initrd_means_no_initrd_properties() {
        let mpidrs = [0x8000_0000];
        let mut config = config(&mpidrs, GicVersion::V3, &[]);
        config.initrd = None;
        let tree = parse(&build_fdt(&config).expect("fdt"));
        assert!(!tree["/chosen"].contains_key("linux,initrd-start"));
        assert!(tree["/chosen"].contains_key("bootargs"));
    }

    #[test]
    fn impossible_machines_are_refused() {
        assert!(matches!(
            build_fdt(&config(&[], GicVersion::V3, &[])),
            Err(FdtError::NoCpus)
        ));
        let nine: Vec<u64> = (0..9).map(|i| 0x8000_0000 | i).collect();
        assert!(matches!(
            build_fdt(&config(&nine, GicVersion::V2, &[])),
            Err(FdtError::TooManyCpus {
                count: 9,
                max: 8,
                ..
            })
        ));
        build_fdt(&config(&nine, GicVersion::V3, &[])).expect("nine CPUs fit a GICv3");
        let mpidrs = [0x8000_0000];
        let mut bad = config(&mpidrs, GicVersion::V3, &[]);
        bad.cmdline = "console=ttyS0\0root=/dev/vda";
        assert!(matches!(build_fdt(&bad), Err(FdtError::Writer(_))));
    }

    #[test]
    fn aff1_cpus_get_their_own_unit_address() {
        // KVM puts vCPU 16 at Aff1 = 1, Aff0 = 0.
        let mpidrs = [0x8000_0000, 0x8000_0100];
        let tree = parse(&build_fdt(&config(&mpidrs, GicVersion::V3, &[])).expect("fdt"));
        assert_eq!(u64s(&tree, "/cpus/cpu@100", "reg"), [0x100]);
    }
}
