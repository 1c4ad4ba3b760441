//! Start latency of mecvisor's container manager and of the bare OCI
//! runtimes (and podman, through [`super::podman`]) on one busybox image.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::podman;
use super::report::Report;
use super::runtime::{ManagedContainer, RuntimeContainer};
use super::start_env::StartEnv;
use super::start_report::report_start;
use super::tools::Tools;
use crate::timing::percentile;

/// What the containers run for the start measurements.
pub(super) const SLEEP: [&str; 2] = ["/bin/sleep", "300"];

/// One way of starting the busybox container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Starter {
    /// `containers::Manager::run`.
    Mecvisor,
    /// `runc create` + `runc start` on the shared bundle.
    RuncCreateStart,
    /// `runc run -d` on the shared bundle.
    RuncRun,
    /// `crun run -d` on the shared bundle.
    CrunRun,
    /// `podman run -d`.
    PodmanRun,
    /// `podman run --rm ... /bin/true`, to its exit and removal.
    PodmanRoundTrip,
    /// `runc run` of `/bin/true` in the foreground, then `runc delete`.
    RuncRoundTrip,
}

impl Starter {
    pub(super) fn label(self) -> &'static str {
        match self {
            Starter::Mecvisor => {
                "start: mecvisor Manager::run (overlay root, bundle, monitor, runc create+start)"
            }
            Starter::RuncCreateStart => "start: runc create + runc start (same bundle, image root)",
            Starter::RuncRun => "start: runc run -d (same bundle)",
            Starter::CrunRun => "start: crun run -d (same bundle)",
            Starter::PodmanRun => "start: podman run -d (same image, runc, overlay storage)",
            Starter::PodmanRoundTrip => "round trip /bin/true: podman run --rm",
            Starter::RuncRoundTrip => "round trip /bin/true: runc run + runc delete",
        }
    }
}

/// A series of measurements of one starter.
pub(super) struct Series {
    pub(super) starter: Starter,
    pub(super) samples: Vec<Duration>,
    /// Why it stopped being measured.
    pub(super) failed: Option<String>,
}

/// Medians of the bare starts the agent's start is compared with.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Baselines {
    /// `runc create` + `runc start`.
    pub(super) runc_create_start: Option<Duration>,
    /// `podman run -d`.
    pub(super) podman_run: Option<Duration>,
}

/// Measures every starter (after one warm-up round), adds the figures to
/// `report` and returns the medians the agent is compared with.
pub(super) fn start_latency(
    rounds: usize,
    monitor: &Path,
    dir: &Path,
    tools: &Tools,
    report: &mut Report,
) -> Result<Baselines> {
    let dir = dir.join("start");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Err(why) = &tools.runc {
        bail!("{why}: mecvisor and every bare-runtime figure need runc");
    }

    let mut env = StartEnv::prepare(monitor, &dir, tools)?;

    let mut series: Vec<Series> = [
        Starter::Mecvisor,
        Starter::RuncCreateStart,
        Starter::RuncRun,
        Starter::CrunRun,
        Starter::PodmanRun,
        Starter::PodmanRoundTrip,
        Starter::RuncRoundTrip,
    ]
    .into_iter()
    .map(|starter| {
        let failed = match starter {
            Starter::CrunRun => tools.crun.clone().err(),
            Starter::PodmanRun | Starter::PodmanRoundTrip => env.podman_missing.clone(),
            _ => None,
        };
        Series {
            starter,
            samples: Vec::with_capacity(rounds),
            failed,
        }
    })
    .collect();

    println!("\n==> container start: 1 warm-up + {rounds} rounds");
    for round in 0..=rounds {
        for s in series.iter_mut().filter(|s| s.failed.is_none()) {
            let id = format!("{}-{}-{round}", env.prefix, short_name(s.starter));
            match start_once(&mut env, s.starter, &id) {
                Ok(took) if round > 0 => s.samples.push(took),
                Ok(_) => {}
                Err(err) => s.failed = Some(format!("{err:#}")),
            }
        }
    }

    report_start(report, &series, &env, tools);
    Ok(Baselines {
        runc_create_start: median(&series, Starter::RuncCreateStart),
        podman_run: median(&series, Starter::PodmanRun),
    })
}

/// The median of a starter measured to the end (`None` when it failed).
pub(super) fn median(series: &[Series], starter: Starter) -> Option<Duration> {
    series
        .iter()
        .find(|s| s.starter == starter && s.failed.is_none())
        .and_then(|s| percentile(&s.samples, 50.0))
}

fn short_name(starter: Starter) -> &'static str {
    match starter {
        Starter::Mecvisor => "mecvisor",
        Starter::RuncCreateStart => "runc-cs",
        Starter::RuncRun => "runc-run",
        Starter::CrunRun => "crun-run",
        Starter::PodmanRun => "podman",
        Starter::PodmanRoundTrip => "podman-rt",
        Starter::RuncRoundTrip => "runc-rt",
    }
}

/// Starts one container, returns how long the start took, and removes it
/// (also when anything fails).
fn start_once(env: &mut StartEnv, starter: Starter, id: &str) -> Result<Duration> {
    match starter {
        Starter::Mecvisor => {
            let _remove = ManagedContainer {
                manager: &env.manager,
                id,
            };
            let started = Instant::now();
            let result = env.manager.run(id, &env.config, &env.image_root);
            let took = started.elapsed();
            match result.with_context(|| format!("Manager::run {id}"))? {
                containers::Started::Created { pid, rootfs } => {
                    ensure_alive(pid, id)?;
                    env.rootfs_kind = Some(rootfs);
                }
                containers::Started::Adopted { .. } => {
                    bail!("Manager::run adopted {id} instead of creating it")
                }
            }
            Ok(took)
        }
        Starter::RuncCreateStart => {
            let runtime = RuntimeContainer::new("runc", &env.runc_root, id);
            let started = Instant::now();
            runtime.run(&["create", "--bundle"], Some(&env.bundle), &env.errors)?;
            runtime.run(&["start"], None, &env.errors)?;
            let took = started.elapsed();
            runtime.ensure_running()?;
            Ok(took)
        }
        Starter::RuncRun | Starter::CrunRun => {
            let program = if starter == Starter::RuncRun {
                "runc"
            } else {
                "crun"
            };
            let root = if starter == Starter::RuncRun {
                &env.runc_root
            } else {
                &env.crun_root
            };
            let runtime = RuntimeContainer::new(program, root, id);
            let started = Instant::now();
            runtime.run(&["run", "-d", "--bundle"], Some(&env.bundle), &env.errors)?;
            let took = started.elapsed();
            runtime.ensure_running()?;
            Ok(took)
        }
        Starter::RuncRoundTrip => {
            let runtime = RuntimeContainer::new("runc", &env.runc_root, id);
            let started = Instant::now();
            runtime.run(&["run", "--bundle"], Some(&env.true_bundle), &env.errors)?;
            runtime.delete();
            Ok(started.elapsed())
        }
        Starter::PodmanRun | Starter::PodmanRoundTrip => {
            let podman = env
                .podman
                .as_ref()
                .context("podman storage is not set up")?;
            podman::start_once(podman, id, starter == Starter::PodmanRun)
        }
    }
}

fn ensure_alive(pid: i32, id: &str) -> Result<()> {
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("{id}: its process (pid {pid}) is not running after the start returned");
    }
    Ok(())
}
