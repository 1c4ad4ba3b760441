//! Must-show 2 of issue 4, measured with iperf3 through real slices: a
//! client in a workload namespace behind the slice's bridge, the server at
//! the far end of the uplink on the slice's VLAN. Goodput at 10 and 100
//! Mbit/s PIR (egress, and ingress with iperf3 -R) within 5% of the TCP
//! payload rate the PIR allows (HTB counts whole frames: PIR x 1448/1514);
//! a gold slice keeps its CIR while a bronze slice saturates the same
//! uplink. Needs VLAN links and iperf3: runs in the emulated edge boxes
//! (`cargo xtask hil` puts Debian's iperf3 on their payload disk) and skips
//! on a host without 8021q.

mod common;

use std::collections::BTreeMap;

use common::iperf::{iperf3, measure, slice_paths, SECONDS};
use common::{in_fresh_netns, missing_prerequisite};
use mecvisor_protocol::{QosSpec, SliceSpec};
use network_slicing::{Port, Slice};

/// TCP payload per full Ethernet frame at a 1500-byte MTU (MSS 1448 with
/// timestamps, 1514 bytes on the wire as HTB counts them).
const PAYLOAD_SHARE: f64 = 1448.0 / 1514.0;

fn slice(name: &str, vlan: u16, cir: u64, pir: u64, priority: u8) -> Slice {
    Slice::from_spec(&SliceSpec {
        name: name.into(),
        vlan_id: vlan,
        uplink: "up0".into(),
        qos: QosSpec {
            tier: None,
            cir_kbit: Some(cir),
            pir_kbit: Some(pir),
            priority: Some(priority),
            burst_bytes: None,
        },
        subnet: None,
        gateway: None,
    })
}

#[test]
fn iperf3_goodput_follows_pir_and_gold_keeps_its_cir() {
    let test = "iperf3_goodput_follows_pir_and_gold_keeps_its_cir";
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    in_fresh_netns(move |ns, rt| {
        if rt.block_on(ns.skip_without_vlans(test)) {
            return;
        }
        let Some(iperf3) = iperf3() else {
            panic!("{test}: no iperf3 (MECVISOR_IPERF3, /mnt/payload/iperf3 or PATH)");
        };
        let slices = [
            slice("ten", 10, 5_000, 10_000, 3),
            slice("hundred", 20, 50_000, 100_000, 3),
            slice("gold", 30, 30_000, 50_000, 1),
            slice("bronze", 40, 5_000, 50_000, 5),
        ];
        let (far, paths) = slice_paths(ns, rt, &slices, 1_000_000, 60);

        let mut failures = Vec::new();
        for (name, pir) in [("ten", 10.0), ("hundred", 100.0)] {
            for reverse in [false, true] {
                let mbit = measure(&iperf3, &far, &paths[name], 5201, reverse, SECONDS)
                    .join()
                    .expect("measure");
                // HTB shapes whole frames; TCP goodput is the payload share
                // of them, so the rate it can reach is PIR x 1448/1514.
                let payload_rate = pir * PAYLOAD_SHARE;
                let ratio = mbit / payload_rate;
                let direction = if reverse { "ingress" } else { "egress" };
                eprintln!(
                    "MEASURED {name} {direction}: {mbit:.2} Mbit/s at PIR {pir} Mbit/s \
                     ({:.3} x PIR, {ratio:.3} x the PIR's TCP payload rate)",
                    mbit / pir
                );
                if !(0.95..=1.05).contains(&ratio) {
                    failures.push(format!(
                        "{name} {direction}: {mbit:.2} Mbit/s, {ratio:.3} x the payload rate of PIR {pir}"
                    ));
                }
            }
        }
        // The uplink carries 50 Mbit/s (the workloads' ports stay in their
        // slices: the slicer lets go of undeclared links in its bridges).
        let ports: Vec<Port> = slices[2..]
            .iter()
            .map(|s| Port {
                name: paths[&s.name].port.clone(),
                slice: s.name.clone(),
                address: None,
                allow: vec![],
                limit: None,
            })
            .collect();
        rt.block_on(async {
            ns.slicer(BTreeMap::from([("up0".to_string(), 50_000)]))
                .apply_with_ports(&slices[2..], &ports)
                .await
                .expect("apply gold and bronze on a 50 Mbit/s uplink")
        });
        // Bronze alone fills the uplink; with bronze still sending, gold
        // starts and gets at least its CIR (it also borrows first).
        let alone = measure(&iperf3, &far, &paths["bronze"], 5202, false, SECONDS)
            .join()
            .expect("bronze alone");
        let bronze = measure(&iperf3, &far, &paths["bronze"], 5203, false, 3 * SECONDS);
        std::thread::sleep(std::time::Duration::from_secs(2));
        let gold = measure(&iperf3, &far, &paths["gold"], 5204, false, SECONDS)
            .join()
            .expect("gold");
        let bronze = bronze.join().expect("bronze");
        eprintln!(
            "MEASURED bronze alone {alone:.2} Mbit/s on a 50 Mbit/s uplink; then gold {gold:.2} Mbit/s \
             (CIR 30) while bronze kept sending ({bronze:.2} Mbit/s over its longer run)"
        );
        if alone < 50.0 * 0.9 {
            failures.push(format!(
                "bronze alone got {alone:.2} Mbit/s: it did not saturate the uplink"
            ));
        }
        if gold < 30.0 * 0.95 {
            failures.push(format!("gold got {gold:.2} Mbit/s, below its CIR of 30"));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}
