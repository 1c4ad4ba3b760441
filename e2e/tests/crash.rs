//! Must show 6: the agent is SIGKILLed at random points while signed documents
//! stream in, 100 times. After every kill its store opens and holds at least
//! the last generation it acked: nothing acked is ever lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use mecvisor_e2e::probe::Probe;
use mecvisor_e2e::site::{Agent, AgentOptions};
use mecvisor_e2e::{skip, Mosquitto};
use mecvisor_protocol::envelope::verifying_key_to_hex;
use mecvisor_protocol::*;
use rand::Rng;

const KILLS: usize = 100;

fn document(generation: u64) -> DesiredState {
    let digest = format!("sha256:{}", "cd".repeat(32));
    let workloads = (0..=(generation % 4))
        .map(|i| WorkloadSpec {
            name: format!("w{i}"),
            kind: WorkloadKind::Container(ContainerSpec {
                image: format!("registry.local/app@{digest}"),
                command: vec![],
                args: vec![format!("--generation={generation}")],
                env: vec![],
                ..Default::default()
            }),
            slice: None,
            resources: Resources {
                cpu_millis: 0,
                memory_mib: 32,
            },
            restart: RestartPolicy::Always,
            allow: Vec::new(),
            port_qos: None,
            address: None,
        })
        .collect();
    let spec = DeviceSpec {
        slices: vec![],
        workloads,
    };
    DesiredState {
        device: "edge-1".into(),
        generation,
        content_hash: spec.content_hash(),
        spec,
    }
}

fn highest_accepted(probe: &Probe) -> u64 {
    probe
        .on(&topics::ack("edge-1"))
        .iter()
        .filter_map(|b| decode::<Ack>(b).ok())
        .filter(|a| a.outcome == AckOutcome::Accepted)
        .map(|a| a.generation)
        .max()
        .unwrap_or(0)
}

#[test]
fn acked_generation_survives_100_sigkills() {
    if !Mosquitto::available() {
        return skip(
            "acked_generation_survives_100_sigkills",
            "mosquitto is not installed",
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path());
    let mut seed = [0u8; 32];
    rand::rng().fill(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let probe = Arc::new(Probe::connect(
        broker.port,
        "controller",
        &[&topics::ack("edge-1")],
    ));
    let mut agent = Agent::start(
        dir.path(),
        "edge-1",
        &broker.url(false),
        &verifying_key_to_hex(&key.verifying_key()),
        &AgentOptions::default(),
    );

    // The "controller": streams ever newer signed documents every few ms.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let streamer = {
        let (probe, stop, published) = (probe.clone(), stop.clone(), published.clone());
        std::thread::spawn(move || {
            let mut generation = 0;
            while !stop.load(Ordering::Relaxed) {
                generation += 1;
                let bytes = SignedDesired::sign(&document(generation), &key).to_bytes();
                probe.publish(&topics::desired("edge-1"), bytes);
                published.store(generation, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let mut rng = rand::rng();
    let mut checked_nonzero = 0;
    for kill in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.random_range(30..400)));
        agent.kill();
        // Acks already on their way when the process died still count.
        std::thread::sleep(Duration::from_millis(50));
        let acked = highest_accepted(&probe);
        let status = agent.status();
        assert_eq!(
            status["running"], false,
            "kill {kill}: status should read the store"
        );
        let stored = status["applied_generation"].as_u64().unwrap_or(0);
        assert!(
            stored >= acked,
            "kill {kill}: acked generation {acked} but the store holds {stored}\n{}",
            agent.log_text()
        );
        if acked > 0 {
            checked_nonzero += 1;
        }
        agent.restart();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = streamer.join();
    eprintln!(
        "{KILLS} kills, {checked_nonzero} with acks to check, {} documents published, highest acked {}",
        published.load(Ordering::Relaxed),
        highest_accepted(&probe)
    );
    assert!(
        checked_nonzero >= KILLS / 2,
        "the agent acked too rarely for the test to mean anything ({checked_nonzero} of {KILLS})"
    );
}
