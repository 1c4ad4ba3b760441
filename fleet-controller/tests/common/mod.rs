//! Test helpers: the real controller process, a real mosquitto, a fake device
//! speaking the wire protocol over a real MQTT connection, and HTTP calls.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mecvisor_protocol::topics;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

pub use mecvisor_e2e::free_port;

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `fleet-controller serve`, killed on drop.
pub struct Controller {
    child: Child,
    pub api: String,
    pub mqtt_port: u16,
    pub log: PathBuf,
}

impl Controller {
    /// Starts the controller with the embedded broker on a random port.
    pub fn start_embedded(data_dir: &Path) -> Controller {
        let mqtt_port = free_port();
        Self::start(data_dir, mqtt_port, &[])
    }

    /// Starts the controller against an external broker.
    pub fn start_external(data_dir: &Path, broker_port: u16) -> Controller {
        let url = format!("mqtt://127.0.0.1:{broker_port}");
        Self::start(data_dir, broker_port, &["--broker", &url])
    }

    fn start(data_dir: &Path, mqtt_port: u16, extra: &[&str]) -> Controller {
        let api_port = free_port();
        let log = data_dir.join(format!("controller-{api_port}.log"));
        let log_file = std::fs::File::create(&log).expect("creating the controller log");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--api".into(),
            format!("127.0.0.1:{api_port}"),
        ];
        if extra.is_empty() {
            args.push("--mqtt-listen".into());
            args.push(format!("127.0.0.1:{mqtt_port}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(env!("CARGO_BIN_EXE_fleet-controller"))
            .args(&args)
            .env("RUST_LOG", "info,rumqttd=warn")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn fleet-controller");
        let c = Controller {
            child,
            api: format!("http://127.0.0.1:{api_port}"),
            mqtt_port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(&c.api, "/v1/pubkey").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "controller did not come up; log:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// The controller's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("polling the controller process")
            .is_none()
    }

    /// Stops it and waits for it to exit.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    )
}

fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    match r {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// GET, returning status and JSON body (status 0: unreachable).
pub fn get(api: &str, path: &str) -> (u16, Value) {
    finish(agent().get(&format!("{api}{path}")).call())
}

/// POST a text body.
pub fn post(api: &str, path: &str, body: &str) -> (u16, Value) {
    finish(agent().post(&format!("{api}{path}")).send(body))
}

/// DELETE.
pub fn delete(api: &str, path: &str) -> (u16, Value) {
    finish(agent().delete(&format!("{api}{path}")).call())
}

/// The example manifest shipped in the repository.
pub fn example_manifest() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/fleet.yaml"
    ))
    .expect("reading examples/fleet.yaml")
}

/// Starts a real mosquitto (the e2e test kit's), or returns `None` after
/// printing why when it is not installed.
pub fn start_mosquitto(dir: &Path) -> Option<mecvisor_e2e::Mosquitto> {
    if !mecvisor_e2e::Mosquitto::available() {
        println!("SKIP: mosquitto is not installed");
        return None;
    }
    Some(mecvisor_e2e::Mosquitto::start(dir))
}

/// What the fake device's poller saw.
#[derive(Debug)]
pub enum Seen {
    Connected,
    Subscribed,
    Desired(Vec<u8>),
}

/// A fake device: a real MQTT client speaking the agent side of the protocol.
pub struct FakeDevice {
    pub name: String,
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Seen>,
    poller: tokio::task::JoinHandle<()>,
}

impl FakeDevice {
    /// Connects to the broker on `port` and subscribes to its desired topic.
    pub async fn connect(name: &str, port: u16) -> FakeDevice {
        let mut opts = MqttOptions::new(format!("fake-{name}-{port}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(10));
        let max = mecvisor_protocol::MAX_MESSAGE_BYTES + 64 * 1024;
        opts.set_max_packet_size(max, max);
        let (client, mut eventloop) = AsyncClient::new(opts, 32);
        let (tx, rx) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = tx.send(Seen::Connected);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = tx.send(Seen::Subscribed);
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(Seen::Desired(p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let mut dev = FakeDevice {
            name: name.to_string(),
            client,
            rx,
            poller,
        };
        dev.wait_for("connack", |s| matches!(s, Seen::Connected))
            .await;
        dev.client
            .subscribe(topics::desired(name), QoS::AtLeastOnce)
            .await
            .expect("subscribing to the desired topic");
        dev.wait_for("suback", |s| matches!(s, Seen::Subscribed))
            .await;
        dev
    }

    async fn wait_for(&mut self, what: &str, f: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(s)) if f(&s) => return s,
                Ok(Some(_)) => {}
                Ok(None) => panic!("device poller ended while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Waits for the next desired document.
    pub async fn next_desired(&mut self) -> Vec<u8> {
        match self
            .wait_for("a desired document", |s| matches!(s, Seen::Desired(_)))
            .await
        {
            Seen::Desired(b) => b,
            _ => unreachable!(),
        }
    }

    /// Whether a desired document arrives within `wait`.
    pub async fn desired_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Seen::Desired(b))) => return Some(b),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    /// Publishes raw bytes on a topic (QoS 1).
    pub async fn publish_raw(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publishing");
    }
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        self.poller.abort();
    }
}
