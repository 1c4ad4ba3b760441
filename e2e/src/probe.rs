//! A plain MQTT client for tests, run on its own thread: records what arrives
//! on its subscriptions and publishes what it is told to.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// One received message.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A connected test client; disconnects when dropped.
pub struct Probe {
    client: AsyncClient,
    received: Arc<Mutex<Vec<Received>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Probe {
    /// Connects to a plain broker on 127.0.0.1:`port` and subscribes to `filters`.
    pub fn connect(port: u16, id: &str, filters: &[&str]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("probe runtime");
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_max_packet_size(2 << 20, 2 << 20);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 1000);
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let subscribed = Arc::new(Mutex::new(false));
        let flag = subscribed.clone();
        let subscriber = client.clone();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        runtime.spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let subscriber = subscriber.clone();
                        let filters = filters.clone();
                        let flag = flag.clone();
                        tokio::spawn(async move {
                            for f in filters {
                                let _ = subscriber.subscribe(f, QoS::AtLeastOnce).await;
                            }
                            if let Ok(mut f) = flag.lock() {
                                *f = true;
                            }
                        });
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(mut all) = sink.lock() {
                            all.push(Received {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let probe = Probe {
            client,
            received,
            runtime: Some(runtime),
        };
        crate::wait_until(Duration::from_secs(10), || {
            subscribed.lock().ok().filter(|f| **f).map(|_| ())
        })
        .expect("probe connected and subscribed");
        // Let the SUBACKs land before the test relies on the subscriptions.
        std::thread::sleep(Duration::from_millis(200));
        probe
    }

    /// Publishes with QoS 1.
    pub fn publish(&self, topic: &str, payload: Vec<u8>) {
        let client = self.client.clone();
        let topic = topic.to_string();
        if let Some(rt) = &self.runtime {
            rt.block_on(async move {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .expect("queue publish");
            });
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Messages received on `topic` so far.
    pub fn on(&self, topic: &str) -> Vec<Vec<u8>> {
        self.received()
            .into_iter()
            .filter(|r| r.topic == topic)
            .map(|r| r.payload)
            .collect()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
