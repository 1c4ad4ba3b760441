//! The reconciler's passes, driven with `TestRuntime`, a fake that scripts
//! what real runtimes cannot be made to do on cue (an apply failing N
//! times, an object vanishing or stopping between two passes) and records
//! every call. The transitions themselves are tested as tables in
//! `state/tests.rs`; the real runtimes in their crates and end to end
//! (e2e/tests/containers.rs, hil-tests).

use super::*;
use crate::runtimes::unsupported::Unsupported;
use crate::runtimes::{ArtifactStore, Runtime, RuntimeError, RuntimeFuture};
use mecvisor_protocol::{
    ContainerSpec, DeviceSpec, QosSpec, Resources, SliceSpec, WorkloadKind, WorkloadSpec,
};
use state::STABLE_AFTER;
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
                    return Err(RuntimeError::Failed("boom".into()));
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

const IMG: &str = "reg/app@sha256:0000000000000000000000000000000000000000000000000000000000000000";

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

fn doc(generation: u64, slices: Vec<SliceSpec>, workloads: Vec<WorkloadSpec>) -> Arc<DesiredState> {
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
        .map(|(n, t)| (n.clone(), t.life.state.phase()))
        .collect()
}

fn with_runtimes() -> (Reconciler, Rc<RefCell<Script>>) {
    let script = Rc::new(RefCell::new(Script::default()));
    let rt = TestRuntime(script.clone());
    let runtimes = Runtimes {
        slice: Box::new(rt.clone()),
        container: Box::new(rt),
        artifacts: Box::new(TestArtifacts(script.clone())),
        ..Runtimes::default()
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
        slice: Box::new(Unsupported::new("network slicing is off")),
        container: Box::new(TestRuntime(script.clone())),
        artifacts: Box::new(TestArtifacts(script.clone())),
        ..Runtimes::default()
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
    assert_eq!(cam.message, "no container runtime on this agent");
    assert_eq!(cam.generation, 3);
    let net = &state.objects[1];
    assert_eq!(
        (net.kind.as_str(), net.phase),
        ("slice", Phase::Unsupported)
    );
    assert_eq!(net.message, "no network slicing runtime on this agent");
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
    assert_eq!(r.objects["bad"].life.state.message(), "apply failed: boom");
    // second retry succeeds; the backoff is forgotten only once it has
    // stayed up for STABLE_AFTER
    r.pass(t0 + Duration::from_secs(3)).await;
    assert_eq!(r.objects["bad"].life.state.phase(), Phase::Running);
    assert_eq!(r.objects["bad"].life.attempts, 2);
    r.pass(t0 + Duration::from_secs(3) + STABLE_AFTER).await;
    assert_eq!(r.objects["bad"].life.attempts, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_crash_loop_backs_off_exponentially() {
    let (mut r, script) = with_runtimes();
    r.set_desired(doc(1, vec![], vec![container("loop", None)]));
    let mut now = Instant::now();
    r.pass(now).await;
    assert_eq!(r.objects["loop"].life.state.phase(), Phase::Running);
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
        assert_eq!(r.objects["loop"].life.state.phase(), Phase::Running);
    }
    assert_eq!(delays, [1, 2, 4, 8]);
    assert_eq!(r.objects["loop"].life.restarts, 4);
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
    assert_eq!(r.objects["cam"].life.state.phase(), Phase::Pending);
    assert_eq!(
        r.objects["cam"].life.state.message(),
        "waiting for slice net (failed)"
    );
    r.pass(t0 + Duration::from_secs(1)).await;
    assert_eq!(r.objects["net"].life.state.phase(), Phase::Running);
    assert_eq!(r.objects["cam"].life.state.phase(), Phase::Running);
}

#[tokio::test(flavor = "current_thread")]
async fn stopped_workload_restarts_and_removal_tears_down() {
    let (mut r, script) = with_runtimes();
    r.set_desired(doc(1, vec![], vec![container("cam", None)]));
    let t0 = Instant::now();
    r.pass(t0).await;
    assert_eq!(r.objects["cam"].life.state.phase(), Phase::Running);
    script.borrow_mut().observed.insert(
        "cam".into(),
        Observed::Stopped {
            message: "exit 1".into(),
            success: false,
        },
    );
    r.pass(t0).await;
    assert_eq!(r.objects["cam"].life.state.phase(), Phase::Failed);
    assert_eq!(r.objects["cam"].life.restarts, 1);
    script.borrow_mut().observed.clear();
    r.pass(t0 + Duration::from_secs(1)).await;
    assert_eq!(r.objects["cam"].life.state.phase(), Phase::Running);
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

#[tokio::test(flavor = "current_thread")]
async fn a_workload_its_policy_stopped_stays_stopped_across_an_agent_restart() {
    let (mut r, script) = with_runtimes();
    let mut once = container("job", None);
    once.restart = RestartPolicy::Never;
    r.set_desired(doc(1, vec![], vec![once.clone()]));
    r.pass(Instant::now()).await;
    script.borrow_mut().observed.insert(
        "job".into(),
        Observed::Stopped {
            message: "exited with code 0".into(),
            success: true,
        },
    );
    r.pass(Instant::now()).await;
    let records = r.records();
    assert_eq!(records[0].state, "stopped");
    // A new agent process over the same store and the same document.
    let (mut resumed, script) = with_runtimes();
    resumed = Reconciler::new(
        std::mem::take(&mut resumed.runtimes),
        records,
        Backoff::default(),
    );
    resumed.set_desired(doc(1, vec![], vec![once]));
    let state = resumed.pass(Instant::now()).await.report.unwrap();
    assert_eq!(state.objects[0].phase, Phase::Failed);
    assert!(
        state.objects[0].message.contains("not restarted"),
        "{}",
        state.objects[0].message
    );
    assert!(
        script.borrow().calls.is_empty(),
        "{:?}",
        script.borrow().calls
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_vanished_slice_is_applied_again_in_the_same_pass() {
    let (mut r, script) = with_runtimes();
    r.set_desired(doc(1, vec![slice("net", 10)], vec![]));
    r.pass(Instant::now()).await;
    script
        .borrow_mut()
        .observed
        .insert("net".into(), Observed::Missing);
    script.borrow_mut().calls.clear();
    r.pass(Instant::now()).await;
    assert_eq!(script.borrow().calls, ["apply net"]);
    assert_eq!(r.objects["net"].life.state.phase(), Phase::Running);
}
