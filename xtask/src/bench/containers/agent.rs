//! Start latency through the real agent: fleet-controller (embedded
//! broker) and edge-agent (release builds) with containers on, the busybox
//! image in a loopback registry, manifests applied with fleetctl. The time
//! is taken from the agent's own JSON log: from `new desired state` of the
//! applied generation to `container running` of the workload.
//!
//! Every round applies three manifests, each with a workload `anchor`
//! (sleeps the whole time, so the image stays wanted and is not garbage
//! collected) and:
//! 1. `bench` with `ROUND=<r>.0`: a new container (timed, "start");
//! 2. `bench` with `ROUND=<r>.1`: the running one replaced (timed,
//!    "replace": stop and delete the old container, start the new one);
//! 3. no `bench`: the agent removes it (untimed).
//!
//! Round 0 is the warm-up (it also pulls the image). At the end the
//! manifest is deleted, the agent removes the containers, and agent,
//! controller and registry stop; containers still in the runtime's state
//! are force-deleted (also on error).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use mecvisor_e2e::oci::{self, LayerCompression, TestImage};
use mecvisor_e2e::registry::{Registry, RegistryOptions};

use super::agent_log::AgentLog;
use super::report::Report;
use super::runtime::quiet;
use super::start::Baselines;
use super::start_report::summary;
use crate::api::Api;
use crate::bins::{self, Bins};
use crate::cluster::{start_agent, wait_online, AgentSpec, Controller};
use crate::procs::{wait_for, Lifetime, Proc};
use crate::shell;
use crate::timing::percentile;

/// The agent's device name.
const DEVICE: &str = "bench-ctr";
/// The manifest applied and deleted.
const MANIFEST: &str = "bench-containers";
/// The measured workload (and its container's id).
const WORKLOAD: &str = "bench";
/// The workload that keeps the image wanted between rounds.
const ANCHOR: &str = "anchor";
/// Longest wait for one step of the agent (the first includes the pull).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

const START_LABEL: &str = "start: via the agent (desired state received -> process running)";
const REPLACE_LABEL: &str =
    "replace on change: via the agent (desired state received -> new process running)";

/// The release edge-agent, fleet-controller and fleetctl (built by the
/// parent process with [`bins::build`]).
pub(super) fn release_bins() -> Result<Bins> {
    let dir = bins::target_dir().join("release");
    let bins = Bins {
        agent: dir.join("edge-agent"),
        controller: dir.join("fleet-controller"),
        fleetctl: dir.join("fleetctl"),
    };
    for path in [&bins.agent, &bins.controller, &bins.fleetctl] {
        if !path.is_file() {
            bail!("{} is missing (cargo build --release)", path.display());
        }
    }
    Ok(bins)
}

/// Measures the agent's start and replace latency and adds them, with the
/// ratios against the bare starts, to `report`.
pub(super) fn agent_latency(
    rounds: usize,
    dir: &Path,
    baselines: &Baselines,
    report: &mut Report,
) -> Result<()> {
    let bins = release_bins()?;
    let dir = dir.join("agent");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        bail!("docker-registry is not installed (apt-get install docker-registry)");
    };
    // sleep as PID 1 ignores SIGTERM: the image says SIGKILL, so replacing
    // and removing a container does not wait for the stop timeout.
    let image = TestImage::busybox(LayerCompression::Gzip).with_config(|c| {
        c["config"]["StopSignal"] = "SIGKILL".into();
    });
    oci::push(&registry, "mecvisor-bench/busybox", "latest", &image);
    let reference = format!("{}/mecvisor-bench/busybox:latest", registry.host());

    let runc = RuncRoot(dir.join("runc"));
    let mut controller = Controller::start(&bins, &dir, Lifetime::TiedToXtask)?;
    let extra_config = format!(
        "\n[containers]\nruntime_root = {}\n\n[content.registries.{}]\nplain_http = true\n",
        toml_str(&runc.0.to_string_lossy()),
        toml_str(&registry.host()),
    );
    let spec = AgentSpec {
        device: DEVICE,
        mqtt_url: format!("mqtt://{}", controller.mqtt_addr),
        tls: None,
        controller_key: &controller.pubkey,
        labels: &[],
        extra_config: &extra_config,
        log_json: true,
    };
    let mut agent = start_agent(&bins, &dir, &spec, Lifetime::TiedToXtask)?;
    let api = Api::new(&controller.api_addr);
    wait_online(
        &api,
        &[DEVICE.to_string()],
        Duration::from_secs(30),
        &mut [&mut controller.proc, &mut agent.proc],
    )?;
    let fleetctl = Fleetctl {
        bin: &bins.fleetctl,
        server: format!("http://{}", controller.api_addr),
        file: dir.join("manifest.yaml"),
    };

    let mut starts = Vec::with_capacity(rounds);
    let mut replaces = Vec::with_capacity(rounds);
    println!("\n==> container start via the agent: 1 warm-up + {rounds} rounds");
    let measured = (|| {
        let mut log = AgentLog::new(agent.proc.log());
        for round in 0..=rounds {
            let mut timed = |value: &str| -> Result<Duration> {
                log.set_mark();
                let generation = fleetctl.apply(&manifest(&reference, Some(value)))?;
                log.desired_to_running(generation, WORKLOAD, STEP_TIMEOUT, &mut agent.proc)
            };
            let start = timed(&format!("{round}.0"))?;
            let replace = timed(&format!("{round}.1"))?;
            log.set_mark();
            fleetctl.apply(&manifest(&reference, None))?;
            log.wait_removed(WORKLOAD, STEP_TIMEOUT, &mut agent.proc)?;
            if round > 0 {
                starts.push(start);
                replaces.push(replace);
            }
        }
        Ok::<_, anyhow::Error>(())
    })();
    let cleaned = remove_all(&fleetctl, &runc, &mut agent.proc);
    agent.proc.stop();
    controller.proc.stop();
    drop(registry);
    measured?;
    cleaned?;

    for (label, samples) in [(START_LABEL, &starts), (REPLACE_LABEL, &replaces)] {
        report.info(label, summary(samples).context("no samples")?);
    }
    if let Some(ours) = percentile(&starts, 50.0) {
        for (theirs, what) in [
            (baselines.runc_create_start, "runc create + start"),
            (baselines.podman_run, "podman run -d"),
        ] {
            if let Some(theirs) = theirs {
                report.info(
                    &format!("ratio start: via the agent / {what}"),
                    format!("{:.2}x", ours.as_secs_f64() / theirs.as_secs_f64()),
                );
            }
        }
    }
    report.note(format!(
        "via the agent: fleet-controller + edge-agent (release), manifests applied with \
         fleetctl; time between two timestamps of the agent's JSON log: `new desired state` \
         (the reconciler takes the document already verified, stored and acked) to \
         `container running` of the workload (tag resolved at the loopback registry, overlay \
         root, bundle, monitor, runc create+start). start = a new workload (the previous one \
         was removed, untimed); replace = the workload's env changed, so the running \
         container (image StopSignal SIGKILL) is stopped and deleted and the new one \
         started. A second workload keeps the image wanted (not garbage-collected) between \
         rounds. Image: {reference}"
    ));
    Ok(())
}

/// The manifest: the anchor, and the measured workload with `ROUND=value`
/// when there is a value.
fn manifest(image: &str, round: Option<&str>) -> String {
    let workload = |name: &str, seconds: &str, env: &str| {
        format!(
            "  - name: {name}\n    container:\n      image: \"{image}\"\n      command: \
             [/bin/sleep, \"{seconds}\"]\n{env}    resources: {{memory_mib: 32}}\n"
        )
    };
    let mut text = format!("name: {MANIFEST}\ndevices: [{DEVICE}]\nworkloads:\n");
    text += &workload(ANCHOR, "86400", "");
    if let Some(value) = round {
        let env = format!("      env: [{{name: ROUND, value: \"{value}\"}}]\n");
        text += &workload(WORKLOAD, "300", &env);
    }
    text
}

/// Deletes the manifest and waits until the agent removed every container
/// (`runc list` empty).
fn remove_all(fleetctl: &Fleetctl, runc: &RuncRoot, agent: &mut Proc) -> Result<()> {
    fleetctl.delete()?;
    wait_for(
        "the agent to remove its containers",
        STEP_TIMEOUT,
        Duration::from_millis(50),
        |note| {
            agent.ensure_running()?;
            let ids = runc.ids()?;
            *note = format!("still there: {ids:?}");
            Ok(ids.is_empty().then_some(()))
        },
    )
}

/// fleetctl bound to the benchmark's controller.
struct Fleetctl<'a> {
    bin: &'a Path,
    server: String,
    /// Where the manifest is written before `apply -f`.
    file: PathBuf,
}

impl Fleetctl<'_> {
    fn command(&self) -> Command {
        let mut cmd = Command::new(self.bin);
        cmd.args(["--server", &self.server]);
        cmd
    }

    /// Applies `manifest`; returns the device's new desired generation.
    fn apply(&self, manifest: &str) -> Result<u64> {
        std::fs::write(&self.file, manifest)
            .with_context(|| format!("writing {}", self.file.display()))?;
        let out = shell::output(self.command().arg("apply").arg("-f").arg(&self.file))?;
        desired_generation(&out)
            .with_context(|| format!("fleetctl apply printed no generation for {DEVICE}: {out:?}"))
    }

    fn delete(&self) -> Result<()> {
        shell::output(self.command().args(["delete", "manifest", MANIFEST])).map(drop)
    }
}

/// The generation in fleetctl's `  <device>: desired generation N` line.
fn desired_generation(output: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(DEVICE)?;
        rest.strip_prefix(": desired generation ")?
            .trim()
            .parse()
            .ok()
    })
}

/// The agent's runc state directory; containers still in it are
/// force-deleted on drop (the agent removes them on a clean run).
struct RuncRoot(PathBuf);

impl RuncRoot {
    fn command(&self) -> Command {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(&self.0);
        cmd
    }

    fn ids(&self) -> Result<Vec<String>> {
        if !self.0.exists() {
            return Ok(Vec::new());
        }
        let out = quiet(self.command().args(["list", "--quiet"]))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

impl Drop for RuncRoot {
    fn drop(&mut self) {
        for id in self.ids().unwrap_or_default() {
            eprintln!("xtask: warning: container {id} left by the agent; deleting it");
            let _ = self
                .command()
                .args(["delete", "--force", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A TOML basic string (JSON string escaping is a valid subset).
fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_read_from_fleetctl_apply() {
        let out = format!("manifest {MANIFEST} applied\n  {DEVICE}: desired generation 12\n");
        assert_eq!(desired_generation(&out), Some(12));
        assert_eq!(desired_generation("manifest x applied\n"), None);
    }

    #[test]
    fn manifest_has_the_anchor_and_the_round() {
        let text = manifest("127.0.0.1:5000/r:t", Some("3.1"));
        assert!(text.contains("- name: anchor"), "{text}");
        assert!(
            text.contains("env: [{name: ROUND, value: \"3.1\"}]"),
            "{text}"
        );
        assert!(
            !manifest("i", None).contains("name: bench\n"),
            "no bench workload"
        );
    }
}
