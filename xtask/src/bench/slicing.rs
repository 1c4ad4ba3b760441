//! `cargo xtask bench slicing`: network slicing inside an emulated x86_64
//! edge box (this host's kernel has no VLAN links). The box gets the
//! benchmark program (`network-slicing/benches/slicing.rs`, static) and
//! Debian's iproute2, nftables and iperf3 on its payload disk; the program
//! times the slicer against the equivalent `ip`/`tc`/`nft` script in the
//! same run, checks that the script builds exactly what the slicer builds,
//! and measures iperf3 goodput through slices at 10, 100 and 1000 Mbit/s.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use mecvisor_hil::{missing_prerequisite, Arch as BoxArch, Lab};

use super::table::Table;
use crate::cross::Arch;
use crate::images;

/// TCP payload per full Ethernet frame at a 1500-byte MTU: the share of a
/// shaped (frame) rate that iperf3 can see as goodput.
const PAYLOAD_SHARE: f64 = 1448.0 / 1514.0;
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

/// Runs the slicing benchmark; what cannot run here is reported in the
/// table.
pub fn run() -> Result<Table> {
    let mut table = Table::new("network slicing (in an emulated x86_64 edge box, QEMU TCG)");
    if let Err(err) = measure(&mut table) {
        table.error("network slicing", "", &err);
    }
    Ok(table)
}

fn measure(table: &mut Table) -> Result<()> {
    if let Some(why) = missing_prerequisite(&[BoxArch::X86_64]) {
        return Err(anyhow!(why));
    }
    super::lab::prepare_lab()?;
    let arch = Arch::X86_64;
    let payload = crate::bins::target_dir()
        .join("bench-payload")
        .join(arch.name());
    std::fs::create_dir_all(&payload).with_context(|| format!("creating {}", payload.display()))?;
    let program = crate::hil::static_target(arch, "network-slicing", "--bench", "slicing", true)?;
    std::fs::copy(&program, payload.join("slicing_bench")).context("copying the bench program")?;
    images::tools::unpack_tool(arch, "iproute2", &["ip", "tc"], &payload)?;
    images::tools::unpack_tool(arch, "nftables", &["nft"], &payload)?;
    images::tools::unpack_tool(arch, "iperf3", &["iperf3"], &payload)?;

    let mut lab = Lab::start().map_err(|e| anyhow!(e))?;
    let mut edge = lab
        .boot_box_with_payload(BoxArch::X86_64, "bench-slicing", Some(&payload))
        .map_err(|e| anyhow!(e))?;
    edge.wait_ready(BOOT_TIMEOUT).map_err(|e| anyhow!(e))?;
    let out = edge
        .run(
            "cd /tmp && MECVISOR_IP=/mnt/payload/ip MECVISOR_TC=/mnt/payload/tc \
             MECVISOR_NFT=/mnt/payload/nft MECVISOR_IPERF3=/mnt/payload/iperf3 \
             /mnt/payload/slicing_bench",
            RUN_TIMEOUT,
        )
        .map_err(|e| anyhow!(e))?;
    if !out.success() {
        return Err(anyhow!("the benchmark failed in the box:\n{}", out.output));
    }
    let figures: BTreeMap<String, f64> = out
        .output
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("BENCH ")?.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.parse().ok()?))
        })
        .collect();
    report(table, &figures)
}

fn report(table: &mut Table, figures: &BTreeMap<String, f64>) -> Result<()> {
    let get = |name: &str| {
        figures
            .get(name)
            .copied()
            .with_context(|| format!("the box printed no {name}"))
    };
    let changes = get("changes_per_apply")?;
    for (what, ours, script, batch) in [
        (
            "apply 64 slices from nothing",
            "slicer_apply_ms",
            "script_apply_ms",
            "batch_apply_ms",
        ),
        (
            "re-apply 64 slices (no change)",
            "slicer_noop_ms",
            "script_noop_ms",
            "batch_noop_ms",
        ),
    ] {
        let (ours, script, batch) = (get(ours)?, get(script)?, get(batch)?);
        table.info(
            &format!("{what}: slicer (netlink)"),
            format!("{ours:.1} ms"),
        );
        table.info(
            &format!("{what}: ip/tc/nft script, one command per line"),
            format!("{script:.1} ms ({:.1}x the slicer's time)", script / ours),
        );
        table.check(
            &format!("{what}: ip -batch, tc -batch, nft -f"),
            format!("{batch:.1} ms ({:.2}x the slicer's time)", batch / ours),
            "slicer faster",
            batch > ours,
        );
    }
    table.note(format!(
        "a whole apply is {changes:.0} kernel changes (links, tc, one nftables transaction); \
         after each script run the slicer found nothing to change (same kernel state)"
    ));
    for mbit in [10, 100, 1000] {
        for direction in ["egress", "ingress"] {
            let goodput = get(&format!("goodput_{mbit}_{direction}"))?;
            let raw = goodput / f64::from(mbit);
            let ratio = raw / PAYLOAD_SHARE;
            table.check(
                &format!("iperf3 goodput at PIR {mbit} Mbit/s, {direction}"),
                format!("{goodput:.2} Mbit/s ({raw:.3} x PIR, {ratio:.3} x its payload rate)"),
                "within 5% of PIR x 1448/1514",
                (0.95..=1.05).contains(&ratio),
            );
        }
    }
    for direction in ["egress", "ingress"] {
        let ceiling = get(&format!("goodput_10000_{direction}"))?;
        table.info(
            &format!("iperf3 goodput through a slice shaped at 10 Gbit/s (the box's ceiling), {direction}"),
            format!("{ceiling:.2} Mbit/s"),
        );
    }
    table.note(
        "goodput is TCP payload; HTB counts Ethernet frames, so at a 1500-byte MTU payload is \
         at most 1448/1514 = 0.956 of the shaped rate. Under TCG the box's CPU, not the shaper, \
         may bound the highest rate"
            .to_string(),
    );
    Ok(())
}
