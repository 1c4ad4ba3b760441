//! Slices with every rate resolved: what the kernel objects are built from.

use std::net::Ipv4Addr;

use mecvisor_protocol::{AllowRule, QosSpec, QosTier, SliceSpec, WorkloadSpec};

/// Shaping parameters of one slice, all explicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Committed information rate (HTB `rate`), kbit/s.
    pub cir_kbit: u64,
    /// Peak information rate (HTB `ceil`), kbit/s.
    pub pir_kbit: u64,
    /// Bytes that may be sent at line rate above the PIR (HTB `burst`).
    pub burst_bytes: u32,
    /// Bytes served per round when sharing spare bandwidth (HTB `quantum`).
    pub quantum_bytes: u32,
    /// HTB priority, 0 (highest) ..= 7.
    pub priority: u8,
}

/// Rates of a tier when the manifest gives none explicitly: (CIR, PIR,
/// priority). Gold is guaranteed the most and borrows first.
pub fn tier_defaults(tier: QosTier) -> (u64, u64, u8) {
    match tier {
        QosTier::Gold => (100_000, 1_000_000, 1),
        QosTier::Silver => (50_000, 500_000, 3),
        QosTier::Bronze => (10_000, 100_000, 5),
    }
}

/// Largest HTB quantum the kernel takes without warning.
const MAX_QUANTUM: u32 = 200_000;
/// One full Ethernet frame: the smallest sensible burst and quantum.
const FRAME: u32 = 1_514;

impl Rates {
    /// Resolves a QoS spec: explicit values win, the tier fills the rest;
    /// burst covers 10 ms at the PIR unless given, quantum 1/10 s of the
    /// CIR (clamped).
    pub fn resolve(qos: &QosSpec) -> Rates {
        let (tier_cir, tier_pir, tier_priority) = qos.tier.map(tier_defaults).unwrap_or((0, 0, 4));
        let cir_kbit = qos.cir_kbit.unwrap_or(tier_cir).max(1);
        let pir_kbit = qos.pir_kbit.unwrap_or(tier_pir).max(cir_kbit);
        let bytes_per_s = |kbit: u64| kbit.saturating_mul(1000) / 8;
        let burst = match qos.burst_bytes {
            Some(explicit) => u64::from(explicit.max(FRAME)),
            None => (bytes_per_s(pir_kbit) / 100).clamp(u64::from(FRAME) * 10, u64::from(u32::MAX)),
        };
        let quantum = (bytes_per_s(cir_kbit) / 10).clamp(u64::from(FRAME), u64::from(MAX_QUANTUM));
        Rates {
            cir_kbit,
            pir_kbit,
            burst_bytes: burst as u32,
            quantum_bytes: quantum as u32,
            priority: qos.priority.unwrap_or(tier_priority).min(7),
        }
    }
}

/// One slice as the kernel will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// Slice name (unique on the box).
    pub name: String,
    /// 802.1Q VLAN id on the uplink.
    pub vlan_id: u16,
    /// Host interface carrying the VLAN.
    pub uplink: String,
    /// Shaping.
    pub rates: Rates,
    /// IPv4 subnet of the slice, as `a.b.c.d/n`.
    pub subnet: Option<String>,
    /// The gateway address and the subnet's prefix length, set on the
    /// slice's bridge.
    pub gateway: Option<(Ipv4Addr, u8)>,
}

impl Slice {
    /// The slice of a (validated) desired-state spec.
    pub fn from_spec(spec: &SliceSpec) -> Slice {
        Slice {
            name: spec.name.clone(),
            vlan_id: spec.vlan_id,
            uplink: spec.uplink.clone(),
            rates: Rates::resolve(&spec.qos),
            subnet: spec.subnet.clone(),
            gateway: gateway_of(spec),
        }
    }
}

/// The gateway of a validated spec with its subnet's prefix length.
fn gateway_of(spec: &SliceSpec) -> Option<(Ipv4Addr, u8)> {
    let address = spec.gateway.as_deref()?.parse().ok()?;
    let subnet = mecvisor_protocol::validate::Ipv4Net::parse(spec.subnet.as_deref()?).ok()?;
    Some((address, subnet.prefix))
}

/// A workload's port in a slice: the host end of a container's veth or a
/// VM's tap, made by the workload's runtime and enslaved to the slice's
/// bridge by the slicer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Link name.
    pub name: String,
    /// The slice it joins.
    pub slice: String,
    /// The workload's IPv4 address (needed by allow rules).
    pub address: Option<Ipv4Addr>,
    /// Traffic from other slices the workload accepts.
    pub allow: Vec<AllowRule>,
    /// Shaping towards the workload (HTB on the port), if any.
    pub limit: Option<Rates>,
}

impl Port {
    /// The port of a (validated) workload that joins a slice, named as
    /// [`crate::workload_net`] names it; `None` without a slice.
    pub fn of_workload(spec: &WorkloadSpec) -> Option<Port> {
        Some(Port {
            name: crate::workload_net::port_name(&spec.name),
            slice: spec.slice.clone()?,
            address: spec.address.as_deref().and_then(|a| a.parse().ok()),
            allow: spec.allow.clone(),
            limit: spec.port_qos.as_ref().map(Rates::resolve),
        })
    }
}

impl Slice {
    /// The prefix length of the slice's subnet, if it has one.
    pub fn prefix(&self) -> Option<u8> {
        let subnet = self.subnet.as_deref()?;
        Some(
            mecvisor_protocol::validate::Ipv4Net::parse(subnet)
                .ok()?
                .prefix,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_rates_win_and_the_tier_fills_the_rest() {
        let qos = QosSpec {
            tier: Some(QosTier::Gold),
            cir_kbit: Some(1_000),
            pir_kbit: None,
            priority: None,
            burst_bytes: None,
        };
        let rates = Rates::resolve(&qos);
        assert_eq!(
            (rates.cir_kbit, rates.pir_kbit, rates.priority),
            (1_000, 1_000_000, 1)
        );
        // 10 ms at 1 Gbit/s, and 1/10 s of 1 Mbit/s.
        assert_eq!(rates.burst_bytes, 1_250_000);
        assert_eq!(rates.quantum_bytes, 12_500);
        // A large CIR's quantum stops at the kernel's limit.
        let big = Rates::resolve(&QosSpec {
            cir_kbit: Some(100_000),
            ..qos
        });
        assert_eq!(big.quantum_bytes, MAX_QUANTUM);
    }

    #[test]
    fn small_rates_keep_a_frame_and_pir_never_below_cir() {
        let qos = QosSpec {
            tier: None,
            cir_kbit: Some(64),
            pir_kbit: Some(32),
            priority: Some(9),
            burst_bytes: None,
        };
        let rates = Rates::resolve(&qos);
        assert_eq!(rates.pir_kbit, 64);
        assert_eq!(rates.quantum_bytes, FRAME);
        assert_eq!(rates.burst_bytes, FRAME * 10);
        assert_eq!(rates.priority, 7);
    }
}
