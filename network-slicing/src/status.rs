//! What the kernel says about each slice: its links, its shaping classes'
//! counters in both directions and its isolation drops. Read-only; used by
//! `edge-agent slices`.

use std::collections::BTreeMap;

use crate::isolation::{slice_of_tag, NfTables};
use crate::kernel::{Counters, Kernel, LinkKind};
use crate::names::{link_name, parse_alias, Role};
use crate::shaping::{self, class_minor};

/// One slice as found in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SliceStatus {
    /// Slice name.
    pub name: String,
    /// VLAN id (0 if its VLAN link is missing).
    pub vlan_id: u16,
    /// Uplink carrying the VLAN.
    pub uplink: String,
    /// `up`, `down`, or what is missing (`no VLAN link`, `no bridge`).
    pub state: String,
    /// Traffic leaving through the uplink (the slice's egress class).
    pub egress: Counters,
    /// Traffic arriving from the uplink (the slice's class on the ifb).
    pub ingress: Counters,
    /// Packets dropped because they tried to cross into another slice.
    pub isolation_drops: u64,
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Links or tc state.
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    /// nftables.
    #[error(transparent)]
    Isolation(#[from] crate::isolation::IsolationError),
}

/// Every slice the kernel holds (found by mecvisor's link aliases).
pub async fn read(kernel: &Kernel, nft: &NfTables) -> Result<Vec<SliceStatus>, StatusError> {
    let links = kernel.links().await?;
    let by_index: BTreeMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let mut slices: BTreeMap<String, SliceStatus> = BTreeMap::new();
    for link in links.iter().filter(|l| l.is_ours()) {
        let Some((name, role)) = link.alias.as_deref().and_then(parse_alias) else {
            continue;
        };
        if role == Role::Ingress {
            continue;
        }
        let entry = slices.entry(name.clone()).or_insert_with(|| SliceStatus {
            name: name.clone(),
            ..SliceStatus::default()
        });
        if let (Role::Vlan, LinkKind::Vlan(id)) = (role, &link.kind) {
            entry.vlan_id = *id;
            entry.uplink = link
                .parent
                .and_then(|p| by_index.get(&p))
                .map(|n| n.to_string())
                .unwrap_or_default();
        }
    }
    let tc = shaping::observe(kernel, &links).await?;
    let drops: BTreeMap<String, u64> = nft
        .read()?
        .rules
        .into_iter()
        .filter_map(|r| slice_of_tag(&r.tag).map(|s| (s.to_string(), r.packets)))
        .collect();
    for slice in slices.values_mut() {
        let bridge = links
            .iter()
            .find(|l| l.name == link_name(&slice.name, Role::Bridge));
        let vlan = links
            .iter()
            .find(|l| l.name == link_name(&slice.name, Role::Vlan));
        slice.state = match (bridge, vlan) {
            (None, _) => "no bridge".into(),
            (_, None) => "no VLAN link".into(),
            (Some(b), Some(v)) if b.up && v.up => "up".into(),
            _ => "down".into(),
        };
        let minor = class_minor(slice.vlan_id);
        let counters = |device: &str| {
            tc.get(device)
                .and_then(|d| d.counters.get(&minor))
                .copied()
                .unwrap_or_default()
        };
        slice.egress = counters(&slice.uplink);
        slice.ingress = counters(&link_name(&slice.uplink, Role::Ingress));
        slice.isolation_drops = drops.get(&slice.name).copied().unwrap_or(0);
    }
    Ok(slices.into_values().collect())
}
