//! One object's life as the reconciler tracks it: an explicit state
//! ([`ObjectState`]), the events that move it ([`Event`]), and one pure
//! transition function ([`Life::next`]) that decides every move, backoff
//! and counter included. The wire [`Phase`] and message are derived from
//! the state only when reporting ([`ObjectState::phase`],
//! [`ObjectState::message`]).
//!
//! ```text
//!   new or changed spec
//!          │
//!          ▼            slice not running           slice running
//!   WaitingForArtifacts ─────────────────▶ WaitingForSlice ──┐
//!          │  ▲                                              │
//!  fetched │  └──────────────────────────────────────────────┘
//!          ▼
//!        Ready ──▶ Applying ──▶ Running ──exited, restarted──▶ Backoff ──due──▶ (fetch or apply again)
//!                     │            │  └──exited, policy says no──▶ Stopped
//!                     │ failed     └──vanished──▶ WaitingForArtifacts
//!                     ▼
//!                  Backoff
//!   any state ──no longer desired──▶ Removing ──removed──▶ Removed (forgotten)
//!   not yet running ──kind unsupported here──▶ Unsupported
//! ```

use std::time::Duration;

use mecvisor_protocol::Phase;
use tokio::time::Instant;

/// How long an object must keep running before its backoff resets.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

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

/// What a due [`ObjectState::Backoff`] tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Fetch the artifacts, then apply.
    Fetch,
    /// Apply (the artifacts are there).
    Apply,
}

/// Where one object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectState {
    /// Desired and not applied yet: its artifacts are fetched next (a slice
    /// has none and starts [`ObjectState::Ready`]).
    WaitingForArtifacts,
    /// A workload whose slice is not running (or cannot be built here):
    /// nothing is fetched or applied until it is.
    WaitingForSlice {
        /// The slice.
        slice: String,
        /// The slice's phase; `None` when no such slice is desired.
        slice_phase: Option<Phase>,
    },
    /// Its artifacts are in the content store: applied next.
    Ready,
    /// Being applied.
    Applying,
    /// Applied and up.
    Running {
        /// Since when (the backoff resets after [`STABLE_AFTER`]).
        since: Instant,
    },
    /// Failed; tried again once `until` has passed.
    Backoff {
        /// When the next attempt is due.
        until: Instant,
        /// What failed, for operators.
        reason: String,
        /// What the next attempt does.
        retry: Retry,
    },
    /// Stopped, and its restart policy keeps it stopped.
    Stopped {
        /// How it ended, for operators.
        reason: String,
    },
    /// No longer desired, being torn down.
    Removing {
        /// After a failed removal: when it is tried again.
        retry_at: Option<Instant>,
        /// The last removal's error.
        error: Option<String>,
    },
    /// Torn down, or nothing of it was ever applied: the reconciler
    /// forgets it.
    Removed,
    /// This agent cannot run it (the kind's runtime or the artifact store
    /// is unsupported here).
    Unsupported {
        /// Why, for operators.
        reason: String,
    },
}

/// What happened to an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Its kind (or its artifacts' store) cannot run on this agent.
    Unsupported {
        /// Why.
        reason: String,
    },
    /// Its slice is not running.
    SliceNotReady {
        /// The slice.
        slice: String,
        /// The slice's phase; `None` when no such slice is desired.
        phase: Option<Phase>,
    },
    /// Its slice runs now.
    SliceReady,
    /// Every artifact it needs is in the content store.
    Fetched,
    /// Fetching an artifact failed.
    FetchFailed {
        /// What failed.
        reason: String,
    },
    /// An apply starts.
    ApplyStarted,
    /// The runtime applied it.
    Applied,
    /// The runtime could not apply it.
    ApplyFailed {
        /// What failed.
        reason: String,
    },
    /// Observed up.
    Up,
    /// Its runtime does not know it any more (e.g. lost in a reboot).
    Vanished,
    /// It stopped.
    Exited {
        /// How it ended.
        message: String,
        /// Whether its restart policy restarts it.
        restart: bool,
    },
    /// No longer desired.
    Unwanted {
        /// Whether a runtime may hold something of it (it was applied at
        /// least once); if not, it is forgotten at once.
        applied: bool,
    },
    /// Its runtime removed it.
    Removed,
    /// Its runtime could not remove it.
    RemoveFailed {
        /// What failed.
        reason: String,
    },
}

/// An object's state with the counters its transitions keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Life {
    /// Where it is.
    pub state: ObjectState,
    /// Failed attempts in a row (apply, fetch, remove); drives the backoff
    /// and is forgotten once the object has run for [`STABLE_AFTER`].
    pub attempts: u32,
    /// How often it stopped and was restarted.
    pub restarts: u32,
}

impl Life {
    /// A new object (or one whose spec changed) that keeps its counters.
    pub fn fresh(is_slice: bool, attempts: u32, restarts: u32) -> Life {
        Life {
            state: ObjectState::initial(is_slice),
            attempts,
            restarts,
        }
    }

    /// The life after `event` at `now`; `None` when the event does not
    /// apply in the current state (the caller keeps the life it has).
    pub fn next(&self, event: Event, now: Instant, backoff: &Backoff) -> Option<Life> {
        use ObjectState as S;
        let mut life = self.clone();
        let failed = |life: &mut Life, reason: String, retry: Retry| {
            life.attempts = life.attempts.saturating_add(1);
            S::Backoff {
                until: now + backoff.delay(life.attempts),
                reason,
                retry,
            }
        };
        life.state = match (&self.state, event) {
            // Removal under way: another `Unwanted` changes nothing.
            (S::Removing { .. } | S::Removed, Event::Unwanted { .. }) => return None,
            (_, Event::Unwanted { applied: false }) => S::Removed,
            (_, Event::Unwanted { applied: true }) => S::Removing {
                retry_at: None,
                error: None,
            },
            (S::Removing { .. }, Event::Removed) => S::Removed,
            (S::Removing { .. }, Event::RemoveFailed { reason }) => {
                life.attempts = life.attempts.saturating_add(1);
                S::Removing {
                    retry_at: Some(now + backoff.delay(life.attempts)),
                    error: Some(reason),
                }
            }
            (state, Event::Unsupported { reason })
                if state.not_yet_running() || *state == S::Applying =>
            {
                S::Unsupported { reason }
            }
            (state, Event::SliceNotReady { slice, phase }) if state.not_yet_running() => {
                S::WaitingForSlice {
                    slice,
                    slice_phase: phase,
                }
            }
            (S::WaitingForSlice { .. }, Event::SliceReady) => S::WaitingForArtifacts,
            (S::WaitingForArtifacts, Event::Fetched) => S::Ready,
            (
                S::Backoff {
                    retry: Retry::Fetch,
                    ..
                },
                Event::Fetched,
            ) => S::Ready,
            (S::WaitingForArtifacts | S::Backoff { .. }, Event::FetchFailed { reason }) => {
                failed(&mut life, reason, Retry::Fetch)
            }
            (
                S::Ready
                | S::Backoff {
                    retry: Retry::Apply,
                    ..
                },
                Event::ApplyStarted,
            ) => S::Applying,
            // The backoff is kept until the object proves stable: one that
            // crashes right after starting keeps backing off.
            (S::Applying, Event::Applied) => S::Running { since: now },
            (S::Applying, Event::ApplyFailed { reason }) => failed(&mut life, reason, Retry::Apply),
            (S::Running { since }, Event::Up) => {
                if now.saturating_duration_since(*since) >= STABLE_AFTER {
                    life.attempts = 0;
                }
                S::Running { since: *since }
            }
            (S::Running { .. }, Event::Vanished) => S::WaitingForArtifacts,
            (S::Running { .. }, Event::Exited { message, restart }) => {
                if restart {
                    life.restarts = life.restarts.saturating_add(1);
                    failed(&mut life, format!("stopped: {message}"), Retry::Apply)
                } else {
                    S::Stopped {
                        reason: format!("stopped: {message}; not restarted (restart policy)"),
                    }
                }
            }
            _ => return None,
        };
        Some(life)
    }
}

impl ObjectState {
    /// Where a new object starts: a slice is ready to apply, a workload
    /// fetches its artifacts first.
    pub fn initial(is_slice: bool) -> ObjectState {
        if is_slice {
            ObjectState::Ready
        } else {
            ObjectState::WaitingForArtifacts
        }
    }

    /// Whether it has not been brought up yet (or failed and waits to be):
    /// the states a pass may move towards running.
    pub fn not_yet_running(&self) -> bool {
        matches!(
            self,
            ObjectState::WaitingForArtifacts
                | ObjectState::WaitingForSlice { .. }
                | ObjectState::Ready
                | ObjectState::Backoff { .. }
                | ObjectState::Unsupported { .. }
        )
    }

    /// Whether a waiting attempt (retry or removal) is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        match self {
            ObjectState::Backoff { until, .. } => *until <= now,
            ObjectState::Removing { retry_at, .. } => retry_at.is_none_or(|t| t <= now),
            _ => true,
        }
    }

    /// When this state wants the reconciler back by itself (a retry or a
    /// removal after backoff).
    pub fn wake_at(&self) -> Option<Instant> {
        match self {
            ObjectState::Backoff { until, .. } => Some(*until),
            ObjectState::Removing { retry_at, .. } => *retry_at,
            _ => None,
        }
    }

    /// The phase reported on the wire.
    pub fn phase(&self) -> Phase {
        match self {
            ObjectState::WaitingForArtifacts
            | ObjectState::WaitingForSlice { .. }
            | ObjectState::Ready => Phase::Pending,
            ObjectState::Applying => Phase::Applying,
            ObjectState::Running { .. } => Phase::Running,
            ObjectState::Backoff { .. } | ObjectState::Stopped { .. } => Phase::Failed,
            ObjectState::Removing { .. } | ObjectState::Removed => Phase::Removing,
            ObjectState::Unsupported { .. } => Phase::Unsupported,
        }
    }

    /// The message reported with the phase.
    pub fn message(&self) -> String {
        match self {
            ObjectState::WaitingForSlice { slice, slice_phase } => format!(
                "waiting for slice {slice} ({})",
                slice_phase.map_or("absent", Phase::as_str)
            ),
            ObjectState::Backoff { reason, .. }
            | ObjectState::Stopped { reason }
            | ObjectState::Unsupported { reason } => reason.clone(),
            ObjectState::Removing { error: None, .. } => "no longer desired".into(),
            ObjectState::Removing { error: Some(e), .. } => format!("remove failed: {e}"),
            ObjectState::WaitingForArtifacts
            | ObjectState::Ready
            | ObjectState::Applying
            | ObjectState::Running { .. }
            | ObjectState::Removed => String::new(),
        }
    }

    /// The state's name as the store keeps it (with phase and message), so
    /// an agent restart resumes where it was.
    pub fn name(&self) -> &'static str {
        match self {
            ObjectState::WaitingForArtifacts => "waiting_for_artifacts",
            ObjectState::WaitingForSlice { .. } => "waiting_for_slice",
            ObjectState::Ready => "ready",
            ObjectState::Applying => "applying",
            ObjectState::Running { .. } => "running",
            ObjectState::Backoff { .. } => "backoff",
            ObjectState::Stopped { .. } => "stopped",
            ObjectState::Removing { .. } => "removing",
            ObjectState::Removed => "removed",
            ObjectState::Unsupported { .. } => "unsupported",
        }
    }

    /// The state to resume in from what the store kept (`name` is empty in
    /// rows written before states were kept). An object caught mid-apply
    /// is applied again; a failed one is due at once; a stopped one stays
    /// stopped; an unsupported one is looked at again.
    pub fn resumed(name: &str, phase: Phase, message: &str, is_slice: bool, now: Instant) -> Self {
        match (name, phase) {
            ("stopped", _) => ObjectState::Stopped {
                reason: message.to_string(),
            },
            (_, Phase::Running) => ObjectState::Running { since: now },
            (_, Phase::Failed) => ObjectState::Backoff {
                until: now,
                reason: message.to_string(),
                retry: Retry::Fetch,
            },
            (_, Phase::Removing) => ObjectState::Removing {
                retry_at: None,
                error: None,
            },
            // Looked at again: the agent may run the kind now.
            (_, Phase::Pending | Phase::Applying | Phase::Unsupported) => {
                ObjectState::initial(is_slice)
            }
        }
    }
}

#[cfg(test)]
mod tests;
