//! Containers end to end, with the real binaries: fleet-controller (its
//! embedded broker), fleetctl, edge-agent with runc (Debian's), and a real
//! registry on loopback serving a busybox image this test builds.
//!
//! 1. A manifest applied through fleetctl runs its containers; `fleetctl
//!    describe` shows them running; `edge-agent logs` shows their output.
//! 2. Killing a container's process: restarted by on-failure with backoff,
//!    the restart counted. A memory hog is OOM-killed and that is reported.
//!    A failing health check gets a container restarted.
//! 3. Restarting the agent: the container keeps its PID (adopted).
//! 4. Broker and registry down, the box "rebooted" (containers, monitors,
//!    mounts and the runtime's state gone), agent restarted: the containers
//!    come back from the stored desired state and the cached image.
//!
//! Needs root and runc; skips with the reason otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mecvisor_e2e::oci::{push, LayerCompression, TestImage};
use mecvisor_e2e::registry::{Registry, RegistryOptions};
use mecvisor_e2e::site::{Agent, AgentOptions, Broker, Controller};
use mecvisor_e2e::wait_until;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (runc, cgroups, mounts)");
    }
    if Command::new("runc").arg("--version").output().is_err() {
        return Some("runc is not installed (apt-get install runc)");
    }
    None
}

/// The runtime's state directory of this test's agent, and cleanup of
/// every container in it (also when the test fails).
struct Runc {
    root: PathBuf,
    state: PathBuf,
}

impl Runc {
    fn command(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.root);
        c
    }

    fn pid(&self, id: &str) -> Option<i32> {
        let out = self.command().args(["state", id]).output().ok()?;
        let state: Value = serde_json::from_slice(&out.stdout).ok()?;
        (state["status"] == "running")
            .then(|| state["pid"].as_i64())?
            .map(|p| p as i32)
    }

    fn ids(&self) -> Vec<String> {
        let out = self
            .command()
            .args(["list", "-q"])
            .output()
            .expect("runc list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// What a power cut does to containers: monitors and containers die,
    /// the runtime's tmpfs state and the overlay mounts are gone.
    fn power_cut(&self) {
        let _ = Command::new("pkill")
            .args([
                "-KILL",
                "-f",
                &format!("container-monitor --state {}", self.state.display()),
            ])
            .status();
        for id in self.ids() {
            let _ = self.command().args(["delete", "--force", &id]).status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
        if let Ok(entries) = std::fs::read_dir(self.state.join("containers")) {
            for entry in entries.flatten() {
                let _ = nix::mount::umount2(
                    &entry.path().join("bundle/rootfs"),
                    nix::mount::MntFlags::MNT_DETACH,
                );
            }
        }
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        self.power_cut();
    }
}

fn object<'a>(describe: &'a Value, name: &str) -> Option<&'a Value> {
    describe["objects"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == name)
}

fn wait_object(
    controller: &Controller,
    agent: &Agent,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(WAIT, || {
        let d = controller.describe(&agent.device)?;
        object(&d, name).filter(|o| check(o)).cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "{name}: never {what}: {:#}\nagent log:\n{}",
            controller.describe(&agent.device).unwrap_or_default(),
            agent.log_text()
        )
    })
}

fn logs(agent: &Agent, name: &str) -> String {
    let out = Command::new(mecvisor_e2e::bin_path("edge-agent"))
        .args(["logs", name, "--config"])
        .arg(&agent.config)
        .output()
        .expect("edge-agent logs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Fields drop in this order: containers first, the directory last.
struct Site {
    runc: Runc,
    agent: Agent,
    controller: Controller,
    registry: Registry,
    image: String,
    dir: tempfile::TempDir,
}

fn site(device: &str) -> Option<Site> {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return None;
    }
    let registry = Registry::start(RegistryOptions::default())?;
    let image = TestImage::busybox(LayerCompression::Gzip).with_config(|c| {
        c["config"]["Cmd"] =
            serde_json::json!(["/bin/sh", "-c", "echo image default; exec sleep 3600"]);
    });
    push(&registry, "edge/busybox", "v1", &image);
    let dir = tempfile::Builder::new()
        .prefix("mv-e2e-containers-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let controller = Controller::start(
        dir.path(),
        Broker::Embedded {
            port: mecvisor_e2e::free_port(),
        },
    );
    let runc = Runc {
        root: dir.path().join("runc"),
        state: dir.path().join(format!("agent-{device}")),
    };
    let opts = AgentOptions {
        containers: true,
        extra_config: format!(
            "[containers]\nruntime_root = \"{}\"\n[content.registries.\"{}\"]\nplain_http = true\n",
            runc.root.display(),
            registry.host()
        ),
        ..AgentOptions::default()
    };
    let agent = Agent::start(
        dir.path(),
        device,
        &controller.broker_url(),
        &controller.public_key(),
        &opts,
    );
    let image = format!("{}/edge/busybox:v1", registry.host());
    Some(Site {
        dir,
        registry,
        controller,
        agent,
        runc,
        image,
    })
}

fn manifest(dir: &Path, device: &str, body: &str) -> PathBuf {
    let path = dir.join("containers.yaml");
    std::fs::write(
        &path,
        format!("name: edge-apps\ndevices: [{device}]\nworkloads:\n{body}"),
    )
    .expect("manifest");
    path
}

#[test]
fn containers_run_restart_report_ooms_and_survive_agent_restarts() {
    let device = format!("ctr-{}", std::process::id() % 100_000);
    let Some(mut s) = site(&device) else { return };
    let web = format!("web{}", std::process::id() % 100_000);
    let hog = format!("hog{}", std::process::id() % 100_000);
    let sick = format!("sick{}", std::process::id() % 100_000);
    let body = format!(
        "  - name: {web}\n    container:\n      image: \"{image}\"\n      command: [/bin/sh, -c, 'echo web started; exec httpd -f -p 8080']\n      health: {{ http: {{ port: 8080, path: / }}, interval_s: 1 }}\n    resources: {{ memory_mib: 64 }}\n    restart: on-failure\n\
         \x20 - name: {hog}\n    container:\n      image: \"{image}\"\n      command: [/bin/sh, -c, 'exec dd if=/dev/zero of=/dev/null bs=64M count=4']\n    resources: {{ memory_mib: 16 }}\n    restart: never\n\
         \x20 - name: {sick}\n    container:\n      image: \"{image}\"\n      health: {{ exec: [/bin/sh, -c, 'test -f /tmp/ready'], interval_s: 1, retries: 2 }}\n    resources: {{ memory_mib: 32 }}\n    restart: always\n",
        image = s.image
    );
    s.controller.apply(&manifest(s.dir.path(), &device, &body));

    // 1. Running, described, logs readable.
    wait_object(&s.controller, &s.agent, &web, "running", |o| {
        o["phase"] == "running"
    });
    let text = wait_until(WAIT, || {
        Some(logs(&s.agent, &web)).filter(|t| t.contains("stdout web started"))
    })
    .unwrap_or_else(|| panic!("no log line: {}", logs(&s.agent, &web)));
    assert!(text.contains("mecvisor started, pid"), "{text}");
    let human = s.controller.fleetctl(&["describe", "device", &device]);
    assert!(human.contains(&web) && human.contains("running"), "{human}");

    // OOM reported, not restarted (never).
    let oom = wait_object(&s.controller, &s.agent, &hog, "failed", |o| {
        o["phase"] == "failed"
    });
    let message = oom["message"].as_str().unwrap_or_default();
    assert!(message.contains("OOM-killed"), "{oom:#}");
    assert!(message.contains("not restarted"), "{oom:#}");

    // The image's default command ran for the workload without one, and
    // its health check (no /tmp/ready) failed twice: restarted by always.
    assert!(wait_until(WAIT, || Some(logs(&s.agent, &sick))
        .filter(|t| t.contains("stdout image default")))
    .is_some());
    let restarted = wait_object(
        &s.controller,
        &s.agent,
        &sick,
        "restarted for failing its health check",
        |o| o["restarts"].as_u64().unwrap_or(0) >= 1,
    );
    assert!(
        restarted.to_string().contains("unhealthy") || restarted["phase"] == "running",
        "{restarted:#}"
    );

    // 2. Kill the web container's process: on-failure restarts it.
    let pid = s.runc.pid(&web).expect("web runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let back = wait_object(
        &s.controller,
        &s.agent,
        &web,
        "restarted after the kill",
        |o| o["phase"] == "running" && o["restarts"].as_u64() == Some(1),
    );
    let new_pid = s.runc.pid(&web).expect("web runs again");
    assert_ne!(new_pid, pid, "{back:#}");
    assert!(
        logs(&s.agent, &web).contains("killed by signal 9"),
        "{}",
        logs(&s.agent, &web)
    );

    // 3. Agent restart (even a crash): the container keeps running, same PID.
    let log_mark = s.agent.log_text().len();
    s.agent.kill();
    s.agent.restart();
    wait_until(WAIT, || {
        s.agent.log_text()[log_mark..]
            .contains("container adopted as it runs")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not adopted: {}", s.agent.log_text()));
    assert_eq!(
        s.runc.pid(&web),
        Some(new_pid),
        "same process after the agent restart"
    );
    let status = s.agent.status();
    let web_status = status["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["name"] == web.as_str())
        .cloned()
        .expect("web");
    assert_eq!(web_status["phase"], "running", "{status:#}");
    assert_eq!(web_status["restarts"].as_u64(), Some(1), "{status:#}");

    // Removing the workloads removes the containers and their directories.
    s.controller
        .apply(&manifest(s.dir.path(), &device, "  []\n"));
    wait_until(WAIT, || s.runc.ids().is_empty().then_some(()))
        .unwrap_or_else(|| panic!("containers left: {:?}", s.runc.ids()));
    // The runtime deletes the container first, then its directory.
    let directory = s.runc.state.join("containers").join(&web);
    wait_until(WAIT, || (!directory.exists()).then_some(()))
        .unwrap_or_else(|| panic!("{} left behind", directory.display()));
}

#[test]
fn after_a_power_cut_containers_come_back_without_controller_or_registry() {
    let device = format!("cut-{}", std::process::id() % 100_000);
    let Some(mut s) = site(&device) else { return };
    let app = format!("app{}", std::process::id() % 100_000);
    let body = format!(
        "  - name: {app}\n    container:\n      image: \"{image}\"\n      command: [/bin/sh, -c, 'echo boot $(cat /proc/uptime); exec sleep 3600']\n      volumes: [{{ name: data, path: /data }}]\n    resources: {{ memory_mib: 32 }}\n",
        image = s.image
    );
    s.controller.apply(&manifest(s.dir.path(), &device, &body));
    wait_object(&s.controller, &s.agent, &app, "running", |o| {
        o["phase"] == "running"
    });
    let before = s.runc.pid(&app).expect("running");

    s.controller.stop();
    s.registry.stop();
    s.agent.kill();
    s.runc.power_cut();
    assert!(s.runc.ids().is_empty());
    s.agent.restart();
    let pid = wait_until(WAIT, || s.runc.pid(&app))
        .unwrap_or_else(|| panic!("not back: {}", s.agent.log_text()));
    assert_ne!(pid, before);
    let status = s.agent.status();
    assert_eq!(status["link"], "disconnected", "{status:#}");
    let o = status["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["name"] == app.as_str())
        .cloned()
        .expect("app");
    assert_eq!(o["phase"], "running", "{status:#}");
    let log = s.agent.log_text();
    assert!(
        log.contains("replaying the last accepted desired state"),
        "{log}"
    );
    assert!(
        log.contains("registry unreachable; using the copy pulled earlier"),
        "{log}"
    );
    assert_eq!(
        logs(&s.agent, &app).matches("stdout boot").count(),
        2,
        "{}",
        logs(&s.agent, &app)
    );
}
