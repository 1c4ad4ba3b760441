//! Slices applied through netlink to a real, private network namespace.
//! These tests also run inside the emulated edge boxes (the hil suite ships
//! this test binary there), whose kernels have 8021q.

mod common;

use std::collections::BTreeMap;

use common::frames::Capture;
use common::{in_fresh_netns, missing_prerequisite};
use mecvisor_protocol::{QosSpec, QosTier, SliceSpec};
use network_slicing::kernel::LinkKind;
use network_slicing::names::{link_name, Role};
use network_slicing::shaping::{self, class_minor};
use network_slicing::{Port, Slice, SlicerError};

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
        // The first host address of the subnet, e.g. 10.20.0.1.
        gateway: subnet
            .and_then(|s| s.split_once(".0/"))
            .map(|(net, _)| format!("{net}.1")),
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
            let slicer = ns.slicer(capacities);
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
            let err = ns
                .slicer(BTreeMap::new())
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
            if ns.skip_without_vlans(test).await {
                return;
            }
            ns.add_foreign_bridge("opbr0", "operator bridge").await;
            // A configured capacity: the uplink's class stays the same
            // when slices come and go.
            let slicer = ns.slicer(BTreeMap::from([("up0".to_string(), 1_000_000)]));
            let two = [
                slice("video", 100, "up0", Some("10.20.0.0/24")),
                slice("iot", 200, "up0", None),
            ];
            let first = slicer.apply(&two).await.expect("first apply");
            // Links: 6 per slice (bridge, VLAN link, two labels, attach,
            // up) and 3 for up0's ifb; tc: 5 each on up0 and the ifb (root
            // qdisc, uplink class, two slice classes, classifier), clsact
            // and redirect on up0; one nftables transaction. Plus
            // video's gateway address on its bridge. Forwarding on the
            // bridges follows the gateways; whether a new bridge starts
            // with it on depends on the host's defaults, so it is counted
            // apart and checked below.
            let (forwarding, rest): (Vec<&String>, Vec<&String>) = first
                .changes
                .iter()
                .partition(|c| c.contains("IPv4 forwarding"));
            assert_eq!(rest.len(), 15 + 1 + 12 + 1, "{:#?}", first.changes);
            assert!(
                forwarding
                    .iter()
                    .any(|c| c.starts_with("enable") && c.contains("slice video")),
                "{forwarding:?}"
            );
            let second = slicer.apply(&two).await.expect("second apply");
            assert_eq!(
                second.changes,
                Vec::<String>::new(),
                "re-apply changed things"
            );

            let video_bridge = ns.index(&link_name("video", Role::Bridge)).await;
            let addresses = ns.kernel.ipv4_addresses().await.expect("addresses");
            let on_bridge: Vec<_> = addresses
                .iter()
                .filter(|(i, _, _)| *i == video_bridge)
                .collect();
            assert_eq!(
                on_bridge,
                vec![&(video_bridge, std::net::Ipv4Addr::new(10, 20, 0, 1), 24)],
                "video's gateway on its bridge"
            );
            for (name, routes) in [("video", true), ("iot", false)] {
                let bridge = link_name(name, Role::Bridge);
                assert_eq!(
                    ns.kernel.ipv4_forwarding(&bridge).expect("forwarding"),
                    routes,
                    "{name}'s bridge forwards exactly when the slice has a gateway"
                );
            }

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

            // Egress: frames flooded on each slice's bridge leave up0
            // through the slice's VLAN link, tagged with its VLAN id (seen
            // at up0's far end) and counted in the slice's class on up0.
            let capture = Capture::start(ns.index("up0p").await).expect("capture on up0p");
            // (Both bridges have up0's MAC, taken from their VLAN ports:
            // the test's frames carry a source MAC per slice instead.)
            let mut sources = BTreeMap::new();
            for (i, (slice, count)) in [("video", 25), ("iot", 9)].into_iter().enumerate() {
                let source = [0x02, 0x6d, 0x76, 0, 1, i as u8];
                sources.insert(source, slice);
                let index = ns.index(&link_name(slice, Role::Bridge)).await;
                common::frames::send_frames(index, source, [0x02, 0, 0, 0, 0, 0x99], None, count)
                    .expect("send on the slice's bridge");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            let seen = capture.drain().expect("captured frames");
            let mut per_vlan: BTreeMap<Option<u16>, usize> = BTreeMap::new();
            for frame in &seen {
                let slice = sources.get(&frame.source).copied();
                let vlan = match slice {
                    Some("video") => Some(100),
                    Some("iot") => Some(200),
                    _ => continue,
                };
                assert_eq!(
                    frame.vlan_id, vlan,
                    "{slice:?}'s frame left on the wrong VLAN: {frame:?}"
                );
                *per_vlan.entry(frame.vlan_id).or_default() += 1;
            }
            assert_eq!(per_vlan.get(&Some(100)), Some(&25), "{seen:?}");
            assert_eq!(per_vlan.get(&Some(200)), Some(&9), "{seen:?}");
            let links = ns.kernel.links().await.expect("links");
            let tc = shaping::observe(&ns.kernel, &links).await.expect("tc");
            let counters = &tc["up0"].counters;
            // The test's frames, and at most a couple the kernel sent on
            // its own (the capture above checked every frame of the test).
            let video = counters[&class_minor(100)].packets;
            let iot = counters[&class_minor(200)].packets;
            assert!((25..=27).contains(&video), "{counters:?}");
            assert!((9..=11).contains(&iot), "{counters:?}");

            // Ports: a workload's veth joins its slice's bridge with its
            // limit; a link someone put in a mecvisor bridge is let go.
            ns.add_veth("cam0", "cam0p").await;
            ns.add_veth("stray0", "stray0p").await;
            let video_bridge = ns.index(&link_name("video", Role::Bridge)).await;
            let stray = ns.index("stray0").await;
            ns.kernel
                .attach(stray, video_bridge, "stray")
                .await
                .expect("attach stray0");
            let port = Port {
                name: "cam0".into(),
                slice: "video".into(),
                address: None,
                allow: vec![],
                limit: Some(two[1].rates),
            };
            let with_port = slicer
                .apply_with_ports(&two, std::slice::from_ref(&port))
                .await
                .expect("apply with a port");
            let text = &with_port.changes;
            assert_eq!(text.len(), 4, "{text:#?}");
            assert!(text[0].starts_with("detach stray0 from mvb"), "{text:#?}");
            assert!(text[1].starts_with("attach cam0 to mvb"), "{text:#?}");
            assert!(
                text[2].starts_with("add HTB root qdisc 6d76: on cam0"),
                "{text:#?}"
            );
            assert!(text[3].starts_with("add class 6d76:1 on cam0"), "{text:#?}");
            let again = slicer
                .apply_with_ports(&two, std::slice::from_ref(&port))
                .await
                .expect("re-apply with a port");
            assert_eq!(again.changes, Vec::<String>::new());
            let cam = ns
                .links()
                .await
                .into_iter()
                .find(|l| l.name == "cam0")
                .expect("cam0");
            assert_eq!(cam.controller, Some(video_bridge));
            let without = slicer
                .apply(&two)
                .await
                .expect("the port's workload is gone");
            assert_eq!(without.changes.len(), 2, "{:#?}", without.changes);
            ns.delete("cam0").await;
            ns.delete("stray0").await;

            let one = slicer.apply(&two[..1]).await.expect("shrink");
            // iot's two links, its two classes, the nftables table.
            assert_eq!(one.changes.len(), 5, "{:#?}", one.changes);
            assert!(
                one.changes[..2].iter().all(|c| c.starts_with("delete mv")),
                "{:#?}",
                one.changes
            );
            assert!(
                one.changes[2..4]
                    .iter()
                    .all(|c| c.starts_with("delete class")),
                "{:#?}",
                one.changes
            );
            assert!(
                one.changes[4].starts_with("replace nftables"),
                "{:#?}",
                one.changes
            );
            slicer.apply(&[]).await.expect("remove all");
            assert_eq!(ns.link_names().await, vec!["lo", "opbr0", "up0", "up0p"]);
            let links = ns.kernel.links().await.expect("links");
            let tc = shaping::observe(&ns.kernel, &links).await.expect("tc");
            assert!(
                !tc["up0"].root_is_ours() && !tc["up0"].clsact,
                "{:?}",
                tc["up0"]
            );
            let nft = network_slicing::isolation::NfTables::open().expect("nft");
            assert!(!nft.read().expect("read").exists, "nftables table left");
        })
    });
}

/// Set for the child process of
/// [`an_apply_killed_halfway_is_finished_by_the_next`].
const CHILD: &str = "MECVISOR_SLICING_TEST_CHILD";

fn many_slices() -> Vec<Slice> {
    (0..32)
        .map(|i| slice(&format!("s{i}"), 100 + i, "up0", None))
        .collect()
}

/// The child of [`an_apply_killed_halfway_is_finished_by_the_next`]:
/// applies many slices in the namespace it inherited from the parent test
/// thread (and gets killed). Returns at once when run as an ordinary test.
#[test]
fn zz_child_applies_many_slices() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let kernel = network_slicing::kernel::Kernel::connect().expect("netlink");
        let nft = network_slicing::isolation::NfTables::open().expect("nf_tables");
        network_slicing::Slicer::new(kernel, nft, BTreeMap::new())
            .apply(&many_slices())
            .await
            .expect("child apply");
    });
}

#[test]
fn an_apply_killed_halfway_is_finished_by_the_next() {
    let test = "an_apply_killed_halfway_is_finished_by_the_next";
    if skip(test) {
        return;
    }
    in_fresh_netns(move |ns, rt| {
        rt.block_on(async {
            if ns.skip_without_vlans(test).await {
                return;
            }
            let baseline = ns.link_names().await;
            let slicer = ns.slicer(BTreeMap::new());
            let child = || {
                std::process::Command::new(std::env::current_exe().expect("test binary"))
                    .args([
                        "--exact",
                        "zz_child_applies_many_slices",
                        "--test-threads=1",
                    ])
                    .env(CHILD, "1")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn the child")
            };
            // Every change of a whole apply, and of removing it all.
            let full = slicer
                .apply(&many_slices())
                .await
                .expect("apply")
                .changes
                .len();
            let removal = slicer.apply(&[]).await.expect("remove").changes.len();
            // How long a whole apply takes in a child, start to exit.
            let started = std::time::Instant::now();
            let status = child().wait().expect("child");
            assert!(status.success(), "an unkilled child apply failed");
            let whole = started.elapsed();
            assert_eq!(
                slicer.apply(&[]).await.expect("clean up").changes.len(),
                removal
            );

            let mut partial = 0;
            for round in 1..=7u32 {
                let mut process = child();
                std::thread::sleep(whole * round / 8);
                let _ = process.kill();
                let _ = process.wait();
                let finished = slicer
                    .apply(&many_slices())
                    .await
                    .expect("apply after the kill");
                eprintln!(
                    "MEASURED round {round}: killed after {:?}; {} of {full} changes left to do",
                    whole * round / 8,
                    finished.changes.len()
                );
                if !finished.changes.is_empty() && finished.changes.len() < full {
                    partial += 1;
                }
                let again = slicer.apply(&many_slices()).await.expect("re-apply");
                assert_eq!(
                    again.changes,
                    Vec::<String>::new(),
                    "round {round}: not converged"
                );
                let removed = slicer.apply(&[]).await.expect("remove all");
                assert_eq!(
                    removed.changes.len(),
                    removal,
                    "round {round}: {:#?}",
                    removed.changes
                );
                assert_eq!(ns.link_names().await, baseline, "round {round}: links left");
            }
            eprintln!(
                "MEASURED whole child apply {whole:?}; {partial} of 7 kills landed mid-apply"
            );
            assert!(partial >= 2, "only {partial} of 7 kills landed mid-apply");
        })
    });
}
