//! `cargo xtask bench`: benchmarks with a results table against targets.
//!
//! Benchmarks measure; they are not tests. A figure that misses its target is
//! marked MISS and the command still succeeds unless `--fail-on-miss` is given.

mod containers;
mod idle_rss;
mod lab;
mod mosquitto;
mod slicing;
mod sync;
mod table;
mod vmm;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Benchmark to run; all of them when omitted.
    #[arg(value_enum)]
    name: Option<BenchName>,
    #[command(flatten)]
    sync: sync::SyncArgs,
    #[command(flatten)]
    containers: containers::ContainersArgs,
    /// Exit with an error when a figure misses its target.
    #[arg(long)]
    fail_on_miss: bool,
}

/// The available benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchName {
    /// Sync path: apply-to-ack latency (1 and many agents), agent idle RSS
    /// over mutual TLS, release binary sizes.
    Sync,
    /// Edge box lab: boot-to-agent-connected per architecture (QEMU TCG),
    /// static agent size per architecture. Needs root.
    Lab,
    /// Network slicing in an emulated edge box: 64 slices applied by the
    /// slicer vs the equivalent ip/tc/nft script, and iperf3 goodput at
    /// 10/100/1000 Mbit/s PIR. Needs root.
    Slicing,
    /// Containers: start latency of mecvisor's container manager vs runc,
    /// crun and podman on the same busybox image, and pull throughput from
    /// a loopback registry vs podman pull. Needs root.
    Containers,
    /// microVMM (`edge-agent vmm`): RSS without guest RAM and process start
    /// to first guest instruction on this host (tiny guest), guest boot to
    /// its initramfs marker inside the emulated boxes. Needs root.
    Vmm,
}

/// Runs the selected benchmarks.
pub fn run(args: &BenchArgs) -> Result<()> {
    let selected = match args.name {
        Some(name) => vec![name],
        None => vec![
            BenchName::Sync,
            BenchName::Lab,
            BenchName::Slicing,
            BenchName::Containers,
            BenchName::Vmm,
        ],
    };
    let mut misses = 0;
    for name in selected {
        let table = match name {
            BenchName::Sync => sync::run(&args.sync)?,
            BenchName::Lab => lab::run()?,
            BenchName::Slicing => slicing::run()?,
            BenchName::Containers => containers::run(&args.containers)?,
            BenchName::Vmm => vmm::run()?,
        };
        table.print();
        misses += table.misses();
    }
    if args.fail_on_miss && misses > 0 {
        bail!("{misses} figure(s) missed their target");
    }
    Ok(())
}
