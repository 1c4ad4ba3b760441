//! `edge-agent slices`: the slices in this box's kernel, as a table or JSON.

use network_slicing::isolation::NfTables;
use network_slicing::kernel::Kernel;
use network_slicing::status::SliceStatus;

/// Reads every slice from the kernel (netlink and nf_tables).
pub fn read() -> anyhow::Result<Vec<SliceStatus>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let kernel = Kernel::connect()?;
        let nft = NfTables::open()?;
        Ok(network_slicing::status::read(&kernel, &nft).await?)
    })
}

/// A table: one line per slice.
pub fn render(slices: &[SliceStatus]) -> String {
    if slices.is_empty() {
        return "no slices\n".to_string();
    }
    let mut out = format!(
        "{:<20} {:>5} {:<10} {:<12} {:>14} {:>10} {:>8} {:>14} {:>10} {:>8} {:>10}\n",
        "SLICE",
        "VLAN",
        "UPLINK",
        "STATE",
        "TX BYTES",
        "TX PKTS",
        "TX DROP",
        "RX BYTES",
        "RX PKTS",
        "RX DROP",
        "ISOLATED"
    );
    for s in slices {
        out.push_str(&format!(
            "{:<20} {:>5} {:<10} {:<12} {:>14} {:>10} {:>8} {:>14} {:>10} {:>8} {:>10}\n",
            s.name,
            s.vlan_id,
            s.uplink,
            s.state,
            s.egress.bytes,
            s.egress.packets,
            s.egress.drops,
            s.ingress.bytes,
            s.ingress.packets,
            s.ingress.drops,
            s.isolation_drops
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_line_per_slice() {
        let slice = SliceStatus {
            name: "video".into(),
            vlan_id: 100,
            uplink: "eth0".into(),
            state: "up".into(),
            ..SliceStatus::default()
        };
        let table = render(&[slice]);
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(
            table
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("video") && l.contains(" 100 eth0")),
            "{table}"
        );
        assert_eq!(render(&[]), "no slices\n");
    }
}
