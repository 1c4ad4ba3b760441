//! Shaping through netlink on a real kernel: HTB trees on an uplink and its
//! ifb, read back and diffed (a second apply changes nothing), changed,
//! shrunk and removed (the kernel's default qdisc comes back); and tagged
//! frames arriving on the uplink land in their slice's ingress class.
//! Runs on this host (no VLAN links needed: the uplink's tc state is keyed
//! by VLAN id) and in the edge boxes.

mod common;

use std::collections::BTreeMap;

use common::{in_fresh_netns, missing_prerequisite};
use mecvisor_protocol::{QosSpec, QosTier, SliceSpec};
use network_slicing::names::{link_name, Role};
use network_slicing::shaping::{
    self, class_minor, observe, ClassParams, UplinkShaping, ROOT_MINOR,
};
use network_slicing::Slice;

fn slice(name: &str, vlan: u16, tier: QosTier, cir: Option<u64>) -> Slice {
    Slice::from_spec(&SliceSpec {
        name: name.into(),
        vlan_id: vlan,
        uplink: "up0".into(),
        qos: QosSpec {
            tier: Some(tier),
            cir_kbit: cir,
            ..Default::default()
        },
        subnet: None,
        gateway: None,
    })
}

/// Source MAC of the test's frames.
const SENDER: [u8; 6] = [0x02, 0x6d, 0x76, 0, 0, 1];

fn capacities() -> BTreeMap<String, u64> {
    BTreeMap::from([("up0".to_string(), 1_000_000)])
}

async fn apply(ns: &common::Netns, wanted: &[UplinkShaping]) -> Vec<String> {
    reconcile_with_ports(ns, wanted, &[]).await
}

async fn reconcile_with_ports(
    ns: &common::Netns,
    wanted: &[UplinkShaping],
    ports: &[shaping::PortShaping],
) -> Vec<String> {
    let mut undo = Vec::new();
    shaping::reconcile(&ns.kernel, wanted, ports, &mut undo)
        .await
        .unwrap_or_else(|(action, e)| panic!("{action}: {e}"))
}

#[test]
fn htb_trees_are_built_read_back_changed_and_removed() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED htb_trees_are_built_read_back_changed_and_removed: {why}");
        return;
    }
    in_fresh_netns(|ns, rt| {
        rt.block_on(async {
            let ifb = link_name("up0", Role::Ingress);
            ns.kernel.create_ifb(&ifb).await.expect("ifb");
            ns.up(&ifb).await;
            let slices = [
                slice("video", 100, QosTier::Gold, None),
                slice("iot", 200, QosTier::Bronze, None),
            ];
            let wanted = shaping::desired(&slices, &capacities());
            let changes = apply(ns, &wanted).await;
            // Per device: root qdisc, uplink class, 2 slice classes,
            // classifier; then clsact and the redirect on the uplink.
            assert_eq!(changes.len(), 12, "{changes:#?}");
            assert_eq!(
                apply(ns, &wanted).await,
                Vec::<String>::new(),
                "second apply"
            );

            let links = ns.kernel.links().await.expect("links");
            let tc = observe(&ns.kernel, &links).await.expect("observe");
            let ifb_index = ns.index(&ifb).await;
            for device in ["up0", ifb.as_str()] {
                let state = &tc[device];
                assert!(state.root_is_ours(), "{device}: {state:?}");
                assert!(state.classifier, "{device}");
                assert_eq!(
                    state.classes[&ROOT_MINOR],
                    ClassParams::for_uplink(1_000_000)
                );
                for s in &slices {
                    assert_eq!(
                        state.classes[&class_minor(s.vlan_id)],
                        ClassParams::for_slice(&s.rates),
                        "{device} {}",
                        s.name
                    );
                }
            }
            assert!(tc["up0"].clsact);
            assert_eq!(tc["up0"].redirect, Some(ifb_index));
            assert!(
                tc["up0p"]
                    .root
                    .as_ref()
                    .is_none_or(|(_, handle)| *handle == 0),
                "peer untouched"
            );

            // Tagged frames arriving on up0 are redirected to the ifb and
            // counted in their slice's class there.
            let mac = ns.mac("up0").await;
            let peer = ns.index("up0p").await;
            common::frames::send_frames(peer, SENDER, mac, Some(100), 30).expect("send VLAN 100");
            common::frames::send_frames(peer, SENDER, mac, Some(200), 7).expect("send VLAN 200");
            let links = ns.kernel.links().await.expect("links");
            let counters = &observe(&ns.kernel, &links).await.expect("observe")[&ifb].counters;
            assert_eq!(counters[&class_minor(100)].packets, 30, "{counters:?}");
            assert_eq!(counters[&class_minor(200)].packets, 7, "{counters:?}");

            // A changed rate changes both classes of that slice, nothing else.
            let changed = [
                slice("video", 100, QosTier::Gold, Some(200_000)),
                slices[1].clone(),
            ];
            let changes = apply(ns, &shaping::desired(&changed, &capacities())).await;
            assert_eq!(changes.len(), 2, "{changes:#?}");
            assert!(
                changes
                    .iter()
                    .all(|c| c.starts_with("change class 6d76:1064")),
                "{changes:#?}"
            );

            // One slice fewer: its two classes go.
            let changes = apply(ns, &shaping::desired(&changed[..1], &capacities())).await;
            assert_eq!(changes.len(), 2, "{changes:#?}");
            assert!(
                changes
                    .iter()
                    .all(|c| c.starts_with("delete class 6d76:10c8")),
                "{changes:#?}"
            );

            // None: mecvisor's qdiscs and filter go, the defaults come back.
            let changes = apply(ns, &[]).await;
            assert_eq!(changes.len(), 4, "{changes:#?}");
            let links = ns.kernel.links().await.expect("links");
            let tc = observe(&ns.kernel, &links).await.expect("observe");
            for device in ["up0", ifb.as_str()] {
                assert!(!tc[device].root_is_ours(), "{device}: {:?}", tc[device]);
                assert!(
                    tc[device].foreign_root().is_none(),
                    "{device}: {:?}",
                    tc[device]
                );
                assert!(!tc[device].clsact, "{device}: {:?}", tc[device]);
            }
        })
    });
}

#[test]
fn a_port_with_a_limit_gets_one_class_for_all_its_traffic() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED a_port_with_a_limit_gets_one_class_for_all_its_traffic: {why}");
        return;
    }
    in_fresh_netns(|ns, rt| {
        rt.block_on(async {
            let port = network_slicing::Port {
                name: "up0p".into(),
                slice: "video".into(),
                address: None,
                allow: vec![],
                limit: Some(slice("x", 1, QosTier::Bronze, Some(2_000)).rates),
            };
            let ports = shaping::desired_ports(std::slice::from_ref(&port));
            let changes = reconcile_with_ports(ns, &[], &ports).await;
            assert_eq!(changes.len(), 2, "root qdisc and its class: {changes:#?}");
            assert_eq!(
                reconcile_with_ports(ns, &[], &ports).await,
                Vec::<String>::new()
            );
            // Every frame leaving the port lands in its one class.
            let mac = ns.mac("up0").await;
            common::frames::send_frames(ns.index("up0p").await, SENDER, mac, None, 12)
                .expect("send through the port");
            let links = ns.kernel.links().await.expect("links");
            let tc = observe(&ns.kernel, &links).await.expect("observe");
            assert_eq!(tc["up0p"].classes[&ROOT_MINOR], ports[0].params);
            assert_eq!(
                tc["up0p"].counters[&ROOT_MINOR].packets, 12,
                "{:?}",
                tc["up0p"]
            );
            // No limit any more: mecvisor's qdisc goes.
            let changes = reconcile_with_ports(ns, &[], &[]).await;
            assert_eq!(changes.len(), 1, "{changes:#?}");
            let links = ns.kernel.links().await.expect("links");
            assert!(!observe(&ns.kernel, &links).await.expect("observe")["up0p"].root_is_ours());
        })
    });
}
