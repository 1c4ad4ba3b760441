//! End-to-end sync over a real mosquitto broker with the real `edge-agent`
//! binary: the test plays the controller with rumqttc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use mecvisor_e2e::Mosquitto;
use mecvisor_protocol::{
    envelope::verifying_key_to_hex, topics, Ack, AckOutcome, ContainerSpec, DesiredState,
    DeviceSpec, Hello, Phase, QosSpec, QosTier, Report, ReportBody, Resources, RestartPolicy,
    SignedDesired, SliceSpec, WorkloadKind, WorkloadSpec,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const DEVICE: &str = "edge-1";

/// A child process killed (and reaped) when the test ends, pass or fail.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mosquitto(dir: &Path) -> (Mosquitto, u16) {
    let broker = Mosquitto::start(dir);
    let port = broker.port;
    (broker, port)
}

fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_edge-agent")
}

fn status_json(config: &Path) -> serde_json::Value {
    let out = Command::new(agent_bin())
        .args(["status", "--config"])
        .arg(config)
        .args(["-o", "json"])
        .output()
        .expect("running edge-agent status");
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("edge-agent status printed JSON")
}

fn desired(generation: u64) -> DesiredState {
    let spec = DeviceSpec {
        slices: vec![SliceSpec {
            name: "video".into(),
            vlan_id: 100,
            uplink: "eth0".into(),
            qos: QosSpec {
                tier: Some(QosTier::Gold),
                ..Default::default()
            },
            subnet: None,
            gateway: None,
        }],
        workloads: vec![WorkloadSpec {
            name: "camera".into(),
            kind: WorkloadKind::Container(ContainerSpec {
                image: format!("registry.local/cam@sha256:{}", "ab".repeat(32)),
                command: vec![],
                args: vec![],
                env: vec![],
                ..Default::default()
            }),
            slice: Some("video".into()),
            resources: Resources {
                cpu_millis: 500,
                memory_mib: 64,
            },
            restart: RestartPolicy::OnFailure,
            allow: Vec::new(),
            port_qos: None,
            address: None,
        }],
    };
    DesiredState {
        device: DEVICE.into(),
        generation,
        content_hash: spec.content_hash(),
        spec,
    }
}

/// Messages the fake controller received, by kind.
#[derive(Debug)]
enum Uplink {
    Hello(Hello),
    Ack(Ack),
    Report(Report),
    Presence(String),
}

async fn next_matching<F: FnMut(&Uplink) -> bool>(
    rx: &mut mpsc::UnboundedReceiver<Uplink>,
    what: &str,
    mut pred: F,
) -> Uplink {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(msg)) if pred(&msg) => return msg,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("controller link closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_accepts_signed_state_and_reports() {
    if !Mosquitto::available() {
        eprintln!("SKIPPED: mosquitto is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_broker, port) = start_mosquitto(dir.path());

    let key = SigningKey::from_bytes(&[42u8; 32]);
    let data_dir: PathBuf = dir.path().join("data");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device = \"{DEVICE}\"\ndata_dir = \"{}\"\ncontroller_key = \"{}\"\n[labels]\nsite = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nkeep_alive_s = 5\n[timers]\nmetrics_interval_s = 1\nresync_interval_s = 2\n[containers]\nenabled = false\n",
            data_dir.display(),
            verifying_key_to_hex(&key.verifying_key())
        ),
    )
    .unwrap();

    // The fake controller: poll in one task, publish from this one.
    let mut opts = MqttOptions::new("controller", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    client
        .subscribe(format!("{}/{DEVICE}/+", topics::PREFIX), QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (suback_tx, mut suback_rx) = mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = suback_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let msg = if p.topic.ends_with("/hello") {
                        Uplink::Hello(mecvisor_protocol::decode(&p.payload).unwrap())
                    } else if p.topic.ends_with("/ack") {
                        Uplink::Ack(mecvisor_protocol::decode(&p.payload).unwrap())
                    } else if p.topic.ends_with("/report") {
                        Uplink::Report(mecvisor_protocol::decode(&p.payload).unwrap())
                    } else if p.topic.ends_with("/presence") {
                        Uplink::Presence(String::from_utf8_lossy(&p.payload).into_owned())
                    } else {
                        continue;
                    };
                    if tx.send(msg).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("controller connection failed: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), suback_rx.recv())
        .await
        .expect("controller subscription");

    let agent = Command::new(agent_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut agent = Reaped(agent);

    // online + hello on connect
    next_matching(
        &mut rx,
        "presence online",
        |m| matches!(m, Uplink::Presence(p) if p == "online"),
    )
    .await;
    let Uplink::Hello(hello) =
        next_matching(&mut rx, "hello", |m| matches!(m, Uplink::Hello(_))).await
    else {
        unreachable!()
    };
    assert_eq!(hello.device, DEVICE);
    assert_eq!(hello.last_applied_generation, 0);
    assert_eq!(hello.arch, std::env::consts::ARCH);
    assert_eq!(hello.labels.len(), 1);

    // garbage first: refused with a reason, agent keeps going
    client
        .publish(
            topics::desired(DEVICE),
            QoS::AtLeastOnce,
            false,
            b"\xde\xad\xbe\xef".to_vec(),
        )
        .await
        .unwrap();
    let Uplink::Ack(ack) =
        next_matching(&mut rx, "rejection ack", |m| matches!(m, Uplink::Ack(_))).await
    else {
        unreachable!()
    };
    assert!(
        matches!(ack.outcome, AckOutcome::Rejected(ref r) if r.contains("cannot decode")),
        "{ack:?}"
    );

    // a signed document: accepted, then reported as unsupported objects
    let doc = desired(1);
    client
        .publish(
            topics::desired(DEVICE),
            QoS::AtLeastOnce,
            false,
            SignedDesired::sign(&doc, &key).to_bytes(),
        )
        .await
        .unwrap();
    let Uplink::Ack(ack) = next_matching(
        &mut rx,
        "accepted ack",
        |m| matches!(m, Uplink::Ack(a) if a.generation == 1),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(ack.outcome, AckOutcome::Accepted);
    assert_eq!(ack.content_hash, doc.content_hash);
    let Uplink::Report(report) = next_matching(&mut rx, "state report for generation 1", |m| {
        matches!(m, Uplink::Report(Report { body: ReportBody::State(s), .. }) if s.applied_generation == 1)
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(report.device, DEVICE);
    let ReportBody::State(state) = report.body else {
        unreachable!()
    };
    assert_eq!(state.objects.len(), 2);
    for o in &state.objects {
        assert_eq!(o.phase, Phase::Unsupported, "{o:?}");
        assert_eq!(o.generation, 1);
    }
    let camera = state.objects.iter().find(|o| o.name == "camera").unwrap();
    assert_eq!(
        camera.message,
        "containers are off in this agent's config ([containers] enabled = false)"
    );

    // metrics flow too (interval 1 s)
    next_matching(&mut rx, "metrics report", |m| {
        matches!(
            m,
            Uplink::Report(Report {
                body: ReportBody::Metrics(_),
                ..
            })
        )
    })
    .await;

    // status over the socket
    let status = status_json(&config);
    assert_eq!(status["running"], true);
    assert_eq!(status["device"], DEVICE);
    assert_eq!(status["link"], "connected");
    assert_eq!(status["applied_generation"], 1);
    assert_eq!(status["applied_hash"], doc.content_hash.as_str());
    assert_eq!(status["objects"].as_array().unwrap().len(), 2);
    assert_eq!(status["objects"][0]["phase"], "unsupported");

    // graceful stop: says offline, exits 0
    let pid = agent.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    next_matching(
        &mut rx,
        "presence offline",
        |m| matches!(m, Uplink::Presence(p) if p == "offline"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = agent.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");

    // not running: read from the store
    let status = status_json(&config);
    assert_eq!(status["running"], false);
    assert_eq!(status["link"], "disconnected");
    assert_eq!(status["applied_generation"], 1);

    // restart offline-first: the stored document is replayed and the hello says so
    let agent2 = Command::new(agent_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _agent2 = Reaped(agent2);
    let Uplink::Hello(hello) =
        next_matching(&mut rx, "second hello", |m| matches!(m, Uplink::Hello(_))).await
    else {
        unreachable!()
    };
    assert_eq!(hello.last_applied_generation, 1);
    assert_eq!(hello.last_applied_hash, doc.content_hash);
    assert_eq!(hello.objects.len(), 2);
    // a replay of the same document is a duplicate: accepted again
    client
        .publish(
            topics::desired(DEVICE),
            QoS::AtLeastOnce,
            false,
            SignedDesired::sign(&doc, &key).to_bytes(),
        )
        .await
        .unwrap();
    let Uplink::Ack(ack) =
        next_matching(&mut rx, "duplicate ack", |m| matches!(m, Uplink::Ack(_))).await
    else {
        unreachable!()
    };
    assert_eq!((ack.generation, ack.outcome), (1, AckOutcome::Accepted));
    poller.abort();
}

/// A real TCP forwarder between the agent and the broker that the test can
/// take down (refusing new connections and cutting live ones) and bring up.
struct Gate {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start(broker_port: u16) -> Gate {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let port = listener.local_addr().expect("the bound address").port();
        let up = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (gate_up, gate_epoch) = (up.clone(), epoch.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                if !gate_up.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let my_epoch = gate_epoch.load(Ordering::SeqCst);
                let watch_epoch = gate_epoch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                    else {
                        return;
                    };
                    let cut = async {
                        while watch_epoch.load(Ordering::SeqCst) == my_epoch {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut => {}
                    }
                });
            }
        });
        Gate {
            port,
            up,
            epoch,
            task,
        }
    }

    fn set_up(&self, up: bool) {
        use std::sync::atomic::Ordering;
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_broker_outages() {
    if !Mosquitto::available() {
        eprintln!("SKIPPED: mosquitto is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_broker, port) = start_mosquitto(dir.path());
    let gate = Gate::start(port).await;
    let key = SigningKey::from_bytes(&[43u8; 32]);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device = \"{DEVICE}\"\ndata_dir = \"{}\"\ncontroller_key = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nkeep_alive_s = 5\n[timers]\nmetrics_interval_s = 1\n[containers]\nenabled = false\n",
            dir.path().join("data").display(),
            verifying_key_to_hex(&key.verifying_key()),
            gate.port
        ),
    )
    .unwrap();

    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("controller", "127.0.0.1", port), 64);
    client
        .subscribe(topics::report(DEVICE), QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let (suback_tx, mut suback_rx) = mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = suback_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let report: Report = mecvisor_protocol::decode(&p.payload).unwrap();
                    assert!(matches!(report.body, ReportBody::Metrics(_)));
                    let _ = tx.send(report.seq);
                }
                Ok(_) => {}
                Err(e) => panic!("controller connection failed: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), suback_rx.recv())
        .await
        .expect("controller subscription");

    let agent = Command::new(agent_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _agent = Reaped(agent);

    // Broker unreachable: metrics pile up durably.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let status = status_json(&config);
    assert_eq!(status["link"], "disconnected");
    assert!(status["outbox_depth"].as_u64().unwrap() >= 3, "{status}");

    let mut seen = std::collections::BTreeSet::new();
    let mut wait_for = |rx: &mut mpsc::UnboundedReceiver<u64>, want: u64| {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            while let Ok(seq) = rx.try_recv() {
                seen.insert(seq);
            }
            if seen.len() as u64 >= want {
                return seen.clone();
            }
            assert!(
                Instant::now() < deadline,
                "only got seqs {seen:?}, wanted {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    gate.set_up(true);
    let first = wait_for(&mut rx, 3);
    // Cut the live connection, stay down a while, come back.
    gate.set_up(false);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gate.set_up(true);
    let target = *first.iter().max().unwrap() + 4;
    let all = wait_for(&mut rx, target);
    // Nothing lost: every seq from 1 to the highest seen arrived.
    let max = *all.iter().max().unwrap();
    assert_eq!(all, (1..=max).collect(), "gaps in delivered seqs");
    poller.abort();
}
