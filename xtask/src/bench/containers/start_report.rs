//! The start latency figures, ratios and notes.

use std::time::Duration;

use anyhow::anyhow;

use super::report::Report;
use super::start::{median, Series, Starter};
use super::start_env::StartEnv;
use super::tools::Tools;
use crate::timing::{ms, percentile};

/// `median ms (min a, max b)` of some samples; `None` when there are none.
pub(super) fn summary(samples: &[Duration]) -> Option<String> {
    let p50 = percentile(samples, 50.0)?;
    let spread = match (percentile(samples, 0.0), percentile(samples, 100.0)) {
        (Some(lo), Some(hi)) => format!(
            " (min {:.2}, max {:.2})",
            lo.as_secs_f64() * 1e3,
            hi.as_secs_f64() * 1e3
        ),
        _ => String::new(),
    };
    Some(format!("{}{spread}", ms(p50)))
}

/// Adds the start figures of every starter, mecvisor's ratios against the
/// peers, and the notes on how they were measured.
pub(super) fn report_start(report: &mut Report, series: &[Series], env: &StartEnv, tools: &Tools) {
    for s in series {
        let label = s.starter.label();
        match (&s.failed, summary(&s.samples)) {
            (None, Some(figure)) => report.info(label, figure),
            (Some(why), _) if s.starter == Starter::Mecvisor => {
                report.error(label, &anyhow!("{why}"));
            }
            (Some(why), _) => {
                report.info(label, "skipped".into());
                report.note(format!("{label}: skipped: {why}"));
            }
            (None, None) => report.info(label, "no samples".into()),
        }
    }
    if let Some(ours) = median(series, Starter::Mecvisor) {
        for (peer, what) in [
            (Starter::RuncCreateStart, "runc create + start"),
            (Starter::RuncRun, "runc run -d"),
            (Starter::CrunRun, "crun run -d"),
            (Starter::PodmanRun, "podman run -d"),
        ] {
            if let Some(theirs) = median(series, peer) {
                report.info(
                    &format!("ratio start: mecvisor / {what}"),
                    format!("{:.2}x", ours.as_secs_f64() / theirs.as_secs_f64()),
                );
            }
        }
    }
    if let Some(kind) = env.rootfs_kind {
        report.note(format!(
            "mecvisor made each container's root as {kind:?} over the unpacked image; the bare \
             runtimes use the unpacked image itself as root (no per-container layer)"
        ));
    }
    report.note(format!(
        "start = from the command until the container's /bin/sleep runs (Manager::run returns \
         after the monitor saw `runc start` succeed; `runc start`/`run -d`/`podman run -d` \
         return once the process was exec'd); round trips end when the runtime returned after \
         /bin/true exited and the container was deleted. Containers are removed between \
         rounds, untimed. Versions: {}; {}; {}",
        tools.runc.as_deref().unwrap_or("runc missing"),
        tools.crun.as_deref().unwrap_or("crun missing"),
        tools.podman.as_deref().unwrap_or("podman missing"),
    ));
    if let Some(podman) = &env.podman {
        report.note(format!(
            "podman flags: {} run {} (explicit --ulimit: podman's defaults, e.g. nofile \
             1048576, fail without CAP_SYS_RESOURCE above the host's hard limits; \
             containers.conf sets lock_type = \"file\")",
            podman.global_flags().join(" "),
            podman.run_flags().join(" ")
        ));
    }
}
