//! Talking to OCI registries (distribution API) through oci-client: which
//! registries need credentials, a CA bundle or plain HTTP, and timeouts so
//! a registry that hangs fails the pull instead of stalling the agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{BlobResponse, Certificate, CertificateEncoding, ClientConfig};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::blobs::{BlobError, Blobs, Ingest};
use crate::digest::Digest;
use crate::manifest::ACCEPTED;

/// How to reach one registry (keyed by `host[:port]` in [`RegistryOptions`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAccess {
    /// User name for basic auth, also used to obtain bearer tokens.
    #[serde(default)]
    pub username: Option<String>,
    /// Password or access token.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM file with the CA(s) that sign this registry's certificate, in
    /// addition to the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Plain HTTP instead of HTTPS (labs and loopback only).
    #[serde(default)]
    pub plain_http: bool,
}

/// Registry settings of a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryOptions {
    /// Per registry host (`host[:port]`) access settings.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryAccess>,
    /// Connect timeout in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Longest wait for any read from a registry, in seconds.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_secs: u64,
    /// Largest blob accepted (a descriptor claiming more is refused before
    /// any byte is written), in bytes.
    #[serde(default = "default_max_blob_bytes")]
    pub max_blob_bytes: u64,
}

fn default_max_blob_bytes() -> u64 {
    16 << 30
}

/// The slowest transfer a download deadline allows for (bytes/s): a
/// registry that trickles is cut off and the next attempt resumes.
const MIN_BYTES_PER_SEC: u64 = 64 * 1024;

fn default_connect_timeout() -> u64 {
    10
}

fn default_read_timeout() -> u64 {
    30
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            registries: BTreeMap::new(),
            connect_timeout_secs: default_connect_timeout(),
            read_timeout_secs: default_read_timeout(),
            max_blob_bytes: default_max_blob_bytes(),
        }
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A configured CA file cannot be read.
    #[error("CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// What the registry (or the connection to it) did wrong.
    #[error("registry {registry}: {source}")]
    Distribution {
        /// `host[:port]`.
        registry: String,
        /// oci-client's error.
        source: oci_client::errors::OciDistributionError,
    },
    /// A fetch did not finish in time (a registry that trickles bytes).
    #[error("registry {registry}: {what} did not finish within {seconds} s")]
    Deadline {
        /// `host[:port]`.
        registry: String,
        /// What was fetched.
        what: String,
        /// The deadline.
        seconds: u64,
    },
    /// A descriptor claims a blob larger than this box accepts.
    #[error("blob {digest} is {size} bytes, more than the {limit} this box accepts (content.max_blob_bytes)")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its claimed size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// The download broke off.
    #[error("registry {registry}: download of {digest} broke off after {offset} bytes: {source}")]
    Stream {
        /// `host[:port]`.
        registry: String,
        /// The blob.
        digest: Digest,
        /// Bytes received in all (a retry resumes here).
        offset: u64,
        /// The error.
        source: std::io::Error,
    },
    /// A manifest request failed or was refused.
    #[error("registry {registry}: manifest {reference}: {message}")]
    Manifest {
        /// `host[:port]`.
        registry: String,
        /// The reference asked for.
        reference: String,
        /// What went wrong (HTTP status, size bound, digest, connection).
        message: String,
    },
    /// The blob could not be stored (size or digest mismatch, disk).
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// Bundles where Linux distributions keep their CA certificates (the ones
/// reqwest's verifier reads, unless SSL_CERT_FILE says otherwise).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A self-signed certificate whose key was thrown away: the only trust
/// anchor when a box has no CA certificate at all (reqwest's verifier
/// refuses to start without any, and oci-client 0.18 then panics, also
/// from its `Default`). HTTPS to any registry then fails verification with
/// a clear error; plain-HTTP registries and configured `ca_file`s work.
const TRUST_NOTHING: &[u8] = include_bytes!("trust_nothing.pem");

/// On a box without system CA certificates (and no SSL_CERT_FILE), writes
/// [`TRUST_NOTHING`] to `dir` and returns its path, which the caller must
/// export as SSL_CERT_FILE before any registry client exists and while the
/// process is still single-threaded. `None` when the system has roots.
pub fn trust_anchor_file(dir: &std::path::Path) -> std::io::Result<Option<std::path::PathBuf>> {
    if system_has_roots() {
        return Ok(None);
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join("no-system-roots.pem");
    std::fs::write(&path, TRUST_NOTHING)?;
    Ok(Some(path))
}

/// Whether the system offers CA certificates reqwest can load.
fn system_has_roots() -> bool {
    let non_empty = |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    match std::env::var_os("SSL_CERT_FILE") {
        Some(file) => non_empty(std::path::Path::new(&file)),
        None => SYSTEM_BUNDLES
            .iter()
            .any(|p| non_empty(std::path::Path::new(p))),
    }
}

/// The largest manifest or index accepted (the bound registries such as
/// distribution apply themselves): a registry sending more is refused
/// before the agent's memory fills up.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// A client for every configured registry.
pub struct Registries {
    client: Client,
    /// For manifests: oci-client reads a manifest body whole, unbounded;
    /// this client (same TLS roots and timeouts) reads it with a bound.
    http: reqwest::Client,
    options: RegistryOptions,
    received: std::sync::atomic::AtomicU64,
}

impl Registries {
    /// Builds the client (reads CA files).
    pub fn new(options: RegistryOptions) -> Result<Registries, RegistryError> {
        crate::install_crypto_provider();
        let mut extra_root_certificates = Vec::new();
        let mut extra_roots = Vec::new();
        for access in options.registries.values() {
            if let Some(path) = &access.ca_file {
                let data = std::fs::read(path).map_err(|source| RegistryError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                let certificates = reqwest::Certificate::from_pem_bundle(&data).map_err(|e| {
                    RegistryError::CaFile {
                        path: path.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    }
                })?;
                extra_roots.extend(certificates);
                extra_root_certificates.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                });
            }
        }
        let plain: Vec<String> = options
            .registries
            .iter()
            .filter(|(_, a)| a.plain_http)
            .map(|(host, _)| host.clone())
            .collect();
        let config = ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(plain),
            extra_root_certificates,
            connect_timeout: Some(Duration::from_secs(options.connect_timeout_secs)),
            read_timeout: Some(Duration::from_secs(options.read_timeout_secs)),
            ..ClientConfig::default()
        };
        let http = reqwest::Client::builder()
            .tls_certs_merge(extra_roots)
            .connect_timeout(Duration::from_secs(options.connect_timeout_secs))
            .read_timeout(Duration::from_secs(options.read_timeout_secs))
            .build()
            .map_err(|e| RegistryError::Manifest {
                registry: String::new(),
                reference: String::new(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Registries {
            client: Client::new(config),
            http,
            options,
            received: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The configured access settings of the reference's registry (by the
    /// host as written, else as resolved, e.g. docker.io's real host).
    fn access(&self, reference: &Reference) -> Option<&RegistryAccess> {
        self.options
            .registries
            .get(reference.registry())
            .or_else(|| self.options.registries.get(reference.resolve_registry()))
    }

    fn auth(&self, reference: &Reference) -> RegistryAuth {
        match self.access(reference) {
            Some(RegistryAccess {
                username: Some(user),
                password: Some(password),
                ..
            }) => RegistryAuth::Basic(user.clone(), password.clone()),
            _ => RegistryAuth::Anonymous,
        }
    }

    fn distribution(
        reference: &Reference,
    ) -> impl FnOnce(oci_client::errors::OciDistributionError) -> RegistryError + '_ {
        move |source| RegistryError::Distribution {
            registry: reference.registry().to_string(),
            source,
        }
    }

    /// Blob bytes received from registries since this client was made
    /// (a resumed download counts only what it fetched).
    pub fn bytes_received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fetches a manifest (by the reference's tag or digest); returns its
    /// bytes and digest. Bodies above [`MAX_MANIFEST_BYTES`] are refused
    /// (by Content-Length before any byte, else while reading), and so is
    /// a body that does not match the reference's digest.
    pub async fn manifest(
        &self,
        reference: &Reference,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let seconds = self.options.connect_timeout_secs + 2 * self.options.read_timeout_secs;
        let fetch = self.fetch_manifest(reference);
        let bytes = tokio::time::timeout(std::time::Duration::from_secs(seconds), fetch)
            .await
            .map_err(|_| RegistryError::Deadline {
                registry: reference.registry().to_string(),
                what: format!("manifest {}", reference.whole()),
                seconds,
            })??;
        let digest = Digest::of(&bytes);
        if let Some(pinned) = reference.digest() {
            if pinned != digest.to_string() {
                return Err(manifest_error(
                    reference,
                    format!("the registry sent content with digest {digest}"),
                ));
            }
        }
        debug!(%digest, bytes = bytes.len(), "manifest fetched");
        Ok((bytes, digest))
    }

    async fn fetch_manifest(&self, reference: &Reference) -> Result<Vec<u8>, RegistryError> {
        // oci-client does the token dance (bearer tokens for this
        // repository); basic credentials go straight on the request.
        let auth = self.auth(reference);
        let token = self
            .client
            .auth(reference, &auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(Self::distribution(reference))?;
        let registry = reference.resolve_registry();
        let plain = self.access(reference).is_some_and(|a| a.plain_http);
        let url = format!(
            "{}://{registry}/v2/{}/manifests/{}",
            if plain { "http" } else { "https" },
            reference.repository(),
            reference.digest().or(reference.tag()).unwrap_or("latest"),
        );
        let mut request = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, ACCEPTED.join(", "));
        request = match (&auth, token) {
            (_, Some(token)) => request.bearer_auth(token),
            (RegistryAuth::Basic(user, password), None) => request.basic_auth(user, Some(password)),
            _ => request,
        };
        let failed = |e: reqwest::Error| manifest_error(reference, e.to_string());
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            return Err(manifest_error(reference, format!("HTTP {status}")));
        }
        if let Some(length) = response.content_length() {
            if length > MAX_MANIFEST_BYTES as u64 {
                return Err(too_big(reference));
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(too_big(reference));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Downloads one blob into the store, resuming a partial download left
    /// by an earlier attempt (also across agent restarts).
    pub async fn blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        blobs: &Blobs,
    ) -> Result<(), RegistryError> {
        if size > self.options.max_blob_bytes {
            return Err(RegistryError::TooLarge {
                digest: digest.clone(),
                size,
                limit: self.options.max_blob_bytes,
            });
        }
        let seconds = self.options.connect_timeout_secs
            + self.options.read_timeout_secs
            + size / MIN_BYTES_PER_SEC;
        tokio::time::timeout(
            std::time::Duration::from_secs(seconds),
            self.download(reference, digest, size, blobs),
        )
        .await
        .map_err(|_| RegistryError::Deadline {
            registry: reference.registry().to_string(),
            what: format!("blob {digest} ({size} bytes; the next attempt resumes)"),
            seconds,
        })?
    }

    async fn download(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        blobs: &Blobs,
    ) -> Result<(), RegistryError> {
        // Hashing what a partial download already holds reads the file:
        // off the (single-threaded) executor.
        let (owner, wanted) = (blobs.clone(), digest.clone());
        let mut ingest = tokio::task::spawn_blocking(move || owner.ingest(&wanted))
            .await
            .map_err(worker_failed(reference, digest))??;
        let offset = ingest.offset();
        if offset < size {
            self.client
                .store_auth_if_needed(reference.resolve_registry(), &self.auth(reference))
                .await;
            let text = digest.to_string();
            let stream = if offset == 0 {
                self.client
                    .pull_blob_stream(reference, text.as_str())
                    .await
                    .map_err(Self::distribution(reference))?
            } else {
                let response = self
                    .client
                    .pull_blob_stream_partial(reference, text.as_str(), offset, None)
                    .await
                    .map_err(Self::distribution(reference))?;
                match response {
                    BlobResponse::Partial(stream) => {
                        info!(%digest, offset, size, "resuming an interrupted download");
                        stream
                    }
                    BlobResponse::Full(stream) => {
                        info!(%digest, offset, "registry ignored the range request; downloading again");
                        ingest.restart()?;
                        stream
                    }
                }
            };
            // Chunks are gathered into batches written (and hashed) on a
            // blocking thread, not on the executor.
            let mut batch = Vec::with_capacity(WRITE_BATCH_BYTES);
            let mut stream = stream.stream;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(source) => {
                        // Keep what arrived: the next attempt resumes after it.
                        let ingest = write_batch(ingest, batch, size, reference, digest).await?;
                        return Err(RegistryError::Stream {
                            registry: reference.registry().to_string(),
                            digest: digest.clone(),
                            offset: ingest.offset(),
                            source,
                        });
                    }
                };
                batch.extend_from_slice(&chunk);
                self.received
                    .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if batch.len() >= WRITE_BATCH_BYTES {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH_BYTES));
                    ingest = write_batch(ingest, full, size, reference, digest).await?;
                }
            }
            ingest = write_batch(ingest, batch, size, reference, digest).await?;
        }
        let owner = blobs.clone();
        tokio::task::spawn_blocking(move || ingest.commit(&owner, size))
            .await
            .map_err(worker_failed(reference, digest))??;
        debug!(%digest, size, "blob stored");
        Ok(())
    }
}

fn manifest_error(reference: &Reference, message: String) -> RegistryError {
    RegistryError::Manifest {
        registry: reference.registry().to_string(),
        reference: reference.whole(),
        message,
    }
}

fn too_big(reference: &Reference) -> RegistryError {
    manifest_error(
        reference,
        format!("larger than the {MAX_MANIFEST_BYTES} bytes a manifest may have; refused"),
    )
}

/// Downloaded bytes are written to the partial blob in batches of about
/// this size, each on a blocking thread.
const WRITE_BATCH_BYTES: usize = 1 << 20;

/// Appends `batch` to the partial blob on a blocking thread (nothing to do
/// for an empty batch); gives the ingest back.
async fn write_batch(
    mut ingest: Ingest,
    batch: Vec<u8>,
    size: u64,
    reference: &Reference,
    digest: &Digest,
) -> Result<Ingest, RegistryError> {
    if batch.is_empty() {
        return Ok(ingest);
    }
    tokio::task::spawn_blocking(move || ingest.append(&batch, size).map(|()| ingest))
        .await
        .map_err(worker_failed(reference, digest))?
        .map_err(RegistryError::from)
}

/// A blocking worker thread died (panicked) while handling `digest`.
fn worker_failed<'a>(
    reference: &'a Reference,
    digest: &'a Digest,
) -> impl FnOnce(tokio::task::JoinError) -> RegistryError + 'a {
    move |e| RegistryError::Stream {
        registry: reference.registry().to_string(),
        digest: digest.clone(),
        offset: 0,
        source: std::io::Error::other(e.to_string()),
    }
}
