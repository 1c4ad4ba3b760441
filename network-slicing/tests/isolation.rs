//! Must-show 1 of issue 4: two slices, two workloads each; traffic within a
//! slice flows, traffic across slices is dropped (ICMP, TCP, UDP), with
//! ip_forward=1 and gateway addresses on both bridges. Real nftables rules
//! (nf_tables netlink), real namespaces and sockets. The slices' bridges are
//! made here (through the same netlink code the slicer uses), because this
//! host's kernel has no VLAN links; the full slicer runs in the edge boxes.

mod common;

use std::net::Ipv4Addr;

use common::workload::{icmp_reaches, tcp_reaches, udp_reaches, Workload};
use common::{in_fresh_netns, missing_prerequisite, set_ip_forward};
use mecvisor_protocol::{AllowRule, IpProtocol};
use network_slicing::isolation::{self, slice_of_tag, NfTables, Ruleset};
use network_slicing::names::{link_name, Role};
use network_slicing::Port;

/// (ICMP, TCP, UDP) reachability from `a` to `b`.
fn reach(a: &Workload, b: &Workload) -> (bool, bool, bool) {
    (
        icmp_reaches(a, b.address),
        tcp_reaches(a, b),
        udp_reaches(a, b),
    )
}

const ALL: (bool, bool, bool) = (true, true, true);
const NONE: (bool, bool, bool) = (false, false, false);

#[test]
fn slices_cannot_reach_each_other_even_when_the_host_routes() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED slices_cannot_reach_each_other_even_when_the_host_routes: {why}");
        return;
    }
    in_fresh_netns(|ns, rt| {
        set_ip_forward(true);
        let [red, blue] = ["red", "blue"].map(|s| link_name(s, Role::Bridge));
        let [red1, red2, blue1, blue2] = rt.block_on(async {
            for (bridge, gateway) in [(&red, [10, 81, 1, 1]), (&blue, [10, 81, 2, 1])] {
                ns.kernel.create_bridge(bridge).await.expect("bridge");
                ns.add_address(bridge, gateway.into(), 24).await;
            }
            let gw = |n| Ipv4Addr::new(10, 81, n, 1);
            [
                ns.add_workload("wred1", &red, Ipv4Addr::new(10, 81, 1, 11), gw(1))
                    .await,
                ns.add_workload("wred2", &red, Ipv4Addr::new(10, 81, 1, 12), gw(1))
                    .await,
                ns.add_workload("wblue1", &blue, Ipv4Addr::new(10, 81, 2, 11), gw(2))
                    .await,
                ns.add_workload("wblue2", &blue, Ipv4Addr::new(10, 81, 2, 12), gw(2))
                    .await,
            ]
        });

        // Without mecvisor's rules the host routes between the slices: the
        // probes can see a crossing.
        assert_eq!(reach(&red1, &blue1), ALL, "routing works before isolation");

        let nft = NfTables::open().expect("nf_tables socket");
        let desired = Ruleset::for_slices(["red", "blue"]);
        let change = isolation::apply(&nft, &desired).expect("apply");
        assert!(change.is_some_and(|c| c.contains("create")));
        assert_eq!(
            isolation::apply(&nft, &desired).expect("re-apply"),
            None,
            "re-apply changed nothing"
        );

        assert_eq!(reach(&red1, &red2), ALL, "within red");
        assert_eq!(reach(&blue2, &blue1), ALL, "within blue");
        assert_eq!(reach(&red1, &blue1), NONE, "red -> blue");
        assert_eq!(reach(&blue2, &red2), NONE, "blue -> red");
        assert_eq!(reach(&red2, &blue2), NONE, "red -> blue, other pair");
        assert!(
            icmp_reaches(&red1, Ipv4Addr::new(10, 81, 1, 1)),
            "own gateway"
        );

        // The drops were counted, per slice.
        let observed = nft.read().expect("read back");
        for slice in ["red", "blue"] {
            let rule = observed
                .rules
                .iter()
                .find(|r| slice_of_tag(&r.tag) == Some(slice))
                .expect("rule per slice");
            // At least one ICMP, one TCP SYN and one UDP datagram.
            assert!(rule.packets >= 3, "{slice}: {rule:?}");
        }

        // An allow rule opens one hole: TCP port 7001 from red to blue1
        // (replies pass through conntrack), nothing else.
        let blue1_port = Port {
            name: "wblue1".into(),
            slice: "blue".into(),
            address: Some(blue1.address),
            allow: vec![AllowRule {
                from_slice: "red".into(),
                protocol: IpProtocol::Tcp,
                port: Some(7001),
            }],
            limit: None,
        };
        let with_allow = Ruleset::new(["red", "blue"], &[blue1_port]);
        let change = isolation::apply(&nft, &with_allow).expect("apply the allow rule");
        assert!(change.is_some_and(|c| c.contains("replace")));
        assert!(tcp_reaches(&red1, &blue1), "allowed: red -> blue1 TCP 7001");
        assert!(
            tcp_reaches(&red2, &blue1),
            "allowed from every red workload"
        );
        assert!(!udp_reaches(&red1, &blue1), "UDP is not allowed");
        assert!(!icmp_reaches(&red1, blue1.address), "ICMP is not allowed");
        assert!(!tcp_reaches(&red1, &blue2), "only blue1 accepts");
        assert!(!tcp_reaches(&blue1, &red1), "the rule has a direction");
        assert_eq!(isolation::apply(&nft, &with_allow).expect("re-apply"), None);

        // A changed set replaces the table; an empty one removes it, and
        // the slices reach each other again (the rules did the dropping).
        let change = isolation::apply(&nft, &Ruleset::for_slices(["red"])).expect("shrink");
        assert!(change.is_some_and(|c| c.contains("replace")));
        let tags: Vec<_> = nft
            .read()
            .expect("read")
            .rules
            .into_iter()
            .map(|r| r.tag)
            .collect();
        assert_eq!(tags.len(), 1, "{tags:?}");
        assert_eq!(slice_of_tag(&tags[0]), Some("red"));
        // Blue may send again (one-way UDP arrives); red's answers are
        // still dropped, so ICMP and TCP towards red stay cut.
        assert_eq!(
            reach(&blue1, &red1),
            (false, false, true),
            "only red's rule left"
        );
        assert_eq!(reach(&red1, &blue1), NONE, "red's rule still holds");
        let change = isolation::apply(&nft, &Ruleset::for_slices([])).expect("remove");
        assert!(change.is_some_and(|c| c.contains("remove")));
        assert!(!nft.read().expect("read").exists, "table removed");
        assert_eq!(reach(&red1, &blue1), ALL, "no rules, routing again");
    });
}
