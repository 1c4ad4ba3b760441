//! The controller against an external broker: a real mosquitto.

mod common;

use std::time::Duration;

use common::{eventually, get, post, start_mosquitto, Controller, FakeDevice};
use mecvisor_protocol::envelope::verifying_key_from_hex;
use mecvisor_protocol::{codec, topics, Ack, AckOutcome, Hello, SignedDesired};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_through_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = start_mosquitto(dir.path()) else {
        return;
    };
    let ctl = Controller::start_external(dir.path(), broker.port);
    let api = ctl.api.clone();
    let (_, key) = get(&api, "/v1/pubkey");
    let key = verifying_key_from_hex(key["public_key"].as_str().unwrap()).unwrap();

    let mut dev = FakeDevice::connect("edge-1", broker.port).await;
    let (status, body) = post(&api, "/v1/manifests", &common::example_manifest());
    assert_eq!(status, 200, "{body}");
    // The controller subscribes asynchronously after connecting; say hello
    // until it answers (hello is idempotent).
    let hello = Hello {
        device: "edge-1".into(),
        arch: "aarch64".into(),
        agent_version: "0.1.0-test".into(),
        last_applied_generation: 0,
        last_applied_hash: String::new(),
        objects: vec![],
        labels: vec![],
    };
    let mut doc = None;
    for _ in 0..20 {
        dev.publish_raw(&topics::hello("edge-1"), codec::encode(&hello))
            .await;
        if let Some(bytes) = dev.desired_within(Duration::from_millis(500)).await {
            doc = Some(SignedDesired::open(&bytes, &key).expect("signed by the controller"));
            break;
        }
    }
    let doc = doc.expect("no desired document through mosquitto");
    assert_eq!(doc.generation, 1);
    assert_eq!(doc.spec.workloads.len(), 3);

    let ack = Ack {
        device: "edge-1".into(),
        generation: 1,
        content_hash: doc.content_hash.clone(),
        outcome: AckOutcome::Accepted,
    };
    dev.publish_raw(&topics::ack("edge-1"), codec::encode(&ack))
        .await;
    eventually("ack through mosquitto", Duration::from_secs(10), || {
        let (_, d) = get(&api, "/v1/devices/edge-1");
        (d["acked_generation"] == 1 && d["arch"] == "aarch64").then_some(())
    })
    .await;
    drop(ctl);
    drop(broker);
}
