//! `cargo xtask bench sync`: apply-to-ack latency, agent idle RSS, binary sizes.
//!
//! Apply-to-ack is measured end to end through the real system: the time from
//! sending `POST /v1/manifests` until `GET /v1/devices/...` reports the
//! returned generation as acked (controller stores, signs, publishes via its
//! embedded broker; the agent verifies, persists, acks; the controller records
//! the ack). The API is polled every millisecond, so figures include up to
//! ~1 ms of polling granularity.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use super::idle_rss;
use super::table::Table;
use crate::api::{device_generations, u64_field, Api};
use crate::bins::{self, Bins};
use crate::cluster::{start_agent, wait_online, Agent, AgentSpec, Controller};
use crate::procs::{stop_all, Lifetime, Proc};
use crate::timing::{ms, percentile};

/// Target from the issue: median apply-to-ack latency for one agent.
const P50_TARGET: Duration = Duration::from_millis(20);

/// Longest wait for one apply to be acked before the run is declared failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of the sync benchmark.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Measured applies to one agent (after 5 unmeasured warm-up applies).
    #[arg(long, default_value_t = 200, value_name = "N")]
    iterations: usize,
    /// Number of agent processes for the fleet measurement (0 skips it).
    #[arg(long, default_value_t = 100, value_name = "N")]
    fleet_agents: usize,
    /// Measured applies to the whole fleet.
    #[arg(long, default_value_t = 20, value_name = "N")]
    fleet_iterations: usize,
    /// Seconds the agent idles before its RSS is read.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    idle_secs: u64,
}

/// Runs the benchmark and returns its table.
pub fn run(args: &SyncArgs) -> Result<Table> {
    let bins = bins::build(true)?;
    let tmp = tempfile::Builder::new()
        .prefix("mecvisor-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let dir = tmp.path();
    let mut table = Table::new("bench sync (release build)");

    let mut controller = Controller::start(&bins, dir, Lifetime::TiedToXtask)?;
    let api = Api::new(&controller.api_addr);
    single_agent(
        args,
        &bins,
        dir,
        &mut controller,
        &api,
        "embedded rumqttd",
        &mut table,
    );
    if args.fleet_agents > 0 {
        fleet(args, &bins, dir, &mut controller, &api, &mut table);
    }
    controller.proc.stop();

    // The same single-agent path through a peer broker, mosquitto (with
    // TCP_NODELAY, as the README recommends), for comparison.
    let broker_dir = dir.join("mosquitto");
    match super::mosquitto::start(&broker_dir, None) {
        Ok((mut broker, port)) => {
            let via = dir.join("via-mosquitto");
            match Controller::start_with_broker(&bins, &via, Lifetime::TiedToXtask, Some(port)) {
                Ok(mut controller) => {
                    let api = Api::new(&controller.api_addr);
                    single_agent(
                        args,
                        &bins,
                        &via,
                        &mut controller,
                        &api,
                        "mosquitto",
                        &mut table,
                    );
                    controller.proc.stop();
                }
                Err(err) => table.error("apply-to-ack via mosquitto", "< 20 ms", &err),
            }
            broker.stop();
        }
        Err(err) => table.error("apply-to-ack via mosquitto", "< 20 ms", &err),
    }

    idle_rss::measure(
        &bins,
        &dir.join("tls"),
        &controller.pubkey,
        args.idle_secs,
        &mut table,
    );
    binary_sizes(&bins, &mut table);
    Ok(table)
}

/// (a) apply-to-ack for one agent.
fn single_agent(
    args: &SyncArgs,
    bins: &Bins,
    dir: &Path,
    controller: &mut Controller,
    api: &Api,
    broker: &str,
    table: &mut Table,
) {
    let metric = format!("apply-to-ack p50, 1 agent, {broker}, N={}", args.iterations);
    let result = (|| {
        let spec = AgentSpec {
            device: "edge-1",
            mqtt_url: format!("mqtt://{}", controller.mqtt_addr),
            tls: None,
            controller_key: &controller.pubkey,
            labels: &[],
            extra_config: "",
            log_json: false,
        };
        let mut agent = start_agent(bins, dir, &spec, Lifetime::TiedToXtask)?;
        println!("\n==> apply-to-ack, 1 agent: waiting for edge-1 to come online");
        wait_online(
            api,
            &["edge-1".to_string()],
            Duration::from_secs(30),
            &mut [&mut controller.proc, &mut agent.proc],
        )?;
        let samples = measure_applies(
            api,
            "bench-one",
            "devices: [edge-1]",
            5,
            args.iterations,
            &mut [&mut controller.proc, &mut agent.proc],
        )?;
        agent.proc.stop();
        Ok::<_, anyhow::Error>(samples)
    })();
    match result {
        Ok(samples) => {
            report_latency(table, &metric, &samples, true);
        }
        Err(err) => table.error(&metric, "< 20 ms", &err),
    }
}

/// (b) apply-to-ack for a manifest selecting a whole fleet of agent processes.
fn fleet(
    args: &SyncArgs,
    bins: &Bins,
    dir: &Path,
    controller: &mut Controller,
    api: &Api,
    table: &mut Table,
) {
    let n = args.fleet_agents;
    let metric = format!(
        "apply-to-all-acked p50, {n} agents, N={}",
        args.fleet_iterations
    );
    let fleet_dir = dir.join("fleet");
    let result = (|| {
        std::fs::create_dir_all(&fleet_dir)
            .with_context(|| format!("creating {}", fleet_dir.display()))?;
        println!("\n==> apply-to-ack, {n} agents: starting {n} edge-agent processes");
        let mut agents: Vec<Agent> = Vec::with_capacity(n);
        let names: Vec<String> = (1..=n).map(|i| format!("fleet-{i:03}")).collect();
        let started = Instant::now();
        let outcome = (|| {
            for name in &names {
                let spec = AgentSpec {
                    device: name,
                    mqtt_url: format!("mqtt://{}", controller.mqtt_addr),
                    tls: None,
                    controller_key: &controller.pubkey,
                    labels: &[("fleet", "bench")],
                    extra_config: "",
                    log_json: false,
                };
                agents.push(start_agent(bins, &fleet_dir, &spec, Lifetime::TiedToXtask)?);
            }
            let mut procs: Vec<&mut Proc> = agents.iter_mut().map(|a| &mut a.proc).collect();
            procs.push(&mut controller.proc);
            wait_online(api, &names, Duration::from_secs(120), &mut procs)?;
            println!(
                "{n} agents online after {:.1}s",
                started.elapsed().as_secs_f64()
            );
            let rss: u64 = procs
                .iter()
                .take(n)
                .filter_map(|p| crate::procs::rss_kib(p.pid()).ok())
                .sum();
            measure_applies(
                api,
                "bench-fleet",
                "selector: {fleet: bench}",
                2,
                args.fleet_iterations,
                &mut procs,
            )
            .map(|samples| (samples, rss))
        })();
        let mut procs: Vec<Proc> = agents.into_iter().map(|a| a.proc).collect();
        stop_all(&mut procs);
        outcome
    })();
    match result {
        Ok((samples, rss_kib)) => {
            report_latency(table, &metric, &samples, false);
            table.info(
                &format!("RSS of all {n} agents (sum)"),
                format!("{:.1} MiB", rss_kib as f64 / 1024.0),
            );
            table.note(format!(
                "fleet figures: {n} real edge-agent processes on one host sharing its cores \
                 with the controller and broker"
            ));
        }
        Err(err) => table.error(&metric, "", &err),
    }
}

/// Measured durations of one series of applies.
struct Samples {
    /// From sending the POST until every selected device acked.
    apply_to_ack: Vec<Duration>,
    /// From sending the POST until its answer arrived (part of the above).
    post: Vec<Duration>,
}

/// Applies `iterations + warmup` manifest changes (an env value that changes
/// every time) and returns the measured durations.
fn measure_applies(
    api: &Api,
    manifest: &str,
    target_line: &str,
    warmup: usize,
    iterations: usize,
    procs: &mut [&mut Proc],
) -> Result<Samples> {
    let mut samples = Samples {
        apply_to_ack: Vec::with_capacity(iterations),
        post: Vec::with_capacity(iterations),
    };
    let mut last_generation: Option<u64> = None;
    for i in 0..warmup + iterations {
        let yaml = bench_manifest(manifest, target_line, i);
        let start = Instant::now();
        let answer = api.post_yaml("/v1/manifests", &yaml)?;
        let posted = start.elapsed();
        let devices = device_generations(&answer)?;
        if devices.is_empty() {
            bail!("manifest {manifest} selected no device: {answer}");
        }
        wait_acked(api, &devices)?;
        let took = start.elapsed();
        let generation = devices.first().map(|(_, g)| *g).unwrap_or(0);
        if last_generation.is_some_and(|last| generation <= last) {
            bail!("generation did not increase after a content change: {answer}");
        }
        last_generation = Some(generation);
        if i >= warmup {
            samples.apply_to_ack.push(took);
            samples.post.push(posted);
        }
        if i % 50 == 0 {
            for p in procs.iter_mut() {
                p.ensure_running()?;
            }
        }
    }
    Ok(samples)
}

/// Polls the API until every `(device, generation)` is acked.
fn wait_acked(api: &Api, devices: &[(String, u64)]) -> Result<()> {
    let start = Instant::now();
    loop {
        let pending = if let [(name, generation)] = devices {
            let device = api.get(&format!("/v1/devices/{name}"))?;
            usize::from(u64_field(&device, "acked_generation") < *generation)
        } else {
            let list = api.get("/v1/devices")?;
            let empty = Vec::new();
            let all = list.as_array().unwrap_or(&empty);
            devices
                .iter()
                .filter(|(name, generation)| {
                    !all.iter().any(|d| {
                        d.get("name").and_then(Value::as_str) == Some(name.as_str())
                            && u64_field(d, "acked_generation") >= *generation
                    })
                })
                .count()
        };
        if pending == 0 {
            return Ok(());
        }
        if start.elapsed() > ACK_TIMEOUT {
            bail!(
                "{pending} of {} device(s) did not ack within {}s",
                devices.len(),
                ACK_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A one-workload manifest whose env value changes with `i`.
fn bench_manifest(name: &str, target_line: &str, i: usize) -> String {
    format!(
        "name: {name}\n{target_line}\nworkloads:\n  - name: bench-app\n    container:\n      \
         image: registry.invalid/bench@sha256:{digest}\n      env:\n        - name: ITERATION\n          \
         value: \"{i}\"\n    resources:\n      memory_mib: 16\n    restart: never\n",
        digest = "0".repeat(64)
    )
}

fn report_latency(table: &mut Table, p50_metric: &str, samples: &Samples, with_target: bool) {
    let all = &samples.apply_to_ack;
    let (Some(p50), Some(p99)) = (percentile(all, 50.0), percentile(all, 99.0)) else {
        table.info(p50_metric, "no samples".to_string());
        return;
    };
    if with_target {
        table.check(p50_metric, ms(p50), "< 20 ms", p50 < P50_TARGET);
    } else {
        table.info(p50_metric, ms(p50));
    }
    table.info(&p50_metric.replace("p50", "p99"), ms(p99));
    if let Some(post_p50) = percentile(&samples.post, 50.0) {
        table.info("  of which POST /v1/manifests answer, p50", ms(post_p50));
    }
}

/// (d) sizes of the release binaries.
fn binary_sizes(bins: &Bins, table: &mut Table) {
    for path in [&bins.agent, &bins.controller, &bins.fleetctl] {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::metadata(path) {
            Ok(meta) => table.info(
                &format!("release binary size {name}"),
                format!("{:.2} MiB", meta.len() as f64 / (1024.0 * 1024.0)),
            ),
            Err(err) => table.error(
                &format!("release binary size {name}"),
                "",
                &anyhow::Error::new(err).context(path.display().to_string()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_manifest_changes_with_iteration() {
        let a = bench_manifest("m", "devices: [edge-1]", 1);
        let b = bench_manifest("m", "devices: [edge-1]", 2);
        assert_ne!(a, b);
        assert!(a.contains("value: \"1\""));
        assert!(a.starts_with("name: m\ndevices: [edge-1]\nworkloads:\n"));
    }
}
