//! Starting a local fleet: one fleet-controller with its embedded broker and
//! any number of edge-agents, all on free loopback ports under one directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::api::Api;
use crate::bins::Bins;
use crate::procs::{free_port, wait_for, Lifetime, Proc};
use crate::shell;

/// A running fleet-controller (embedded MQTT broker unless told otherwise).
pub struct Controller {
    /// The controller process.
    pub proc: Proc,
    /// HTTP API address, `127.0.0.1:PORT`.
    pub api_addr: String,
    /// Broker address agents use, `127.0.0.1:PORT`.
    pub mqtt_addr: String,
    /// Controller's Ed25519 public key (64 hex).
    pub pubkey: String,
    /// `--data-dir` of the controller.
    pub data_dir: PathBuf,
}

impl Controller {
    /// Creates the signing key (`fleet-controller pubkey`), starts `serve` and
    /// waits until the API answers with the same public key.
    pub fn start(bins: &Bins, dir: &Path, lifetime: Lifetime) -> Result<Controller> {
        Self::start_with_broker(bins, dir, lifetime, None)
    }

    /// Like [`Controller::start`], with an external plain MQTT broker on
    /// 127.0.0.1:`external_port` instead of the embedded one.
    pub fn start_with_broker(
        bins: &Bins,
        dir: &Path,
        lifetime: Lifetime,
        external_port: Option<u16>,
    ) -> Result<Controller> {
        let data_dir = dir.join("controller");
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let pubkey = shell::output(
            Command::new(&bins.controller)
                .arg("pubkey")
                .arg("--data-dir")
                .arg(&data_dir),
        )?
        .trim()
        .to_string();
        if pubkey.len() != 64 || !pubkey.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("`fleet-controller pubkey` printed {pubkey:?}, expected 64 hex digits");
        }
        let api_addr = format!("127.0.0.1:{}", free_port()?);
        let mqtt_addr = format!("127.0.0.1:{}", external_port.map_or_else(free_port, Ok)?);
        let mut serve = Command::new(&bins.controller);
        serve
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--api", &api_addr]);
        match external_port {
            Some(_) => serve.args(["--broker", &format!("mqtt://{mqtt_addr}")]),
            None => serve.args(["--mqtt-listen", &mqtt_addr]),
        };
        let mut proc = Proc::spawn(
            "fleet-controller",
            &mut serve,
            &dir.join("controller.log"),
            lifetime,
        )?;
        let api = Api::new(&api_addr);
        let served = wait_for(
            "the controller API to answer GET /v1/pubkey",
            Duration::from_secs(20),
            Duration::from_millis(50),
            |note| {
                proc.ensure_running()?;
                match api.get("/v1/pubkey") {
                    Ok(v) => Ok(v
                        .get("public_key")
                        .and_then(Value::as_str)
                        .map(String::from)),
                    Err(err) => {
                        *note = format!("{err:#}");
                        Ok(None)
                    }
                }
            },
        )?;
        if served != pubkey {
            bail!("API serves public key {served}, but `fleet-controller pubkey` printed {pubkey}");
        }
        Ok(Controller {
            proc,
            api_addr,
            mqtt_addr,
            pubkey,
            data_dir,
        })
    }
}

/// TLS material for an `mqtts://` agent connection.
pub struct AgentTls {
    /// CA certificate (PEM) that signed the broker's certificate.
    pub ca: PathBuf,
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Client private key (PEM).
    pub key: PathBuf,
}

/// What goes into one agent's config file.
pub struct AgentSpec<'a> {
    /// Device name.
    pub device: &'a str,
    /// Broker URL, `mqtt://...` or `mqtts://...`.
    pub mqtt_url: String,
    /// TLS files for `mqtts://`.
    pub tls: Option<&'a AgentTls>,
    /// Controller public key (64 hex).
    pub controller_key: &'a str,
    /// Labels sent in the hello.
    pub labels: &'a [(&'a str, &'a str)],
    /// More TOML appended to the config as it is (e.g. `[containers]` or
    /// `[content.registries."host:port"]` tables); empty for none.
    pub extra_config: &'a str,
    /// Log one JSON object per line (`--log-format json`) instead of text.
    pub log_json: bool,
}

/// A started agent: its process and config file.
pub struct Agent {
    /// The edge-agent process.
    pub proc: Proc,
    /// Path of its config file (for `edge-agent status --config`).
    pub config: PathBuf,
}

/// Writes `<dir>/<device>.toml` and starts `edge-agent run --config` on it.
pub fn start_agent(bins: &Bins, dir: &Path, spec: &AgentSpec, lifetime: Lifetime) -> Result<Agent> {
    let data_dir = dir.join(spec.device);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let config = dir.join(format!("{}.toml", spec.device));
    std::fs::write(&config, agent_config(spec, &data_dir))
        .with_context(|| format!("writing {}", config.display()))?;
    let mut cmd = Command::new(&bins.agent);
    cmd.arg("run").arg("--config").arg(&config);
    if spec.log_json {
        cmd.args(["--log-format", "json"]);
    }
    let proc = Proc::spawn(
        spec.device,
        &mut cmd,
        &dir.join(format!("{}.log", spec.device)),
        lifetime,
    )?;
    Ok(Agent { proc, config })
}

/// Renders an agent config (TOML, see the contract).
fn agent_config(spec: &AgentSpec, data_dir: &Path) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; `let _` keeps clippy quiet about it.
    let _ = writeln!(text, "device = {}", toml_str(spec.device));
    let _ = writeln!(text, "data_dir = {}", toml_str(&data_dir.to_string_lossy()));
    let _ = writeln!(text, "controller_key = {}", toml_str(spec.controller_key));
    if !spec.labels.is_empty() {
        let _ = writeln!(text, "\n[labels]");
        for (k, v) in spec.labels {
            let _ = writeln!(text, "{k} = {}", toml_str(v));
        }
    }
    let _ = writeln!(text, "\n[mqtt]\nurl = {}", toml_str(&spec.mqtt_url));
    if let Some(tls) = spec.tls {
        let _ = writeln!(text, "ca = {}", toml_str(&tls.ca.to_string_lossy()));
        let _ = writeln!(text, "cert = {}", toml_str(&tls.cert.to_string_lossy()));
        let _ = writeln!(text, "key = {}", toml_str(&tls.key.to_string_lossy()));
    }
    text.push_str(spec.extra_config);
    text
}

/// A TOML basic string (JSON string escaping is a valid subset).
fn toml_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Waits until the controller lists every device in `devices` as online.
pub fn wait_online(
    api: &Api,
    devices: &[String],
    timeout: Duration,
    procs: &mut [&mut Proc],
) -> Result<()> {
    wait_for(
        &format!("{} device(s) to be online at the controller", devices.len()),
        timeout,
        Duration::from_millis(100),
        |note| {
            for p in procs.iter_mut() {
                p.ensure_running()?;
            }
            let list = match api.get("/v1/devices") {
                Ok(list) => list,
                Err(err) => {
                    *note = format!("{err:#}");
                    return Ok(None);
                }
            };
            let online: Vec<&str> = list
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(|d| d.get("online").and_then(Value::as_bool) == Some(true))
                .filter_map(|d| d.get("name").and_then(Value::as_str))
                .collect();
            let missing = devices
                .iter()
                .filter(|d| !online.contains(&d.as_str()))
                .count();
            *note = format!("{missing} of {} not online yet", devices.len());
            Ok((missing == 0).then_some(()))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_config_is_contract_toml() {
        let tls = AgentTls {
            ca: "/t/ca.pem".into(),
            cert: "/t/c.pem".into(),
            key: "/t/k.pem".into(),
        };
        let spec = AgentSpec {
            device: "edge-1",
            mqtt_url: "mqtts://127.0.0.1:8883".into(),
            tls: Some(&tls),
            controller_key: "ab",
            labels: &[("site", "lab")],
            extra_config: "\n[containers]\nenabled = false\n",
            log_json: false,
        };
        let text = agent_config(&spec, Path::new("/d/edge-1"));
        assert_eq!(
            text,
            "device = \"edge-1\"\ndata_dir = \"/d/edge-1\"\ncontroller_key = \"ab\"\n\n\
             [labels]\nsite = \"lab\"\n\n[mqtt]\nurl = \"mqtts://127.0.0.1:8883\"\n\
             ca = \"/t/ca.pem\"\ncert = \"/t/c.pem\"\nkey = \"/t/k.pem\"\n\n\
             [containers]\nenabled = false\n"
        );
    }
}
