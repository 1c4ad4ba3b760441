//! The "must show" list for the sync spine, against real brokers
//! (mosquitto and the controller's embedded rumqttd) and the real binaries.

use std::time::Duration;

use mecvisor_e2e::probe::Probe;
use mecvisor_e2e::site::{tls_files, write_manifest, Agent, AgentOptions, Broker, Controller};
use mecvisor_e2e::{skip, wait_until, Mosquitto, TestCerts};
use mecvisor_protocol::{decode, topics, Ack, AckOutcome};
use serde_json::Value;

const ACK_WAIT: Duration = Duration::from_secs(30);

fn mosquitto_or_skip(test: &str) -> bool {
    if Mosquitto::available() {
        true
    } else {
        skip(
            test,
            "mosquitto is not installed (cargo xtask test installs it)",
        );
        false
    }
}

/// A controller using `broker` (plain MQTT) instead of its embedded one.
fn controller_via(dir: &std::path::Path, broker: &Mosquitto) -> Controller {
    Controller::start(
        dir,
        Broker::External {
            url: broker.url(false),
            tls: None,
        },
    )
}

fn object_names(status: &Value) -> Vec<String> {
    let mut names: Vec<String> = status["objects"]
        .as_array()
        .map(|objs| {
            objs.iter()
                .filter_map(|o| o["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn acks(probe: &Probe, device: &str) -> Vec<Ack> {
    probe
        .on(&topics::ack(device))
        .iter()
        .filter_map(|bytes| decode::<Ack>(bytes).ok())
        .collect()
}

/// Must show 1, over the embedded rumqttd: apply -> ack -> describe.
#[test]
fn apply_is_acked_and_described_with_embedded_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = mecvisor_e2e::free_port();
    let controller = Controller::start(dir.path(), Broker::Embedded { port });
    let agent = Agent::start_default(dir.path(), "edge-1", &controller);
    let manifest = write_manifest(dir.path(), "video", "edge-1", &["cam", "transcoder"]);
    controller.apply(&manifest);
    let generation = controller.wait_acked("edge-1", 1, ACK_WAIT);
    let applied = wait_until(ACK_WAIT, || {
        let d = controller.describe("edge-1")?;
        (d["applied_generation"].as_u64()? == generation).then_some(d)
    })
    .unwrap_or_else(|| panic!("applied generation never reported: {}", agent.log_text()));
    // No runtime exists yet for any kind: every object says so, none pretends to run.
    let objects = applied["objects"].as_array().expect("objects");
    assert_eq!(objects.len(), 3, "{applied:#}");
    for object in objects {
        assert_eq!(object["phase"], "unsupported", "{object:#}");
    }
    let human = controller.fleetctl(&["describe", "device", "edge-1"]);
    assert!(human.contains(&format!("acked {generation}")), "{human}");
    assert_eq!(
        agent.status()["applied_generation"].as_u64(),
        Some(generation)
    );
}

/// Must show 1 over mosquitto with TLS and required client certificates.
#[test]
fn apply_is_acked_over_mqtts_through_mosquitto() {
    if !mosquitto_or_skip("apply_is_acked_over_mqtts_through_mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::new(&dir.path().join("pki"));
    let broker = Mosquitto::start_tls(dir.path(), &certs);
    let controller = Controller::start(
        dir.path(),
        Broker::External {
            url: broker.url(true),
            tls: Some(tls_files(&certs, "fleet-controller")),
        },
    );
    let opts = AgentOptions {
        tls: Some(tls_files(&certs, "edge-1")),
        ..AgentOptions::default()
    };
    let _agent = Agent::start(
        dir.path(),
        "edge-1",
        &broker.url(true),
        &controller.public_key(),
        &opts,
    );
    controller.apply(&write_manifest(dir.path(), "video", "edge-1", &["cam"]));
    controller.wait_acked("edge-1", 1, ACK_WAIT);
}

/// Must show 2: broker down for a while; reports queue and all arrive once.
#[test]
fn reports_queued_while_broker_is_down_all_arrive_once() {
    if !mosquitto_or_skip("reports_queued_while_broker_is_down_all_arrive_once") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Mosquitto::start(dir.path());
    let controller = controller_via(dir.path(), &broker);
    let opts = AgentOptions {
        metrics_interval_s: Some(1),
        ..AgentOptions::default()
    };
    let agent = Agent::start(
        dir.path(),
        "edge-1",
        &broker.url(false),
        &controller.public_key(),
        &opts,
    );
    controller.apply(&write_manifest(dir.path(), "video", "edge-1", &["cam"]));
    let generation = controller.wait_acked("edge-1", 1, ACK_WAIT);

    // Everything from before the outage has arrived: note the highest seq.
    wait_until(Duration::from_secs(20), || {
        (agent.status()["outbox_depth"].as_u64()? == 0).then_some(())
    })
    .expect("outbox drained before the outage");
    let before = stored_seqs(&controller).last().copied().unwrap_or(0);

    broker.stop();
    let queued = wait_until(Duration::from_secs(20), || {
        let s = agent.status();
        (s["link"] == "disconnected" && s["outbox_depth"].as_u64()? >= 3).then_some(s)
    })
    .unwrap_or_else(|| panic!("no reports queued while offline: {}", agent.log_text()));
    assert_eq!(
        queued["applied_generation"].as_u64(),
        Some(generation),
        "state kept"
    );
    let queued_depth = queued["outbox_depth"].as_u64().unwrap_or(0);

    broker.restart();
    wait_until(Duration::from_secs(30), || {
        (agent.status()["outbox_depth"].as_u64()? == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("outbox never drained: {}", agent.log_text()));

    // No document arrived since the outage began, so every outbox entry since
    // then is a report: the controller must hold each seq after `before`
    // exactly once, with no gap, at least as many as were queued.
    let after: Vec<u64> = stored_seqs(&controller)
        .into_iter()
        .filter(|seq| *seq > before)
        .collect();
    let expected: Vec<u64> = (before + 1..=before + after.len() as u64).collect();
    assert_eq!(
        after, expected,
        "reports lost or duplicated after the outage"
    );
    assert!(
        after.len() as u64 >= queued_depth,
        "{} reports stored, {queued_depth} were queued",
        after.len()
    );
}

/// Report seqs the controller stored for edge-1, in order (duplicates kept).
fn stored_seqs(controller: &Controller) -> Vec<u64> {
    let db = rusqlite::Connection::open_with_flags(
        controller.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open controller db");
    let mut query = db
        .prepare("SELECT seq FROM reports WHERE device = 'edge-1' ORDER BY seq")
        .expect("query reports");
    let seqs = query
        .query_map([], |row| row.get::<_, i64>(0))
        .expect("read reports")
        .filter_map(Result::ok)
        .map(|seq| seq as u64)
        .collect();
    seqs
}

/// Must show 3: agent restarted while the broker is down reconciles from its store.
#[test]
fn agent_restarted_offline_reconciles_from_its_store() {
    if !mosquitto_or_skip("agent_restarted_offline_reconciles_from_its_store") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Mosquitto::start(dir.path());
    let controller = controller_via(dir.path(), &broker);
    let mut agent = Agent::start_default(dir.path(), "edge-1", &controller);
    controller.apply(&write_manifest(
        dir.path(),
        "video",
        "edge-1",
        &["cam", "dvr"],
    ));
    let generation = controller.wait_acked("edge-1", 1, ACK_WAIT);

    broker.stop();
    agent.kill();
    agent.restart();
    let status = wait_until(Duration::from_secs(20), || {
        let s = agent.status();
        let reconciled = s["running"] == true
            && s["objects"].as_array()?.len() == 3
            && s["objects"]
                .as_array()?
                .iter()
                .all(|o| o["phase"] == "unsupported");
        reconciled.then_some(s)
    })
    .unwrap_or_else(|| panic!("agent did not reconcile offline: {}", agent.log_text()));
    assert_eq!(status["link"], "disconnected");
    assert_eq!(status["applied_generation"].as_u64(), Some(generation));
    assert_eq!(object_names(&status), ["cam", "dvr", "video-net"]);
}

/// Must show 4: a controller restart keeps devices, manifests and generations.
#[test]
fn controller_restart_keeps_devices_manifests_and_generations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = mecvisor_e2e::free_port();
    let mut controller = Controller::start(dir.path(), Broker::Embedded { port });
    let _agent = Agent::start_default(dir.path(), "edge-1", &controller);
    let manifest = write_manifest(dir.path(), "video", "edge-1", &["cam"]);
    controller.apply(&manifest);
    let generation = controller.wait_acked("edge-1", 1, ACK_WAIT);
    let key = controller.public_key();

    controller.restart();
    let device = controller.describe("edge-1").expect("device survived");
    assert_eq!(device["desired_generation"].as_u64(), Some(generation));
    assert_eq!(device["acked_generation"].as_u64(), Some(generation));
    let manifests = controller.fleetctl(&["get", "manifests", "-o", "json"]);
    assert!(manifests.contains("\"video\""), "{manifests}");
    assert_eq!(controller.public_key(), key, "signing key changed");
    // Re-applying the same manifest is a no-op: same content, same generation.
    controller.apply(&manifest);
    let again = controller.describe("edge-1").expect("device");
    assert_eq!(again["desired_generation"].as_u64(), Some(generation));
}

/// Must show 5: replay, tampered signature and garbage are refused; the agent runs on.
#[test]
fn replay_tampering_and_garbage_are_refused() {
    if !mosquitto_or_skip("replay_tampering_and_garbage_are_refused") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path());
    let controller = controller_via(dir.path(), &broker);
    let desired = topics::desired("edge-1");
    let probe = Probe::connect(broker.port, "attacker", &[&desired, &topics::ack("edge-1")]);
    let mut agent = Agent::start_default(dir.path(), "edge-1", &controller);
    controller.apply(&write_manifest(dir.path(), "video", "edge-1", &["cam"]));
    let first = controller.wait_acked("edge-1", 1, ACK_WAIT);
    controller.apply(&write_manifest(
        dir.path(),
        "video",
        "edge-1",
        &["cam", "dvr"],
    ));
    let second = controller.wait_acked("edge-1", first + 1, ACK_WAIT);
    // The second generation reconciled and recorded before the attacks, so
    // any change after them is theirs.
    wait_until(ACK_WAIT, || {
        (object_names(&agent.status()) == ["cam", "dvr", "video-net"]).then_some(())
    })
    .unwrap_or_else(|| panic!("generation {second} never recorded: {}", agent.log_text()));
    let old = probe
        .on(&desired)
        .into_iter()
        .find(|bytes| {
            mecvisor_protocol::decode::<mecvisor_protocol::SignedDesired>(bytes)
                .ok()
                .and_then(|e| decode::<mecvisor_protocol::DesiredState>(&e.payload).ok())
                .is_some_and(|d| d.generation == first)
        })
        .expect("captured the first document");
    let mut tampered = old.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01; // the signature is the last field

    for (what, bytes) in [
        ("replay", old),
        ("tampered signature", tampered),
        ("garbage", b"\xff\x00not cbor at all".to_vec()),
    ] {
        let before = acks(&probe, "edge-1").len();
        probe.publish(&desired, bytes);
        let rejected = wait_until(Duration::from_secs(10), || {
            acks(&probe, "edge-1")
                .into_iter()
                .skip(before)
                .find(|a| matches!(a.outcome, AckOutcome::Rejected(_)))
        })
        .unwrap_or_else(|| panic!("{what}: no rejection ack; agent log:\n{}", agent.log_text()));
        eprintln!("{what}: {:?}", rejected.outcome);
        assert!(agent.is_running(), "{what} crashed the agent");
        let status = agent.status();
        assert_eq!(
            status["applied_generation"].as_u64(),
            Some(second),
            "{what} changed state"
        );
        assert_eq!(object_names(&status), ["cam", "dvr", "video-net"], "{what}");
    }
}

/// Must show 7: a deletion made while the agent was offline is applied on reconnect.
#[test]
fn deletion_made_while_offline_is_applied_on_reconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = mecvisor_e2e::free_port();
    let controller = Controller::start(dir.path(), Broker::Embedded { port });
    let mut agent = Agent::start_default(dir.path(), "edge-1", &controller);
    let keep = write_manifest(dir.path(), "base", "edge-1", &["cam"]);
    let doomed = write_manifest(dir.path(), "extra", "edge-1", &["dvr"]);
    controller.apply(&keep);
    controller.apply(&doomed);
    let before = controller.wait_acked("edge-1", 2, ACK_WAIT);
    wait_until(ACK_WAIT, || {
        (object_names(&agent.status()) == ["base-net", "cam", "dvr", "extra-net"]).then_some(())
    })
    .unwrap_or_else(|| panic!("generation {before} never recorded: {:#}", agent.status()));

    agent.stop();
    controller.fleetctl(&["delete", "manifest", "extra"]);
    agent.restart();
    controller.wait_acked("edge-1", before + 1, ACK_WAIT);
    let status = wait_until(ACK_WAIT, || {
        let s = agent.status();
        (object_names(&s) == ["base-net", "cam"]).then_some(s)
    })
    .unwrap_or_else(|| panic!("deletion not applied: {:#}", agent.status()));
    assert_eq!(status["applied_generation"].as_u64(), Some(before + 1));
}
