//! The agent's TOML configuration: parsed, then validated as a whole so an
//! operator sees every problem at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use mecvisor_protocol::envelope::verifying_key_from_hex;
use mecvisor_protocol::validate::check_name;
use mqtt_transport::{BrokerUrl, Scheme};
use serde::Deserialize;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// Config file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("cannot parse config {path}: {message}")]
    Parse {
        /// Config file.
        path: PathBuf,
        /// Parser message, with line and column.
        message: String,
    },
    /// The file parsed but some values are invalid.
    #[error("invalid config {path}: {}", problems.join("; "))]
    Invalid {
        /// Config file.
        path: PathBuf,
        /// Every problem found, each as `key: message`.
        problems: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    device: String,
    data_dir: PathBuf,
    controller_key: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    mqtt: RawMqtt,
    #[serde(default)]
    outbox: RawOutbox,
    #[serde(default)]
    timers: RawTimers,
    #[serde(default)]
    slicing: RawSlicing,
    #[serde(default)]
    containers: RawContainers,
    #[serde(default)]
    content: RawContent,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainers {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_oci_runtime")]
    runtime: String,
    #[serde(default)]
    runtime_root: Option<PathBuf>,
    #[serde(default = "default_log_max_bytes")]
    log_max_bytes: u64,
    #[serde(default = "default_log_files")]
    log_files: u32,
    #[serde(default = "default_start_timeout")]
    start_timeout_s: u64,
}

impl Default for RawContainers {
    fn default() -> Self {
        RawContainers {
            enabled: yes(),
            runtime: default_oci_runtime(),
            runtime_root: None,
            log_max_bytes: default_log_max_bytes(),
            log_files: default_log_files(),
            start_timeout_s: default_start_timeout(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_oci_runtime() -> String {
    "runc".into()
}
fn default_log_max_bytes() -> u64 {
    1 << 20
}
fn default_log_files() -> u32 {
    3
}
fn default_start_timeout() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContent {
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_s: u64,
    #[serde(default = "default_read_timeout")]
    read_timeout_s: u64,
    #[serde(default = "default_max_blob_bytes")]
    max_blob_bytes: u64,
    #[serde(default)]
    registries: BTreeMap<String, content_store::RegistryAccess>,
}

fn default_max_blob_bytes() -> u64 {
    content_store::RegistryOptions::default().max_blob_bytes
}

impl Default for RawContent {
    fn default() -> Self {
        RawContent {
            dir: None,
            connect_timeout_s: default_connect_timeout(),
            read_timeout_s: default_read_timeout(),
            max_blob_bytes: default_max_blob_bytes(),
            registries: BTreeMap::new(),
        }
    }
}

fn default_connect_timeout() -> u64 {
    10
}
fn default_read_timeout() -> u64 {
    30
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlicing {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    capacity_kbit: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    url: String,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default = "default_keep_alive")]
    keep_alive_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    #[serde(default = "default_max_entries")]
    max_entries: u64,
}

impl Default for RawOutbox {
    fn default() -> Self {
        RawOutbox {
            max_entries: default_max_entries(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimers {
    #[serde(default = "default_metrics_interval")]
    metrics_interval_s: u64,
    #[serde(default = "default_resync_interval")]
    resync_interval_s: u64,
}

impl Default for RawTimers {
    fn default() -> Self {
        RawTimers {
            metrics_interval_s: default_metrics_interval(),
            resync_interval_s: default_resync_interval(),
        }
    }
}

fn default_keep_alive() -> u64 {
    30
}
fn default_max_entries() -> u64 {
    10_000
}
fn default_metrics_interval() -> u64 {
    60
}
fn default_resync_interval() -> u64 {
    30
}

/// Smallest outbox bound accepted; below this the drop policy makes no sense.
pub const MIN_OUTBOX_ENTRIES: u64 = 10;

/// Network slicing settings (`[slicing]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlicingConfig {
    /// Whether this agent creates slices at all. Off by default: an agent
    /// never touches the host's network unless the operator says so
    /// (slices are then reported `unsupported`, with this reason).
    pub enabled: bool,
    /// Capacity of each uplink in kbit/s: the committed rates of its slices
    /// may not add up to more, and HTB shares exactly this much.
    pub capacity_kbit: BTreeMap<String, u64>,
}

/// Container runtime settings (`[containers]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainersConfig {
    /// Whether this agent runs containers (default on; they are reported
    /// `unsupported`, with the reason, when off or when the OCI runtime is
    /// missing).
    pub enabled: bool,
    /// The OCI runtime: `runc` (default), `crun`, `youki`, or a path.
    pub runtime: PathBuf,
    /// The runtime's state directory (`--root`); default
    /// `/run/mecvisor/<runtime>` (tmpfs: a reboot clears it).
    pub runtime_root: PathBuf,
    /// Containers' directories (bundles, logs) and volumes.
    pub state_dir: PathBuf,
    /// Rotate a container's log at this size.
    pub log_max_bytes: u64,
    /// Rotated log files kept per container.
    pub log_files: u32,
    /// Longest wait for a container to start.
    pub start_timeout_s: u64,
}

/// Content store settings (`[content]`, `[content.registries."host:port"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentConfig {
    /// Where images and artifacts are kept (default `<data_dir>/content`).
    pub dir: PathBuf,
    /// Registry access: credentials, CA bundles, plain HTTP, timeouts.
    pub registries: content_store::RegistryOptions,
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This device's name; also the MQTT client id.
    pub device: String,
    /// Directory holding `agent.db` and `agent.sock`.
    pub data_dir: PathBuf,
    /// The controller's Ed25519 public key; desired state must be signed by it.
    pub controller_key: VerifyingKey,
    /// Labels sent in every hello, matched by manifest selectors.
    pub labels: BTreeMap<String, String>,
    /// Broker connection.
    pub mqtt: MqttConfig,
    /// Bound of the durable outbox.
    pub outbox_max_entries: u64,
    /// Seconds between agent metrics reports.
    pub metrics_interval_s: u64,
    /// Seconds between periodic reconcile passes.
    pub resync_interval_s: u64,
    /// Network slicing.
    pub slicing: SlicingConfig,
    /// Containers.
    pub containers: ContainersConfig,
    /// Content store.
    pub content: ContentConfig,
}

/// Where and how to reach the broker.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker address, `mqtt://` or `mqtts://`.
    pub url: BrokerUrl,
    /// TLS files when the URL is `mqtts://`.
    pub tls: Option<TlsFiles>,
    /// MQTT keep-alive in seconds.
    pub keep_alive_s: u64,
}

/// PEM files for a mutually authenticated TLS connection.
pub use mqtt_transport::TlsFiles;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut problems = Vec::new();
        if let Err(message) = check_name(&raw.device) {
            problems.push(format!("device: {message}"));
        }
        if raw.data_dir.as_os_str().is_empty() {
            problems.push("data_dir: must not be empty".to_string());
        }
        let key = match verifying_key_from_hex(&raw.controller_key) {
            Ok(key) => Some(key),
            Err(e) => {
                problems.push(format!("controller_key: {e}"));
                None
            }
        };
        for (k, v) in &raw.labels {
            if k.is_empty() || k.len() > 63 || v.len() > 253 {
                problems.push(format!(
                    "labels.{k}: keys must be 1 to 63 bytes and values at most 253 bytes"
                ));
            }
        }
        let endpoint = BrokerUrl::parse(&raw.mqtt.url);
        if let Err(e) = &endpoint {
            problems.push(format!("mqtt.url: {e}"));
        }
        let tls = match &endpoint {
            Ok(url) if url.scheme == Scheme::Mqtts => tls_files(&raw.mqtt, &mut problems),
            _ => None,
        };
        if !(1..=65_535).contains(&raw.mqtt.keep_alive_s) {
            problems.push("mqtt.keep_alive_s: must be 1 to 65535 seconds".to_string());
        }
        if raw.outbox.max_entries < MIN_OUTBOX_ENTRIES {
            problems.push(format!(
                "outbox.max_entries: must be at least {MIN_OUTBOX_ENTRIES}"
            ));
        }
        if raw.timers.metrics_interval_s == 0 {
            problems.push("timers.metrics_interval_s: must be at least 1".to_string());
        }
        if raw.timers.resync_interval_s == 0 {
            problems.push("timers.resync_interval_s: must be at least 1".to_string());
        }
        for (uplink, capacity) in &raw.slicing.capacity_kbit {
            if uplink.is_empty() || uplink.len() > 15 || uplink.contains(['/', ' ', ':']) {
                problems.push(format!(
                    "slicing.capacity_kbit.{uplink}: not an interface name (1 to 15 bytes, no '/', ':' or space)"
                ));
            }
            if *capacity == 0 {
                problems.push(format!(
                    "slicing.capacity_kbit.{uplink}: must be at least 1"
                ));
            }
        }
        let c = &raw.containers;
        if c.runtime.is_empty() {
            problems.push(
                "containers.runtime: must name an OCI runtime (runc, crun, youki or a path)".into(),
            );
        }
        if c.log_max_bytes < 4096 {
            problems.push("containers.log_max_bytes: must be at least 4096".into());
        }
        if c.log_files > 64 {
            problems.push("containers.log_files: at most 64".into());
        }
        if c.start_timeout_s == 0 {
            problems.push("containers.start_timeout_s: must be at least 1".into());
        }
        for (host, access) in &raw.content.registries {
            if host.is_empty() || host.contains(['/', ' ']) {
                problems.push(format!("content.registries.{host}: not a host[:port]"));
            }
            if access.username.is_some() != access.password.is_some() {
                problems.push(format!(
                    "content.registries.{host}: give both username and password, or neither"
                ));
            }
            if let Some(ca) = &access.ca_file {
                if !ca.is_file() {
                    problems.push(format!(
                        "content.registries.{host}.ca_file: {} is not a readable file",
                        ca.display()
                    ));
                }
            }
        }
        if raw.content.read_timeout_s == 0 || raw.content.connect_timeout_s == 0 {
            problems.push("content: timeouts must be at least 1 second".into());
        }
        let runtime_name = Path::new(&raw.containers.runtime)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "runtime".into());
        let containers = ContainersConfig {
            enabled: raw.containers.enabled,
            runtime: PathBuf::from(&raw.containers.runtime),
            runtime_root: raw
                .containers
                .runtime_root
                .clone()
                .unwrap_or_else(|| PathBuf::from("/run/mecvisor").join(runtime_name)),
            state_dir: raw.data_dir.clone(),
            log_max_bytes: raw.containers.log_max_bytes,
            log_files: raw.containers.log_files,
            start_timeout_s: raw.containers.start_timeout_s,
        };
        let content = ContentConfig {
            dir: raw
                .content
                .dir
                .clone()
                .unwrap_or_else(|| raw.data_dir.join("content")),
            registries: content_store::RegistryOptions {
                registries: raw.content.registries.clone(),
                connect_timeout_secs: raw.content.connect_timeout_s,
                read_timeout_secs: raw.content.read_timeout_s,
                max_blob_bytes: raw.content.max_blob_bytes,
            },
        };
        match (key, endpoint) {
            (Some(controller_key), Ok(url)) if problems.is_empty() => Ok(Config {
                device: raw.device,
                data_dir: raw.data_dir,
                controller_key,
                labels: raw.labels,
                mqtt: MqttConfig {
                    url,
                    tls,
                    keep_alive_s: raw.mqtt.keep_alive_s,
                },
                outbox_max_entries: raw.outbox.max_entries,
                metrics_interval_s: raw.timers.metrics_interval_s,
                resync_interval_s: raw.timers.resync_interval_s,
                slicing: SlicingConfig {
                    enabled: raw.slicing.enabled,
                    capacity_kbit: raw.slicing.capacity_kbit,
                },
                containers,
                content,
            }),
            _ => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            }),
        }
    }

    /// Path of the agent's SQLite store.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("agent.db")
    }

    /// Path of the status socket.
    pub fn socket_path(&self) -> PathBuf {
        self.data_dir.join("agent.sock")
    }
}

fn tls_files(raw: &RawMqtt, problems: &mut Vec<String>) -> Option<TlsFiles> {
    let mut check = |name: &str, value: &Option<PathBuf>| -> Option<PathBuf> {
        match value {
            None => {
                problems.push(format!("mqtt.{name}: required for mqtts://"));
                None
            }
            Some(path) if !path.is_file() => {
                problems.push(format!(
                    "mqtt.{name}: {} is not a readable file",
                    path.display()
                ));
                None
            }
            Some(path) => Some(path.clone()),
        }
    };
    let ca = check("ca", &raw.ca);
    let cert = check("cert", &raw.cert);
    let key = check("key", &raw.key);
    Some(TlsFiles {
        ca: ca?,
        cert: cert?,
        key: key?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = parse(&format!(
            "device = \"edge-1\"\ndata_dir = \"/tmp/x\"\ncontroller_key = \"{KEY}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1884\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.device, "edge-1");
        assert_eq!(cfg.mqtt.url.host, "127.0.0.1");
        assert_eq!(cfg.mqtt.url.port, 1884);
        assert!(cfg.mqtt.tls.is_none());
        assert_eq!(cfg.mqtt.keep_alive_s, 30);
        assert_eq!(cfg.outbox_max_entries, 10_000);
        assert_eq!(cfg.metrics_interval_s, 60);
        assert_eq!(cfg.resync_interval_s, 30);
        assert_eq!(
            cfg.slicing,
            SlicingConfig::default(),
            "slicing off unless enabled"
        );
        assert_eq!(cfg.db_path(), Path::new("/tmp/x/agent.db"));
    }

    #[test]
    fn slicing_is_enabled_with_uplink_capacities_and_checked() {
        let cfg = parse(&format!(
            "device = \"edge-1\"\ndata_dir = \"/d\"\ncontroller_key = \"{KEY}\"\n[mqtt]\nurl = \"mqtt://b\"\n[slicing]\nenabled = true\ncapacity_kbit = {{ eth0 = 1000000 }}\n"
        ))
        .unwrap();
        assert!(cfg.slicing.enabled);
        assert_eq!(cfg.slicing.capacity_kbit.get("eth0"), Some(&1_000_000));
        let p = problems(&format!(
            "device = \"edge-1\"\ndata_dir = \"/d\"\ncontroller_key = \"{KEY}\"\n[mqtt]\nurl = \"mqtt://b\"\n[slicing]\ncapacity_kbit = {{ \"a/b\" = 1, eth1 = 0 }}\n"
        ));
        let joined = p.join("\n");
        assert!(
            joined.contains("slicing.capacity_kbit.a/b: not an interface name"),
            "{joined}"
        );
        assert!(
            joined.contains("slicing.capacity_kbit.eth1: must be at least 1"),
            "{joined}"
        );
    }

    #[test]
    fn full_config_with_labels() {
        let cfg = parse(&format!(
            "device = \"edge-1\"\ndata_dir = \"/d\"\ncontroller_key = \"{KEY}\"\n[labels]\nsite = \"lab\"\n[mqtt]\nurl = \"mqtt://broker\"\nkeep_alive_s = 10\n[outbox]\nmax_entries = 50\n[timers]\nmetrics_interval_s = 5\nresync_interval_s = 7\n"
        ))
        .unwrap();
        assert_eq!(cfg.labels.get("site").map(String::as_str), Some("lab"));
        assert_eq!(cfg.mqtt.url.port, 1883);
        assert_eq!(cfg.outbox_max_entries, 50);
        assert_eq!(cfg.metrics_interval_s, 5);
        assert_eq!(cfg.resync_interval_s, 7);
    }

    #[test]
    fn every_problem_is_listed() {
        let p = problems(
            "device = \"Edge_1\"\ndata_dir = \"/d\"\ncontroller_key = \"abc\"\n[mqtt]\nurl = \"http://x\"\nkeep_alive_s = 0\n[outbox]\nmax_entries = 1\n",
        );
        let joined = p.join("\n");
        assert!(joined.contains("device:"), "{joined}");
        assert!(joined.contains("controller_key:"), "{joined}");
        assert!(joined.contains("mqtt.url:"), "{joined}");
        assert!(joined.contains("mqtt.keep_alive_s:"), "{joined}");
        assert!(joined.contains("outbox.max_entries:"), "{joined}");
        assert_eq!(p.len(), 5, "{joined}");
    }

    #[test]
    fn mqtts_requires_existing_files() {
        let p = problems(&format!(
            "device = \"edge-1\"\ndata_dir = \"/d\"\ncontroller_key = \"{KEY}\"\n[mqtt]\nurl = \"mqtts://b:8883\"\nca = \"/nonexistent/ca.pem\"\n"
        ));
        let joined = p.join("\n");
        assert!(
            joined.contains("mqtt.ca: /nonexistent/ca.pem is not a readable file"),
            "{joined}"
        );
        assert!(joined.contains("mqtt.cert: required"), "{joined}");
        assert!(joined.contains("mqtt.key: required"), "{joined}");
    }

    #[test]
    fn mqtts_with_files_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "c.pem", "k.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let d = dir.path().display();
        let cfg = parse(&format!(
            "device = \"edge-1\"\ndata_dir = \"/d\"\ncontroller_key = \"{KEY}\"\n[mqtt]\nurl = \"mqtts://b\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/c.pem\"\nkey = \"{d}/k.pem\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.mqtt.url.port, 8883);
        assert!(cfg.mqtt.tls.is_some());
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_parse_errors() {
        let err = parse(&format!(
            "device = \"edge-1\"\ndata_dir = \"/d\"\ncontroller_key = \"{KEY}\"\ncolour = 1\n[mqtt]\nurl = \"mqtt://b\"\n"
        ))
        .unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("colour"), "{err}");
        assert!(matches!(parse("device = "), Err(ConfigError::Parse { .. })));
        assert!(matches!(
            parse("device = \"a\""),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn missing_file_is_read_error() {
        let err = Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/agent.toml"));
    }
}
