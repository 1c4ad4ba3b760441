//! The in-box half of `cargo xtask bench slicing` (run inside an emulated
//! edge box, whose kernel has VLAN links; the xtask boots the box and puts
//! this program, iperf3, iproute2 and nftables on its payload disk).
//!
//! 1. Apply 64 slices from nothing, and re-apply them (no change), with the
//!    slicer, and the same with the equivalent `ip`/`tc`/`nft` script, one
//!    command per line (what people write) and in batch mode (`ip -batch`,
//!    `tc -batch`, one `nft -f`): the strongest form of the script. After the
//!    script the slicer must find nothing to change: the script is checked
//!    to build exactly what the slicer builds.
//! 2. Shaping accuracy: iperf3 goodput through a slice at 10, 100 and 1000
//!    Mbit/s PIR, egress and ingress.
//!
//! Output: `BENCH <name> <value> <unit>` lines, read by the xtask.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::iperf::{iperf3, measure, slice_paths, SECONDS};
use common::{in_fresh_netns, Netns};
use mecvisor_protocol::{QosSpec, QosTier, SliceSpec};
use network_slicing::isolation::Ruleset;
use network_slicing::names::{alias, link_name, Role, LINK_GROUP};
use network_slicing::shaping::{
    self, classifier, htb, ClassParams, FILTER_PREF, MAJOR, ROOT_MINOR,
};
use network_slicing::Slice;

const SLICES: u16 = 64;
const ROUNDS: usize = 5;
/// The uplink's capacity in the apply benchmark, kbit/s.
const CAPACITY: u64 = 10_000_000;

fn report(name: &str, value: f64, unit: &str) {
    println!("BENCH {name} {value:.3} {unit}");
}

fn tool(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn main() {
    // `cargo bench` passes --bench; this program takes no options.
    let slices: Vec<Slice> = (0..SLICES)
        .map(|i| {
            Slice::from_spec(&SliceSpec {
                name: format!("s{i}"),
                vlan_id: 100 + i,
                uplink: "up0".into(),
                qos: QosSpec {
                    tier: Some(QosTier::Bronze),
                    ..Default::default()
                },
                subnet: None,
                gateway: None,
            })
        })
        .collect();
    let ip = tool("MECVISOR_IP", "ip");
    let tc = tool("MECVISOR_TC", "tc");
    let nft = tool("MECVISOR_NFT", "nft");
    let work = std::env::temp_dir().join(format!("slicing-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let script = Script::new(&slices);
    in_fresh_netns(move |ns, rt| {
        assert!(
            rt.block_on(ns.vlan_supported()),
            "this kernel has no VLAN links: run inside an edge box"
        );
        apply_benchmark(ns, rt, &slices, &script, &Tools { ip, tc, nft, work });
    });
    accuracy_benchmark();
}

struct Tools {
    ip: PathBuf,
    tc: PathBuf,
    nft: PathBuf,
    work: PathBuf,
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn apply_benchmark(
    ns: &Netns,
    rt: &tokio::runtime::Runtime,
    slices: &[Slice],
    script: &Script,
    tools: &Tools,
) {
    let slicer = ns.slicer(BTreeMap::from([("up0".to_string(), CAPACITY)]));
    let apply = |set: &[Slice]| {
        rt.block_on(slicer.apply(set))
            .expect("slicer apply")
            .changes
            .len()
    };
    let (mut create, mut noop) = (Vec::new(), Vec::new());
    let (mut sh_create, mut sh_noop, mut batch_create, mut batch_noop) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut changes = 0;
    for _ in 0..ROUNDS {
        create.push(timed(|| changes = apply(slices)));
        noop.push(timed(|| {
            assert_eq!(apply(slices), 0, "re-apply changed something")
        }));
        apply(&[]);

        sh_create.push(timed(|| script.run_commands(tools, false)));
        let left = rt
            .block_on(slicer.apply(slices))
            .expect("check the script")
            .changes;
        assert!(
            left.is_empty(),
            "the script built something else than the slicer:\n{}",
            left.join("\n")
        );
        sh_noop.push(timed(|| script.run_commands(tools, true)));
        apply(&[]);

        batch_create.push(timed(|| script.run_batch(tools, false)));
        assert_eq!(
            apply(slices),
            0,
            "the batch script built something else than the slicer"
        );
        batch_noop.push(timed(|| script.run_batch(tools, true)));
        apply(&[]);
    }
    report("changes_per_apply", changes as f64, "changes");
    report("slicer_apply_ms", median(create), "ms");
    report("slicer_noop_ms", median(noop), "ms");
    report("script_apply_ms", median(sh_create), "ms");
    report("script_noop_ms", median(sh_noop), "ms");
    report("batch_apply_ms", median(batch_create), "ms");
    report("batch_noop_ms", median(batch_noop), "ms");
}

/// The `ip`/`tc`/`nft` equivalent of applying the slices: `create` lines
/// build everything from nothing; `again` lines re-apply over an existing
/// build the way an idempotent script does (`set`, `replace`, a fresh
/// table; existing qdiscs left alone).
struct Script {
    ip_create: Vec<String>,
    ip_again: Vec<String>,
    tc_create: Vec<String>,
    tc_again: Vec<String>,
    nft: String,
}

impl Script {
    fn new(slices: &[Slice]) -> Script {
        let mut ip_create = Vec::new();
        let mut ip_again = Vec::new();
        let label = |name: &str, owner: &str, role: Role| {
            vec![
                format!("link set dev {name} group {LINK_GROUP}"),
                format!("link set dev {name} alias \"{}\"", alias(owner, role)),
            ]
        };
        for s in slices {
            let bridge = link_name(&s.name, Role::Bridge);
            let vlan = link_name(&s.name, Role::Vlan);
            ip_create.push(format!("link add name {bridge} type bridge"));
            ip_create.push(format!(
                "link add link {} name {vlan} type vlan id {}",
                s.uplink, s.vlan_id
            ));
            for (name, role) in [(&bridge, Role::Bridge), (&vlan, Role::Vlan)] {
                let lines = label(name, &s.name, role);
                ip_create.extend(lines.clone());
                ip_again.extend(lines);
            }
            for line in [
                format!("link set dev {vlan} master {bridge}"),
                format!("link set dev {bridge} up"),
                format!("link set dev {vlan} up"),
            ] {
                ip_create.push(line.clone());
                ip_again.push(line);
            }
        }
        let ifb = link_name("up0", Role::Ingress);
        ip_create.push(format!("link add name {ifb} type ifb"));
        for line in label(&ifb, "up0", Role::Ingress)
            .into_iter()
            .chain([format!("link set dev {ifb} up")])
        {
            ip_create.push(line.clone());
            ip_again.push(line);
        }

        let bursts: BTreeMap<&str, u32> = slices
            .iter()
            .map(|s| (s.name.as_str(), s.rates.burst_bytes))
            .collect();
        let wanted = shaping::desired(slices, &BTreeMap::from([("up0".to_string(), CAPACITY)]));
        let bytecode = {
            let ops = classifier::instructions(MAJOR);
            let list: Vec<String> = ops
                .iter()
                .map(|(c, t, f, k)| format!("{c} {t} {f} {k}"))
                .collect();
            format!("{},{}", ops.len(), list.join(","))
        };
        let class = |verb: &str, dev: &str, minor: u16, p: &ClassParams, burst: u32| {
            let parent = if minor == ROOT_MINOR {
                format!("{MAJOR:x}:")
            } else {
                format!("{MAJOR:x}:{ROOT_MINOR:x}")
            };
            format!(
                "class {verb} dev {dev} parent {parent} classid {MAJOR:x}:{minor:x} htb rate {}bit ceil {}bit burst {} cburst {} quantum {} prio {}",
                p.rate * 8,
                p.ceil * 8,
                burst,
                burst,
                p.quantum,
                p.prio
            )
        };
        let mut tc_create = Vec::new();
        let mut tc_again = Vec::new();
        for shaping in &wanted {
            for dev in [&shaping.uplink, &shaping.ifb] {
                tc_create.push(format!(
                    "qdisc add dev {dev} root handle {MAJOR:x}: htb default 0 r2q 10"
                ));
                // (HTB has no qdisc change operation: `tc qdisc replace` of an
                // existing one fails, so the re-apply script leaves it be.)
                let root_burst = htb::uplink_burst_bytes(CAPACITY);
                tc_create.push(class("add", dev, ROOT_MINOR, &shaping.root, root_burst));
                tc_again.push(class("replace", dev, ROOT_MINOR, &shaping.root, root_burst));
                for (minor, (name, params)) in &shaping.classes {
                    let burst = bursts[name.as_str()];
                    tc_create.push(class("add", dev, *minor, params, burst));
                    tc_again.push(class("replace", dev, *minor, params, burst));
                }
                for verb in ["add", "replace"] {
                    let line = format!(
                        "filter {verb} dev {dev} parent {MAJOR:x}: protocol all prio {FILTER_PREF} handle 1 bpf bytecode \"{bytecode}\""
                    );
                    if verb == "add" {
                        tc_create.push(line)
                    } else {
                        tc_again.push(line)
                    }
                }
            }
            tc_create.push(format!("qdisc add dev {} clsact", shaping.uplink));
            for verb in ["add", "replace"] {
                let line = format!(
                    "filter {verb} dev {} ingress protocol all prio {FILTER_PREF} handle 1 bpf bytecode \"{bytecode}\" action mirred egress redirect dev {}",
                    shaping.uplink, shaping.ifb
                );
                if verb == "add" {
                    tc_create.push(line)
                } else {
                    tc_again.push(line)
                }
            }
        }

        let rules = Ruleset::for_slices(slices.iter().map(|s| s.name.as_str()));
        let mut nft = String::from("table inet mecvisor {\n  chain forward {\n    type filter hook forward priority -10; policy accept;\n");
        for (s, rule) in slices.iter().zip(&rules.rules) {
            let bridge = link_name(&s.name, Role::Bridge);
            nft += &format!(
                "    iifname \"{bridge}\" oifgroup {LINK_GROUP} oifname != \"{bridge}\" counter drop comment \"{}\"\n",
                rule.tag
            );
        }
        nft += "  }\n}\n";
        Script {
            ip_create,
            ip_again,
            tc_create,
            tc_again,
            nft,
        }
    }

    /// One process per command, as a shell script runs them.
    fn run_commands(&self, tools: &Tools, again: bool) {
        let (ip, tc) = if again {
            (&self.ip_again, &self.tc_again)
        } else {
            (&self.ip_create, &self.tc_create)
        };
        let mut text = String::from("set -e\n");
        for line in ip {
            text += &format!("{} {line}\n", tools.ip.display());
        }
        for line in tc {
            text += &format!("{} {line}\n", tools.tc.display());
        }
        let rules = self.nft_file(tools, again);
        text += &format!("{} -f {}\n", tools.nft.display(), rules.display());
        let path = tools.work.join("slices.sh");
        std::fs::write(&path, text).expect("write the script");
        run(Command::new("sh").arg(&path));
    }

    /// `ip -batch`, `tc -batch`, `nft -f`: three processes.
    fn run_batch(&self, tools: &Tools, again: bool) {
        let (ip, tc) = if again {
            (&self.ip_again, &self.tc_again)
        } else {
            (&self.ip_create, &self.tc_create)
        };
        let ip_file = tools.work.join("ip.batch");
        let tc_file = tools.work.join("tc.batch");
        std::fs::write(&ip_file, ip.join("\n") + "\n").expect("ip batch");
        std::fs::write(&tc_file, tc.join("\n") + "\n").expect("tc batch");
        run(Command::new(&tools.ip).arg("-batch").arg(&ip_file));
        run(Command::new(&tools.tc).arg("-batch").arg(&tc_file));
        let rules = self.nft_file(tools, again);
        run(Command::new(&tools.nft).arg("-f").arg(&rules));
    }

    /// The ruleset file; re-applying starts by deleting the old table in
    /// the same transaction.
    fn nft_file(&self, tools: &Tools, again: bool) -> PathBuf {
        let path = tools
            .work
            .join(if again { "again.nft" } else { "create.nft" });
        let text = if again {
            format!(
                "table inet mecvisor\ndelete table inet mecvisor\n{}",
                self.nft
            )
        } else {
            self.nft.clone()
        };
        std::fs::write(&path, text).expect("write the ruleset");
        path
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// iperf3 goodput through a slice whose PIR is 10, 100, 1000 Mbit/s, and
/// through one shaped at 10 Gbit/s: the box's own ceiling.
fn accuracy_benchmark() {
    let Some(iperf3) = iperf3() else {
        println!("BENCH accuracy_skipped 0 no-iperf3");
        return;
    };
    in_fresh_netns(move |ns, rt| {
        // 10000: far above what the emulated box can move, so its goodput
        // is the box's own ceiling (the reference for the others).
        let rates = [10u64, 100, 1000, 10_000];
        let slices: Vec<Slice> = rates
            .iter()
            .enumerate()
            .map(|(i, mbit)| {
                Slice::from_spec(&SliceSpec {
                    name: format!("pir{mbit}"),
                    vlan_id: 10 + i as u16,
                    uplink: "up0".into(),
                    qos: QosSpec {
                        tier: None,
                        cir_kbit: Some(mbit * 500),
                        pir_kbit: Some(mbit * 1000),
                        priority: Some(3),
                        burst_bytes: None,
                    },
                    subnet: None,
                    gateway: None,
                })
            })
            .collect();
        let (far, paths) = slice_paths(ns, rt, &slices, 10_000_000, 61);
        for mbit in rates {
            let path = &paths[&format!("pir{mbit}")];
            for reverse in [false, true] {
                let goodput = measure(&iperf3, &far, path, 5301, reverse, SECONDS)
                    .join()
                    .expect("iperf3");
                let direction = if reverse { "ingress" } else { "egress" };
                report(&format!("goodput_{mbit}_{direction}"), goodput, "Mbit/s");
            }
        }
    });
}
