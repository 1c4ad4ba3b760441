//! A whole mecvisor site in a temp dir: a broker, the fleet controller, agents,
//! driven through the real binaries and their CLIs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::certs::TestCerts;
use crate::process::{bin_path, free_port, wait_until, Child};

/// Which broker the site uses.
pub enum Broker {
    /// The controller's embedded rumqttd.
    Embedded {
        /// Its MQTT port.
        port: u16,
    },
    /// The controller's embedded rumqttd on a given address (e.g. a bridge
    /// address inside a network namespace).
    EmbeddedOn {
        /// Address it listens on.
        addr: std::net::SocketAddr,
    },
    /// An external broker (mosquitto) at this URL, with TLS files when mqtts.
    External {
        /// `mqtt://…` or `mqtts://…`.
        url: String,
        /// For mqtts: CA + the controller's client certificate and key.
        tls: Option<(PathBuf, PathBuf, PathBuf)>,
    },
}

impl Broker {
    /// URL agents connect to.
    pub fn url(&self) -> String {
        match self {
            Broker::Embedded { port } => format!("mqtt://127.0.0.1:{port}"),
            Broker::EmbeddedOn { addr } => format!("mqtt://{addr}"),
            Broker::External { url, .. } => url.clone(),
        }
    }
}

/// The fleet controller process and how to reach it.
pub struct Controller {
    child: Option<Child>,
    /// Its data directory (controller.db, signing.key).
    pub data_dir: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub api: String,
    api_port: u16,
    broker: Broker,
    log: PathBuf,
    netns: Option<String>,
}

impl Controller {
    /// Starts `fleet-controller serve` in `dir` and waits for its API.
    pub fn start(dir: &Path, broker: Broker) -> Self {
        Self::start_in(dir, broker, None)
    }

    /// Starts the controller inside the network namespace `netns` (its API on
    /// that namespace's loopback); fleetctl calls run there too.
    pub fn start_in_netns(dir: &Path, netns: &str, broker: Broker) -> Self {
        Self::start_in(dir, broker, Some(netns.to_string()))
    }

    fn start_in(dir: &Path, broker: Broker, netns: Option<String>) -> Self {
        let api_port = free_port();
        let mut controller = Controller {
            child: None,
            data_dir: dir.join("controller"),
            api: format!("http://127.0.0.1:{api_port}"),
            api_port,
            broker,
            log: dir.join("controller.log"),
            netns,
        };
        // A port picked free a moment ago can be taken by another test's
        // outgoing connection before the controller binds it: on
        // "Address already in use", pick new ports (nothing uses them yet).
        for _ in 0..3 {
            match controller.try_restart() {
                Ok(()) => return controller,
                Err(log) if log.contains("Address already in use") => {
                    controller.stop();
                    controller.api_port = free_port();
                    controller.api = format!("http://127.0.0.1:{}", controller.api_port);
                    if let Broker::Embedded { port } = &mut controller.broker {
                        *port = free_port();
                    }
                }
                Err(log) => panic!("fleet-controller API did not come up; log:\n{log}"),
            }
        }
        panic!(
            "fleet-controller found no free ports in 3 tries; log:\n{}",
            controller.log_text()
        );
    }

    /// Stops it with SIGTERM (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if !child.signal_and_wait(15, Duration::from_secs(10)) {
                child.kill();
            }
        }
    }

    /// Starts it again with the same data dir, ports and broker.
    pub fn restart(&mut self) {
        if let Err(log) = self.try_restart() {
            panic!("fleet-controller API did not come up; log:\n{log}");
        }
    }

    /// Starts it again; on failure returns its log.
    fn try_restart(&mut self) -> Result<(), String> {
        self.stop();
        let mut cmd = in_netns(self.netns.as_deref(), "fleet-controller");
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--api")
            .arg(format!("127.0.0.1:{}", self.api_port));
        match &self.broker {
            Broker::Embedded { port } => {
                cmd.arg("--mqtt-listen").arg(format!("127.0.0.1:{port}"));
            }
            Broker::EmbeddedOn { addr } => {
                cmd.arg("--mqtt-listen").arg(addr.to_string());
            }
            Broker::External { url, tls } => {
                cmd.arg("--broker").arg(url);
                if let Some((ca, cert, key)) = tls {
                    cmd.arg("--ca")
                        .arg(ca)
                        .arg("--cert")
                        .arg(cert)
                        .arg("--key")
                        .arg(key);
                }
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("controller log");
        cmd.stdout(log.try_clone().expect("log fd")).stderr(log);
        self.child = Some(Child::spawn("fleet-controller", &mut cmd));
        let api = self.api.clone();
        let netns = self.netns.clone();
        let up = wait_until(Duration::from_secs(20), || {
            if self.child.as_mut().is_some_and(|c| !c.is_running()) {
                return Some(false);
            }
            let out = fleetctl_raw(netns.as_deref(), &api, &["get", "devices", "-o", "json"]);
            out.status.success().then_some(true)
        });
        match up {
            Some(true) => Ok(()),
            _ => Err(self.log_text()),
        }
    }

    /// The controller's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The controller's public key (hex), from `fleet-controller pubkey`.
    pub fn public_key(&self) -> String {
        let out = Command::new(bin_path("fleet-controller"))
            .arg("pubkey")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .expect("run fleet-controller pubkey");
        assert!(
            out.status.success(),
            "pubkey: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// URL agents use to reach the broker.
    pub fn broker_url(&self) -> String {
        self.broker.url()
    }

    /// Runs fleetctl against this controller; panics on failure.
    pub fn fleetctl(&self, args: &[&str]) -> String {
        let out = fleetctl_raw(self.netns.as_deref(), &self.api, args);
        assert!(
            out.status.success(),
            "fleetctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs fleetctl and returns its output whatever the exit status.
    pub fn fleetctl_output(&self, args: &[&str]) -> Output {
        fleetctl_raw(self.netns.as_deref(), &self.api, args)
    }

    /// `fleetctl apply -f <file>`; returns the JSON-less stdout.
    pub fn apply(&self, manifest: &Path) -> String {
        self.fleetctl(&["apply", "-f", &manifest.display().to_string()])
    }

    /// `fleetctl describe device <name> -o json`, or None when unknown.
    pub fn describe(&self, device: &str) -> Option<Value> {
        let out = fleetctl_raw(
            self.netns.as_deref(),
            &self.api,
            &["describe", "device", device, "-o", "json"],
        );
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until the device has acked a desired generation >= `at_least`
    /// and acked == desired; returns that generation.
    pub fn wait_acked(&self, device: &str, at_least: u64, timeout: Duration) -> u64 {
        let seen = wait_until(timeout, || {
            let d = self.describe(device)?;
            let desired = d["desired_generation"].as_u64()?;
            let acked = d["acked_generation"].as_u64()?;
            (desired >= at_least && acked == desired).then_some(acked)
        });
        seen.unwrap_or_else(|| {
            panic!(
                "{device} did not ack generation {at_least}: {:#?}\ncontroller log:\n{}",
                self.describe(device),
                self.log_text()
            )
        })
    }

    /// Path of the controller database, for tests that check what it stored.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("controller.db")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command running the workspace binary `name`, inside `netns` if given.
fn in_netns(netns: Option<&str>, name: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(bin_path(name));
            cmd
        }
        None => Command::new(bin_path(name)),
    }
}

fn fleetctl_raw(netns: Option<&str>, api: &str, args: &[&str]) -> Output {
    in_netns(netns, "fleetctl")
        .arg("--server")
        .arg(api)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run fleetctl")
}

/// An edge-agent process with its own config and data dir.
pub struct Agent {
    child: Option<Child>,
    /// Device name.
    pub device: String,
    /// Config file.
    pub config: PathBuf,
    /// Data dir (agent.db).
    pub data_dir: PathBuf,
    log: PathBuf,
}

/// What an agent's config says beyond name, broker and key.
#[derive(Default, Clone)]
pub struct AgentOptions {
    /// mqtts files: (ca, cert, key).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// `[labels]`.
    pub labels: Vec<(String, String)>,
    /// Metrics interval; short values make reports while offline.
    pub metrics_interval_s: Option<u64>,
    /// Run containers. Off by default so tests about the sync protocol
    /// never start real containers (their objects are then `unsupported`).
    pub containers: bool,
    /// More TOML appended to the config as it is (e.g. `[containers]`
    /// settings or `[content.registries."host:port"]` tables when
    /// `containers` is set).
    pub extra_config: String,
}

impl Agent {
    /// Writes a config and starts `edge-agent run`.
    pub fn start(
        dir: &Path,
        device: &str,
        broker_url: &str,
        key: &str,
        opts: &AgentOptions,
    ) -> Self {
        let data_dir = dir.join(format!("agent-{device}"));
        std::fs::create_dir_all(&data_dir).expect("agent data dir");
        let config = dir.join(format!("agent-{device}.toml"));
        let mut text = format!(
            "device = \"{device}\"\ndata_dir = \"{}\"\ncontroller_key = \"{key}\"\n",
            data_dir.display()
        );
        if !opts.labels.is_empty() {
            text += "[labels]\n";
            for (k, v) in &opts.labels {
                text += &format!("{k} = \"{v}\"\n");
            }
        }
        text += &format!("[mqtt]\nurl = \"{broker_url}\"\nkeep_alive_s = 5\n");
        if let Some((ca, cert, key)) = &opts.tls {
            text += &format!(
                "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                ca.display(),
                cert.display(),
                key.display()
            );
        }
        if let Some(s) = opts.metrics_interval_s {
            text += &format!("[timers]\nmetrics_interval_s = {s}\n");
        }
        if !opts.containers {
            text += "[containers]\nenabled = false\n";
        }
        text += &opts.extra_config;
        std::fs::write(&config, text).expect("write agent config");
        let mut agent = Agent {
            child: None,
            device: device.to_string(),
            config,
            data_dir,
            log: dir.join(format!("agent-{device}.log")),
        };
        agent.restart();
        agent
    }

    /// Starts agent `device` with default options, on `controller`'s broker
    /// and trusting its key.
    pub fn start_default(dir: &Path, device: &str, controller: &Controller) -> Self {
        Self::start(
            dir,
            device,
            &controller.broker_url(),
            &controller.public_key(),
            &AgentOptions::default(),
        )
    }

    /// Starts the agent process (again).
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut cmd = Command::new(bin_path("edge-agent"));
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(Child::spawn("edge-agent", &mut cmd));
    }

    /// SIGKILL: a crash or power cut, as far as the process can tell.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if !child.signal_and_wait(15, Duration::from_secs(10)) {
                child.kill();
            }
        }
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(Child::is_running)
    }

    /// `edge-agent status -o json` (reads the store when the agent is down).
    pub fn status(&self) -> Value {
        let out = Command::new(bin_path("edge-agent"))
            .arg("status")
            .arg("--config")
            .arg(&self.config)
            .arg("-o")
            .arg("json")
            .output()
            .expect("run edge-agent status");
        assert!(
            out.status.success(),
            "edge-agent status failed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// mqtts files for a client named `name`: (ca, cert, key).
pub fn tls_files(certs: &TestCerts, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (cert, key) = certs.client(name);
    (certs.ca.clone(), cert, key)
}

/// Writes a manifest `name` for `device`: one slice `<name>-net` (VLAN derived
/// from the name) and the given container workloads. Returns its path.
pub fn write_manifest(dir: &Path, name: &str, device: &str, workloads: &[&str]) -> PathBuf {
    let vlan = 100 + name.bytes().map(u32::from).sum::<u32>() % 3000;
    let digest = "sha256:".to_string() + &"ab".repeat(32);
    let mut text = format!(
        "name: {name}\ndevices: [{device}]\nslices:\n  - name: {name}-net\n    vlan_id: {vlan}\n    uplink: eth0\n    qos: {{ tier: gold }}\nworkloads:\n"
    );
    for w in workloads {
        text += &format!(
            "  - name: {w}\n    container:\n      image: \"registry.local/{w}@{digest}\"\n    slice: {name}-net\n    resources: {{ memory_mib: 64 }}\n    restart: on-failure\n"
        );
    }
    if workloads.is_empty() {
        text = text.replace("workloads:\n", "workloads: []\n");
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write manifest");
    path
}
