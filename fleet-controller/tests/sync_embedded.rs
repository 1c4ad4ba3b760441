//! End-to-end through the real `fleet-controller serve` with its embedded
//! rumqttd: hello, signed desired document, ack, reports, API views, bad input.

mod common;

use std::time::Duration;

use common::{eventually, get, post, Controller, FakeDevice};
use mecvisor_protocol::envelope::verifying_key_from_hex;
use mecvisor_protocol::{
    codec, topics, Ack, AckOutcome, ActualState, Event, Hello, Label, ObjectStatus, Phase, Report,
    ReportBody, Severity, SignedDesired,
};
use serde_json::Value;

fn hello(device: &str, generation: u64, hash: &str) -> Hello {
    Hello {
        device: device.into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0-test".into(),
        last_applied_generation: generation,
        last_applied_hash: hash.into(),
        objects: vec![],
        labels: vec![Label {
            key: "site".into(),
            value: "lab".into(),
        }],
    }
}

fn object(name: &str, kind: &str, phase: Phase) -> ObjectStatus {
    ObjectStatus {
        name: name.into(),
        kind: kind.into(),
        phase,
        message: String::new(),
        restarts: 0,
        generation: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_gets_signed_document_and_reports_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start_embedded(dir.path());
    let api = ctl.api.clone();
    let (status, key) = get(&api, "/v1/pubkey");
    assert_eq!(status, 200);
    let key = verifying_key_from_hex(key["public_key"].as_str().unwrap()).unwrap();

    let mut dev = FakeDevice::connect("edge-1", ctl.mqtt_port).await;
    // Garbage and lies first: all dropped, the controller keeps running.
    dev.publish_raw(&topics::report("edge-1"), vec![0xff, 0x00, 0x13, 0x37])
        .await;
    dev.publish_raw(
        &topics::hello("edge-1"),
        codec::encode(&hello("edge-2", 0, "")),
    )
    .await;
    dev.publish_raw(&topics::presence("edge-1"), b"sideways".to_vec())
        .await;
    dev.publish_raw(
        &topics::ack("edge-1"),
        vec![0u8; mecvisor_protocol::MAX_MESSAGE_BYTES + 1],
    )
    .await;
    dev.publish_raw(
        &topics::hello("edge-1"),
        codec::encode(&hello("edge-1", 0, "")),
    )
    .await;
    let devices = eventually(
        "edge-1 registered by hello",
        Duration::from_secs(10),
        || {
            let (_, d) = get(&api, "/v1/devices");
            (d.as_array()?.len() == 1 && d[0]["arch"] == "x86_64").then_some(d)
        },
    )
    .await;
    assert_eq!(devices[0]["name"], "edge-1");
    assert_eq!(devices[0]["online"], true);
    assert_eq!(devices[0]["desired_generation"], 0);
    assert!(ctl.alive(), "controller crashed on bad input");
    let log = ctl.log_text();
    assert!(log.contains("dropped uplink message"), "{log}");
    assert!(log.contains("mecv/v1/edge-1/report"), "{log}");
    assert!(
        log.contains("exceeds the"),
        "oversized ack not refused: {log}"
    );
    assert!(log.contains("payload is for device"), "{log}");

    // Apply the example manifest: the device receives a signed document.
    let (status, body) = post(&api, "/v1/manifests", &common::example_manifest());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["manifest"], "edge-1-baseline");
    assert_eq!(body["devices"][0]["device"], "edge-1");
    assert_eq!(body["devices"][0]["generation"], 1);
    let bytes = dev.next_desired().await;
    let doc = SignedDesired::open(&bytes, &key).expect("signature verifies");
    doc.validate().unwrap();
    assert_eq!(doc.device, "edge-1");
    assert_eq!(doc.generation, 1);
    assert_eq!(doc.spec.slices.len(), 2);
    assert_eq!(doc.spec.workloads.len(), 3);

    // A forged signature is caught by the same check.
    let mut forged: SignedDesired = codec::decode(&bytes).unwrap();
    forged.signature[0] ^= 1;
    assert!(SignedDesired::open(&forged.to_bytes(), &key).is_err());

    // Ack and report.
    let ack = Ack {
        device: "edge-1".into(),
        generation: 1,
        content_hash: doc.content_hash.clone(),
        outcome: AckOutcome::Accepted,
    };
    dev.publish_raw(&topics::ack("edge-1"), codec::encode(&ack))
        .await;
    let state = Report {
        device: "edge-1".into(),
        seq: 1,
        created_ms: 1,
        body: ReportBody::State(ActualState {
            applied_generation: 1,
            objects: vec![
                object("video", "slice", Phase::Running),
                object("iot", "slice", Phase::Running),
                object("video-analytics", "container", Phase::Running),
                object("mqtt-gateway", "container", Phase::Applying),
                object("upf", "vm", Phase::Unsupported),
            ],
        }),
        store_id: Some(1),
    };
    dev.publish_raw(&topics::report("edge-1"), codec::encode(&state))
        .await;
    let event = Report {
        device: "edge-1".into(),
        seq: 2,
        created_ms: 2,
        body: ReportBody::Event(Event {
            severity: Severity::Warning,
            object: Some("mqtt-gateway".into()),
            message: "image pull slow".into(),
        }),
        store_id: Some(1),
    };
    // At-least-once: the same report twice is stored once.
    for _ in 0..2 {
        dev.publish_raw(&topics::report("edge-1"), codec::encode(&event))
            .await;
    }
    // A re-sent older state report must not roll back newer state.
    let detail = eventually("ack and report applied", Duration::from_secs(10), || {
        let (_, d) = get(&api, "/v1/devices/edge-1");
        let events = d["events"].as_array()?;
        (d["acked_generation"] == 1
            && d["applied_generation"] == 1
            && events.iter().any(|e| e["message"] == "image pull slow"))
        .then_some(d)
    })
    .await;
    assert_eq!(detail["desired_generation"], 1);
    assert_eq!(
        detail["desired_hash"],
        Value::String(doc.content_hash.clone())
    );
    assert_eq!(detail["labels"]["site"], "lab");
    let phase = |name: &str| {
        detail["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .map(|o| (o["phase"].clone(), o["desired"].clone()))
    };
    assert_eq!(
        phase("video-analytics"),
        Some(("running".into(), true.into()))
    );
    assert_eq!(
        phase("mqtt-gateway"),
        Some(("applying".into(), true.into()))
    );
    assert_eq!(phase("upf"), Some(("unsupported".into(), true.into())));
    let slow = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["message"] == "image pull slow")
        .count();
    assert_eq!(slow, 1, "duplicate report stored twice: {detail}");

    // Re-applying the same manifest changes nothing and publishes nothing.
    let (status, body) = post(&api, "/v1/manifests", &common::example_manifest());
    assert_eq!(status, 200);
    assert_eq!(body["devices"][0]["generation"], 1);
    assert!(dev
        .desired_within(Duration::from_millis(700))
        .await
        .is_none());

    // A hello that matches the current document gets nothing; a stale one gets it.
    dev.publish_raw(
        &topics::hello("edge-1"),
        codec::encode(&hello("edge-1", 1, &doc.content_hash)),
    )
    .await;
    assert!(dev
        .desired_within(Duration::from_millis(700))
        .await
        .is_none());
    dev.publish_raw(
        &topics::hello("edge-1"),
        codec::encode(&hello("edge-1", 0, "")),
    )
    .await;
    let again = SignedDesired::open(&dev.next_desired().await, &key).unwrap();
    assert_eq!(again.generation, 1);

    // A rejection shows up as last error and an event.
    let reject = Ack {
        device: "edge-1".into(),
        generation: 1,
        content_hash: doc.content_hash.clone(),
        outcome: AckOutcome::Rejected("no space left on device".into()),
    };
    dev.publish_raw(&topics::ack("edge-1"), codec::encode(&reject))
        .await;
    eventually("rejection recorded", Duration::from_secs(10), || {
        let (_, d) = get(&api, "/v1/devices/edge-1");
        (d["last_error"] == "no space left on device").then_some(())
    })
    .await;

    // A changed manifest bumps the generation and is published.
    let changed = common::example_manifest().replace("memory_mib: 128", "memory_mib: 256");
    let (status, body) = post(&api, "/v1/manifests", &changed);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"][0]["generation"], 2);
    let second = SignedDesired::open(&dev.next_desired().await, &key).unwrap();
    assert_eq!(second.generation, 2);

    // Deleting the manifest sends an empty document at a new generation.
    let (status, body) = common::delete(&api, "/v1/manifests/edge-1-baseline");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"][0]["generation"], 3);
    let third = SignedDesired::open(&dev.next_desired().await, &key).unwrap();
    assert_eq!(third.generation, 3);
    assert!(third.spec.slices.is_empty() && third.spec.workloads.is_empty());

    // Presence.
    dev.publish_raw(&topics::presence("edge-1"), b"offline".to_vec())
        .await;
    eventually("offline", Duration::from_secs(10), || {
        let (_, d) = get(&api, "/v1/devices/edge-1");
        (d["online"] == false).then_some(())
    })
    .await;
    assert!(ctl.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_manifests_follow_device_labels() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start_embedded(dir.path());
    let api = ctl.api.clone();
    let manifest = "name: lab-sensors\nselector: {site: lab}\nslices:\n  - {name: iot, vlan_id: 200, uplink: eth0, qos: {tier: bronze}}\n";
    let (status, body) = post(&api, "/v1/manifests", manifest);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"], Value::Array(vec![]));

    let mut dev = FakeDevice::connect("edge-7", ctl.mqtt_port).await;
    dev.publish_raw(
        &topics::hello("edge-7"),
        codec::encode(&hello("edge-7", 0, "")),
    )
    .await;
    let (_, key) = get(&api, "/v1/pubkey");
    let key = verifying_key_from_hex(key["public_key"].as_str().unwrap()).unwrap();
    let doc = SignedDesired::open(&dev.next_desired().await, &key).unwrap();
    assert_eq!(doc.generation, 1);
    assert_eq!(doc.spec.slices[0].name, "iot");

    // Labels change: the device no longer matches and gets an empty document.
    let mut h = hello("edge-7", 1, &doc.content_hash);
    h.labels[0].value = "field".into();
    dev.publish_raw(&topics::hello("edge-7"), codec::encode(&h))
        .await;
    let doc2 = SignedDesired::open(&dev.next_desired().await, &key).unwrap();
    assert_eq!(doc2.generation, 2);
    assert!(doc2.spec.slices.is_empty());

    // A device that applied a generation the controller never issued (e.g. the
    // controller database was lost) gets a document numbered above it.
    dev.publish_raw(
        &topics::hello("edge-7"),
        codec::encode(&hello("edge-7", 41, "sha256:elsewhere")),
    )
    .await;
    let doc3 = SignedDesired::open(&dev.next_desired().await, &key).unwrap();
    assert_eq!(doc3.generation, 42);
}
