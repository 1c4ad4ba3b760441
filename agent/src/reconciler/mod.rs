//! Drives every object towards the last accepted desired state.
//!
//! Each object has its own explicit state machine ([`state`]): a pass
//! turns what the runtimes say into [`Event`]s and lets
//! [`Life::next`](state::Life::next) decide, so one failing object never
//! blocks the others and each backs off on its own. A pass goes in order:
//! removals (workloads before slices), then slices, then each workload
//! (its slice running, its artifacts fetched, applied, observed). Whenever
//! the set of object states changes it is persisted and a State report is
//! enqueued.

pub mod state;

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
use crate::runtimes::{ObjectKind, ObjectSpec, Observed, RuntimeError, Runtimes};
use crate::store::{ObjectRecord, Store};
pub use state::Backoff;
use state::{Event, Life, ObjectState};

/// What the reconciler knows about one object.
#[derive(Debug, Clone)]
struct Tracked {
    /// `slice`, `container` or `vm` as reported (kept as read from the
    /// store, even when this agent does not know the kind).
    kind_name: String,
    kind: Option<ObjectKind>,
    /// Desired spec; `None` when the object is no longer desired (or loaded
    /// from the store before the desired document was replayed).
    spec: Option<ObjectSpec>,
    fingerprint: Vec<u8>,
    life: Life,
    generation: u64,
    /// A runtime may hold something of this object (it was applied at
    /// least once, also under an earlier spec): removal must ask it.
    applied_once: bool,
}

impl Tracked {
    fn from_record(r: ObjectRecord, now: Instant) -> Tracked {
        let kind = ObjectKind::parse(&r.kind);
        let is_slice = kind == Some(ObjectKind::Slice);
        Tracked {
            life: Life {
                state: ObjectState::resumed(&r.state, r.phase, &r.message, is_slice, now),
                attempts: 0,
                restarts: r.restarts,
            },
            kind,
            kind_name: r.kind,
            spec: None,
            fingerprint: r.spec,
            generation: r.generation,
            applied_once: r.phase != Phase::Unsupported,
        }
    }

    /// Applies `event`; logs a change of what is reported. An event that
    /// does not apply in the current state changes nothing.
    fn on(&mut self, event: Event, now: Instant, backoff: &Backoff) {
        let Some(next) = self.life.next(event.clone(), now, backoff) else {
            debug!(
                state = self.life.state.name(),
                ?event,
                "event ignored in this state"
            );
            return;
        };
        let (from, to) = (self.life.state.phase(), next.state.phase());
        let message = next.state.message();
        if from != to || self.life.state.message() != message {
            info!(from = from.as_str(), to = to.as_str(), %message, "phase change");
        }
        if let Some(at) = next
            .state
            .wake_at()
            .filter(|_| next.attempts > self.life.attempts)
        {
            warn!(
                attempts = next.attempts,
                retry_in_ms = at.saturating_duration_since(now).as_millis() as u64,
                %message,
                "failed"
            );
        }
        self.life = next;
    }

    fn status(&self, name: &str) -> ObjectStatus {
        ObjectStatus {
            name: name.to_string(),
            kind: self.kind_name.clone(),
            phase: self.life.state.phase(),
            message: self.life.state.message(),
            restarts: self.life.restarts,
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
}

impl Reconciler {
    /// Creates a reconciler over `runtimes`, resuming from persisted object
    /// states. The first pass always reports.
    pub fn new(runtimes: Runtimes, records: Vec<ObjectRecord>, backoff: Backoff) -> Reconciler {
        let now = Instant::now();
        Reconciler {
            runtimes,
            objects: records
                .into_iter()
                .map(|r| (r.name.clone(), Tracked::from_record(r, now)))
                .collect(),
            desired: None,
            last_reported: None,
            backoff,
            collected: None,
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
                phase: t.life.state.phase(),
                state: t.life.state.name().to_string(),
                message: t.life.state.message(),
                restarts: t.life.restarts,
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
            let of_kind: Vec<ObjectSpec> = desired
                .iter()
                .filter(|s| s.kind() == kind)
                .cloned()
                .collect();
            self.runtimes.for_kind(kind).desired_set(&of_kind);
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
        for spec in &desired {
            let span = info_span!("reconcile_object", object = %spec.name(), kind = %spec.kind());
            self.step(spec.name(), now).instrument(span).await;
        }

        let actual = self.actual();
        let report = (self.last_reported.as_ref() != Some(&actual)).then_some(actual);
        let next_wake = self
            .objects
            .values()
            .filter_map(|t| t.life.state.wake_at())
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
        // Objects waiting (e.g. for a slice) do not hold collection back:
        // their artifacts are desired, so they are kept anyway.
        let settled = self.objects.values().all(|t| {
            !matches!(
                t.life.state,
                ObjectState::Applying | ObjectState::Removing { .. }
            )
        });
        if !settled || self.collected == Some(generation) {
            return;
        }
        self.remove_orphans(desired)
            .instrument(info_span!("remove_orphans", generation))
            .await;
        if self.runtimes.artifacts.unsupported().is_some() {
            return;
        }
        let keep: Vec<String> = desired.iter().flat_map(ObjectSpec::artifacts).collect();
        match self
            .runtimes
            .artifacts
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
            let runtime = self.runtimes.for_kind(kind);
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

    /// Starts tracking new objects, resets changed ones (and ones desired
    /// again while being removed), and marks the ones no longer desired.
    fn track(&mut self, desired: &[ObjectSpec], generation: u64) {
        for t in self.objects.values_mut() {
            t.spec = None;
        }
        for spec in desired {
            let fingerprint = spec.fingerprint();
            let kind = spec.kind();
            let is_slice = kind == ObjectKind::Slice;
            match self.objects.get_mut(spec.name()) {
                Some(t) if t.fingerprint == fingerprint && t.kind == Some(kind) => {
                    t.spec = Some(spec.clone());
                    if matches!(t.life.state, ObjectState::Removing { .. }) {
                        debug!(object = spec.name(), "desired again while being removed");
                        t.life = Life::fresh(is_slice, t.life.attempts, t.life.restarts);
                    }
                }
                existing => {
                    let (attempts, restarts, applied_once) =
                        existing.as_ref().map_or((0, 0, false), |t| {
                            (t.life.attempts, t.life.restarts, t.applied_once)
                        });
                    debug!(object = spec.name(), generation, "object new or changed");
                    self.objects.insert(
                        spec.name().to_string(),
                        Tracked {
                            kind_name: kind.as_str().to_string(),
                            kind: Some(kind),
                            spec: Some(spec.clone()),
                            fingerprint,
                            life: Life::fresh(is_slice, attempts, restarts),
                            generation,
                            applied_once,
                        },
                    );
                }
            }
        }
    }

    /// Tears down an object no longer desired (or forgets it when nothing
    /// of it can exist), with backoff after a failed removal.
    async fn step_remove(&mut self, name: &str, now: Instant) {
        let Some(t) = self.objects.get_mut(name) else {
            return;
        };
        if !t.life.state.due(now) {
            return;
        }
        let holds = t.applied_once
            && t.kind
                .is_some_and(|k| self.runtimes.unsupported(k).is_none());
        t.on(Event::Unwanted { applied: holds }, now, &self.backoff);
        if let (true, Some(kind)) = (holds, t.kind) {
            match self.runtimes.for_kind(kind).remove(name).await {
                Ok(()) => t.on(Event::Removed, now, &self.backoff),
                Err(e) => t.on(
                    Event::RemoveFailed {
                        reason: e.to_string(),
                    },
                    now,
                    &self.backoff,
                ),
            }
        }
        if t.life.state == ObjectState::Removed {
            info!(
                "{}",
                if holds {
                    "removed"
                } else {
                    "no longer desired; nothing was running, forgotten"
                }
            );
            self.objects.remove(name);
        }
    }

    /// Moves one desired object as far as it can go in this pass: observed
    /// when running; otherwise, once due, its slice checked, its artifacts
    /// fetched and it applied.
    async fn step(&mut self, name: &str, now: Instant) {
        if self.observe(name, now).await {
            return;
        }
        let Some(t) = self.objects.get(name) else {
            return;
        };
        let (Some(kind), Some(spec)) = (t.kind, t.spec.clone()) else {
            return;
        };
        if !t.life.state.not_yet_running() || !t.life.state.due(now) {
            return;
        }
        let waiting_for_slice = matches!(t.life.state, ObjectState::WaitingForSlice { .. });
        if let Some(reason) = self.runtimes.unsupported(kind) {
            let reason = reason.to_string();
            self.on(name, Event::Unsupported { reason }, now);
            return;
        }
        if let ObjectSpec::Workload(w) = &spec {
            if let Some(slice) = &w.slice {
                let phase = self.objects.get(slice).map(|s| s.life.state.phase());
                if phase != Some(Phase::Running) {
                    let slice = slice.clone();
                    self.on(name, Event::SliceNotReady { slice, phase }, now);
                    return;
                }
                if waiting_for_slice {
                    self.on(name, Event::SliceReady, now);
                }
            }
        }
        self.fetch(name, &spec, now).await;
        self.apply(name, kind, &spec, now).await;
    }

    /// Observes a running object; returns whether it still runs (nothing
    /// more to do this pass).
    async fn observe(&mut self, name: &str, now: Instant) -> bool {
        let Some(t) = self.objects.get(name) else {
            return true;
        };
        let (ObjectState::Running { .. }, Some(kind), Some(spec)) =
            (&t.life.state, t.kind, t.spec.clone())
        else {
            return false;
        };
        let observed = self.runtimes.for_kind(kind).observe(name).await;
        let event = match observed {
            Ok(Observed::Running) => Event::Up,
            Ok(Observed::Missing) => {
                warn!("running object vanished from its runtime; applying again");
                Event::Vanished
            }
            Ok(Observed::Stopped { message, success }) => Event::Exited {
                message,
                restart: restarts(&spec, success),
            },
            Err(e) => {
                warn!(error = %e, "observe failed");
                return true;
            }
        };
        let vanished = event == Event::Vanished;
        self.on(name, event, now);
        // A vanished object (e.g. after a reboot) is fetched and applied
        // again in this same pass, not at the next periodic one.
        !vanished
    }

    /// Fetches the artifacts of an object that is about to be applied (a
    /// slice has none: nothing to ask the artifact store).
    async fn fetch(&mut self, name: &str, spec: &ObjectSpec, now: Instant) {
        let waiting = self.objects.get(name).is_some_and(|t| {
            matches!(
                t.life.state,
                ObjectState::WaitingForArtifacts
                    | ObjectState::Backoff {
                        retry: state::Retry::Fetch,
                        ..
                    }
            )
        });
        if !waiting {
            return;
        }
        let references = spec.artifacts();
        let event = match self.runtimes.artifacts.unsupported() {
            _ if references.is_empty() => Event::Fetched,
            Some(reason) => Event::Unsupported {
                reason: reason.to_string(),
            },
            None => fetch_all(&mut self.runtimes, &references).await,
        };
        if event == Event::Fetched && !references.is_empty() {
            debug!("artifacts ready");
        }
        self.on(name, event, now);
    }

    /// Applies an object that is ready (or due for another attempt).
    async fn apply(&mut self, name: &str, kind: ObjectKind, spec: &ObjectSpec, now: Instant) {
        let ready = self.objects.get(name).is_some_and(|t| {
            matches!(
                t.life.state,
                ObjectState::Ready
                    | ObjectState::Backoff {
                        retry: state::Retry::Apply,
                        ..
                    }
            )
        });
        if !ready {
            return;
        }
        self.on(name, Event::ApplyStarted, now);
        let event = match self.runtimes.for_kind(kind).apply(spec).await {
            Ok(()) => Event::Applied,
            Err(RuntimeError::Unsupported { reason }) => Event::Unsupported { reason },
            Err(e) => Event::ApplyFailed {
                reason: format!("apply failed: {e}"),
            },
        };
        if let Some(t) = self.objects.get_mut(name) {
            if event == Event::Applied {
                t.applied_once = true;
            }
            t.on(event, now, &self.backoff);
        }
    }

    fn on(&mut self, name: &str, event: Event, now: Instant) {
        if let Some(t) = self.objects.get_mut(name) {
            t.on(event, now, &self.backoff);
        }
    }
}

/// Fetches every one of `references`: [`Event::Fetched`] or why not.
async fn fetch_all(runtimes: &mut Runtimes, references: &[String]) -> Event {
    for reference in references {
        match runtimes.artifacts.ensure(reference).await {
            Ok(()) => {}
            Err(RuntimeError::Unsupported { reason }) => return Event::Unsupported { reason },
            Err(e) => {
                return Event::FetchFailed {
                    reason: format!("fetching {reference}: {e}"),
                }
            }
        }
    }
    Event::Fetched
}

/// Whether an object that stopped (cleanly or not) is started again.
fn restarts(spec: &ObjectSpec, success: bool) -> bool {
    match spec {
        ObjectSpec::Slice(_) => true,
        ObjectSpec::Workload(w) => match w.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        },
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
mod tests;
