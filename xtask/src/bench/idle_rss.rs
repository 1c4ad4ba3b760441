//! Idle RSS of edge-agent connected to mosquitto over mutual TLS, compared
//! with an idle `mosquitto_sub` connected the same way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::mosquitto;
use super::table::Table;
use crate::bins::Bins;
use crate::cluster::{start_agent, AgentSpec, AgentTls};
use crate::procs::{rss_kib, wait_for, Lifetime, Proc};
use crate::shell;
use mecvisor_e2e::TestCerts;

/// Target from the issue: agent idle RSS at most 6 MiB.
const RSS_TARGET_KIB: u64 = 6 * 1024;

/// Measures and adds the rows; failures become ERROR rows, not aborts.
pub fn measure(bins: &Bins, dir: &Path, controller_key: &str, idle_secs: u64, table: &mut Table) {
    let metric = "edge-agent idle RSS (mqtts, client cert)";
    match measure_inner(bins, dir, controller_key, idle_secs) {
        Ok((agent_kib, sub_kib)) => {
            table.check(
                metric,
                format!("{:.2} MiB", agent_kib as f64 / 1024.0),
                "<= 6 MiB",
                agent_kib <= RSS_TARGET_KIB,
            );
            table.info(
                "mosquitto_sub idle RSS (same TLS)",
                format!("{:.2} MiB", sub_kib as f64 / 1024.0),
            );
            table.info(
                "ratio agent / mosquitto_sub",
                format!("{:.2}x", agent_kib as f64 / sub_kib.max(1) as f64),
            );
        }
        Err(err) => table.error(metric, "<= 6 MiB", &err),
    }
}

fn measure_inner(
    bins: &Bins,
    dir: &Path,
    controller_key: &str,
    idle_secs: u64,
) -> Result<(u64, u64)> {
    println!("\n==> idle RSS: PKI, mosquitto with TLS and required client certificates");
    let pki = TestCerts::new(&dir.join("pki"));
    let (agent_cert, agent_key) = pki.client("idle-1");
    let peer = pki.client("peer");

    let (mut broker, port) = mosquitto::start(dir, Some(&pki))?;

    let tls = AgentTls {
        ca: pki.ca.clone(),
        cert: agent_cert,
        key: agent_key,
    };
    let spec = AgentSpec {
        device: "idle-1",
        mqtt_url: format!("mqtts://127.0.0.1:{port}"),
        tls: Some(&tls),
        controller_key,
        labels: &[],
        extra_config: "",
        log_json: false,
    };
    let mut agent = start_agent(bins, dir, &spec, Lifetime::TiedToXtask)?;
    wait_for(
        "edge-agent to report link=connected over TLS",
        Duration::from_secs(20),
        Duration::from_millis(200),
        |note| {
            broker.ensure_running()?;
            agent.proc.ensure_running()?;
            let out = shell::output(
                Command::new(&bins.agent)
                    .arg("status")
                    .arg("--config")
                    .arg(&agent.config)
                    .args(["-o", "json"]),
            );
            let status: Value = match out.map(|o| serde_json::from_str(&o)) {
                Ok(Ok(v)) => v,
                Ok(Err(err)) => {
                    *note = err.to_string();
                    return Ok(None);
                }
                Err(err) => {
                    *note = format!("{err:#}");
                    return Ok(None);
                }
            };
            *note = format!("status: {status}");
            Ok((status.get("link").and_then(Value::as_str) == Some("connected")).then_some(()))
        },
    )?;

    let mut sub = start_tls_sub(dir, &pki, &peer, port)?;

    println!("both connected; idling {idle_secs}s");
    std::thread::sleep(Duration::from_secs(idle_secs));
    agent.proc.ensure_running()?;
    sub.ensure_running()?;
    let agent_kib = rss_kib(agent.proc.pid())?;
    let sub_kib = rss_kib(sub.pid())?;
    Ok((agent_kib, sub_kib))
}

/// Starts an idle `mosquitto_sub` with a client certificate and waits for its CONNACK.
/// `peer` is a client (certificate, key) pair issued by `pki`.
fn start_tls_sub(
    dir: &Path,
    pki: &TestCerts,
    peer: &(PathBuf, PathBuf),
    port: u16,
) -> Result<Proc> {
    let sub_log = dir.join("mosquitto_sub.log");
    let mut sub = Proc::spawn(
        "mosquitto_sub",
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-i",
                "bench-peer",
                "-d",
            ])
            .arg("--cafile")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&peer.0)
            .arg("--key")
            .arg(&peer.1)
            .args(["-t", "mecv/v1/#"]),
        &sub_log,
        Lifetime::TiedToXtask,
    )?;
    wait_for(
        "mosquitto_sub to connect over TLS",
        Duration::from_secs(10),
        Duration::from_millis(50),
        |_| {
            sub.ensure_running()?;
            // mosquitto_sub's own output is block-buffered into its log file,
            // so watch the broker's log (flushed per line) for its SUBACK.
            let log = std::fs::read_to_string(mosquitto::log_path(dir)).unwrap_or_default();
            Ok(log.contains("Sending SUBACK to bench-peer").then_some(()))
        },
    )?;
    Ok(sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bench PKI works with a real mosquitto: a client with a certificate
    /// connects, a client without one is refused (require_certificate).
    #[test]
    fn pki_gives_working_mutual_tls_with_mosquitto() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let pki = TestCerts::new(&tmp.path().join("pki"));
        let peer = pki.client("peer");
        let (_broker, port) = mosquitto::start(tmp.path(), Some(&pki)).expect("mosquitto");
        let _sub = start_tls_sub(tmp.path(), &pki, &peer, port).expect("sub with cert connects");
        // One publish over TLS, with or without a client certificate.
        let publish = |cert: Option<&(PathBuf, PathBuf)>| {
            let mut cmd = Command::new("mosquitto_pub");
            cmd.args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "x",
                "-m",
                "y",
            ])
            .arg("--cafile")
            .arg(&pki.ca);
            if let Some((cert, key)) = cert {
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            }
            cmd.output().expect("run mosquitto_pub")
        };
        let no_cert = publish(None);
        assert!(
            !no_cert.status.success(),
            "a client without certificate was accepted"
        );
        let with_cert = publish(Some(&peer));
        assert!(
            with_cert.status.success(),
            "{}",
            String::from_utf8_lossy(&with_cert.stderr)
        );
    }
}
