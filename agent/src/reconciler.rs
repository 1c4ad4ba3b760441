//! Drives every object towards the last accepted desired state.
//!
//! Per object: `pending -> applying -> running | failed` (retried with its
//! own exponential backoff), `removing` once no longer desired, and
//! `unsupported` when this agent has no runtime for its kind. Objects are
//! independent: one failing never blocks the others. Each pass goes in
//! order: removals (workloads before slices), slices, artifacts, workloads.
//! Whenever the set of object states changes it is persisted and a State
//! report is enqueued.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mecvisor_protocol::{
    ActualState, DesiredState, ObjectStatus, Phase, ReportBody, RestartPolicy,
};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::outbox;
use crate::runtime::{ObjectKind, ObjectSpec, Observed, Runtimes};
use crate::store::{ObjectRecord, Store};

/// Per-object retry backoff: `base * 2^(attempts-1)`, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempts` (1-based).
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// What the reconciler knows about one object.
#[derive(Debug, Clone)]
struct Tracked {
    kind_name: String,
    kind: Option<ObjectKind>,
    /// Desired spec; `None` when the object is no longer desired (or loaded
    /// from the store before the desired document was replayed).
    spec: Option<ObjectSpec>,
    fingerprint: Vec<u8>,
    phase: Phase,
    message: String,
    restarts: u32,
    generation: u64,
    attempts: u32,
    next_attempt: Option<Instant>,
    /// False when the restart policy forbids another attempt.
    retry: bool,
    artifacts_ready: bool,
    /// A runtime may hold something of this object (it was applied at
    /// least once, also under an earlier spec): removal must ask it.
    applied_once: bool,
    /// When the last successful apply happened; the retry backoff is
    /// forgotten only after the object has stayed up for
    /// [`STABLE_AFTER`], so a crash loop keeps backing off.
    running_since: Option<Instant>,
}

/// How long an object must keep running before its backoff resets.
const STABLE_AFTER: Duration = Duration::from_secs(10);

impl Tracked {
    fn from_record(r: ObjectRecord) -> Tracked {
        // An object caught mid-apply by a crash is simply applied again.
        let phase = if r.phase == Phase::Applying {
            Phase::Pending
        } else {
            r.phase
        };
        Tracked {
            kind: ObjectKind::parse(&r.kind),
            kind_name: r.kind,
            spec: None,
            fingerprint: r.spec,
            phase,
            message: r.message,
            restarts: r.restarts,
            generation: r.generation,
            attempts: 0,
            next_attempt: None,
            retry: true,
            artifacts_ready: false,
            applied_once: r.phase != Phase::Unsupported,
            running_since: None,
        }
    }

    fn set(&mut self, phase: Phase, message: impl Into<String>) {
        let message = message.into();
        if self.phase != phase || self.message != message {
            info!(from = self.phase.as_str(), to = phase.as_str(), %message, "phase change");
        }
        self.phase = phase;
        self.message = message;
    }

    fn fail(&mut self, message: String, now: Instant, backoff: &Backoff) {
        self.attempts = self.attempts.saturating_add(1);
        let delay = backoff.delay(self.attempts);
        self.next_attempt = Some(now + delay);
        warn!(attempts = self.attempts, retry_in_ms = delay.as_millis() as u64, %message, "failed");
        self.set(Phase::Failed, message);
    }

    fn due(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|t| t <= now)
    }

    fn status(&self, name: &str) -> ObjectStatus {
        ObjectStatus {
            name: name.to_string(),
            kind: self.kind_name.clone(),
            phase: self.phase,
            message: self.message.clone(),
            restarts: self.restarts,
            generation: self.generation,
        }
    }
}

/// Result of one reconcile pass.
#[derive(Debug)]
pub struct PassResult {
    /// The new actual state, when it differs from the last one reported.
    pub report: Option<ActualState>,
    /// Earliest time an object wants another attempt.
    pub next_wake: Option<Instant>,
}

/// The reconciler: object states, runtimes and the desired document.
pub struct Reconciler {
    runtimes: Runtimes,
    objects: BTreeMap<String, Tracked>,
    desired: Option<Arc<DesiredState>>,
    last_reported: Option<ActualState>,
    backoff: Backoff,
    /// Generation whose unwanted artifacts were last garbage-collected.
    collected: Option<u64>,
    /// Workloads found missing from their runtime during this pass.
    vanished: Vec<String>,
}

impl Reconciler {
    /// Creates a reconciler over `runtimes`, resuming from persisted object
    /// states. The first pass always reports.
    pub fn new(runtimes: Runtimes, records: Vec<ObjectRecord>, backoff: Backoff) -> Reconciler {
        Reconciler {
            runtimes,
            objects: records
                .into_iter()
                .map(|r| (r.name.clone(), Tracked::from_record(r)))
                .collect(),
            desired: None,
            last_reported: None,
            backoff,
            collected: None,
            vanished: Vec::new(),
        }
    }

    /// Sets the document to converge on.
    pub fn set_desired(&mut self, desired: Arc<DesiredState>) {
        info!(generation = desired.generation, hash = %desired.content_hash, "new desired state");
        self.desired = Some(desired);
    }

    /// Object states as persisted.
    pub fn records(&self) -> Vec<ObjectRecord> {
        self.objects
            .iter()
            .map(|(name, t)| ObjectRecord {
                name: name.clone(),
                kind: t.kind_name.clone(),
                phase: t.phase,
                message: t.message.clone(),
                restarts: t.restarts,
                generation: t.generation,
                spec: t.fingerprint.clone(),
            })
            .collect()
    }

    /// Records that `state` was durably reported, so it is not reported again.
    pub fn mark_reported(&mut self, state: ActualState) {
        self.last_reported = Some(state);
    }

    fn actual(&self) -> ActualState {
        ActualState {
            applied_generation: self.desired.as_ref().map_or(0, |d| d.generation),
            objects: self.objects.iter().map(|(n, t)| t.status(n)).collect(),
        }
    }

    /// One pass over every object. Does nothing before a desired document is
    /// known (objects are left as they are).
    pub async fn pass(&mut self, now: Instant) -> PassResult {
        let Some(doc) = self.desired.clone() else {
            return PassResult {
                report: None,
                next_wake: None,
            };
        };
        let desired = desired_specs(&doc);
        self.track(&desired, doc.generation);
        for kind in [ObjectKind::Slice, ObjectKind::Container, ObjectKind::Vm] {
            if let Some(runtime) = self.runtimes.for_kind(kind) {
                let of_kind: Vec<ObjectSpec> = desired
                    .iter()
                    .filter(|s| s.kind() == kind)
                    .cloned()
                    .collect();
                runtime.desired_set(&of_kind);
            }
        }

        // Removals, workloads before the slices they may use.
        let mut gone: Vec<(bool, String)> = self
            .objects
            .iter()
            .filter(|(_, t)| t.spec.is_none())
            .map(|(n, t)| (t.kind == Some(ObjectKind::Slice), n.clone()))
            .collect();
        gone.sort();
        for (_, name) in gone {
            let span = info_span!("remove", object = %name);
            self.step_remove(&name, now).instrument(span).await;
        }
        let slices: Vec<String> = doc.spec.slices.iter().map(|s| s.name.clone()).collect();
        let workloads: Vec<String> = doc.spec.workloads.iter().map(|w| w.name.clone()).collect();
        for name in &slices {
            let span = info_span!("apply", object = %name, kind = "slice");
            self.step_apply(name, now).instrument(span).await;
        }
        for name in &workloads {
            let span = info_span!("artifacts", object = %name);
            self.step_artifacts(name, now).instrument(span).await;
        }
        for name in &workloads {
            let span = info_span!("apply", object = %name);
            self.step_apply(name, now).instrument(span).await;
        }
        // Workloads found gone (e.g. after a reboot): fetch and apply now
        // rather than at the next periodic pass.
        for name in std::mem::take(&mut self.vanished) {
            self.step_artifacts(&name, now)
                .instrument(info_span!("artifacts", object = %name))
                .await;
            self.step_apply(&name, now)
                .instrument(info_span!("apply", object = %name))
                .await;
        }

        let actual = self.actual();
        let report = (self.last_reported.as_ref() != Some(&actual)).then_some(actual);
        let next_wake = self
            .objects
            .values()
            .filter(|t| matches!(t.phase, Phase::Failed | Phase::Removing) && t.retry)
            .filter_map(|t| t.next_attempt)
            .min();
        PassResult { report, next_wake }
    }

    /// After a pass whose states were persisted (so a status read never
    /// waits for this): once per generation, when every object has settled,
    /// removes orphans and lets the artifact store drop what no desired
    /// object needs.
    pub async fn tidy(&mut self) {
        let Some(doc) = self.desired.clone() else {
            return;
        };
        let desired = desired_specs(&doc);
        self.collect_garbage(&desired, doc.generation).await;
    }

    /// Once per generation, when every object has settled (nothing applying
    /// or being removed), lets the artifact store drop what no
    /// desired object needs.
    async fn collect_garbage(&mut self, desired: &[ObjectSpec], generation: u64) {
        // Pending objects (e.g. waiting for a slice) do not hold collection
        // back: their images are desired, so they are kept anyway.
        let settled = self
            .objects
            .values()
            .all(|t| !matches!(t.phase, Phase::Applying | Phase::Removing));
        if !settled || self.collected == Some(generation) {
            return;
        }
        self.remove_orphans(desired)
            .instrument(info_span!("remove_orphans", generation))
            .await;
        let Some(store) = self.runtimes.artifacts.as_deref_mut() else {
            return;
        };
        let keep: Vec<String> = desired.iter().flat_map(ObjectSpec::artifacts).collect();
        match store
            .retain(&keep)
            .instrument(info_span!("collect_garbage", generation))
            .await
        {
            Ok(()) => self.collected = Some(generation),
            Err(e) => warn!(error = %e, "garbage collection failed; retried next pass"),
        }
    }

    /// Removes workloads their runtime holds that this reconciler has no
    /// record of and nobody desires: an agent that crashed between starting
    /// a workload and persisting its state leaves such orphans running.
    async fn remove_orphans(&mut self, desired: &[ObjectSpec]) {
        for kind in [ObjectKind::Container, ObjectKind::Vm] {
            let Some(runtime) = self.runtimes.for_kind(kind) else {
                continue;
            };
            let present = match runtime.present().await {
                Ok(names) => names,
                Err(e) => {
                    warn!(%kind, error = %e, "cannot list what the runtime holds");
                    continue;
                }
            };
            let orphans = present.into_iter().filter(|name| {
                !self.objects.contains_key(name) && !desired.iter().any(|s| s.name() == name)
            });
            for name in orphans {
                match runtime.remove(&name).await {
                    Ok(()) => {
                        info!(%kind, object = %name, "orphan removed: no record of it and not desired")
                    }
                    Err(e) => {
                        warn!(%kind, object = %name, error = %e, "cannot remove orphan; retried next generation")
                    }
                }
            }
        }
    }

    /// Starts tracking new objects, resets changed ones, and marks the ones
    /// no longer desired.
    fn track(&mut self, desired: &[ObjectSpec], generation: u64) {
        for t in self.objects.values_mut() {
            t.spec = None;
        }
        for spec in desired {
            let fingerprint = spec.fingerprint();
            let kind = spec.kind();
            match self.objects.get_mut(spec.name()) {
                Some(t) if t.fingerprint == fingerprint && t.kind == Some(kind) => {
                    t.spec = Some(spec.clone());
                }
                existing => {
                    let restarts = existing.as_ref().map_or(0, |t| t.restarts);
                    let applied_once = existing.as_ref().is_some_and(|t| t.applied_once);
                    let attempts = existing.as_ref().map_or(0, |t| t.attempts);
                    debug!(object = spec.name(), generation, "object new or changed");
                    self.objects.insert(
                        spec.name().to_string(),
                        Tracked {
                            kind_name: kind.as_str().to_string(),
                            kind: Some(kind),
                            spec: Some(spec.clone()),
                            fingerprint,
                            phase: Phase::Pending,
                            message: String::new(),
                            restarts,
                            generation,
                            attempts,
                            next_attempt: None,
                            retry: true,
                            artifacts_ready: false,
                            applied_once,
                            running_since: None,
                        },
                    );
                }
            }
        }
    }

    async fn step_remove(&mut self, name: &str, now: Instant) {
        let Some(t) = self.objects.get_mut(name) else {
            return;
        };
        let runtime = t.kind.and_then(|k| self.runtimes.for_kind(k));
        let nothing_applied = !t.applied_once;
        let Some(runtime) = runtime.filter(|_| !nothing_applied) else {
            info!("no longer desired; nothing was running, forgotten");
            self.objects.remove(name);
            return;
        };
        if t.phase == Phase::Removing && !t.due(now) {
            return;
        }
        t.set(Phase::Removing, "no longer desired");
        match runtime.remove(name).await {
            Ok(()) => {
                info!("removed");
                self.objects.remove(name);
            }
            Err(e) => {
                t.attempts = t.attempts.saturating_add(1);
                t.next_attempt = Some(now + self.backoff.delay(t.attempts));
                warn!(error = %e, attempts = t.attempts, "remove failed");
                t.set(Phase::Removing, format!("remove failed: {e}"));
            }
        }
    }

    /// Fetches the artifacts of a workload that is about to be applied.
    async fn step_artifacts(&mut self, name: &str, now: Instant) {
        // A workload whose slice this agent cannot build will never run:
        // fetching its artifacts would only fill the disk.
        let slice_unsupported = self.objects.get(name).and_then(|t| match &t.spec {
            Some(ObjectSpec::Workload(w)) => w
                .slice
                .as_ref()
                .filter(|s| self.objects.get(*s).map(|st| st.phase) == Some(Phase::Unsupported))
                .cloned(),
            _ => None,
        });
        let Some(t) = self.objects.get_mut(name) else {
            return;
        };
        if let Some(slice) = slice_unsupported {
            if matches!(t.phase, Phase::Pending | Phase::Unsupported) {
                t.set(
                    Phase::Pending,
                    format!("waiting for slice {slice} (unsupported)"),
                );
            }
            return;
        }
        let (Some(kind), Some(spec)) = (t.kind, t.spec.clone()) else {
            return;
        };
        let wants_apply = matches!(t.phase, Phase::Pending | Phase::Unsupported)
            || (t.phase == Phase::Failed && t.retry && t.due(now));
        if t.artifacts_ready || !wants_apply || !self.runtimes.has(kind) {
            return;
        }
        let Some(store) = self.runtimes.artifacts.as_deref_mut() else {
            t.set(Phase::Unsupported, "no artifact store on this agent yet");
            return;
        };
        for reference in spec.artifacts() {
            if let Err(e) = store.ensure(&reference).await {
                t.fail(format!("fetching {reference}: {e}"), now, &self.backoff);
                return;
            }
        }
        debug!("artifacts ready");
        t.artifacts_ready = true;
    }

    async fn step_apply(&mut self, name: &str, now: Instant) {
        // Slice a workload joins, and whether it is up: read before borrowing mutably.
        let slice_wait = self.objects.get(name).and_then(|t| match &t.spec {
            Some(ObjectSpec::Workload(w)) => w.slice.as_ref().and_then(|s| {
                let phase = self.objects.get(s).map(|st| st.phase);
                (phase != Some(Phase::Running)).then(|| (s.clone(), phase))
            }),
            _ => None,
        });
        let Some(t) = self.objects.get_mut(name) else {
            return;
        };
        let (Some(kind), Some(spec)) = (t.kind, t.spec.clone()) else {
            return;
        };
        let reason = self.runtimes.missing_reason(kind);
        let Some(runtime) = self.runtimes.for_kind(kind) else {
            t.set(Phase::Unsupported, reason);
            return;
        };
        if t.phase == Phase::Unsupported && t.message.starts_with("no artifact store") {
            return;
        }
        if t.phase == Phase::Running {
            match runtime.observe(name).await {
                Ok(Observed::Running) => {
                    let since = *t.running_since.get_or_insert(now);
                    if t.attempts > 0 && now.saturating_duration_since(since) >= STABLE_AFTER {
                        debug!(attempts = t.attempts, "stable again; backoff reset");
                        t.attempts = 0;
                    }
                    return;
                }
                Ok(Observed::Missing) => {
                    warn!("running object vanished from its runtime; applying again");
                    t.set(Phase::Pending, "vanished from the runtime; applying again");
                    // Its artifacts are checked again (the cache may be gone
                    // too) and it is applied later in this same pass.
                    if matches!(spec, ObjectSpec::Workload(_)) {
                        t.artifacts_ready = false;
                        self.vanished.push(name.to_string());
                        return;
                    }
                }
                Ok(Observed::Stopped { message, success }) => {
                    let restart = match &spec {
                        ObjectSpec::Slice(_) => true,
                        ObjectSpec::Workload(w) => match w.restart {
                            RestartPolicy::Always => true,
                            RestartPolicy::OnFailure => !success,
                            RestartPolicy::Never => false,
                        },
                    };
                    if restart {
                        t.restarts = t.restarts.saturating_add(1);
                        t.fail(format!("stopped: {message}"), now, &self.backoff);
                    } else {
                        t.retry = false;
                        t.next_attempt = None;
                        t.set(
                            Phase::Failed,
                            format!("stopped: {message}; not restarted (restart policy)"),
                        );
                    }
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "observe failed");
                    return;
                }
            }
        }
        let ready = match t.phase {
            Phase::Pending | Phase::Unsupported => true,
            Phase::Failed => t.retry && t.due(now),
            Phase::Applying | Phase::Running | Phase::Removing => false,
        };
        if !ready {
            return;
        }
        if let Some((slice, phase)) = slice_wait {
            let phase = phase.map_or("absent", Phase::as_str);
            t.set(
                Phase::Pending,
                format!("waiting for slice {slice} ({phase})"),
            );
            return;
        }
        if matches!(spec, ObjectSpec::Workload(_)) && !t.artifacts_ready {
            return;
        }
        t.set(Phase::Applying, "");
        match runtime.apply(&spec).await {
            Ok(()) => {
                // attempts is kept until the object proves stable (a
                // container that crashes right after starting backs off).
                t.applied_once = true;
                t.running_since = Some(now);
                t.next_attempt = None;
                t.set(Phase::Running, "");
            }
            Err(e) => t.fail(format!("apply failed: {e}"), now, &self.backoff),
        }
    }
}

/// Every object of a desired document, slices first.
fn desired_specs(doc: &DesiredState) -> Vec<ObjectSpec> {
    doc.spec
        .slices
        .iter()
        .cloned()
        .map(ObjectSpec::Slice)
        .chain(
            doc.spec
                .workloads
                .iter()
                .map(|w| ObjectSpec::Workload(Box::new(w.clone()))),
        )
        .collect()
}

/// Runs the reconciler until shutdown: a pass whenever a new document
/// arrives, an object's backoff expires, or `resync` elapses; persists object
/// states and enqueues a State report whenever they change.
pub async fn run(
    mut reconciler: Reconciler,
    mut desired_rx: watch::Receiver<Option<Arc<DesiredState>>>,
    store: Rc<RefCell<Store>>,
    outbox_ready: Rc<Notify>,
    resync: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let wake = reconciler.runtimes.wake.clone();
    loop {
        if let Some(doc) = desired_rx.borrow_and_update().clone() {
            if reconciler.desired.as_ref() != Some(&doc) {
                reconciler.set_desired(doc);
            }
        }
        let now = Instant::now();
        let generation = reconciler.desired.as_ref().map_or(0, |d| d.generation);
        let result = reconciler
            .pass(now)
            .instrument(info_span!("reconcile", generation))
            .await;
        if let Some(state) = result.report {
            let saved = {
                let mut store = store.borrow_mut();
                store.replace_objects(&reconciler.records()).and_then(|()| {
                    outbox::push_report(&mut store, &ReportBody::State(state.clone()))
                })
            };
            match saved {
                Ok(e) => {
                    info!(
                        seq = e.seq,
                        objects = state.objects.len(),
                        generation,
                        "state report queued"
                    );
                    reconciler.mark_reported(state);
                    outbox_ready.notify_one();
                }
                Err(e) => error!(error = %e, "cannot persist object states; will retry"),
            }
        }
        reconciler
            .tidy()
            .instrument(info_span!("tidy", generation))
            .await;
        let resync_at = now + resync;
        let wake_at = result.next_wake.map_or(resync_at, |w| w.min(resync_at));
        tokio::select! {
            changed = desired_rx.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = wake.notified() => debug!("a runtime asked for a pass"),
            _ = shutdown.changed() => break,
        }
    }
    debug!("reconciler stopped");
}

#[cfg(test)]
mod tests {
    //! The state machine is driven with `TestRuntime`, a fake that scripts
    //! what real runtimes cannot be made to do on cue (an apply failing N
    //! times, an object vanishing or stopping between two passes) and
    //! records every call. The real runtimes are tested in their crates and
    //! end to end (e2e/tests/containers.rs, hil-tests).
    use super::*;
    use crate::runtime::{ArtifactStore, Runtime, RuntimeError, RuntimeFuture};
    use mecvisor_protocol::{
        ContainerSpec, DeviceSpec, QosSpec, Resources, SliceSpec, WorkloadKind, WorkloadSpec,
    };
    use std::collections::HashMap;

    #[derive(Default)]
    struct Script {
        calls: Vec<String>,
        fail_apply: HashMap<String, u32>,
        observed: HashMap<String, Observed>,
        present: Vec<String>,
    }

    #[derive(Clone, Default)]
    struct TestRuntime(Rc<RefCell<Script>>);

    impl Runtime for TestRuntime {
        fn apply<'a>(&'a mut self, spec: &'a ObjectSpec) -> RuntimeFuture<'a, ()> {
            Box::pin(async move {
                let mut s = self.0.borrow_mut();
                s.calls.push(format!("apply {}", spec.name()));
                if let Some(n) = s.fail_apply.get_mut(spec.name()) {
                    if *n > 0 {
                        *n -= 1;
                        return Err(RuntimeError("boom".into()));
                    }
                }
                Ok(())
            })
        }
        fn remove<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, ()> {
            Box::pin(async move {
                self.0.borrow_mut().calls.push(format!("remove {name}"));
                Ok(())
            })
        }
        fn observe<'a>(&'a mut self, name: &'a str) -> RuntimeFuture<'a, Observed> {
            Box::pin(async move {
                let s = self.0.borrow();
                Ok(s.observed.get(name).cloned().unwrap_or(Observed::Running))
            })
        }
        fn present(&mut self) -> RuntimeFuture<'_, Vec<String>> {
            Box::pin(async move { Ok(self.0.borrow().present.clone()) })
        }
    }

    struct TestArtifacts(Rc<RefCell<Script>>);
    impl ArtifactStore for TestArtifacts {
        fn ensure<'a>(&'a mut self, reference: &'a str) -> RuntimeFuture<'a, ()> {
            Box::pin(async move {
                self.0.borrow_mut().calls.push(format!("fetch {reference}"));
                Ok(())
            })
        }
    }

    const IMG: &str =
        "reg/app@sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn slice(name: &str, vlan: u16) -> SliceSpec {
        SliceSpec {
            name: name.into(),
            vlan_id: vlan,
            uplink: "eth0".into(),
            qos: QosSpec::default(),
            subnet: None,
            gateway: None,
        }
    }

    fn container(name: &str, slice: Option<&str>) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            kind: WorkloadKind::Container(ContainerSpec {
                image: IMG.into(),
                command: vec![],
                args: vec![],
                env: vec![],
                ..Default::default()
            }),
            slice: slice.map(str::to_string),
            resources: Resources {
                cpu_millis: 0,
                memory_mib: 64,
            },
            restart: RestartPolicy::Always,
            allow: Vec::new(),
            port_qos: None,
            address: None,
        }
    }

    fn doc(
        generation: u64,
        slices: Vec<SliceSpec>,
        workloads: Vec<WorkloadSpec>,
    ) -> Arc<DesiredState> {
        let spec = DeviceSpec { slices, workloads };
        Arc::new(DesiredState {
            device: "edge-1".into(),
            generation,
            content_hash: spec.content_hash(),
            spec,
        })
    }

    fn phases(r: &Reconciler) -> Vec<(String, Phase)> {
        r.objects
            .iter()
            .map(|(n, t)| (n.clone(), t.phase))
            .collect()
    }

    fn with_runtimes() -> (Reconciler, Rc<RefCell<Script>>) {
        let script = Rc::new(RefCell::new(Script::default()));
        let rt = TestRuntime(script.clone());
        let runtimes = Runtimes {
            slice: Some(Box::new(rt.clone())),
            container: Some(Box::new(rt)),
            vm: None,
            artifacts: Some(Box::new(TestArtifacts(script.clone()))),
            why_missing: Default::default(),
            wake: Default::default(),
        };
        (
            Reconciler::new(runtimes, vec![], Backoff::default()),
            script,
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_is_fetched_for_a_workload_whose_slice_cannot_exist() {
        let script = Rc::new(RefCell::new(Script::default()));
        let runtimes = Runtimes {
            slice: None,
            container: Some(Box::new(TestRuntime(script.clone()))),
            vm: None,
            artifacts: Some(Box::new(TestArtifacts(script.clone()))),
            why_missing: Default::default(),
            wake: Default::default(),
        };
        let mut r = Reconciler::new(runtimes, vec![], Backoff::default());
        r.set_desired(doc(
            1,
            vec![slice("net", 10)],
            vec![container("cam", Some("net")), container("solo", None)],
        ));
        let now = Instant::now();
        r.pass(now).await;
        let state = r.pass(now).await.report.unwrap_or_else(|| r.actual());
        let cam = state.objects.iter().find(|o| o.name == "cam").expect("cam");
        assert_eq!(cam.phase, Phase::Pending);
        assert_eq!(cam.message, "waiting for slice net (unsupported)");
        let calls = script.borrow().calls.clone();
        assert!(calls.iter().all(|c| !c.contains("cam")), "{calls:?}");
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("fetch")).count(),
            1,
            "only solo's image: {calls:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_runtimes_everything_is_unsupported() {
        let mut r = Reconciler::new(Runtimes::default(), vec![], Backoff::default());
        let now = Instant::now();
        assert!(
            r.pass(now).await.report.is_none(),
            "nothing before a document"
        );
        r.set_desired(doc(
            3,
            vec![slice("net", 10)],
            vec![container("cam", Some("net"))],
        ));
        let result = r.pass(now).await;
        let state = result.report.expect("first pass reports");
        assert_eq!(state.applied_generation, 3);
        assert_eq!(state.objects.len(), 2);
        let cam = &state.objects[0];
        assert_eq!(
            (cam.name.as_str(), cam.kind.as_str(), cam.phase),
            ("cam", "container", Phase::Unsupported)
        );
        assert_eq!(cam.message, "no container runtime on this agent yet");
        assert_eq!(cam.generation, 3);
        let net = &state.objects[1];
        assert_eq!(
            (net.kind.as_str(), net.phase),
            ("slice", Phase::Unsupported)
        );
        assert_eq!(net.message, "no network slicing runtime on this agent yet");
        assert!(result.next_wake.is_none());
        r.mark_reported(state);
        assert!(
            r.pass(now).await.report.is_none(),
            "unchanged: no new report"
        );
        // removal of an unsupported object just forgets it
        r.set_desired(doc(4, vec![slice("net", 10)], vec![]));
        let state = r.pass(now).await.report.unwrap();
        assert_eq!(state.objects.len(), 1);
        assert_eq!(
            state.objects[0].generation, 3,
            "unchanged spec keeps its generation"
        );
        assert_eq!(state.applied_generation, 4);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ordered_apply_and_independent_backoff() {
        let (mut r, script) = with_runtimes();
        script.borrow_mut().fail_apply.insert("bad".into(), 2);
        r.set_desired(doc(
            1,
            vec![slice("net", 10)],
            vec![container("bad", None), container("cam", Some("net"))],
        ));
        let t0 = Instant::now();
        let result = r.pass(t0).await;
        assert_eq!(
            phases(&r),
            [
                ("bad".into(), Phase::Failed),
                ("cam".into(), Phase::Running),
                ("net".into(), Phase::Running)
            ]
        );
        let calls = script.borrow().calls.clone();
        let pos = |c: &str| calls.iter().position(|x| x == c).unwrap();
        assert!(
            pos("apply net") < pos(&format!("fetch {IMG}")),
            "slices before artifacts: {calls:?}"
        );
        assert!(
            pos(&format!("fetch {IMG}")) < pos("apply cam"),
            "artifacts before workloads: {calls:?}"
        );
        assert_eq!(result.next_wake, Some(t0 + Duration::from_secs(1)));
        // not due yet: no new attempt
        script.borrow_mut().calls.clear();
        r.pass(t0 + Duration::from_millis(500)).await;
        assert!(!script.borrow().calls.contains(&"apply bad".to_string()));
        // first retry fails again: backoff doubles
        let result = r.pass(t0 + Duration::from_secs(1)).await;
        assert_eq!(result.next_wake, Some(t0 + Duration::from_secs(3)));
        assert_eq!(r.objects["bad"].message, "apply failed: boom");
        // second retry succeeds; the backoff is forgotten only once it has
        // stayed up for STABLE_AFTER
        r.pass(t0 + Duration::from_secs(3)).await;
        assert_eq!(r.objects["bad"].phase, Phase::Running);
        assert_eq!(r.objects["bad"].attempts, 2);
        r.pass(t0 + Duration::from_secs(3) + STABLE_AFTER).await;
        assert_eq!(r.objects["bad"].attempts, 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_crash_loop_backs_off_exponentially() {
        let (mut r, script) = with_runtimes();
        r.set_desired(doc(1, vec![], vec![container("loop", None)]));
        let mut now = Instant::now();
        r.pass(now).await;
        assert_eq!(r.objects["loop"].phase, Phase::Running);
        let mut delays = Vec::new();
        for _ in 0..4 {
            // It dies right after every start.
            script.borrow_mut().observed.insert(
                "loop".into(),
                Observed::Stopped {
                    message: "exited with code 1".into(),
                    success: false,
                },
            );
            let result = r.pass(now).await;
            let wake = result.next_wake.expect("a retry is scheduled");
            delays.push(wake.saturating_duration_since(now).as_secs());
            script.borrow_mut().observed.remove("loop");
            now = wake;
            r.pass(now).await;
            assert_eq!(r.objects["loop"].phase, Phase::Running);
        }
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(r.objects["loop"].restarts, 4);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn workload_waits_for_its_slice() {
        let (mut r, script) = with_runtimes();
        script.borrow_mut().fail_apply.insert("net".into(), 1);
        r.set_desired(doc(
            1,
            vec![slice("net", 10)],
            vec![container("cam", Some("net"))],
        ));
        let t0 = Instant::now();
        r.pass(t0).await;
        assert_eq!(r.objects["cam"].phase, Phase::Pending);
        assert_eq!(r.objects["cam"].message, "waiting for slice net (failed)");
        r.pass(t0 + Duration::from_secs(1)).await;
        assert_eq!(r.objects["net"].phase, Phase::Running);
        assert_eq!(r.objects["cam"].phase, Phase::Running);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stopped_workload_restarts_and_removal_tears_down() {
        let (mut r, script) = with_runtimes();
        r.set_desired(doc(1, vec![], vec![container("cam", None)]));
        let t0 = Instant::now();
        r.pass(t0).await;
        assert_eq!(r.objects["cam"].phase, Phase::Running);
        script.borrow_mut().observed.insert(
            "cam".into(),
            Observed::Stopped {
                message: "exit 1".into(),
                success: false,
            },
        );
        r.pass(t0).await;
        assert_eq!(r.objects["cam"].phase, Phase::Failed);
        assert_eq!(r.objects["cam"].restarts, 1);
        script.borrow_mut().observed.clear();
        r.pass(t0 + Duration::from_secs(1)).await;
        assert_eq!(r.objects["cam"].phase, Phase::Running);
        // changed spec: back to pending at the new generation, then applied
        let mut changed = container("cam", None);
        changed.resources.memory_mib = 128;
        r.set_desired(doc(2, vec![], vec![changed]));
        let state = r.pass(t0).await.report.unwrap();
        assert_eq!(state.objects[0].generation, 2);
        assert_eq!(
            state.objects[0].restarts, 1,
            "restarts survive a spec change"
        );
        r.set_desired(doc(3, vec![], vec![]));
        script.borrow_mut().calls.clear();
        let state = r.pass(t0).await.report.unwrap();
        assert!(state.objects.is_empty());
        assert_eq!(script.borrow().calls, ["remove cam"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn orphans_are_removed_once_the_generation_settles() {
        let (mut r, script) = with_runtimes();
        // "ghost" runs without a record (a crash before its state was
        // persisted) and is no longer desired; "cam" is desired.
        script.borrow_mut().present = vec!["cam".into(), "ghost".into()];
        r.set_desired(doc(1, vec![], vec![container("cam", None)]));
        r.pass(Instant::now()).await;
        r.tidy().await;
        let calls = script.borrow().calls.clone();
        assert!(calls.contains(&"remove ghost".to_string()), "{calls:?}");
        assert!(!calls.contains(&"remove cam".to_string()), "{calls:?}");
        // Once per generation.
        script.borrow_mut().calls.clear();
        r.pass(Instant::now()).await;
        r.tidy().await;
        assert!(script.borrow().calls.iter().all(|c| c != "remove ghost"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn resumes_from_records_and_reports_once() {
        let (mut r, _) = with_runtimes();
        r.set_desired(doc(5, vec![slice("net", 10)], vec![]));
        r.pass(Instant::now()).await;
        let records = r.records();
        assert_eq!(records[0].phase, Phase::Running);
        let mut resumed = Reconciler::new(Runtimes::default(), records, Backoff::default());
        resumed.set_desired(doc(5, vec![slice("net", 10)], vec![]));
        let state = resumed.pass(Instant::now()).await.report.unwrap();
        assert_eq!(state.objects[0].generation, 5);
        assert_eq!(state.objects[0].phase, Phase::Unsupported);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.delay(1), Duration::from_secs(1));
        assert_eq!(b.delay(2), Duration::from_secs(2));
        assert_eq!(b.delay(5), Duration::from_secs(16));
        assert_eq!(b.delay(40), Duration::from_secs(300));
    }
}
