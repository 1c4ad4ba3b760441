//! Recovery from lost state on either side: a controller that lost its
//! database, and a box re-provisioned with an empty agent store.

use std::time::Duration;

use mecvisor_e2e::site::{write_manifest, Agent, AgentOptions, Broker, Controller};
use mecvisor_e2e::{skip, wait_until, Mosquitto};

const WAIT: Duration = Duration::from_secs(30);

/// Restarts `controller` with its database deleted (its signing key kept),
/// then has the operator re-apply a changed `video` manifest for edge-1:
/// the controller's generation 1 now differs from the agent's.
fn restart_without_database(controller: &mut Controller, dir: &std::path::Path) {
    controller.stop();
    for file in ["controller.db", "controller.db-wal", "controller.db-shm"] {
        let _ = std::fs::remove_file(controller.data_dir.join(file));
    }
    controller.restart();
    controller.apply(&write_manifest(dir, "video", "edge-1", &["cam", "dvr"]));
}

/// The controller loses its database (signing key kept) and the operator
/// re-applies a changed manifest: the controller's generation 1 now differs
/// from the generation 1 the agent holds. The agent must still converge.
#[test]
fn agent_converges_after_the_controller_lost_its_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = mecvisor_e2e::free_port();
    let mut controller = Controller::start(dir.path(), Broker::Embedded { port });
    let agent = Agent::start_default(dir.path(), "edge-1", &controller);
    controller.apply(&write_manifest(dir.path(), "video", "edge-1", &["cam"]));
    assert_eq!(controller.wait_acked("edge-1", 1, WAIT), 1);

    restart_without_database(&mut controller, dir.path());
    let generation = controller.wait_acked("edge-1", 2, WAIT);
    // Converged: the new generation applied, its three objects recorded.
    wait_until(WAIT, || {
        let s = agent.status();
        let converged =
            s["applied_generation"].as_u64()? == generation && s["objects"].as_array()?.len() == 3;
        converged.then_some(s)
    })
    .unwrap_or_else(|| panic!("agent did not converge: {}", agent.log_text()));
}

/// As above, but through mosquitto, so the agent's connection never drops
/// while the controller restarts: the agent says no hello of its own, and
/// the re-issued generation 1 reaches it before the controller knows what it
/// holds. Refusing that document must make the agent say hello, so the
/// controller issues generation 2.
#[test]
fn agent_still_connected_converges_after_the_controller_lost_its_database() {
    if !Mosquitto::available() {
        skip(
            "agent_still_connected_converges_after_the_controller_lost_its_database",
            "mosquitto is not installed (cargo xtask test installs it)",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path());
    let external = || Broker::External {
        url: broker.url(false),
        tls: None,
    };
    let mut controller = Controller::start(dir.path(), external());
    let agent = Agent::start(
        dir.path(),
        "edge-1",
        &broker.url(false),
        &controller.public_key(),
        &AgentOptions::default(),
    );
    controller.apply(&write_manifest(dir.path(), "video", "edge-1", &["cam"]));
    assert_eq!(controller.wait_acked("edge-1", 1, WAIT), 1);
    wait_until(WAIT, || {
        (agent.status()["applied_generation"].as_u64()? == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("agent did not apply generation 1: {}", agent.log_text()));

    restart_without_database(&mut controller, dir.path());
    let generation = controller.wait_acked("edge-1", 2, WAIT);
    wait_until(WAIT, || {
        (agent.status()["applied_generation"].as_u64()? == generation).then_some(())
    })
    .unwrap_or_else(|| panic!("agent did not converge: {}", agent.log_text()));
    assert!(
        agent.log_text().contains("already accepted with hash"),
        "the re-issued generation 1 never reached the agent, so this test did not test the race: {}",
        agent.log_text()
    );
}

/// The box is re-provisioned: its agent store is wiped, so its report
/// sequence starts at 1 again. Its new reports must not be taken for
/// duplicates of the old store's.
#[test]
fn reports_from_a_reprovisioned_box_are_not_mistaken_for_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = mecvisor_e2e::free_port();
    let controller = Controller::start(dir.path(), Broker::Embedded { port });
    let mut agent = Agent::start_default(dir.path(), "edge-1", &controller);
    // Several generations, so the old store's seqs run ahead.
    for workloads in [&["a"][..], &["a", "b"], &["a", "b", "c"]] {
        controller.apply(&write_manifest(dir.path(), "video", "edge-1", workloads));
    }
    let before = controller.wait_acked("edge-1", 3, WAIT);
    wait_until(WAIT, || {
        let d = controller.describe("edge-1")?;
        (d["applied_generation"].as_u64()? == before).then_some(())
    })
    .expect("state reported before the wipe");

    agent.kill();
    std::fs::remove_dir_all(&agent.data_dir).expect("wipe the agent store");
    std::fs::create_dir_all(&agent.data_dir).expect("empty data dir");
    agent.restart();
    controller.apply(&write_manifest(dir.path(), "video", "edge-1", &["a"]));
    let after = controller.wait_acked("edge-1", before + 1, WAIT);
    let described = wait_until(WAIT, || {
        let d = controller.describe("edge-1")?;
        (d["applied_generation"].as_u64()? == after).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "the new store's state report was dropped: {:#?}\n{}",
            controller.describe("edge-1"),
            agent.log_text()
        )
    });
    assert_eq!(described["objects"].as_array().map(Vec::len), Some(2));
}
