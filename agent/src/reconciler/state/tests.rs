//! The transition function as tables: every row is a state, an event and
//! the state (with counters) that must follow, or `None` where the event
//! does not apply.

use super::*;

fn backoff() -> Backoff {
    Backoff::default()
}

fn life(state: ObjectState, attempts: u32, restarts: u32) -> Life {
    Life {
        state,
        attempts,
        restarts,
    }
}

fn backoff_state(at: Instant, secs: u64, reason: &str, retry: Retry) -> ObjectState {
    ObjectState::Backoff {
        until: at + Duration::from_secs(secs),
        reason: reason.into(),
        retry,
    }
}

#[test]
fn transitions() {
    use Event as E;
    use ObjectState as S;
    let t0 = Instant::now();
    let later = t0 + STABLE_AFTER;
    let running = S::Running { since: t0 };
    let wait_net = S::WaitingForSlice {
        slice: "net".into(),
        slice_phase: Some(Phase::Failed),
    };
    let removing = S::Removing {
        retry_at: None,
        error: None,
    };
    // (from, attempts, restarts, event, at, expected)
    let table: Vec<(S, u32, u32, E, Instant, Option<Life>)> = vec![
        // The way up.
        (
            S::WaitingForArtifacts,
            0,
            0,
            E::Fetched,
            t0,
            Some(life(S::Ready, 0, 0)),
        ),
        (
            S::Ready,
            0,
            0,
            E::ApplyStarted,
            t0,
            Some(life(S::Applying, 0, 0)),
        ),
        (
            S::Applying,
            2,
            0,
            E::Applied,
            t0,
            Some(life(running.clone(), 2, 0)),
        ),
        // Up: attempts are kept until it has run for STABLE_AFTER.
        (
            running.clone(),
            2,
            0,
            E::Up,
            t0,
            Some(life(running.clone(), 2, 0)),
        ),
        (
            running.clone(),
            2,
            0,
            E::Up,
            later,
            Some(life(running.clone(), 0, 0)),
        ),
        // Failures back off, doubling with each attempt.
        (
            S::WaitingForArtifacts,
            0,
            0,
            E::FetchFailed {
                reason: "404".into(),
            },
            t0,
            Some(life(backoff_state(t0, 1, "404", Retry::Fetch), 1, 0)),
        ),
        (
            S::Applying,
            2,
            0,
            E::ApplyFailed {
                reason: "boom".into(),
            },
            t0,
            Some(life(backoff_state(t0, 4, "boom", Retry::Apply), 3, 0)),
        ),
        (
            backoff_state(t0, 0, "404", Retry::Fetch),
            1,
            0,
            E::Fetched,
            t0,
            Some(life(S::Ready, 1, 0)),
        ),
        (
            backoff_state(t0, 0, "boom", Retry::Apply),
            1,
            0,
            E::ApplyStarted,
            t0,
            Some(life(S::Applying, 1, 0)),
        ),
        // A retry waits for its own kind of step.
        (
            backoff_state(t0, 0, "404", Retry::Fetch),
            1,
            0,
            E::ApplyStarted,
            t0,
            None,
        ),
        (
            backoff_state(t0, 0, "boom", Retry::Apply),
            1,
            0,
            E::Fetched,
            t0,
            None,
        ),
        // Exits: restarted by policy (counted, backed off) or stopped.
        (
            running.clone(),
            0,
            4,
            E::Exited {
                message: "exited with code 1".into(),
                restart: true,
            },
            t0,
            Some(life(
                backoff_state(t0, 1, "stopped: exited with code 1", Retry::Apply),
                1,
                5,
            )),
        ),
        (
            running.clone(),
            0,
            0,
            E::Exited {
                message: "exited with code 0".into(),
                restart: false,
            },
            t0,
            Some(life(
                S::Stopped {
                    reason: "stopped: exited with code 0; not restarted (restart policy)".into(),
                },
                0,
                0,
            )),
        ),
        (
            running.clone(),
            1,
            0,
            E::Vanished,
            t0,
            Some(life(S::WaitingForArtifacts, 1, 0)),
        ),
        // Slices gate workloads.
        (
            S::WaitingForArtifacts,
            0,
            0,
            E::SliceNotReady {
                slice: "net".into(),
                phase: Some(Phase::Failed),
            },
            t0,
            Some(life(wait_net.clone(), 0, 0)),
        ),
        (
            wait_net.clone(),
            0,
            0,
            E::SliceReady,
            t0,
            Some(life(S::WaitingForArtifacts, 0, 0)),
        ),
        (
            running.clone(),
            0,
            0,
            E::SliceNotReady {
                slice: "net".into(),
                phase: None,
            },
            t0,
            None,
        ),
        // Unsupported: from anything not running yet, never from running.
        (
            S::Ready,
            0,
            0,
            E::Unsupported {
                reason: "off".into(),
            },
            t0,
            Some(life(
                S::Unsupported {
                    reason: "off".into(),
                },
                0,
                0,
            )),
        ),
        (
            S::Applying,
            0,
            0,
            E::Unsupported {
                reason: "off".into(),
            },
            t0,
            Some(life(
                S::Unsupported {
                    reason: "off".into(),
                },
                0,
                0,
            )),
        ),
        (
            running.clone(),
            0,
            0,
            E::Unsupported {
                reason: "off".into(),
            },
            t0,
            None,
        ),
        (
            S::Unsupported {
                reason: "off".into(),
            },
            0,
            0,
            E::ApplyStarted,
            t0,
            None,
        ),
        // Removal, with backoff after a failure; forgotten when nothing ran.
        (
            running.clone(),
            0,
            3,
            E::Unwanted { applied: true },
            t0,
            Some(life(removing.clone(), 0, 3)),
        ),
        (
            S::Ready,
            0,
            0,
            E::Unwanted { applied: false },
            t0,
            Some(life(S::Removed, 0, 0)),
        ),
        (
            removing.clone(),
            0,
            0,
            E::Unwanted { applied: true },
            t0,
            None,
        ),
        (
            removing.clone(),
            0,
            0,
            E::Removed,
            t0,
            Some(life(S::Removed, 0, 0)),
        ),
        (
            removing.clone(),
            1,
            0,
            E::RemoveFailed {
                reason: "busy".into(),
            },
            t0,
            Some(life(
                S::Removing {
                    retry_at: Some(t0 + Duration::from_secs(2)),
                    error: Some("busy".into()),
                },
                2,
                0,
            )),
        ),
        // Nothing else moves a stopped object.
        (
            S::Stopped {
                reason: "done".into(),
            },
            0,
            0,
            E::ApplyStarted,
            t0,
            None,
        ),
        (
            S::Stopped {
                reason: "done".into(),
            },
            0,
            0,
            E::Up,
            t0,
            None,
        ),
        (S::Ready, 0, 0, E::Applied, t0, None),
    ];
    for (i, (from, attempts, restarts, event, at, expected)) in table.into_iter().enumerate() {
        let before = life(from, attempts, restarts);
        let after = before.next(event.clone(), at, &backoff());
        assert_eq!(after, expected, "row {i}: {:?} + {event:?}", before.state);
    }
}

#[test]
fn reported_phase_and_message() {
    use ObjectState as S;
    let t0 = Instant::now();
    let table: Vec<(S, Phase, &str)> = vec![
        (S::WaitingForArtifacts, Phase::Pending, ""),
        (
            S::WaitingForSlice {
                slice: "net".into(),
                slice_phase: Some(Phase::Unsupported),
            },
            Phase::Pending,
            "waiting for slice net (unsupported)",
        ),
        (
            S::WaitingForSlice {
                slice: "net".into(),
                slice_phase: None,
            },
            Phase::Pending,
            "waiting for slice net (absent)",
        ),
        (S::Ready, Phase::Pending, ""),
        (S::Applying, Phase::Applying, ""),
        (S::Running { since: t0 }, Phase::Running, ""),
        (
            backoff_state(t0, 1, "apply failed: boom", Retry::Apply),
            Phase::Failed,
            "apply failed: boom",
        ),
        (
            S::Stopped {
                reason: "stopped: done".into(),
            },
            Phase::Failed,
            "stopped: done",
        ),
        (
            S::Removing {
                retry_at: None,
                error: None,
            },
            Phase::Removing,
            "no longer desired",
        ),
        (
            S::Removing {
                retry_at: Some(t0),
                error: Some("busy".into()),
            },
            Phase::Removing,
            "remove failed: busy",
        ),
        (
            S::Unsupported {
                reason: "off".into(),
            },
            Phase::Unsupported,
            "off",
        ),
    ];
    for (state, phase, message) in table {
        assert_eq!(
            (state.phase(), state.message().as_str()),
            (phase, message),
            "{state:?}"
        );
    }
}

#[test]
fn resumed_from_the_store() {
    use ObjectState as S;
    let now = Instant::now();
    // (stored state name, phase, message, is a slice, resumed as)
    let table: Vec<(&str, Phase, &str, bool, S)> = vec![
        (
            "running",
            Phase::Running,
            "",
            false,
            S::Running { since: now },
        ),
        // Caught mid-apply by a crash: applied again.
        (
            "applying",
            Phase::Applying,
            "",
            false,
            S::WaitingForArtifacts,
        ),
        ("applying", Phase::Applying, "", true, S::Ready),
        // Failed: due at once.
        (
            "backoff",
            Phase::Failed,
            "apply failed: boom",
            false,
            backoff_state(now, 0, "apply failed: boom", Retry::Fetch),
        ),
        // Stopped by its restart policy: stays stopped.
        (
            "stopped",
            Phase::Failed,
            "stopped: done; not restarted (restart policy)",
            false,
            S::Stopped {
                reason: "stopped: done; not restarted (restart policy)".into(),
            },
        ),
        // Rows from before schema version 2 have no state name.
        (
            "",
            Phase::Failed,
            "x",
            false,
            backoff_state(now, 0, "x", Retry::Fetch),
        ),
        // Looked at again: this agent may run the kind now.
        (
            "unsupported",
            Phase::Unsupported,
            "off",
            false,
            S::WaitingForArtifacts,
        ),
        (
            "removing",
            Phase::Removing,
            "no longer desired",
            false,
            S::Removing {
                retry_at: None,
                error: None,
            },
        ),
    ];
    for (name, phase, message, is_slice, expected) in table {
        assert_eq!(
            ObjectState::resumed(name, phase, message, is_slice, now),
            expected,
            "{name} {phase:?}"
        );
    }
}

#[test]
fn backoff_doubles_and_caps() {
    let b = Backoff::default();
    assert_eq!(b.delay(1), Duration::from_secs(1));
    assert_eq!(b.delay(2), Duration::from_secs(2));
    assert_eq!(b.delay(5), Duration::from_secs(16));
    assert_eq!(b.delay(40), Duration::from_secs(300));
}

#[test]
fn every_state_round_trips_through_its_name() {
    let now = Instant::now();
    for state in [
        ObjectState::Stopped { reason: "x".into() },
        ObjectState::Running { since: now },
    ] {
        let again = ObjectState::resumed(state.name(), state.phase(), &state.message(), false, now);
        assert_eq!(again, state);
    }
}
