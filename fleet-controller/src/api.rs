//! The HTTP API (axum), JSON in and out; see the contract for the routes.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Serialize;
use tracing::{error, info};

use crate::fleet::{Fleet, FleetError};
use crate::views::{ApiError, PubkeyResponse};

/// Builds the API router around the controller.
pub fn router(fleet: Arc<Fleet>) -> Router {
    Router::new()
        .route("/v1/pubkey", get(pubkey))
        .route("/v1/manifests", get(list_manifests).post(apply_manifest))
        .route("/v1/manifests/{name}", delete(delete_manifest))
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{name}", get(get_device).delete(delete_device))
        .with_state(fleet)
}

/// An API failure rendered as `{"error", "problems"}` with a 4xx/5xx status.
struct Failure(FleetError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, body) = match self.0 {
            FleetError::Invalid { summary, problems } => (
                StatusCode::BAD_REQUEST,
                ApiError {
                    error: summary,
                    problems,
                },
            ),
            FleetError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                ApiError {
                    error: format!("{what} not found"),
                    problems: Vec::new(),
                },
            ),
            FleetError::Internal(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ApiError {
                    error: e,
                    problems: Vec::new(),
                },
            ),
            FleetError::Store(e) => {
                error!(error = %e, "store failure while serving the API");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ApiError {
                        error: e.to_string(),
                        problems: Vec::new(),
                    },
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

/// Runs a blocking fleet operation off the async workers.
async fn blocking<T, F>(fleet: Arc<Fleet>, f: F) -> Result<Json<T>, Failure>
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Fleet) -> Result<T, FleetError> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || f(&fleet)).await {
        Ok(result) => result.map(Json).map_err(Failure),
        Err(e) => {
            error!(error = %e, "API handler panicked");
            Err(Failure(FleetError::Internal(e.to_string())))
        }
    }
}

async fn pubkey(State(fleet): State<Arc<Fleet>>) -> Json<PubkeyResponse> {
    Json(PubkeyResponse {
        public_key: fleet.public_key_hex(),
    })
}

async fn apply_manifest(State(fleet): State<Arc<Fleet>>, body: String) -> Response {
    info!(bytes = body.len(), "POST /v1/manifests");
    blocking(fleet, move |f| f.apply_manifest(&body))
        .await
        .into_response()
}

async fn list_manifests(State(fleet): State<Arc<Fleet>>) -> Response {
    blocking(fleet, |f| f.manifest_summaries())
        .await
        .into_response()
}

async fn delete_manifest(State(fleet): State<Arc<Fleet>>, Path(name): Path<String>) -> Response {
    info!(%name, "DELETE /v1/manifests");
    blocking(fleet, move |f| f.delete_manifest(&name))
        .await
        .into_response()
}

async fn list_devices(State(fleet): State<Arc<Fleet>>) -> Response {
    blocking(fleet, |f| f.device_summaries())
        .await
        .into_response()
}

async fn get_device(State(fleet): State<Arc<Fleet>>, Path(name): Path<String>) -> Response {
    blocking(fleet, move |f| f.device_detail(&name))
        .await
        .into_response()
}

async fn delete_device(State(fleet): State<Arc<Fleet>>, Path(name): Path<String>) -> Response {
    info!(%name, "DELETE /v1/devices");
    blocking(fleet, move |f| {
        f.delete_device(&name)?;
        Ok(serde_json::json!({ "deleted": name }))
    })
    .await
    .into_response()
}
