//! Minimal client of the fleet-controller HTTP API (used by demo and bench).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A keep-alive HTTP client bound to one controller API address.
pub struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    /// Client for the API listening on `addr` (`host:port`).
    pub fn new(addr: &str) -> Api {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        Api {
            base: format!("http://{addr}"),
            agent: config.into(),
        }
    }

    /// `GET path`, expecting 200 with a JSON body.
    pub fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading body of GET {url}"))?;
        parse(status.as_u16(), &body).with_context(|| format!("GET {url}"))
    }

    /// `POST path` with a YAML body, expecting 200 with a JSON body.
    pub fn post_yaml(&self, path: &str, yaml: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .agent
            .post(&url)
            .header("content-type", "application/yaml")
            .send(yaml)
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading body of POST {url}"))?;
        parse(status.as_u16(), &body).with_context(|| format!("POST {url}"))
    }
}

fn parse(status: u16, body: &str) -> Result<Value> {
    if status != 200 {
        bail!("HTTP {status}: {}", body.trim());
    }
    serde_json::from_str(body).with_context(|| format!("response is not JSON: {body:?}"))
}

/// Reads an unsigned integer field of a JSON object (missing or null -> 0).
pub fn u64_field(value: &Value, field: &str) -> u64 {
    value.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// `(device, generation)` pairs of a POST /v1/manifests or DELETE answer.
pub fn device_generations(answer: &Value) -> Result<Vec<(String, u64)>> {
    let devices = answer
        .get("devices")
        .and_then(Value::as_array)
        .with_context(|| format!("answer has no `devices` array: {answer}"))?;
    devices
        .iter()
        .map(|d| {
            let name = d
                .get("device")
                .and_then(Value::as_str)
                .with_context(|| format!("entry without `device`: {d}"))?;
            let generation = d
                .get("generation")
                .and_then(Value::as_u64)
                .with_context(|| format!("entry without `generation`: {d}"))?;
            Ok((name.to_string(), generation))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_device_generations() {
        let answer: Value = serde_json::json!({
            "manifest": "m",
            "devices": [{"device": "edge-1", "generation": 3}, {"device": "edge-2", "generation": 1}]
        });
        let pairs = device_generations(&answer).expect("valid answer");
        assert_eq!(pairs, vec![("edge-1".into(), 3), ("edge-2".into(), 1)]);
        assert!(device_generations(&serde_json::json!({"devices": [{"device": "x"}]})).is_err());
    }

    #[test]
    fn non_200_is_an_error_with_body() {
        let err = parse(400, r#"{"error":"bad"}"#).expect_err("400 fails");
        assert!(err.to_string().contains("HTTP 400"));
        assert_eq!(parse(200, "[1]").expect("json")[0], 1);
    }
}
