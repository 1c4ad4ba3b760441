//! mqtts:// through the bridge against a real mosquitto that requires client
//! certificates.

use std::time::Duration;

use mecvisor_e2e::{skip, Mosquitto, TestCerts};
use mqtt_transport::{connect_options, BrokerUrl, TlsFiles};
use rumqttc::{AsyncClient, Event, Packet, QoS};

/// Connects, subscribes and waits for its own message to come back.
async fn round_trip(url: &str, files: TlsFiles, dir: &std::path::Path) -> Result<(), String> {
    let url = BrokerUrl::parse(url).map_err(|e| e.to_string())?;
    let conn = connect_options("tls-test", &url, Some(&files), dir, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let (client, mut events) = AsyncClient::new(conn.options, 10);
    let publisher = client.clone();
    tokio::spawn(async move {
        let _ = publisher.subscribe("t/echo", QoS::AtLeastOnce).await;
        let _ = publisher
            .publish("t/echo", QoS::AtLeastOnce, false, b"over tls".to_vec())
            .await;
    });
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.payload.as_ref() == b"over tls" => {
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "timed out".to_string())?;
    drop(conn.bridge);
    outcome
}

#[tokio::test]
async fn mqtts_with_client_certificate_reaches_mosquitto() {
    if !Mosquitto::available() {
        return skip(
            "mqtts_with_client_certificate_reaches_mosquitto",
            "mosquitto is not installed",
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::new(&dir.path().join("pki"));
    let broker = Mosquitto::start_tls(dir.path(), &certs);
    let (cert, key) = certs.client("edge-1");
    let files = TlsFiles {
        ca: certs.ca.clone(),
        cert,
        key,
    };
    round_trip(&broker.url(true), files, dir.path())
        .await
        .expect("TLS round trip");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    if !Mosquitto::available() {
        return skip(
            "a_certificate_from_another_ca_is_refused",
            "mosquitto is not installed",
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::new(&dir.path().join("pki"));
    let rogue = TestCerts::new(&dir.path().join("rogue"));
    let broker = Mosquitto::start_tls(dir.path(), &certs);
    let (cert, key) = rogue.client("intruder");
    let files = TlsFiles {
        ca: certs.ca.clone(),
        cert,
        key,
    };
    let result = round_trip(&broker.url(true), files, dir.path()).await;
    assert!(
        result.is_err(),
        "a client certificate from a foreign CA got through"
    );
}

#[test]
fn missing_files_are_named_in_the_error() {
    let files = TlsFiles {
        ca: "/nonexistent/ca.pem".into(),
        cert: "/nonexistent/c.pem".into(),
        key: "/nonexistent/k.pem".into(),
    };
    let err = mqtt_transport::tls::client_config(&files).expect_err("refused");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
