//! Slices applied through netlink to a real, private network namespace.
//! These tests also run inside the emulated edge boxes (the hil suite ships
//! this test binary there), whose kernels have 8021q.

mod common;

use std::collections::BTreeMap;

use common::{in_fresh_netns, missing_prerequisite};
use mecvisor_protocol::{QosSpec, QosTier, SliceSpec};
use network_slicing::kernel::LinkKind;
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

#[test]
fn conflicts_are_refused_and_nothing_changes() {
    if skip("conflicts_are_refused_and_nothing_changes") {
        return;
    }
    in_fresh_netns(|ns, rt| {
        rt.block_on(async {
            let before = ns.links().await;
            let capacities = BTreeMap::from([("up0".to_string(), 60_000)]);
            let slicer = Slicer::new(ns.kernel.clone(), capacities);
            let err = slicer
                .apply(&[
                    slice("video", 100, "up0", Some("192.168.77.0/25")),
                    slice("iot", 100, "up0", None),
                    slice("ghost", 300, "wlan9", None),
                ])
                .await
                .expect_err("conflicting slices were applied");
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
            assert_eq!(ns.links().await, before, "a refused apply changed links");
        })
    });
}

#[test]
fn a_failed_apply_leaves_no_half_built_slice() {
    if skip("a_failed_apply_leaves_no_half_built_slice") {
        return;
    }
    in_fresh_netns(|ns, rt| {
        rt.block_on(async {
            // Make the VLAN step fail: on a kernel with 8021q, a VLAN link
            // the operator made holds VLAN 100 on up0 already; without
            // 8021q, creating any VLAN link fails.
            if ns.vlan_supported().await {
                assert!(
                    ns.try_add_vlan("opvlan", "up0", 100).await,
                    "operator's VLAN"
                );
            }
            let before = ns.link_names().await;
            let err = Slicer::new(ns.kernel.clone(), BTreeMap::new())
                .apply(&[slice("video", 100, "up0", None)])
                .await
                .expect_err("the VLAN step should have failed");
            let text = err.to_string();
            let bridge = link_name("video", Role::Bridge);
            assert!(matches!(err, SlicerError::Step { .. }), "{text}");
            assert!(text.contains("create VLAN 100 link"), "{text}");
            assert!(text.contains(&format!("undone: {bridge}")), "{text}");
            assert_eq!(ns.link_names().await, before, "links left behind");
        })
    });
}

#[test]
fn apply_is_idempotent_collects_garbage_and_spares_foreign_links() {
    let test = "apply_is_idempotent_collects_garbage_and_spares_foreign_links";
    if skip(test) {
        return;
    }
    in_fresh_netns(move |ns, rt| {
        rt.block_on(async {
            if !ns.vlan_supported().await {
                eprintln!(
                    "SKIPPED {test}: this kernel has no 802.1Q VLAN links (8021q); \
                     the hil suite runs it inside the emulated edge boxes"
                );
                return;
            }
            ns.add_foreign_bridge("opbr0", "operator bridge").await;
            let slicer = Slicer::new(ns.kernel.clone(), BTreeMap::new());
            let two = [
                slice("video", 100, "up0", Some("10.20.0.0/24")),
                slice("iot", 200, "up0", None),
            ];
            let first = slicer.apply(&two).await.expect("first apply");
            assert_eq!(first.changes.len(), 12, "{:#?}", first.changes);
            let second = slicer.apply(&two).await.expect("second apply");
            assert_eq!(
                second.changes,
                Vec::<String>::new(),
                "re-apply changed things"
            );

            let links = ns.links().await;
            let up0 = ns.index("up0").await;
            for (name, vlan) in [("video", 100), ("iot", 200)] {
                let bridge = links
                    .iter()
                    .find(|l| l.name == link_name(name, Role::Bridge))
                    .expect("bridge");
                let port = links
                    .iter()
                    .find(|l| l.name == link_name(name, Role::Vlan))
                    .expect("VLAN link");
                assert_eq!(bridge.kind, LinkKind::Bridge);
                assert!(bridge.up, "{bridge:?}");
                assert_eq!(port.kind, LinkKind::Vlan(vlan), "{port:?}");
                assert_eq!(port.parent, Some(up0), "{port:?}");
                assert_eq!(port.controller, Some(bridge.index), "{port:?}");
                assert!(port.up, "{port:?}");
                for link in [bridge, port] {
                    assert!(link.is_ours(), "{link:?}");
                    let alias = link.alias.as_deref().unwrap_or_default();
                    assert!(
                        alias.starts_with(&format!("mecvisor slice={name} ")),
                        "{link:?}"
                    );
                }
            }

            let one = slicer.apply(&two[..1]).await.expect("shrink");
            assert_eq!(one.changes.len(), 2, "{:#?}", one.changes);
            assert!(
                one.changes.iter().all(|c| c.starts_with("delete")),
                "{:#?}",
                one.changes
            );
            slicer.apply(&[]).await.expect("remove all");
            assert_eq!(ns.link_names().await, vec!["lo", "opbr0", "up0", "up0p"]);
        })
    });
}
