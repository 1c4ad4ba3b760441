//! A real OCI registry on a loopback port: Debian's `docker-registry`
//! (distribution 2.8) with a temp storage dir, plain HTTP or HTTPS with a
//! test CA, optionally behind basic auth (htpasswd, bcrypt).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use ureq::http::Response;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::Agent;

use crate::certs::TestCerts;
use crate::process::{free_port, wait_until, Child};

/// How long a (re)started registry may take to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest body [`Registry::get`] reads (test images are a few MB).
const MAX_BODY: u64 = 1 << 30;

/// What kind of registry to start.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Require HTTP basic auth with this (user, password).
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate for 127.0.0.1 signed by a test CA
    /// (see [`Registry::ca_pem`]).
    pub tls: bool,
}

/// A `docker-registry` process on 127.0.0.1; killed, and its storage
/// removed, when dropped.
pub struct Registry {
    child: Option<Child>,
    program: PathBuf,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    ca: Option<PathBuf>,
    /// Server certificate and key (TLS only).
    tls: Option<(PathBuf, PathBuf)>,
    basic_auth: Option<(String, String)>,
    agent: Agent,
    /// Dropped last (fields drop in order), after the process is killed.
    dir: TempDir,
}

impl Registry {
    /// Starts a registry on a free port and waits until it answers
    /// `GET /v2/`. `None` (after printing `SKIPPED: <why>`) when
    /// `docker-registry` (or, for basic auth, `htpasswd`) is not installed.
    pub fn start(options: RegistryOptions) -> Option<Registry> {
        let program = find_program("docker-registry").or_else(|| {
            skipped("docker-registry is not installed (apt-get install docker-registry)")
        })?;
        if options.basic_auth.is_some() && find_program("htpasswd").is_none() {
            return skipped("htpasswd is not installed (apt-get install apache2-utils)");
        }
        let dir = tempfile::Builder::new()
            .prefix("mecvisor-registry-")
            .tempdir()
            .expect("create the registry's temp dir");
        let certs = options
            .tls
            .then(|| TestCerts::new(&dir.path().join("certs")));
        if let Some((user, password)) = &options.basic_auth {
            write_htpasswd(&dir.path().join("htpasswd"), user, password);
        }
        let mut registry = Registry {
            child: None,
            program,
            port: 0,
            config: dir.path().join("config.yml"),
            log: dir.path().join("registry.log"),
            agent: http_agent(certs.as_ref().map(|c| c.ca.as_path())),
            tls: certs
                .as_ref()
                .map(|c| (c.server_cert.clone(), c.server_key.clone())),
            ca: certs.map(|c| c.ca),
            basic_auth: options.basic_auth,
            dir,
        };
        registry.start_on_free_port();
        Some(registry)
    }

    /// A port free a moment ago may be taken before the registry binds it:
    /// then try another.
    fn start_on_free_port(&mut self) {
        for _ in 0..3 {
            self.port = free_port();
            std::fs::write(&self.config, self.config_yaml()).expect("write the registry config");
            if self.try_restart() {
                return;
            }
        }
        panic!(
            "docker-registry did not listen on a free port in 3 tries; log:\n{}",
            self.log_text()
        );
    }

    /// The generated `config.yml` (no access log: the log is for errors).
    fn config_yaml(&self) -> String {
        let storage = self.dir.path().join("storage");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage:?}\n  delete:\n    enabled: true\n\
             http:\n  addr: \"127.0.0.1:{port}\"\n  secret: \"mecvisor-test-{port}\"\n",
            storage = storage.display().to_string(),
            port = self.port,
        );
        if let Some((cert, key)) = &self.tls {
            yaml += &format!(
                "  tls:\n    certificate: {:?}\n    key: {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            );
        }
        if self.basic_auth.is_some() {
            let htpasswd = self.dir.path().join("htpasswd");
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: mecvisor-test\n    path: {:?}\n",
                htpasswd.display().to_string()
            );
        }
        yaml
    }

    /// `127.0.0.1:<port>` (as in image references `127.0.0.1:<port>/repo:tag`).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) that signed the registry's TLS certificate;
    /// `None` for a plain HTTP registry.
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// Whether the registry serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.ca.is_some()
    }

    /// The (user, password) the registry requires, if any.
    pub fn basic_auth(&self) -> Option<(&str, &str)> {
        self.basic_auth
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// `http://127.0.0.1:<port><path>` or `https://…`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.host())
    }

    /// An HTTP client that trusts the registry's CA (if TLS) and returns
    /// every status as a response (no error for 4xx/5xx). It sends no
    /// credentials: add [`Registry::authorization`] yourself.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The `Authorization` header value (`Basic …`), if the registry
    /// requires basic auth.
    pub fn authorization(&self) -> Option<String> {
        self.basic_auth()
            .map(|(user, password)| format!("Basic {}", base64(format!("{user}:{password}"))))
    }

    /// `GET <path>` with the registry's credentials and an optional
    /// `Accept` header; the whole body is read. Panics when the registry
    /// cannot be reached.
    pub fn get(&self, path: &str, accept: Option<&str>) -> Response<Vec<u8>> {
        let mut request = self.agent.get(self.url(path));
        if let Some(auth) = self.authorization() {
            request = request.header("Authorization", auth);
        }
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        let response = request
            .call()
            .unwrap_or_else(|e| panic!("GET {path} from registry {}: {e}", self.host()));
        read_response(response)
    }

    /// Where the registry keeps the bytes of a blob (`sha256:<hex>`) on
    /// disk, for tests that corrupt or truncate what it serves.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Kills the registry (SIGKILL, like a crash); storage is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts the registry again on the same port with the same storage and
    /// waits until it answers.
    pub fn restart(&mut self) {
        assert!(
            self.try_restart(),
            "docker-registry did not restart on port {}; log:\n{}",
            self.port,
            self.log_text()
        );
    }

    /// Starts the process; true once it answers `GET /v2/`, false if it
    /// exits first (e.g. the port is taken). Panics with its log when it
    /// neither answers nor exits within 10 s.
    fn try_restart(&mut self) -> bool {
        self.stop();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the registry log");
        let log_err = log.try_clone().expect("clone the registry log handle");
        self.child = Some(Child::spawn(
            "docker-registry",
            Command::new(&self.program)
                .arg("serve")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err),
        ));
        let answered = wait_until(START_TIMEOUT, || {
            if self.child.as_mut().is_some_and(|c| !c.is_running()) {
                return Some(false);
            }
            self.answers_v2().then_some(true)
        });
        match answered {
            Some(answered) => answered,
            None => panic!(
                "docker-registry did not answer GET /v2/ on port {} within {START_TIMEOUT:?}; log:\n{}",
                self.port,
                self.log_text()
            ),
        }
    }

    /// Whether `GET /v2/` answers 200 (open) or 401 (basic auth).
    fn answers_v2(&self) -> bool {
        self.agent
            .get(self.url("/v2/"))
            .call()
            .is_ok_and(|r| matches!(r.status().as_u16(), 200 | 401))
    }

    /// What the registry printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prints why the registry is not started; always `None`.
fn skipped<T>(why: &str) -> Option<T> {
    eprintln!("SKIPPED: {why}");
    None
}

/// `name` in `$PATH` (or `/usr/bin`, `/usr/sbin`), if it exists.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Writes an htpasswd file with a bcrypt hash (the only scheme the registry
/// accepts), made by `htpasswd -Bbn`.
fn write_htpasswd(path: &Path, user: &str, password: &str) {
    let out = Command::new(find_program("htpasswd").expect("htpasswd"))
        .args(["-B", "-b", "-n", user, password])
        .output()
        .expect("run htpasswd");
    assert!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, out.stdout).expect("write htpasswd file");
}

/// A ureq agent that returns 4xx/5xx as responses and, given a CA, trusts
/// only that CA (rustls with the ring provider).
fn http_agent(ca: Option<&Path>) -> Agent {
    let mut config = Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("read the registry CA");
        let cert = Certificate::from_pem(&pem).expect("parse the registry CA PEM");
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&[cert]))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        config = config.tls_config(tls);
    }
    config.build().into()
}

/// Reads a whole response body (up to 1 GiB).
pub(crate) fn read_response(response: Response<ureq::Body>) -> Response<Vec<u8>> {
    let (parts, mut body) = response.into_parts();
    let bytes = body
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .expect("read a registry response body");
    Response::from_parts(parts, bytes)
}

/// Standard base64 with padding (for the basic auth header).
fn base64(text: String) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.to_string()), encoded);
        }
    }
}
