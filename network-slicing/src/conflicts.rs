//! What makes a set of slices impossible on this host. Checked before
//! anything changes; every conflict found is reported at once.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use mecvisor_protocol::validate::Ipv4Net;

use crate::model::{Port, Slice};
use crate::names::{link_name, Role};

/// What the host looks like, as far as conflicts go.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// Interfaces that can carry slices (every non-mecvisor link), by name.
    pub uplinks: BTreeMap<String, UplinkFacts>,
    /// Names of links mecvisor did not create (slice links must not take them).
    pub foreign_links: Vec<String>,
    /// Links enslaved to a bridge mecvisor did not create: link -> bridge.
    pub in_foreign_bridges: BTreeMap<String, String>,
}

/// One candidate uplink.
#[derive(Debug, Clone, Default)]
pub struct UplinkFacts {
    /// Its IPv4 addresses with prefix length (e.g. the management address).
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// Configured capacity in kbit/s, if the operator gave one.
    pub capacity_kbit: Option<u64>,
    /// Its root qdisc (kind, handle) when someone other than mecvisor set
    /// it; mecvisor will not replace it.
    pub foreign_qdisc: Option<(String, u32)>,
}

/// One reason the slices cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// Two slices want the same VLAN on the same uplink.
    #[error("slices {first:?} and {second:?} both want VLAN {vlan} on {uplink}")]
    DuplicateVlan {
        /// The uplink.
        uplink: String,
        /// The VLAN id.
        vlan: u16,
        /// First slice.
        first: String,
        /// Second slice.
        second: String,
    },
    /// The uplink does not exist on this box.
    #[error("slice {slice:?}: uplink {uplink:?} does not exist on this box")]
    UnknownUplink {
        /// The slice.
        slice: String,
        /// The missing interface.
        uplink: String,
    },
    /// The committed rates on an uplink add up to more than it carries.
    #[error("uplink {uplink}: committed rates add up to {sum_kbit} kbit/s, above its capacity of {capacity_kbit} kbit/s")]
    OverCapacity {
        /// The uplink.
        uplink: String,
        /// Sum of the CIRs of its slices.
        sum_kbit: u64,
        /// Its configured capacity.
        capacity_kbit: u64,
    },
    /// A slice's subnet is not an IPv4 network.
    #[error("slice {slice:?}: {message}")]
    BadSubnet {
        /// The slice.
        slice: String,
        /// Why.
        message: String,
    },
    /// Two slices' subnets overlap.
    #[error("slices {first:?} and {second:?} have overlapping subnets")]
    OverlappingSubnets {
        /// First slice.
        first: String,
        /// Second slice.
        second: String,
    },
    /// The uplink's root qdisc is someone else's: slices would have to
    /// replace it to shape the uplink.
    #[error(
        "{uplink}: its root qdisc ({kind} {major:x}:) was set by someone else; remove it first"
    )]
    ForeignQdisc {
        /// The uplink (or port).
        uplink: String,
        /// Qdisc kind.
        kind: String,
        /// Its major handle.
        major: u32,
    },
    /// A workload's port does not exist (its runtime has not made it).
    #[error("port {port:?} of slice {slice:?} does not exist on this box")]
    UnknownPort {
        /// The port.
        port: String,
        /// Its slice.
        slice: String,
    },
    /// A port names a slice that is not wanted.
    #[error("port {port:?}: no slice {slice:?}")]
    PortOfUnknownSlice {
        /// The port.
        port: String,
        /// The slice it names.
        slice: String,
    },
    /// A port is in someone else's bridge; mecvisor will not take it.
    #[error("port {port:?} is in bridge {bridge}, which mecvisor did not create")]
    PortInForeignBridge {
        /// The port.
        port: String,
        /// The bridge.
        bridge: String,
    },
    /// Allow rules need the workload's address.
    #[error("port {port:?}: allow rules need the workload's IPv4 address")]
    AllowWithoutAddress {
        /// The port.
        port: String,
    },
    /// An allow rule names a slice that is not wanted.
    #[error("port {port:?}: allow rule from unknown slice {slice:?}")]
    AllowFromUnknownSlice {
        /// The port.
        port: String,
        /// The slice it names.
        slice: String,
    },
    /// A slice's subnet overlaps an address of its uplink: routing to the
    /// slice would cut the box off its own network (and its controller).
    #[error("slice {slice:?}: subnet {subnet} overlaps {uplink}'s own address {address}/{prefix}")]
    SubnetOverlapsUplink {
        /// The slice.
        slice: String,
        /// Its subnet.
        subnet: String,
        /// The uplink.
        uplink: String,
        /// The uplink's address.
        address: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// A slice's kernel name is taken by a link mecvisor did not create, or
    /// two slice names hash to the same kernel name.
    #[error("slice {slice:?}: interface name {name} is already taken by {holder}")]
    NameTaken {
        /// The slice.
        slice: String,
        /// The interface name.
        name: String,
        /// Who holds it.
        holder: String,
    },
}

/// Every conflict between `slices` and the host, in slice order.
pub fn check(slices: &[Slice], ports: &[Port], host: &HostFacts) -> Vec<Conflict> {
    let mut conflicts = Vec::new();
    let mut vlans: HashMap<(&str, u16), &str> = HashMap::new();
    let mut names: HashMap<String, &str> = HashMap::new();
    let mut subnets: Vec<(&str, Ipv4Net)> = Vec::new();
    let mut committed: BTreeMap<&str, u64> = BTreeMap::new();

    for slice in slices {
        if let Some(first) = vlans.insert((&slice.uplink, slice.vlan_id), &slice.name) {
            conflicts.push(Conflict::DuplicateVlan {
                uplink: slice.uplink.clone(),
                vlan: slice.vlan_id,
                first: first.to_string(),
                second: slice.name.clone(),
            });
        }
        let uplink = host.uplinks.get(&slice.uplink);
        if uplink.is_none() {
            conflicts.push(Conflict::UnknownUplink {
                slice: slice.name.clone(),
                uplink: slice.uplink.clone(),
            });
        }
        *committed.entry(&slice.uplink).or_default() += slice.rates.cir_kbit;

        for role in [Role::Bridge, Role::Vlan] {
            let name = link_name(&slice.name, role);
            if host.foreign_links.contains(&name) {
                conflicts.push(Conflict::NameTaken {
                    slice: slice.name.clone(),
                    name: name.clone(),
                    holder: "a link mecvisor did not create".into(),
                });
            }
            if let Some(other) = names.insert(name.clone(), &slice.name) {
                conflicts.push(Conflict::NameTaken {
                    slice: slice.name.clone(),
                    name,
                    holder: format!("slice {other:?}"),
                });
            }
        }

        let Some(text) = &slice.subnet else { continue };
        let net = match Ipv4Net::parse(text) {
            Ok(net) => net,
            Err(message) => {
                conflicts.push(Conflict::BadSubnet {
                    slice: slice.name.clone(),
                    message,
                });
                continue;
            }
        };
        for (other, other_net) in &subnets {
            if net.overlaps(other_net) {
                conflicts.push(Conflict::OverlappingSubnets {
                    first: other.to_string(),
                    second: slice.name.clone(),
                });
            }
        }
        subnets.push((&slice.name, net));
        for (address, prefix) in uplink.map(|u| u.addresses.as_slice()).unwrap_or_default() {
            if net.overlaps(&network_of(*address, *prefix)) {
                conflicts.push(Conflict::SubnetOverlapsUplink {
                    slice: slice.name.clone(),
                    subnet: text.clone(),
                    uplink: slice.uplink.clone(),
                    address: *address,
                    prefix: *prefix,
                });
            }
        }
    }

    for (uplink, sum_kbit) in committed {
        if let Some((kind, handle)) = host
            .uplinks
            .get(uplink)
            .and_then(|u| u.foreign_qdisc.clone())
        {
            conflicts.push(Conflict::ForeignQdisc {
                uplink: uplink.to_string(),
                kind,
                major: handle >> 16,
            });
        }
        let capacity = host.uplinks.get(uplink).and_then(|u| u.capacity_kbit);
        if let Some(capacity_kbit) = capacity.filter(|c| sum_kbit > *c) {
            conflicts.push(Conflict::OverCapacity {
                uplink: uplink.to_string(),
                sum_kbit,
                capacity_kbit,
            });
        }
    }
    let names: std::collections::BTreeSet<&str> = slices.iter().map(|s| s.name.as_str()).collect();
    for port in ports {
        if !names.contains(port.slice.as_str()) {
            conflicts.push(Conflict::PortOfUnknownSlice {
                port: port.name.clone(),
                slice: port.slice.clone(),
            });
        }
        if !host.foreign_links.contains(&port.name) {
            conflicts.push(Conflict::UnknownPort {
                port: port.name.clone(),
                slice: port.slice.clone(),
            });
        }
        if let Some(bridge) = host.in_foreign_bridges.get(&port.name) {
            conflicts.push(Conflict::PortInForeignBridge {
                port: port.name.clone(),
                bridge: bridge.clone(),
            });
        }
        if !port.allow.is_empty() && port.address.is_none() {
            conflicts.push(Conflict::AllowWithoutAddress {
                port: port.name.clone(),
            });
        }
        for rule in &port.allow {
            if !names.contains(rule.from_slice.as_str()) {
                conflicts.push(Conflict::AllowFromUnknownSlice {
                    port: port.name.clone(),
                    slice: rule.from_slice.clone(),
                });
            }
        }
        if port.limit.is_some() {
            if let Some((kind, handle)) = host
                .uplinks
                .get(&port.name)
                .and_then(|u| u.foreign_qdisc.clone())
            {
                conflicts.push(Conflict::ForeignQdisc {
                    uplink: port.name.clone(),
                    kind,
                    major: handle >> 16,
                });
            }
        }
    }
    conflicts
}

/// The network an interface address is in (host bits cleared).
fn network_of(address: Ipv4Addr, prefix: u8) -> Ipv4Net {
    let prefix = prefix.min(32);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    Ipv4Net {
        addr: Ipv4Addr::from(u32::from(address) & mask),
        prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Rates;

    fn slice(name: &str, vlan: u16, uplink: &str, cir: u64, subnet: Option<&str>) -> Slice {
        Slice {
            name: name.into(),
            vlan_id: vlan,
            uplink: uplink.into(),
            rates: Rates {
                cir_kbit: cir,
                pir_kbit: cir,
                burst_bytes: 15_140,
                quantum_bytes: 1_514,
                priority: 4,
            },
            subnet: subnet.map(str::to_string),
            gateway: None,
        }
    }

    fn host() -> HostFacts {
        let mut host = HostFacts::default();
        host.uplinks.insert(
            "eth0".into(),
            UplinkFacts {
                addresses: vec![(Ipv4Addr::new(192, 168, 1, 10), 24)],
                capacity_kbit: Some(100_000),
                foreign_qdisc: None,
            },
        );
        host.uplinks.insert("eth1".into(), UplinkFacts::default());
        host
    }

    #[test]
    fn a_sound_set_has_no_conflict() {
        let slices = [
            slice("video", 100, "eth0", 60_000, Some("10.20.0.0/24")),
            slice("iot", 200, "eth0", 40_000, Some("10.21.0.0/24")),
            slice("other", 100, "eth1", 1_000_000, None),
        ];
        assert_eq!(check(&slices, &[], &host()), vec![]);
    }

    #[test]
    fn every_conflict_is_found_and_named() {
        let mut host = host();
        host.foreign_links.push(link_name("taken", Role::Bridge));
        if let Some(eth1) = host.uplinks.get_mut("eth1") {
            eth1.foreign_qdisc = Some(("fq_codel".into(), 0x8001_0000));
        }
        let slices = [
            slice("video", 100, "eth0", 60_000, Some("10.20.0.0/16")),
            slice("iot", 100, "eth0", 50_000, Some("10.20.5.0/24")),
            slice("mgmt", 300, "eth0", 1, Some("192.168.1.128/25")),
            slice("ghost", 400, "wlan9", 1, Some("10.99.0.1/24")),
            slice("taken", 500, "eth1", 1, None),
        ];
        let conflicts = check(&slices, &[], &host);
        let text: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(
            has("slices \"video\" and \"iot\" both want VLAN 100 on eth0"),
            "{text:#?}"
        );
        assert!(
            has("slices \"video\" and \"iot\" have overlapping subnets"),
            "{text:#?}"
        );
        assert!(
            has("overlaps eth0's own address 192.168.1.10/24"),
            "{text:#?}"
        );
        assert!(has("uplink \"wlan9\" does not exist"), "{text:#?}");
        assert!(has("host bits set"), "{text:#?}");
        assert!(
            has("add up to 110001 kbit/s, above its capacity of 100000"),
            "{text:#?}"
        );
        assert!(has("taken by a link mecvisor did not create"), "{text:#?}");
        assert!(
            has("eth1: its root qdisc (fq_codel 8001:) was set by someone else"),
            "{text:#?}"
        );
        assert_eq!(conflicts.len(), 8, "{text:#?}");
    }

    #[test]
    fn ports_need_a_link_a_slice_and_for_allow_rules_an_address() {
        let mut host = host();
        host.foreign_links = vec!["veth-a".into(), "veth-b".into()];
        host.in_foreign_bridges
            .insert("veth-b".into(), "docker0".into());
        let slices = [slice("video", 100, "eth0", 1, None)];
        let port = |name: &str, slice: &str| Port {
            name: name.into(),
            slice: slice.into(),
            address: None,
            allow: vec![],
            limit: None,
        };
        let mut with_allow = port("veth-a", "video");
        with_allow.allow.push(mecvisor_protocol::AllowRule {
            from_slice: "radio".into(),
            protocol: mecvisor_protocol::IpProtocol::Tcp,
            port: None,
        });
        let ports = [with_allow, port("veth-b", "video"), port("veth-c", "iot")];
        let text: Vec<String> = check(&slices, &ports, &host)
            .iter()
            .map(ToString::to_string)
            .collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(
            has("port \"veth-a\": allow rules need the workload's IPv4 address"),
            "{text:#?}"
        );
        assert!(
            has("port \"veth-a\": allow rule from unknown slice \"radio\""),
            "{text:#?}"
        );
        assert!(has("port \"veth-b\" is in bridge docker0"), "{text:#?}");
        assert!(has("port \"veth-c\": no slice \"iot\""), "{text:#?}");
        assert!(
            has("port \"veth-c\" of slice \"iot\" does not exist"),
            "{text:#?}"
        );
        assert_eq!(text.len(), 5, "{text:#?}");
    }
}
