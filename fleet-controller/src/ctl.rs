//! `fleetctl` commands and their human-readable output.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::client::{Client, ClientError, DEFAULT_SERVER};
use crate::views::{DeviceDetail, DeviceSummary, ManifestSummary};

/// fleetctl: operate a mecvisor fleet controller over its HTTP API.
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version)]
pub struct Cli {
    /// Controller API URL.
    #[arg(long, env = "FLEETCTL_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables for people.
    Table,
    /// The API's JSON.
    Json,
}

/// fleetctl commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply (create or replace) a manifest from a YAML file (`-` for stdin).
    Apply {
        /// Manifest file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List devices or manifests.
    Get {
        /// What to list.
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Show one device in detail: generations, objects, recent events.
    Describe {
        /// What to describe.
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Delete a manifest or forget a device.
    Delete {
        /// What to delete.
        #[command(subcommand)]
        what: DeleteWhat,
    },
}

/// Things `get` lists.
#[derive(Debug, Subcommand)]
pub enum GetWhat {
    /// All devices.
    Devices {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
    /// All manifests.
    Manifests {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
}

/// Things `describe` shows.
#[derive(Debug, Subcommand)]
pub enum DescribeWhat {
    /// One device.
    Device {
        /// Device name.
        name: String,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
}

/// Things `delete` removes.
#[derive(Debug, Subcommand)]
pub enum DeleteWhat {
    /// A manifest; the devices it matched get recomposed documents.
    Manifest {
        /// Manifest name.
        name: String,
    },
    /// A device: the controller forgets it and everything it reported.
    Device {
        /// Device name.
        name: String,
    },
}

/// Why a fleetctl command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The manifest file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The controller refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl CtlError {
    /// Every line to print on stderr: the summary, then each problem.
    pub fn lines(&self) -> Vec<String> {
        match self {
            CtlError::Client(ClientError::Api(api)) => {
                let mut out = vec![format!("error: {}", api.error)];
                out.extend(api.problems.iter().map(|p| format!("  {p}")));
                out
            }
            other => vec![format!("error: {other}")],
        }
    }
}

fn json(value: &impl serde::Serialize) -> String {
    // Serializing the API's plain data types to JSON cannot fail.
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// Runs a command and returns what to print on stdout.
pub fn run(cli: &Cli) -> Result<String, CtlError> {
    let client = Client::new(&cli.server);
    match &cli.command {
        Command::Apply { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(file)
            }
            .map_err(|source| CtlError::Read {
                path: file.clone(),
                source,
            })?;
            let resp = client.apply(&text)?;
            let mut out = format!("manifest {} applied\n", resp.manifest);
            for d in resp.devices {
                let _ = writeln!(out, "  {}: desired generation {}", d.device, d.generation);
            }
            Ok(out)
        }
        Command::Get {
            what: GetWhat::Devices { output },
        } => {
            let devices = client.devices()?;
            Ok(match output {
                Output::Json => json(&devices) + "\n",
                Output::Table => devices_table(&devices),
            })
        }
        Command::Get {
            what: GetWhat::Manifests { output },
        } => {
            let manifests = client.manifests()?;
            Ok(match output {
                Output::Json => json(&manifests) + "\n",
                Output::Table => manifests_table(&manifests),
            })
        }
        Command::Describe {
            what: DescribeWhat::Device { name, output },
        } => {
            let device = client.device(name)?;
            Ok(match output {
                Output::Json => json(&device) + "\n",
                Output::Table => describe_device(&device),
            })
        }
        Command::Delete {
            what: DeleteWhat::Manifest { name },
        } => {
            let resp = client.delete_manifest(name)?;
            let mut out = format!("manifest {} deleted\n", resp.deleted);
            for d in resp.devices {
                let _ = writeln!(out, "  {}: desired generation {}", d.device, d.generation);
            }
            Ok(out)
        }
        Command::Delete {
            what: DeleteWhat::Device { name },
        } => {
            client.delete_device(name)?;
            Ok(format!("device {name} deleted\n"))
        }
    }
}

/// Renders rows as left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let now = crate::store::now_ms();
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// The `get devices` table.
pub fn devices_table(devices: &[DeviceSummary]) -> String {
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                or_dash(&d.arch),
                if d.online { "yes" } else { "no" }.into(),
                d.desired_generation.to_string(),
                d.acked_generation.to_string(),
                d.applied_generation.to_string(),
                or_dash(&d.agent_version),
                ago(d.last_seen_ms),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ARCH",
            "ONLINE",
            "DESIRED",
            "ACKED",
            "APPLIED",
            "AGENT",
            "LAST SEEN",
        ],
        &rows,
    )
}

/// The `get manifests` table.
pub fn manifests_table(manifests: &[ManifestSummary]) -> String {
    let rows: Vec<Vec<String>> = manifests
        .iter()
        .map(|m| {
            let selector: Vec<String> =
                m.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                m.name.clone(),
                or_dash(&m.devices.join(",")),
                or_dash(&selector.join(",")),
                m.slices.to_string(),
                m.workloads.to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", "DEVICES", "SELECTOR", "SLICES", "WORKLOADS"],
        &rows,
    )
}

/// The `describe device` text.
pub fn describe_device(d: &DeviceDetail) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Name:       {}", d.name);
    let _ = writeln!(out, "Arch:       {}", or_dash(&d.arch));
    let _ = writeln!(out, "Agent:      {}", or_dash(&d.agent_version));
    let _ = writeln!(out, "Online:     {}", if d.online { "yes" } else { "no" });
    let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "Labels:     {}", or_dash(&labels.join(",")));
    let _ = writeln!(
        out,
        "Generation: desired {}, acked {}, applied {}",
        d.desired_generation, d.acked_generation, d.applied_generation
    );
    let _ = writeln!(out, "Hash:       {}", or_dash(&d.desired_hash));
    let _ = writeln!(out, "Last error: {}", or_dash(&d.last_error));
    out.push('\n');
    let rows: Vec<Vec<String>> = d
        .objects
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                o.kind.clone(),
                if o.desired { "yes" } else { "no" }.into(),
                o.phase.clone(),
                o.restarts.to_string(),
                or_dash(&o.message),
            ]
        })
        .collect();
    out.push_str(&table(
        &["OBJECT", "KIND", "DESIRED", "PHASE", "RESTARTS", "MESSAGE"],
        &rows,
    ));
    out.push_str("\nEvents:\n");
    if d.events.is_empty() {
        out.push_str("  (none)\n");
    }
    for e in &d.events {
        let _ = writeln!(
            out,
            "  {:<8} {:<8} {}{}",
            ago(e.created_ms),
            e.severity,
            e.object
                .as_ref()
                .map(|o| format!("{o}: "))
                .unwrap_or_default(),
            e.message
        );
    }
    out
}
