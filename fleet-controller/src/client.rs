//! HTTP client of the controller API, used by `fleetctl` (ureq, plain HTTP).

use serde::de::DeserializeOwned;

use crate::views::{
    ApiError, ApplyResponse, DeleteManifestResponse, DeviceDetail, DeviceSummary, ManifestSummary,
};

/// Default API address when neither --server nor FLEETCTL_SERVER is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7080";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller answered with an error.
    #[error("{}", .0.error)]
    Api(ApiError),
    /// The controller could not be reached or answered garbage.
    #[error("cannot talk to the controller at {server}: {source}")]
    Transport {
        /// Server URL.
        server: String,
        /// What went wrong.
        source: ureq::Error,
    },
}

/// A client for one controller.
pub struct Client {
    server: String,
    agent: ureq::Agent,
}

impl Client {
    /// Makes a client for `server` (e.g. `http://127.0.0.1:7080`).
    pub fn new(server: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build();
        Client {
            server: server.trim_end_matches('/').to_string(),
            agent: ureq::Agent::new_with_config(config),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    fn transport(&self, source: ureq::Error) -> ClientError {
        ClientError::Transport {
            server: self.server.clone(),
            source,
        }
    }

    fn finish<T: DeserializeOwned>(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut resp = result.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport(e))?;
        if status.is_success() {
            serde_json::from_str(&text).map_err(|e| self.transport(ureq::Error::Json(e)))
        } else {
            let err = serde_json::from_str::<ApiError>(&text).unwrap_or(ApiError {
                error: format!("HTTP {status}: {}", text.trim()),
                problems: Vec::new(),
            });
            Err(ClientError::Api(err))
        }
    }

    /// `POST /v1/manifests`.
    pub fn apply(&self, yaml: &str) -> Result<ApplyResponse, ClientError> {
        self.finish(
            self.agent
                .post(&self.url("/v1/manifests"))
                .header("content-type", "application/yaml")
                .send(yaml),
        )
    }

    /// `GET /v1/manifests`.
    pub fn manifests(&self) -> Result<Vec<ManifestSummary>, ClientError> {
        self.finish(self.agent.get(&self.url("/v1/manifests")).call())
    }

    /// `DELETE /v1/manifests/{name}`.
    pub fn delete_manifest(&self, name: &str) -> Result<DeleteManifestResponse, ClientError> {
        self.finish(
            self.agent
                .delete(&self.url(&format!("/v1/manifests/{name}")))
                .call(),
        )
    }

    /// `GET /v1/devices`.
    pub fn devices(&self) -> Result<Vec<DeviceSummary>, ClientError> {
        self.finish(self.agent.get(&self.url("/v1/devices")).call())
    }

    /// `GET /v1/devices/{name}`.
    pub fn device(&self, name: &str) -> Result<DeviceDetail, ClientError> {
        self.finish(
            self.agent
                .get(&self.url(&format!("/v1/devices/{name}")))
                .call(),
        )
    }

    /// `DELETE /v1/devices/{name}`.
    pub fn delete_device(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.finish(
            self.agent
                .delete(&self.url(&format!("/v1/devices/{name}")))
                .call(),
        )
    }
}
