//! Slices applied through netlink to a real (private) network namespace.

mod common;

use std::collections::BTreeMap;

use common::{missing_prerequisite, vlan_supported, Netns};
use mecvisor_protocol::{QosSpec, QosTier, SliceSpec};
use network_slicing::kernel::Kernel;
use network_slicing::names::{link_name, Role};
use network_slicing::{Slice, Slicer, SlicerError};

fn slice(name: &str, vlan: u16, uplink: &str, subnet: Option<&str>) -> Slice {
    Slice::from_spec(&SliceSpec {
        name: name.into(),
        vlan_id: vlan,
        uplink: uplink.into(),
        qos: QosSpec {
            tier: Some(QosTier::Silver),
            ..Default::default()
        },
        subnet: subnet.map(str::to_string),
    })
}

fn skip(test: &str) -> bool {
    match missing_prerequisite() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn conflicts_are_refused_and_nothing_changes() {
    if skip("conflicts_are_refused_and_nothing_changes") {
        return;
    }
    let ns = Netns::new();
    let before = ns.links_text();
    let rt = runtime();
    let result = rt.block_on(async {
        let kernel = Kernel::connect_in_netns(&ns.path()).expect("netlink in netns");
        let capacities = BTreeMap::from([("up0".to_string(), 60_000)]);
        let slicer = Slicer::new(kernel, capacities);
        slicer
            .apply(&[
                slice("video", 100, "up0", Some("192.168.77.0/25")),
                slice("iot", 100, "up0", None),
                slice("ghost", 300, "wlan9", None),
            ])
            .await
    });
    let err = result.expect_err("conflicting slices were applied");
    let text = err.to_string();
    assert!(
        matches!(err, SlicerError::Conflicts(ref c) if c.len() == 4),
        "{text}"
    );
    assert!(
        text.contains("overlaps up0's own address 192.168.77.2/24"),
        "{text}"
    );
    assert!(text.contains("both want VLAN 100 on up0"), "{text}");
    assert!(text.contains("\"wlan9\" does not exist"), "{text}");
    assert!(text.contains("above its capacity of 60000"), "{text}");
    assert_eq!(ns.links_text(), before, "a refused apply changed links");
}

#[test]
fn a_failed_apply_leaves_no_half_built_slice() {
    if skip("a_failed_apply_leaves_no_half_built_slice") {
        return;
    }
    let ns = Netns::new();
    // Make the VLAN step fail: on a kernel with 8021q, a VLAN link the
    // operator made holds VLAN 100 on up0 already; without 8021q, creating
    // any VLAN link fails.
    if vlan_supported(&ns) {
        ns.ip(&[
            "link", "add", "link", "up0", "name", "opvlan", "type", "vlan", "id", "100",
        ]);
    }
    let before = ns.link_names();
    let rt = runtime();
    let err = rt
        .block_on(async {
            let kernel = Kernel::connect_in_netns(&ns.path()).expect("netlink in netns");
            Slicer::new(kernel, BTreeMap::new())
                .apply(&[slice("video", 100, "up0", None)])
                .await
        })
        .expect_err("the VLAN step should have failed");
    let text = err.to_string();
    let bridge = link_name("video", Role::Bridge);
    assert!(matches!(err, SlicerError::Step { .. }), "{text}");
    assert!(text.contains("create VLAN 100 link"), "{text}");
    assert!(text.contains(&format!("undone: {bridge}")), "{text}");
    assert_eq!(
        ns.link_names(),
        before,
        "links left behind: {}",
        ns.links_text()
    );
}

#[test]
fn apply_is_idempotent_collects_garbage_and_spares_foreign_links() {
    if skip("apply_is_idempotent_collects_garbage_and_spares_foreign_links") {
        return;
    }
    let ns = Netns::new();
    if !vlan_supported(&ns) {
        eprintln!(
            "SKIPPED apply_is_idempotent_collects_garbage_and_spares_foreign_links: \
             this kernel has no 802.1Q VLAN links (8021q); the emulated edge boxes have them"
        );
        return;
    }
    // The operator's own bridge, with an alias that is not mecvisor's.
    ns.ip(&["link", "add", "opbr0", "type", "bridge"]);
    ns.ip(&["link", "set", "opbr0", "alias", "operator bridge"]);
    let rt = runtime();
    rt.block_on(async {
        let kernel = Kernel::connect_in_netns(&ns.path()).expect("netlink in netns");
        let slicer = Slicer::new(kernel, BTreeMap::new());
        let two = [
            slice("video", 100, "up0", Some("10.20.0.0/24")),
            slice("iot", 200, "up0", None),
        ];
        let first = slicer.apply(&two).await.expect("first apply");
        assert_eq!(first.changes.len(), 8, "{:#?}", first.changes);
        let second = slicer.apply(&two).await.expect("second apply");
        assert_eq!(
            second.changes,
            Vec::<String>::new(),
            "re-apply changed things"
        );
        let text = ns.links_text();
        for name in ["video", "iot"] {
            let vlan = link_name(name, Role::Vlan);
            let bridge = link_name(name, Role::Bridge);
            let line = text
                .lines()
                .find(|l| l.contains(&format!(" {vlan}@")))
                .unwrap_or_default();
            assert!(line.contains(&format!("master {bridge}")), "{text}");
            assert!(line.contains("state UP") || line.contains(",UP"), "{text}");
        }

        let one = slicer.apply(&two[..1]).await.expect("shrink");
        assert_eq!(one.changes.len(), 2, "{:#?}", one.changes);
        assert!(
            one.changes.iter().all(|c| c.starts_with("delete")),
            "{:#?}",
            one.changes
        );
        slicer.apply(&[]).await.expect("remove all");
    });
    assert_eq!(
        ns.link_names(),
        vec!["lo", "opbr0", "up0", "up0p"],
        "{}",
        ns.links_text()
    );
}
